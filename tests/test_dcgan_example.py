"""examples/dcgan_lbt.py on a tiny synthetic digit set: the LBT lines are all that differ from a plain DCGAN loop;
it runs, resumes exactly, fails clearly."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import dcgan_lbt  # noqa: E402
from example_run import TINY, run_example  # noqa: E402
from lbt_lines import lbt_names, strip_lbt  # noqa: E402


#: The training loop of pytorch/examples' dcgan/main.py as this example writes it, without LBT. Where it differs
#: (docs/dcgan.md says why): batches indexed by step (--resume is exact, a function of seed and step) and this
#: rank's part of the global batch's noise; the noise is drawn before the discriminator's update; the loss takes
#: logits (D(x) is their sigmoid); samples and checkpoints every --sample-every / --checkpoint-every steps.
PLAIN_LOOP = """\
    for step in range(start, opt.steps):
        real = dataloader[step].to(device)
        batch_size = real.size(0)
        noise = torch.randn(opt.batch_size, nz, 1, 1, device=device)[dataloader.part]  # this rank's part
        fake = netG(noise)
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        # train with real
        netD.zero_grad()
        label = torch.full((batch_size,), real_label, dtype=real.dtype, device=device)
        output = netD(real)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.sigmoid().mean().item()

        # train with fake
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.sigmoid().mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()

        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake)
        errG = criterion(output, label)
        D_G_z2 = output.sigmoid().mean().item()
        errG.backward()
        optimizerG.step()
"""


def test_without_its_lbt_lines_the_example_is_the_plain_dcgan_loop(digits, tmp_path):
    plain = strip_lbt((ROOT / "examples" / "dcgan_lbt.py").read_text())
    loop = plain[plain.index("    for step in range(start, opt.steps):"):plain.index("        done = step + 1")]
    assert loop.rstrip("\n") == PLAIN_LOOP.rstrip("\n")
    assert not lbt_names(plain)
    # and it runs: its checkpoint is the full example's with --lbt-weight 0, tensor for tensor
    (tmp_path / "dcgan_plain.py").write_text(plain)
    spec = importlib.util.spec_from_file_location("dcgan_plain", tmp_path / "dcgan_plain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flags = ["--data-root", str(digits), "--image-size", "8", "--ngf", "4", "--ndf", "4", "--nz", "8",
             "--batch-size", "16", "--device", "cpu", "--steps", "3"]
    ours = torch.load(module.main([*flags, "--out", str(tmp_path / "plain")]), weights_only=True)
    full = torch.load(dcgan_lbt.main([*flags, "--out", str(tmp_path / "full"), "--lbt-weight", "0"]),
                      weights_only=True)
    assert "lbt" not in ours and set(ours) == set(full)
    for part in ("netG", "netD"):
        for key in full[part]:
            assert torch.equal(ours[part][key], full[part][key]), (part, key)
    for part in ("optG", "optD"):
        for i, state in full[part]["state"].items():
            assert all(torch.equal(ours[part]["state"][i][k], v) for k, v in state.items()), (part, i)


def test_three_steps_write_samples_and_a_loadable_checkpoint(digits, tmp_path):
    ckpt = run_example(digits, tmp_path, "--steps", "3", "--sample-every", "2", "--checkpoint-every", "2")
    assert sorted(p.name for p in tmp_path.glob("samples_*.png")) == ["samples_000002.png", "samples_000003.png"]
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and "lbt" in state
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("mode", [[], ["--lbt-only"], ["--lbt-weight", "0"], ["--dataset", "stacked-fashion-mnist"]],
                         ids=["lbt-gan", "lbt-only", "dcgan", "stacked"])
def test_resume_continues_exactly(digits, tmp_path, mode):
    one = torch.load(run_example(digits, tmp_path / "one", "--steps", "4", *mode), weights_only=True)
    run_example(digits, tmp_path / "two", "--steps", "2", *mode)
    resume = str(tmp_path / "two" / "checkpoint.pt")
    two = torch.load(run_example(digits, tmp_path / "two", "--steps", "4", "--resume", resume, *mode),
                     weights_only=True)
    for key in one["netG"]:
        assert torch.equal(one["netG"][key], two["netG"][key]), key
    if "lbt" in one:
        for key in one["lbt"]["estimator"]:
            assert torch.equal(one["lbt"]["estimator"][key], two["lbt"]["estimator"][key]), key


def test_lbt_only_rejects_warmup():
    with pytest.raises(SystemExit):  # the GAN-only steps of --warmup have nothing to train without a GAN
        dcgan_lbt.parse_args(["--lbt-only", "--warmup", "5"])


def test_stacked_dataset_has_three_channels(digits):
    x = dcgan_lbt.load_dataset("stacked-fashion-mnist", digits, 8)
    assert x.shape == (64, 3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_bad_inputs_fail_clearly(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_example(tmp_path / "nowhere", tmp_path)
    with pytest.raises(SystemExit):
        dcgan_lbt.parse_args(["--image-size", "30"])
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install tensorboard"):
            run_example(digits, tmp_path, "--steps", "1", "--tensorboard")
    # a corrupt checkpoint: a clear error, and the good one beside it is untouched
    ckpt = run_example(digits, tmp_path, "--steps", "2")
    good = ckpt.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        run_example(digits, tmp_path / "resumed", "--steps", "3", "--resume", str(bad))
    assert ckpt.read_bytes() == good


def test_resume_refuses_a_checkpoint_it_cannot_continue(digits, tmp_path):
    """Other models, another method, or a finished run: a clear error naming the flag, and nothing written."""
    ckpt = run_example(digits, tmp_path / "lbt", "--steps", "2")
    dcgan = run_example(digits, tmp_path / "dcgan", "--steps", "2", "--lbt-weight", "0")
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
