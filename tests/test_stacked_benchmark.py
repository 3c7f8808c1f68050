"""benchmarks/stacked_fashion.py in a seconds-long form: every method runs, evaluates, resumes and writes its table."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import stacked_fashion as sf  # noqa: E402

from lbt_plugin.metrics import ChannelClassifier, classifier_features  # noqa: E402


def test_networks_follow_the_reduced_discriminator_protocol():
    G, D = sf.Generator(256), sf.Discriminator(sf.D_WIDTHS["quarter"])
    x = G(torch.randn(4, 256))
    assert x.shape == (4, 3, 28, 28) and x.abs().max() <= 1
    assert D(x).shape == (4,)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4, 8]  # PacGAN's: a quarter of the generator's 8, 16, 32
    cfg = sf.Config()  # the default: the example's DCGAN, the discriminator a quarter of the standard width
    run = sf.Run("dcgan", 0, cfg)
    d_convs = [m.out_channels for m in run.D.modules() if isinstance(m, torch.nn.Conv2d)][:2]
    assert d_convs == [cfg.ngf // 4, 2 * cfg.ngf // 4]  # the example's standard discriminator: ndf = ngf


@pytest.mark.parametrize("method", sf.METHODS)
def test_a_run_lives_on_its_device(method):
    """'meta' (shapes only) stands in for a GPU: a tensor left behind on the CPU shows."""
    run = sf.Run(method, 0, sf.Config(), data=torch.zeros(8, 3, 28, 28, device="meta"), device="meta")
    modules = [run.G, run.D] + ([run.E] if run.lbt is not None else [])
    assert {t.device.type for m in modules for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    assert run.samples(3).device.type == "meta"
    if method == "dcgan":
        run.step()  # a whole update: everything it makes is on the device too (LBT and unrolling read values)


def test_classifier_features_are_the_penultimate_layer_per_channel():
    clf = ChannelClassifier().eval()
    x = torch.rand(5, 3, 28, 28) * 2 - 1
    f = classifier_features(x, clf)
    assert f.shape == (5, 3 * 128)
    with torch.no_grad():
        one = clf.net[:-1](x[:, 1:2])
    torch.testing.assert_close(f[:, 128:256], one)


def test_benchmark_end_to_end_and_resume(digits, tmp_path):
    results = tmp_path / "results.md"
    results.write_text("<!-- stacked-table:start -->\nold\n<!-- stacked-table:end -->\n")
    argv = ["--steps", "2", "--eval-every", "1", "--eval-samples", "40", "--seeds", "1", "--device", "cpu",
            "--data-root", str(digits),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "img"), "--results", str(results),
            "--methods", *sf.METHODS, "--min-classifier-accuracy", "0"]  # every method and cost knob runs
    sf.main(argv)
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line
            and not line.startswith("|---")]
    assert [r.split(" | ")[0] for r in rows] == [f"| {sf.NAMES[m]}" for m in sf.METHODS]
    assert "1 seeds, 2 generator updates" in text
    for name in ("stacked_curves.png", "stacked_histogram.png", "stacked_dcgan.png", "stacked_lbt_gan.png"):
        assert (tmp_path / "img" / name).stat().st_size > 500
    state = torch.load(tmp_path / "runs" / "lbt-gan_seed0.pt", weights_only=True)
    assert state["step"] == 2 and [h["step"] for h in state["history"]] == [1, 2]


def test_an_interrupted_run_continues_exactly(digits, tmp_path, interrupt_step):
    clf_path = tmp_path / "clf.pt"
    from lbt_plugin.data import load_idx_dataset
    from lbt_plugin.metrics import train_channel_classifier

    images, labels = load_idx_dataset("fashion-mnist", digits)  # 64 random images: a classifier at chance
    train_channel_classifier(images, labels, epochs=1, cache=str(clf_path), progress=False, min_accuracy=0)
    cfg = sf.Config(steps=4, eval_every=2, eval_samples=40)
    whole = sf.train("lbt-gan-small", 0, cfg, tmp_path / "a", digits, clf_path, min_accuracy=0)
    restore = interrupt_step(sf.Run, 3)
    with pytest.raises(KeyboardInterrupt):
        sf.train("lbt-gan-small", 0, cfg, tmp_path / "b", digits, clf_path, min_accuracy=0)
    restore()
    resumed = sf.train("lbt-gan-small", 0, cfg, tmp_path / "b", digits, clf_path, min_accuracy=0)
    assert [h["step"] for h in resumed["history"]] == [2, 4]
    assert torch.equal(whole["grid"], resumed["grid"])
    assert whole["history"][-1]["counts"] == resumed["history"][-1]["counts"]


def test_step_cost_times_every_method_against_dcgan():
    import step_cost

    data = torch.rand(256, 3, 28, 28) * 2 - 1
    methods = ["dcgan", "lbt-gan-fast", "lbt-gan-fast-every4"]
    seconds = step_cost.time_updates(methods, data, rounds=2, updates=1, warmup=1)
    assert list(seconds) == methods and all(len(v) == 2 and min(v) > 0 for v in seconds.values())
    rows = step_cost.table(seconds).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == [f"| {sf.NAMES[m]}" for m in methods]
    assert rows[0].split(" | ")[2] == "1.0"  # DCGAN against itself
    with pytest.raises(ValueError, match="must include dcgan"):
        step_cost.time_updates(["lbt-gan-fast"], data, rounds=1, updates=1)
