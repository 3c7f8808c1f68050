"""Files are data: a crafted checkpoint or a pickle payload never runs code through any loader of the package."""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lbt_plugin.cli import main
from lbt_plugin.metrics import fid, load_channel_classifier, train_channel_classifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import dcgan_lbt  # noqa: E402
from example_run import TINY  # noqa: E402


class _Payload:
    """Unpickling this runs ``touch marker``: what a malicious pickle does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path):
    """A crafted checkpoint that names code to call, a pickle payload in .pt and .npz form, and two image folders."""
    marker = tmp_path / "payload_ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"generator_factory": "os:system", "generator_kwargs": {"command": f"touch {marker}"},
                "netG": {}, "step": 1, "netD": {}, "optG": {}, "optD": {}, "rng": torch.zeros(1), "args": {},
                "n_classes": 10, "accuracy": 0.9, "model": {}, "fixed_noise": torch.zeros(1, 1, 1, 1)}, crafted)
    pickled = tmp_path / "pickled.pt"
    torch.save({"netG": _Payload(marker)}, pickled)  # torch.save pickles the object
    npz = tmp_path / "pickled.npz"
    np.savez(npz, mu=np.array([_Payload(marker)], dtype=object), sigma=np.zeros((1, 1)))
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    folder = tmp_path / "images"
    folder.mkdir()
    from lbt_plugin.metrics import save_images

    save_images(torch.rand(3, 3, 8, 8) * 2 - 1, str(folder))
    return tmp_path, marker, crafted, pickled, npz, folder


def test_lbt_plugin_fid_refuses_crafted_and_pickled_files(evil):
    tmp, marker, crafted, pickled, npz, folder = evil
    for source in (crafted, pickled, tmp / "raw.pkl"):
        result = CliRunner().invoke(main, ["fid", str(source), str(folder), "--dims", "64"])
        assert result.exit_code == 1 and "name the function that rebuilds its generator" in result.output
        result = CliRunner().invoke(main, ["fid", str(source), str(folder), "--dims", "64", "--generator",
                                           f"{ROOT / 'examples' / 'dcgan_lbt.py'}:load_generator"])
        assert result.exit_code == 1, result.output
        assert "cannot read" in result.output or "generator_kwargs must hold exactly" in result.output
    result = CliRunner().invoke(main, ["fid", str(npz), str(npz)])
    assert result.exit_code == 1 and "cannot read" in result.output and "FID statistics" in result.output
    assert not marker.exists()


def test_fid_weights_are_read_as_data_from_the_flag_and_from_the_hub_cache(evil, monkeypatch):
    """pytorch-fid unpickles its Inception weights in full; ours are read as tensors only, at both places they
    come from: --weights PATH and $TORCH_HOME/hub/checkpoints/."""
    from lbt_plugin.metrics import FID_WEIGHTS_FILE

    tmp, marker, _, pickled, _, folder = evil
    home = tmp / "torch_home"
    cached = home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickled.read_bytes())  # the payload, under the reference name, in the cache
    monkeypatch.setenv("TORCH_HOME", str(home))
    for extra in (["--weights", str(pickled)], []):
        result = CliRunner().invoke(main, ["fid", str(folder), str(folder), "--dims", "64", *extra])
        assert result.exit_code == 1, result.output
        assert "cannot be read as tensors only" in result.output and "nothing in it was run" in result.output
    assert not marker.exists()
    # a state dict of tensors that does not fit the network is refused by name, and so is an oversized file
    torch.save({"conv.weight": torch.zeros(2)}, cached)
    result = CliRunner().invoke(main, ["fid", str(folder), str(folder), "--dims", "64"])
    assert result.exit_code == 1 and "does not fit the FID Inception network" in result.output, result.output


def test_resume_and_the_generator_loader_refuse_them(evil, digits):
    tmp, marker, crafted, pickled, _, _ = evil
    for source in (crafted, pickled, tmp / "raw.pkl"):
        with pytest.raises(ValueError, match="cannot read checkpoint|generator_kwargs must hold exactly"):
            dcgan_lbt.main(["--data-root", str(digits), "--out", str(tmp / "out"), *TINY, "--steps", "2",
                            "--resume", str(source)])
    with pytest.raises(ValueError, match="generator_kwargs must hold exactly"):
        dcgan_lbt.load_generator(torch.load(crafted, weights_only=True))
    assert not marker.exists()


def test_the_classifier_cache_refuses_them(evil):
    tmp, marker, crafted, pickled, _, _ = evil
    images, labels = torch.zeros(30, 28, 28, dtype=torch.uint8), torch.zeros(30, dtype=torch.long)
    with pytest.raises(ValueError, match="cannot read the classifier cache"):
        train_channel_classifier(images, labels, cache=str(pickled))
    with pytest.raises(ValueError, match="does not fit ChannelClassifier"):
        load_channel_classifier(str(crafted))
    torch.save({"model": {}, "n_classes": "10; rm -rf /", "accuracy": 0.9}, tmp / "bad.pt")
    with pytest.raises(ValueError, match=r"n_classes in \[2, 1000\]"):
        load_channel_classifier(str(tmp / "bad.pt"))
    assert not marker.exists()


def test_a_checkpoint_holds_no_code_and_no_path_and_loads_anywhere(digits, tmp_path):
    ckpt = dcgan_lbt.main(["--data-root", str(digits), "--out", str(tmp_path / "a"), *TINY, "--steps", "2"])
    state = torch.load(ckpt, weights_only=True)
    assert "generator_factory" not in state

    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for k, v in x.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from strings(v)

    assert not [s for s in strings({k: v for k, v in state.items() if k != "args"}) if "/" in s]
    moved = tmp_path / "elsewhere" / "copy.pt"  # another folder, as on another machine or checkout
    moved.parent.mkdir()
    moved.write_bytes(ckpt.read_bytes())
    G = dcgan_lbt.load_generator(torch.load(moved, weights_only=True))
    assert G(torch.randn(2, 8, 1, 1)).shape == (2, 1, 8, 8)  # TINY: --nz 8, --image-size 8
    dcgan_lbt.main(["--data-root", str(digits), "--out", str(tmp_path / "a"), *TINY, "--steps", "3",
                    "--resume", str(moved)])


def test_fid_between_two_npz_needs_no_weights_and_checks_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no Inception weights anywhere
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 1
    np.savez(tmp_path / "a.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    np.savez(tmp_path / "b.npz", mu=b.mean(0), sigma=np.cov(b, rowvar=False))
    from pytorch_fid.fid_score import calculate_frechet_distance

    expected = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid(str(tmp_path / "a.npz"), str(tmp_path / "b.npz")) == pytest.approx(expected)
    np.savez(tmp_path / "no_mu.npz", sigma=np.eye(4))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(tmp_path / "wide.npz", mu=np.zeros(3), sigma=np.eye(3))
    for name, message in [("no_mu.npz", r"lacks \['mu'\]"), ("corrupt.npz", "cannot read"),
                          ("wide.npz", "different dimensions")]:
        with pytest.raises(ValueError, match=message):
            fid(str(tmp_path / "a.npz"), str(tmp_path / name))


def test_fid_on_too_few_images_says_so(tmp_path):
    from lbt_plugin.metrics import save_images

    (tmp_path / "empty").mkdir()
    save_images(torch.rand(1, 3, 8, 8), str(tmp_path / "one"))
    save_images(torch.rand(3, 3, 8, 8), str(tmp_path / "three"))
    for folder, n in (("empty", 0), ("one", 1)):
        result = CliRunner().invoke(main, ["fid", str(tmp_path / folder), str(tmp_path / "three"), "--dims", "64"])
        assert result.exit_code == 1 and f"holds {n} image(s); FID needs at least 2" in result.output


def test_hostile_numbers_in_a_checkpoint_allocate_nothing(digits, tmp_path):
    """Sizes in range but huge (a 17 TB generator) are checked against the checkpoint's own tensors first."""
    ckpt = dcgan_lbt.main(["--data-root", str(digits), "--out", str(tmp_path), *TINY, "--steps", "1"])
    state = torch.load(ckpt, weights_only=True)
    state["generator_kwargs"] = {"nz": 4096, "ngf": 4096, "nc": 3, "image_size": 1024}
    with pytest.raises(ValueError, match="does not fit its generator_kwargs"):
        dcgan_lbt.load_generator(state)
    del state["fixed_noise"]
    torch.save(state, tmp_path / "no_noise.pt")
    with pytest.raises(ValueError, match=r"lacks \['fixed_noise'\]"):
        dcgan_lbt.load_checkpoint(tmp_path / "no_noise.pt")


def test_fid_cli_checks_dims_and_the_generator_function(tmp_path):
    np.savez(tmp_path / "a.npz", mu=np.zeros(4), sigma=np.eye(4))
    from lbt_plugin.metrics import save_images

    save_images(torch.rand(3, 3, 8, 8), str(tmp_path / "imgs"))
    result = CliRunner().invoke(main, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "imgs"), "--dims", "64"])
    assert result.exit_code == 1 and "holds statistics of 4 features; pass --dims 4" in result.output
    result = CliRunner().invoke(main, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "imgs"), "--generator",
                                       f"{ROOT / 'examples' / 'dcgan_lbt.py'}:ARCHITECTURE"])
    assert result.exit_code == 2 and "not a function" in result.output
