"""Stacked-digit mode counting: right on planted samplers, classifier cached and its accuracy reported."""
import math

import pytest
import torch

from lbt_plugin.metrics import load_channel_classifier, stacked_mode_stats, train_channel_classifier


@pytest.fixture(scope="module")
def digits():
    """Ten well-separated 28x28 'digits' (random templates) with noise, 80 per class."""
    g = torch.Generator().manual_seed(0)
    templates = (torch.rand(10, 28, 28, generator=g) > 0.5).float() * 2 - 1
    labels = torch.arange(10).repeat_interleave(80)
    images = templates[labels] + 0.3 * torch.randn(800, 28, 28, generator=g)
    return templates, images.clamp(-1, 1).unsqueeze(1), labels


def test_classifier_learns_and_is_cached(digits, tmp_path):
    _, images, labels = digits
    cache = tmp_path / "clf.pt"
    model, acc = train_channel_classifier(images, labels, epochs=2, cache=str(cache), progress=False)
    assert acc > 0.95 and cache.is_file()
    again, acc2 = load_channel_classifier(str(cache))
    assert acc2 == acc and not again.training
    x = images[:50]
    assert torch.equal(model(x), again(x))
    cached, acc3 = train_channel_classifier(images[:20] * 0, labels[:20], cache=str(cache))  # the cache, not trained
    assert acc3 == acc and torch.equal(cached(x), model(x))


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


def test_stacked_input_errors(digits):
    _, images, labels = digits
    model, _ = train_channel_classifier(images, labels, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        stacked_mode_stats(torch.zeros(4, 1, 28, 28), model)
    with pytest.raises(ValueError, match="at least 20 labelled images"):
        train_channel_classifier(images[:5], labels[:5])
