"""examples/dcgan_lbt.py against a hostile user: no work is lost to --out (checked first, locked, no checkpoint
replaced, a failing write or a diverged run keeps the last good checkpoint), a checkpoint is checked field by
field before anything is loaded, --resume refuses changed flags, and bad flags and data fail with the fix."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import dcgan_lbt  # noqa: E402
import dcgan_support  # noqa: E402
from example_run import SMALLEST, run_example  # noqa: E402


def _run(digits, out, *extra):
    return run_example(digits, out, *extra, flags=SMALLEST)


@pytest.fixture
def no_training(monkeypatch):
    """Loading the data (the first thing a run does after checking --out) fails the test."""
    def trained(*args, **kwargs):
        raise AssertionError("the run started before its --out was checked")

    monkeypatch.setattr(dcgan_support, "load_dataset", trained)


# ----------------------------------------------------------------------------- lost work
def test_an_out_that_cannot_hold_files_is_refused_before_training(digits, tmp_path, monkeypatch, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match="--out .*a-file/run cannot hold .*choose another --out"):
        _run(digits, blocker / "run", "--steps", "1")

    def read_only(*args, **kwargs):  # as a read-only folder answers (root writes into a chmod 555 one)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dcgan_support.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match="Permission denied; nothing was trained.*make it a writable folder"):
        _run(digits, tmp_path / "ro", "--steps", "1")


def test_a_second_run_into_the_same_out_is_locked_out_and_a_stale_lock_is_taken_over(digits, tmp_path, no_training):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / dcgan_support.LOCK_NAME
    live = os.getppid()  # a process that runs while this test does
    lock.write_text(f"{live}\n")
    with pytest.raises(FileExistsError, match=f"in use by another run \\(process {live}.*choose another --out"):
        _run(digits, out, "--steps", "1")
    assert lock.read_text() == f"{live}\n"  # the other run's lock is left alone
    lock.write_text("")
    with pytest.raises(FileExistsError, match="names no process.*remove"):
        _run(digits, out, "--steps", "1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{gone.pid}\n")  # left by a killed run
    with pytest.raises(AssertionError, match="before its --out was checked"):  # past the lock: it would train
        _run(digits, out, "--steps", "1")
    assert not lock.exists()  # taken over, and released on the error


def test_a_fresh_run_does_not_replace_a_checkpoint_unless_told(digits, tmp_path):
    ckpt = _run(digits, tmp_path, "--steps", "2")
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"--resume .*checkpoint\.pt .*or pass --overwrite"):
        _run(digits, tmp_path, "--steps", "1")
    other = _run(digits, tmp_path / "other", "--steps", "3")
    with pytest.raises(FileExistsError, match="--overwrite"):  # resuming another run's checkpoint into it: also
        _run(digits, tmp_path, "--steps", "4", "--resume", str(other))
    assert ckpt.read_bytes() == before
    assert torch.load(_run(digits, tmp_path, "--steps", "1", "--overwrite"), weights_only=True)["step"] == 1
    assert not list(tmp_path.glob(dcgan_support.LOCK_NAME))


def test_a_failing_write_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    ckpt = _run(digits, tmp_path, "--steps", "2")
    before = ckpt.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _run(digits, tmp_path, "--steps", "4", "--checkpoint-every", "1", "--resume", str(ckpt))
    assert ckpt.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / dcgan_support.LOCK_NAME).exists()
    assert not (tmp_path / "samples_000003.png").exists()  # the checkpoint is written before the samples


def test_a_diverged_run_stops_at_the_first_non_finite_loss_and_writes_no_checkpoint(digits, tmp_path, monkeypatch):
    ckpt = _run(digits, tmp_path, "--steps", "2", "--lbt-weight", "0")
    before = ckpt.read_bytes()
    forward = dcgan_lbt.Generator.forward
    monkeypatch.setattr(dcgan_lbt.Generator, "forward", lambda self, z: forward(self, z) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"step 3: Loss_D = nan.*checkpoint\.pt.*lower --lr \(now 0\.0002\)"):
        _run(digits, tmp_path, "--steps", "4", "--checkpoint-every", "1", "--resume", str(ckpt), "--lbt-weight", "0")
    assert ckpt.read_bytes() == before
    # and a checkpoint of non-finite weights is never written, whatever the losses say
    state = torch.load(ckpt, weights_only=True)
    netG = dcgan_lbt.Generator(4, 4, 1, 8)
    netG.load_state_dict(state["netG"])
    with torch.no_grad():
        netG.main[0].weight[0, 0, 0, 0] = float("inf")
    opt = dcgan_lbt.parse_args(["--out", str(tmp_path), *SMALLEST])
    with pytest.raises(FloatingPointError, match=r"step 3: \['netG'\]\['main.0.weight'\] holds NaN or inf"):
        dcgan_support.save_checkpoint(ckpt, 3, opt, {"netG": netG}, state["fixed_noise"], state["generator_kwargs"],
                                      torch.device("cpu"))
    assert ckpt.read_bytes() == before


# ----------------------------------------------------------------------------- checkpoint fields
def _set(path):
    """A function that sets ``state[path[0]][path[1]]...`` to its argument."""
    def setter(state, value):
        for key in path[:-1]:
            state = state[key]
        state[path[-1]] = value
    return setter


FIELDS = [  # (where, the damaged value from the good state, what the error names)
    (("fixed_noise",), lambda s: torch.randn(64, 5, 1, 1), r"fixed_noise is a torch.float32 tensor of shape \(64, 5"),
    (("netG", "main.0.weight"), lambda s: s["netG"]["main.0.weight"] * float("nan"),
     r"netG\['main.0.weight'\] holds NaN"),
    (("netG", "main.0.weight"), lambda s: s["netG"]["main.0.weight"].double(), "torch.float64 tensor"),
    (("netD", "main.0.weight"), lambda s: s["netD"]["main.0.weight"][:2], r"netD\['main.0.weight'\] .*shape \(2,"),
    (("rng",), lambda s: s["rng"][:100], r"rng is a torch.uint8 tensor of shape \(100,\)"),
    (("rng",), lambda s: s["rng"].float(), "rng is a torch.float32 tensor"),
    (("cuda_rng",), lambda s: torch.zeros(16), "cuda_rng must be a 1-D uint8 tensor"),
    (("step",), lambda s: -1, "step must be an integer >= 0, got -1"),
    (("step",), lambda s: 1.5, "step must be an integer >= 0"),
    (("optG", "param_groups", 0, "lr"), lambda s: float("nan"), r"optG param group 0: lr=nan, must be a finite"),
    (("optD", "param_groups", 0, "lr"), lambda s: -0.1, r"optD param group 0: lr=-0.1"),
    (("optG", "param_groups", 0, "betas"), lambda s: (0.5, 1.5), r"betas=\(0.5, 1.5\), must be two numbers in"),
    (("optG", "param_groups", 0, "lr"), lambda s: 0.1, r"lr=0.1 \(flags give 0.0002\)"),
    (("optG", "state", 0, "exp_avg"), lambda s: torch.zeros(3), r"optG state\[0\]\['exp_avg'\] .*shape \(3,\)"),
    (("optG", "state", 0, "exp_avg_sq"), lambda s: -s["optG"]["state"][0]["exp_avg_sq"] - 1, "holds negative"),
    (("optD", "state", 0, "step"), lambda s: torch.tensor(float("nan")), r"optD state\[0\]\['step'\] must be"),
    (("lbt", "estimator", "encoder.0.weight"), lambda s: s["lbt"]["estimator"]["encoder.0.weight"] * float("inf"),
     r"lbt\['estimator'\]\['encoder.0.weight'\] holds NaN"),
    (("lbt", "optimizer", "param_groups", 0, "lr"), lambda s: float("nan"),
     r"lbt\['optimizer'\] param group 0: lr=nan"),
    (("lbt", "balance"), lambda s: torch.tensor([1.0, float("nan")]), r"lbt\['balance'\] holds NaN"),
    (("lbt", "balance"), lambda s: torch.zeros(3), r"lbt\['balance'\] is a torch.float32 tensor of shape \(3,\)"),
]


@pytest.fixture(scope="module")
def good_checkpoint(digits, tmp_path_factory):
    return _run(digits, tmp_path_factory.mktemp("good"), "--steps", "2")


@pytest.mark.parametrize("path, damage, message", FIELDS,
                         ids=[f"{'.'.join(map(str, p))}:{m[:24]}" for p, _, m in FIELDS])
def test_a_damaged_checkpoint_field_is_named_and_nothing_is_loaded(digits, tmp_path, good_checkpoint, path, damage,
                                                                 message):
    state = torch.load(good_checkpoint, weights_only=True)
    _set(path)(state, damage(state))
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=message):
        _run(digits, tmp_path / "resumed", "--steps", "4", "--resume", str(bad))
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_the_checks_run_before_any_part_is_loaded(digits, tmp_path, good_checkpoint):
    """The last field checked is bad: the parts checked before it are still this run's own."""
    state = torch.load(good_checkpoint, weights_only=True)
    state["fixed_noise"] = torch.randn(64, 5, 1, 1)
    bad = tmp_path / "bad.pt"
    opt = dcgan_lbt.parse_args(["--data-root", str(digits), "--out", str(tmp_path), *SMALLEST, "--steps", "4",
                                "--lbt-weight", "0", "--resume", str(bad)])
    del state["lbt"]
    state["args"]["lbt_weight"] = 0.0  # a DCGAN checkpoint, but for its fixed noise
    torch.save(state, bad)
    netG, netD = dcgan_lbt.Generator(4, 4, 1, 8), dcgan_lbt.Discriminator(4, 1, 8)
    parts = {"netG": netG, "netD": netD, "optG": torch.optim.Adam(netG.parameters(), 2e-4, betas=(0.5, 0.999)),
             "optD": torch.optim.Adam(netD.parameters(), 2e-4, betas=(0.5, 0.999))}
    before = copy.deepcopy({name: part.state_dict() for name, part in parts.items()})
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="fixed_noise"):
        dcgan_support.resume(bad, opt, parts, torch.device("cpu"))
    for name in ("netG", "netD"):
        assert all(torch.equal(v, parts[name].state_dict()[k]) for k, v in before[name].items()), name
    assert parts["optG"].state_dict()["state"] == {} and torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------------------- resume flags
def test_resume_refuses_flags_that_differ_from_the_checkpoints(digits, tmp_path, good_checkpoint):
    with pytest.raises(ValueError, match=r"--lr 0.0002 \(now 0.01\), --beta1 0.5 \(now 0.9\), .*--est-lr 0.0003 "
                                         r"\(now 0.05\).*resume with the checkpoint's values"):
        _run(digits, tmp_path / "a", "--steps", "4", "--resume", str(good_checkpoint),
             "--lr", "0.01", "--est-lr", "0.05", "--beta1", "0.9")
    with pytest.raises(ValueError, match=r"--seed 0 \(now 1\)"):
        _run(digits, tmp_path / "b", "--steps", "4", "--resume", str(good_checkpoint), "--seed", "1")
    assert not (tmp_path / "a" / "checkpoint.pt").exists() and not (tmp_path / "b" / "checkpoint.pt").exists()
    # where, how long and how often may change
    ckpt = _run(digits, tmp_path / "c", "--steps", "3", "--resume", str(good_checkpoint), "--sample-every", "7",
                "--checkpoint-every", "5")
    assert torch.load(ckpt, weights_only=True)["step"] == 3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, message", [
    (["--nz", "0"], "--nz must be in [1, 4096], got 0"),
    (["--ngf", "0"], "--ngf must be in [1, 4096]"),
    (["--ndf", "0"], "--ndf must be in [1, 4096]"),
    (["--est-width", "0"], "--est-width must be in [1, 4096]"),
    (["--est-latent", "0"], "--est-latent must be in [1, 4096]"),
    (["--lr", "nan"], "--lr must be >= 0, got nan"),
    (["--lr", "-1"], "--lr must be >= 0"),
    (["--beta1", "1"], "--beta1 must be in [0, 0.999]"),
    (["--est-lr", "inf"], "--est-lr must be >= 0, got inf"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--image-size", "4096"], "--image-size must be a multiple of 4 in [8, 1024]"),
    (["--device", "gpu"], "--device 'gpu' is not a device: use cpu, cuda or cuda:N"),
    (["--device", "mps"], "runs on cpu or cuda"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        dcgan_lbt.parse_args(flags)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        dcgan_lbt.parse_args(["--device", "cuda"])
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and "use --device cpu" in err


def _folder(root, *sizes):
    from PIL import Image

    for i, (w, h) in enumerate(sizes):
        (root / "class").mkdir(parents=True, exist_ok=True)
        Image.new("L", (w, h), color=i * 30).save(root / "class" / f"{i}.png")
    return root


def test_images_that_are_not_square_or_too_small_are_refused(tmp_path):
    _folder(tmp_path / "ok", (28, 28), (28, 28))
    assert dcgan_support.load_dataset("folder", tmp_path / "ok", 32).shape == (2, 3, 32, 32)  # upsizing stays
    cases = [((30, 28), "the images are 28x30 .*square"), ((1, 1), "the images are 1x1, smaller than the 8x8")]
    for size, message in cases:
        root = _folder(tmp_path / f"{size[0]}x{size[1]}", size, size)
        with pytest.raises(ValueError, match=message):
            dcgan_support.load_dataset("folder", root, 8)
    with pytest.raises(ValueError, match="of 2 sizes"):
        dcgan_support.load_dataset("folder", _folder(tmp_path / "mixed", (28, 28), (32, 32)), 8)
    from conftest import _write_idx

    idx = tmp_path / "idx"
    idx.mkdir()
    _write_idx(idx / "train-images-idx3-ubyte.gz", torch.zeros(8, 28, 30, dtype=torch.uint8))
    _write_idx(idx / "train-labels-idx1-ubyte.gz", torch.zeros(8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="28x30"):
        dcgan_support.load_dataset("fashion-mnist", idx, 8)


@pytest.mark.parametrize("dataset", ["folder", "cifar10", "fashion-mnist"])
def test_a_data_root_that_is_missing_or_a_file_names_the_flag(dataset, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match="--data-root .*nowhere does not exist"):
        dcgan_support.load_dataset(dataset, tmp_path / "nowhere", 8)
    with pytest.raises(NotADirectoryError, match="--data-root .*file is a file"):
        dcgan_support.load_dataset(dataset, tmp_path / "file", 8)
    if dataset == "cifar10":
        with pytest.raises(FileNotFoundError, match="no CIFAR-10 under --data-root"):
            dcgan_support.load_dataset(dataset, tmp_path, 8)
    if dataset == "folder":
        with pytest.raises(FileNotFoundError, match="--dataset folder needs --data-root"):
            dcgan_support.load_dataset(dataset, None, 8)


def test_resuming_a_copy_of_the_checkpoint_in_out_replaces_nothing_of_value(digits, tmp_path):
    ckpt = _run(digits, tmp_path / "a", "--steps", "2")
    copy_ = tmp_path / "copy.pt"
    copy_.write_bytes(ckpt.read_bytes())
    assert torch.load(_run(digits, tmp_path / "a", "--steps", "3", "--resume", str(copy_)),
                      weights_only=True)["step"] == 3
    with pytest.raises(FileExistsError, match="--overwrite"):  # the copy is now another step's checkpoint
        _run(digits, tmp_path / "a", "--steps", "4", "--resume", str(copy_))


def test_resume_from_a_folder_or_a_fifo_says_what_it_is_not_that_it_is_missing(tmp_path):
    """Case "--resume of a directory / FIFO": the error named an existing path "no such checkpoint"; it now says
    what the path is (read without blocking), and only a missing path is reported missing."""
    folder = tmp_path / "ck"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"checkpoint .*ck is a directory, not a regular file"):
        dcgan_support.load_checkpoint(folder)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "ck.pt"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match=r"checkpoint .*ck\.pt is a FIFO \(named pipe\), not a regular file"):
            dcgan_support.load_checkpoint(fifo)
    with pytest.raises(FileNotFoundError, match=r"--resume .*missing\.pt: no such checkpoint"):
        dcgan_support.load_checkpoint(tmp_path / "missing.pt")
