"""Stacked-digit mode counting: right on planted samplers, classifier cached and its accuracy reported."""
import math

import pytest
import torch

from lbt_plugin.metrics import (classifier_features, load_channel_classifier, stacked_mode_stats,
                                train_channel_classifier)


@pytest.fixture(scope="module")
def digits():
    """Ten well-separated 28x28 'digits' (random templates) with noise, 80 per class."""
    g = torch.Generator().manual_seed(0)
    templates = (torch.rand(10, 28, 28, generator=g) > 0.5).float() * 2 - 1
    labels = torch.arange(10).repeat_interleave(80)
    images = templates[labels] + 0.3 * torch.randn(800, 28, 28, generator=g)
    return templates, images.clamp(-1, 1).unsqueeze(1), labels


def test_classifier_learns_and_is_cached(digits, tmp_path, monkeypatch, capsys):
    _, images, labels = digits
    cache = tmp_path / "clf.pt"
    model, acc = train_channel_classifier(images, labels, epochs=2, cache=str(cache), progress=False)
    assert acc > 0.95 and cache.is_file()
    again, acc2 = load_channel_classifier(str(cache), images, labels)
    assert acc2 == acc and not again.training  # measured again on the held-out tenth: the same value
    assert load_channel_classifier(str(cache))[1] is None  # without the data: not measured, not trusted
    x = images[:50]
    assert torch.equal(model(x), again(x))
    with monkeypatch.context() as m:  # the same data and settings: the cache, not trained
        m.setattr(torch.optim, "Adam", lambda *a, **k: pytest.fail("trained although the cache fits"))
        cached, acc3 = train_channel_classifier(images, labels, epochs=2, cache=str(cache), progress=False)
    assert acc3 == acc and torch.equal(cached(x), model(x))
    # other images (a cache keyed by path only reused them) or other settings: trained again, cache rewritten
    other, other_labels = images[::8].flip(-1), labels[::8]
    retrained, acc4 = train_channel_classifier(other, other_labels, epochs=1, cache=str(cache), progress=False,
                                               min_accuracy=0)
    assert "trained on other images, labels or settings: training again" in capsys.readouterr().err
    assert load_channel_classifier(str(cache), other, other_labels, min_accuracy=0)[1] == acc4
    with pytest.raises(ValueError, match=r"clf\.pt was not trained on these images and labels"):
        load_channel_classifier(str(cache), images, labels)


def test_a_cache_is_checked_not_trusted(digits, tmp_path, capsys):
    """Untrained weights recorded at 0.999, NaN weights, a 2-class classifier (8 modes), a classifier that cannot
    learn: each is refused with its cause, or retrained."""
    from lbt_plugin.files import save_atomic
    from lbt_plugin.metrics import ChannelClassifier

    _, images, labels = digits
    images, labels = images[::4], labels[::4]  # 20 per class, small batches: quick
    cache = tmp_path / "clf.pt"
    train_channel_classifier(images, labels, epochs=1, batch_size=16, cache=str(cache), progress=False)
    state = torch.load(cache, weights_only=True)
    torch.manual_seed(1)
    save_atomic({**state, "model": ChannelClassifier().state_dict(), "accuracy": 0.999}, cache)  # untrained
    with pytest.raises(ValueError, match=r"measures 0\.\d+ held-out accuracy \(it records 0\.999\), below "
                                         r"min_accuracy 0\.5"):
        load_channel_classifier(str(cache), images, labels)
    _, acc = train_channel_classifier(images, labels, epochs=1, batch_size=16, cache=str(cache), progress=False)
    assert "below 0.5: training again" in capsys.readouterr().err and acc >= 0.5
    nan = {k: v.clone() for k, v in state["model"].items()}
    nan["net.0.weight"][0, 0, 0, 0] = float("nan")
    save_atomic({**state, "model": nan}, cache)
    with pytest.raises(ValueError, match=r"holds NaN or inf weights \(net\.0\.weight\); delete it"):
        load_channel_classifier(str(cache))
    save_atomic({**state, "model": ChannelClassifier(2).state_dict(), "n_classes": 2}, cache)
    with pytest.raises(ValueError, match="holds a classifier of 2 classes, not 10: it would count 8 modes instead "
                                         "of 1000"):
        train_channel_classifier(images, labels, cache=str(cache), progress=False)
    with pytest.raises(ValueError, match=r"the labels hold classes 0 to 1; the stacked protocol needs labels 0 to 9"):
        train_channel_classifier(images, labels % 2, progress=False)
    cache.unlink()
    with pytest.raises(ValueError, match=r"reaches 0\.\d+ held-out accuracy, below min_accuracy 0\.5: .*not cached"):
        train_channel_classifier(images, labels[torch.randperm(len(labels))], epochs=1, batch_size=16,
                                 cache=str(cache), progress=False)
    assert not cache.exists()


def test_a_sampler_emitting_10_modes_scores_10(digits):
    templates, images, labels = digits
    model, _ = train_channel_classifier(images, labels, epochs=2, progress=False)
    g = torch.Generator().manual_seed(1)
    triples = torch.randint(10, (10, 3), generator=g)
    while len({tuple(t.tolist()) for t in triples}) < 10:
        triples = torch.randint(10, (10, 3), generator=g)
    which = triples[torch.arange(2600) % 10]  # [N, 3] digit per channel, 10 distinct triples
    samples = templates[which] + 0.1 * torch.randn(2600, 3, 28, 28, generator=g)
    stats = stacked_mode_stats(samples.clamp(-1, 1), model)
    assert stats.modes == 10
    assert stats.kl == pytest.approx(math.log(1000 / 10), abs=1e-6)
    assert int(stats.counts.sum()) == 2600
    # read from the features the Fréchet distance needs anyway: the same classes, one pass over the images
    features = classifier_features(samples.clamp(-1, 1), model)
    assert torch.equal(stacked_mode_stats(samples.clamp(-1, 1), model, features=features).counts, stats.counts)
    with pytest.raises(ValueError, match=r"shape \[2600, 384\]"):
        stacked_mode_stats(samples.clamp(-1, 1), model, features=features[:, :128])
    with pytest.raises(TypeError, match="ChannelClassifier"):
        stacked_mode_stats(samples.clamp(-1, 1), model.net, features=features)


def test_stacked_input_errors(digits):
    _, images, labels = digits
    model, _ = train_channel_classifier(images, labels, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        stacked_mode_stats(torch.zeros(4, 1, 28, 28), model)
    with pytest.raises(ValueError, match="at least 20 labelled images"):
        train_channel_classifier(images[:5], labels[:5])
