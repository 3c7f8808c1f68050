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
        bad = CliRunner().invoke(main, ["fid", str(tmp_path / "nothing"), a, "--dims", "64"])
    assert bad.exit_code == 1 and "neither a folder" in bad.output
