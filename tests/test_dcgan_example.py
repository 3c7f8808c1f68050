"""examples/dcgan_lbt.py on a tiny synthetic digit set: runs, resumes exactly, fails clearly."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_lbt  # noqa: E402

TINY = ["--image-size", "8", "--ngf", "4", "--ndf", "4", "--est-width", "4", "--est-latent", "4", "--nz", "8",
        "--batch-size", "16", "--k", "2", "--device", "cpu"]


def _run(digits, out, *extra):
    return dcgan_lbt.main(["--data-root", str(digits), "--out", str(out), *TINY, *extra])


def test_three_steps_write_samples_and_a_loadable_checkpoint(digits, tmp_path):
    ckpt = _run(digits, tmp_path, "--steps", "3", "--sample-every", "2", "--checkpoint-every", "2")
    assert sorted(p.name for p in tmp_path.glob("samples_*.png")) == ["samples_000002.png", "samples_000003.png"]
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and "lbt" in state
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("mode", [[], ["--lbt-only"], ["--lbt-weight", "0"], ["--dataset", "stacked-fashion-mnist"]],
                         ids=["lbt-gan", "lbt-only", "dcgan", "stacked"])
def test_resume_continues_exactly(digits, tmp_path, mode):
    one = torch.load(_run(digits, tmp_path / "one", "--steps", "4", *mode), weights_only=True)
    _run(digits, tmp_path / "two", "--steps", "2", *mode)
    two = torch.load(_run(digits, tmp_path / "two", "--steps", "4", "--resume", str(tmp_path / "two" / "checkpoint.pt"),
                          *mode), weights_only=True)
    for key in one["netG"]:
        assert torch.equal(one["netG"][key], two["netG"][key]), key
    if "lbt" in one:
        for key in one["lbt"]["estimator"]:
            assert torch.equal(one["lbt"]["estimator"][key], two["lbt"]["estimator"][key]), key


def test_stacked_dataset_has_three_channels(digits):
    x = dcgan_lbt.load_dataset("stacked-fashion-mnist", digits, 8)
    assert x.shape == (64, 3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_bad_inputs_fail_clearly(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path / "nowhere", tmp_path)
    with pytest.raises(SystemExit):
        dcgan_lbt.parse_args(["--image-size", "30"])
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install tensorboard"):
            _run(digits, tmp_path, "--steps", "1", "--tensorboard")
    # a corrupt checkpoint: a clear error, and the good one beside it is untouched
    ckpt = _run(digits, tmp_path, "--steps", "2")
    good = ckpt.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        _run(digits, tmp_path, "--steps", "3", "--resume", str(bad))
    assert ckpt.read_bytes() == good


def test_resume_refuses_a_checkpoint_it_cannot_continue(digits, tmp_path):
    """Other models, another method, or a finished run: a clear error naming the flag, and nothing written."""
    ckpt = _run(digits, tmp_path / "lbt", "--steps", "2")
    dcgan = _run(digits, tmp_path / "dcgan", "--steps", "2", "--lbt-weight", "0")
    before = ckpt.read_bytes()
    cases = [
        (["--resume", str(ckpt), "--steps", "4", "--nz", "9"], r"--nz 8 \(now 9\).*Resume with the same flags"),
        (["--resume", str(dcgan), "--steps", "4"], "has no LBT state .*--lbt-weight 0"),
        (["--resume", str(ckpt), "--steps", "4", "--lbt-weight", "0"], "holds an LBT run"),
        (["--resume", str(ckpt), "--steps", "2"], "is at step 2 .*--steps larger than 2"),
        (["--resume", str(ckpt), "--steps", "1"], "is at step 2"),
    ]
    for extra, message in cases:
        out = tmp_path / "resumed"
        with pytest.raises(ValueError, match=message):
            dcgan_lbt.main(["--data-root", str(digits), "--out", str(out), *TINY, *extra])
        assert not (out / "checkpoint.pt").exists()
    assert ckpt.read_bytes() == before


def test_torchrun_two_processes(digits, tmp_path):
    """torchrun --nproc_per_node 2: DDP generator and discriminator, one checkpoint from rank 0."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(root / "examples" / "dcgan_lbt.py"), "--data-root", str(digits), "--out", str(tmp_path), *TINY,
         "--steps", "3"],
        capture_output=True, text=True, timeout=300, env=env, cwd=root,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and not any(k.startswith("module.") for k in state["netG"])
