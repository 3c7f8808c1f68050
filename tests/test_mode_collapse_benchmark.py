"""The 2-D benchmark: a batched seed is the seed run alone, runs resume exactly, and the script writes its table."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lbt_plugin import LBTLoss
from lbt_plugin.estimators import GaussianMixture, RealNVP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mode_collapse_2d as mc  # noqa: E402

TINY = dict(steps=6, batch=16, g_hidden=8, g_layers=2, d_units=4, d_pieces=2, d_layers=2, components=5,
            teach_steps=2, k=2, eval_every=2, eval_samples=50)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("method", mc.METHODS)
def test_a_batched_seed_equals_the_seed_run_alone(method, float64):
    """Parameters with a leading seed dimension and losses summed over seeds: seed 1 of three is seed 1 alone."""
    cfg = mc.Config(**TINY, lr_final=1e-4, est_std_final=0.05)  # the schedules too
    batched, alone = mc.Run(method, "grid", [0, 1, 2], cfg), mc.Run(method, "grid", [1], cfg)
    for _ in range(5):
        batched.step()
        alone.step()
    for (name, a), b in zip(batched.G.named_parameters(), alone.G.parameters()):
        torch.testing.assert_close(a[1:2], b, rtol=1e-9, atol=1e-12, msg=name)
    if method == "lbt-gan-defaults":  # one estimator per seed
        for a, b in zip(batched.lbt.losses[1].estimator.parameters(), alone.lbt.losses[0].estimator.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    elif batched.lbt is not None:
        torch.testing.assert_close(batched.est.loc[1:2], alone.est.loc, rtol=1e-9, atol=1e-12)
    assert not torch.equal(batched.G[0].weight[0], batched.G[0].weight[1])  # the seeds do differ


@pytest.mark.parametrize("field, attribute, default, other",
                         [("lbt_weight", "weight", 1.0, 0.5), ("defaults_teach_steps", "teach_steps", 1, 3),
                          ("defaults_smoothing", "smoothing", 0.0, 0.9)])
def test_the_defaults_knobs_are_set_from_the_command_line(field, attribute, default, other):
    """``--set lbt_weight=W``, ``defaults_teach_steps=N`` and ``defaults_smoothing=B`` reach every seed's ``LBTLoss``
    in the defaults' run (the package's own defaults when not set) and change the updates (smoothing from the second:
    its first step is the per-step one)."""
    _, cfg = mc.parse_args(["--set", f"{field}={other}"])
    assert getattr(cfg, field) == other
    assert getattr(mc.Config(), field) == default == inspect.signature(LBTLoss).parameters[attribute].default
    runs = [mc.Run("lbt-gan-defaults", "ring", [0, 1], mc.Config(**TINY, **{field: v})) for v in (default, other)]
    assert [[getattr(lbt, attribute) for lbt in run.lbt.losses] for run in runs] == [[default] * 2, [other] * 2]
    for run in runs:
        run.step()
        run.step()
    assert not torch.equal(runs[0].G[-1].weight, runs[1].G[-1].weight)


def test_the_ratio_can_follow_the_learning_rates_schedule():
    """``--set defaults_weight_decay=1``: every seed's ratio is ``lbt_weight`` times the learning rates' factor at the
    step (1 at the first, 0 at the last with ``lr_final=0``); anything but 0/1/true/false is refused."""
    assert mc.parse_args(["--set", "defaults_weight_decay=1"])[1].defaults_weight_decay is True
    assert mc.parse_args(["--set", "defaults_weight_decay=false"])[1].defaults_weight_decay is False
    with pytest.raises(SystemExit):
        mc.parse_args(["--set", "defaults_weight_decay=0.5"])
    cfg = mc.Config(**{**TINY, "steps": 5}, lbt_weight=2.0, defaults_weight_decay=True)
    run = mc.Run("lbt-gan-defaults", "ring", [0, 1], cfg)
    seen = []
    for _ in range(5):
        run.step()
        seen.append([lbt.weight for lbt in run.lbt.losses])
    assert seen == [[2.0 * (1 - i / 4)] * 2 for i in range(5)]
    constant = mc.Run("lbt-gan-defaults", "ring", [0, 1], mc.Config(**{**TINY, "steps": 5}, lbt_weight=2.0))
    for _ in range(2):
        constant.step()
    assert [lbt.weight for lbt in constant.lbt.losses] == [2.0, 2.0]


def test_the_defaults_estimator_is_chosen_from_the_command_line(capsys):
    """``--set defaults_estimator=mixture`` gives every seed's ``LBTLoss`` the recipe's estimator in the package's
    form: a fixed-std ``GaussianMixture`` (std ``est_std`` times the data's extent) taught by SGD at ``est_lr *
    std^2``; the default is the documented ``RealNVP`` with LBTLoss's Adam; a name not in the table is refused."""
    assert mc.Config().defaults_estimator == "flow"
    _, cfg = mc.parse_args(["--set", "defaults_estimator=mixture"])
    assert cfg.defaults_estimator == "mixture"
    with pytest.raises(SystemExit):
        mc.parse_args(["--set", "defaults_estimator=vae"])
    assert "defaults_estimator is one of ['flow', 'mixture']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="defaults_estimator must be one of"):
        mc.Run("lbt-gan-defaults", "grid", [0], mc.Config(**TINY, defaults_estimator="vae"))
    runs = {name: mc.Run("lbt-gan-defaults", "grid", [0, 1], mc.Config(**TINY, defaults_estimator=name))
            for name in ("flow", "mixture")}
    extent = float(runs["mixture"].mixture.centers.abs().max())
    std = mc.Config().est_std * extent
    for lbt in runs["mixture"].lbt.losses:
        est, opt = lbt.estimator, lbt.unroller.optimizer
        assert isinstance(est, GaussianMixture) and "log_std" not in dict(est.named_parameters())
        torch.testing.assert_close(est._log_std().exp(), torch.full_like(est.log_std, std), rtol=0.01, atol=0)
        assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == pytest.approx(4.0 * std**2)
        assert est.loc.shape == (TINY["components"], 2)
    assert not torch.equal(*(lbt.estimator.loc for lbt in runs["mixture"].lbt.losses))  # one init per seed
    for lbt in runs["flow"].lbt.losses:
        assert isinstance(lbt.estimator, RealNVP) and type(lbt.unroller.optimizer) is torch.optim.Adam
    for run in runs.values():
        run.step()
    assert not torch.equal(runs["flow"].G[-1].weight, runs["mixture"].G[-1].weight)


@pytest.mark.parametrize("method", mc.METHODS)
def test_a_run_lives_on_its_device(method):
    """Models, estimator, data, latents and samples on the run's device: 'meta' (shapes only) stands in for a GPU
    here, so a tensor left behind on the CPU shows."""
    run = mc.Run(method, "grid", [0, 1], mc.Config(**TINY), device="meta")
    estimators = ([lbt.estimator for lbt in run.lbt.losses] if method == "lbt-gan-defaults" else
                  [run.est] if run.lbt is not None else [])
    modules = [run.G, run.D] + estimators
    assert {t.device.type for m in modules for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    assert [t.device.type for t in (*run.batch(), run.samples())] == ["meta"] * 3
    if method == "gan":
        run.step()  # a whole update: everything it makes is on the device too (LBT and unrolling read values)


def test_an_interrupted_run_continues_exactly(tmp_path, interrupt_step):
    cfg = mc.Config(**TINY)
    whole = mc.train("lbt-gan", "ring", [0, 1], cfg, None, progress=False)
    restore = interrupt_step(mc.Run, 4)
    with pytest.raises(KeyboardInterrupt):
        mc.train("lbt-gan", "ring", [0, 1], cfg, tmp_path, progress=False)
    restore()
    resumed = mc.train("lbt-gan", "ring", [0, 1], cfg, tmp_path, progress=False)
    assert [s for s, _ in resumed["history"]] == [2, 4, 6]
    assert torch.equal(whole["samples"], resumed["samples"])
    assert [[x.modes for x in stats] for _, stats in whole["history"]] == \
        [[x.modes for x in stats] for _, stats in resumed["history"]]
    with pytest.raises(ValueError, match="other seeds or another Config"):
        mc.train("lbt-gan", "ring", [0, 1], mc.Config(**{**TINY, "lr": 0.5}), tmp_path, progress=False)


def test_a_checkpoint_from_before_a_new_field_continues(tmp_path, interrupt_step, monkeypatch):
    """A field added to Config later reads as its default in an older checkpoint; set otherwise, it is refused."""
    cfg = mc.Config(**TINY)
    restore = interrupt_step(mc.Run, 4)
    with pytest.raises(KeyboardInterrupt):
        mc.train("gan", "ring", [0], cfg, tmp_path, progress=False)
    restore()
    path = tmp_path / "ring_gan.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["defaults_weight_decay"]  # as written before the field existed
    torch.save(state, path)
    with pytest.raises(ValueError, match="another Config"):
        mc.train("gan", "ring", [0], mc.Config(**TINY, defaults_weight_decay=True), tmp_path, progress=False)
    steps, step = [], mc.Run.step

    def counted(run):
        steps.append(run.step_count)
        step(run)

    monkeypatch.setattr(mc.Run, "step", counted)
    resumed = mc.train("gan", "ring", [0], cfg, tmp_path, progress=False)
    assert steps == [2, 3, 4, 5]  # continued from the checkpoint at 2, not from the start
    assert [s for s, _ in resumed["history"]] == [2, 4, 6]


def test_benchmark_script_end_to_end(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nbefore\n<!-- 2d-table:start -->\nold\n<!-- 2d-table:end -->\nafter\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mode_collapse_2d.py"), "--steps", "4", "--eval-every", "2",
           "--seeds", "2", "--out", str(tmp_path / "img"), "--results", str(results), "--runs", str(tmp_path / "runs"),
           "--jobs", "2", "--device", "cpu", "--set", "g_hidden=8", "d_units=4", "components=5", "teach_steps=2", "eval_samples=100"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert "before" in text and "after" in text and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ring") or line.startswith("| grid")]
    assert len(rows) == 2 * len(mc.METHODS)  # every method on 2 datasets
    assert all(" ± " in row for row in rows)  # mean and spread over 2 seeds
    assert "--set g_hidden=8 d_units=4" in text
    for name in ("mode_collapse_ring.png", "mode_collapse_grid.png", "mode_collapse_grid_curves.png"):
        assert (tmp_path / "img" / name).stat().st_size > 1000
    assert len(list((tmp_path / "runs").glob("*.pt"))) == 2 * len(mc.METHODS)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)  # finished runs are reused
    assert again.returncode == 0, again.stderr
    assert results.read_text().split("minutes: training")[0] == text.split("minutes: training")[0]


def test_benchmark_script_rejects_bad_arguments():
    script = str(ROOT / "benchmarks" / "mode_collapse_2d.py")
    out = subprocess.run([sys.executable, script, "--seeds", "0"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 2 and "must be >= 1" in out.stderr
    out = subprocess.run([sys.executable, script, "--set", "nonsense=1"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "FIELD one of" in out.stderr
    with pytest.raises(SystemExit):
        mc.parse_args(["--device", "gpu0"])  # argparse prints: 'gpu0' is not a device: cpu, cuda, cuda:1, ...
    assert mc.parse_args([])[0].device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_first_seed_runs_further_seeds_and_says_so(tmp_path):
    """``--first-seed 3 --seeds 2`` trains seeds 3 and 4 (more seeds for a finished run), and the table's footer and
    command say which; a negative first seed is refused before anything runs."""
    args, _ = mc.parse_args(["--seeds", "2", "--first-seed", "3"])
    assert args.seed_list == [3, 4]
    assert mc.parse_args(["--seeds", "2"])[0].seed_list == [0, 1]
    with pytest.raises(SystemExit):
        mc.parse_args(["--first-seed", "-1"])
    results = tmp_path / "results.md"
    mc.main(["--steps", "2", "--eval-every", "2", "--seeds", "1", "--first-seed", "2", "--methods", "gan",
             "--datasets", "ring", "--jobs", "1", "--device", "cpu", "--out", str(tmp_path / "img"),
             "--results", str(results), "--runs", str(tmp_path / "runs"), "--table", "t",
             "--set", "g_hidden=8", "d_units=4", "eval_samples=100"])
    text = results.read_text()
    assert "1 seeds: 2 to 2 (per seed" in text and "--seeds 1 --steps 2 --first-seed 2" in text
    assert torch.load(tmp_path / "runs" / "ring_gan.pt", weights_only=True)["seeds"] == [2]
