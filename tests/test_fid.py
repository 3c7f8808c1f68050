"""FID plumbing: the CLI's value is pytorch-fid's own, with a planted weights file (no download)."""
import os
import re
import subprocess
import sys
from unittest import mock

import pytest
import torch
from click.testing import CliRunner

from lbt_plugin.cli import main
from lbt_plugin.metrics import FID_WEIGHTS_FILE, save_images

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A weights file of the right shape (random values) in a temporary TORCH_HOME."""
    import pytorch_fid.inception as inc

    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    with mock.patch.object(inc, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None):
        model = inc.fid_inception_v3()
    torch.save(model.state_dict(), path)
    folders = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        folder = home / f"images{seed}"
        save_images(torch.rand(6, 3, 32, 32, generator=g) * 2 - 1 + 0.3 * seed, str(folder))
        folders.append(str(folder))
    return home, path, folders


def _fid(text):
    return float(re.search(r"FID:\s*([-0-9.e+]+)", text).group(1))


def test_cli_fid_equals_pytorch_fid_command(planted):
    home, _, (a, b) = planted
    # the same number of threads on both sides: the same float32 sums in the same order, so the same FID
    env = {**os.environ, "TORCH_HOME": str(home), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    ref = subprocess.run([sys.executable, "-m", "pytorch_fid", a, b, "--device", "cpu", "--batch-size", "3",
                          "--dims", "64", "--num-workers", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(home)}):
        ours = CliRunner().invoke(main, ["fid", a, b, "--dims", "64", "--batch-size", "3"])
    assert ours.exit_code == 0, ours.output
    assert _fid(ours.output) == _fid(ref.stdout)


def test_cli_fid_with_weights_path_and_missing_weights(planted, tmp_path):
    home, weights, (a, b) = planted
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(tmp_path)}):  # an empty hub cache
        with_path = CliRunner().invoke(main, ["fid", a, b, "--dims", "64", "--batch-size", "3", "--weights",
                                              str(weights)])
        assert with_path.exit_code == 0, with_path.output
        with mock.patch("urllib.request.urlopen", side_effect=OSError("Network is unreachable")):
            missing = CliRunner().invoke(main, ["fid", a, b, "--dims", "64", "--batch-size", "3"])
    assert missing.exit_code == 1
    assert "--weights PATH" in missing.output and FID_WEIGHTS_FILE in missing.output


def test_fid_from_a_generator_checkpoint_and_a_dataset(planted, digits, tmp_path):
    import dcgan_lbt  # examples/, on the path through test_dcgan_example's import or below

    home, _, (a, _) = planted
    ckpt = dcgan_lbt.main(["--data-root", str(digits), "--out", str(tmp_path), "--image-size", "8", "--ngf", "4",
                           "--ndf", "4", "--nz", "8", "--batch-size", "16", "--steps", "1", "--lbt-weight", "0",
                           "--device", "cpu"])
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(home)}):
        loader = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "dcgan_lbt.py") + ":load_generator"
        result = CliRunner().invoke(main, ["fid", str(ckpt), "fashion-mnist", "--data-root", str(digits),
                                           "--num-samples", "6", "--dims", "64", "--batch-size", "3",
                                           "--generator", loader])
        assert result.exit_code == 0, result.output
        assert _fid(result.output) >= 0
        # the generator has no latent attribute: its first layer, ConvTranspose2d(8, ...), gives [8, 1, 1]
        args = ["fid", str(ckpt), "fashion-mnist", "--data-root", str(digits), "--num-samples", "6", "--dims", "64",
                "--batch-size", "3", "--generator", loader]
        given = CliRunner().invoke(main, args + ["--latent-shape", "8,1,1"])
        assert given.exit_code == 0 and _fid(given.output) == _fid(result.output), given.output
        wrong = CliRunner().invoke(main, args + ["--latent-shape", "9,1,1"])
        assert wrong.exit_code == 1 and "does not take z of shape (6, 9, 1, 1) (--latent-shape 9,1,1)" in wrong.output
        bad = CliRunner().invoke(main, ["fid", str(tmp_path / "nothing"), a, "--dims", "64"])
    assert bad.exit_code == 1 and "neither a folder" in bad.output


def test_fid_draws_from_any_generator_the_users_function_returns(planted, tmp_path):
    """The library knows no checkpoint format: the user's function reads its own; the latent shape comes from
    --latent-shape where the generator does not tell it."""
    home, _, (a, _) = planted
    (tmp_path / "my_gan.py").write_text(
        "import torch\n"
        "class G(torch.nn.Module):  # no latent attribute, no Linear / ConvTranspose first layer\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.scale = torch.nn.Parameter(torch.ones(1))\n"
        "    def forward(self, z):\n"
        "        x = torch.tanh(self.scale * z)\n"
        "        return x.view(-1, 3, 4, 4) if x.shape[1] == 48 else x\n"
        "def load(state):\n"
        "    g = G()\n"
        "    g.load_state_dict(state['g'])\n"
        "    return g\n"
        "def not_a_module(state):\n"
        "    return 'G'\n")
    torch.save({"g": {"scale": torch.full((1,), 2.0)}}, tmp_path / "g.pt")
    args = ["fid", str(tmp_path / "g.pt"), a, "--dims", "64", "--batch-size", "3", "--num-samples", "6"]
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(home)}):
        unknown = CliRunner().invoke(main, args + ["--generator", f"{tmp_path / 'my_gan.py'}:load"])
        assert unknown.exit_code == 1 and "cannot tell the latent shape of the G" in unknown.output
        assert "--latent-shape" in unknown.output
        ok = CliRunner().invoke(main, args + ["--generator", f"{tmp_path / 'my_gan.py'}:load", "--latent-shape", "48"])
        assert ok.exit_code == 0 and _fid(ok.output) >= 0, ok.output
        flat = CliRunner().invoke(main, args + ["--generator", f"{tmp_path / 'my_gan.py'}:load", "--latent-shape", "3"])
        assert flat.exit_code == 1 and "not images [6, 1 or 3, H, W]" in flat.output, flat.output
        text = CliRunner().invoke(main, args + ["--generator", f"{tmp_path / 'my_gan.py'}:not_a_module"])
        assert text.exit_code == 1 and "returned str; it must return the generator" in text.output
