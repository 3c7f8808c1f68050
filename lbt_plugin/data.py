"""Datasets of 28x28 grayscale idx files from disk, offline first: MNIST (digits) and Fashion-MNIST (clothing).

``load_idx_dataset`` looks in ``root`` (if given), else in Debian's paths
(``/usr/share/datasets/fashion-mnist`` from the package ``dataset-fashion-mnist``) and ``./data``.
When the files are nowhere, it downloads them once into ``./data`` (or ``root``): first from
torchvision's mirrors, then, for Fashion-MNIST, from the Debian archive, which serves the package
``dataset-fashion-mnist`` to any machine that reaches Debian's mirrors (its SHA256 is pinned here,
as in Debian's signed index, and checked before anything is extracted). Otherwise it raises an
error that names every remedy.

``stack_channels`` makes the stacked variant (the Stacked MNIST protocol): three random images as
the three channels of one, 1000 modes for ten classes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import struct
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["DATASETS", "read_idx", "load_idx_dataset", "stack_channels"]

#: The names :func:`load_idx_dataset` takes.
DATASETS = ("fashion-mnist", "mnist")

#: Where Debian's packages install each dataset's idx files.
_DEBIAN_ROOTS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
                 "mnist": Path("/usr/share/datasets/mnist")}

#: Debian bookworm's dataset-fashion-mnist (Filename and SHA256 of ``apt-cache show dataset-fashion-mnist``).
DEBIAN_PACKAGE = (
    "http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
    "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> Tensor:
    """An idx file of unsigned bytes (optionally gzipped), as MNIST ships, to a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (too short)")
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(torch.tensor(shape).prod()):
        raise ValueError(f"{path} is truncated: its header says {shape}, it holds {len(body)} bytes")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _from(root: Path, split: str) -> Optional[Tuple[Tensor, Tensor]]:
    images, labels = _find_idx(root, f"{split}-images-idx3-ubyte"), _find_idx(root, f"{split}-labels-idx1-ubyte")
    if images and labels:
        return read_idx(images), read_idx(labels)
    return None


def load_idx_dataset(name: str, root: Optional[Path] = None, train: bool = True) -> Tuple[Tensor, Tensor]:
    """Images ``[N, 28, 28]`` (uint8) and labels of a name in :data:`DATASETS`; see the module docstring."""
    if name not in DATASETS:
        raise ValueError(f"unknown idx dataset {name!r}; choose from {', '.join(DATASETS)}")
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"data root {root} does not exist")
    split = "train" if train else "t10k"
    roots = [Path(root)] if root else [_DEBIAN_ROOTS[name], Path("data")]
    for r in roots:
        found = _from(r, split) if r.exists() else None
        if found is not None:
            return found
    target = Path(root or "data")
    errors = []
    try:
        import torchvision.datasets as dsets

        cls = dsets.FashionMNIST if name == "fashion-mnist" else dsets.MNIST
        ds = cls(str(target), train=train, download=True)
        return ds.data, ds.targets
    except Exception as exc:  # offline, or the mirror is unreachable
        errors.append(f"torchvision's mirrors: {type(exc).__name__}")
    if name == "fashion-mnist":
        try:
            fetch_debian_fashion_mnist(target / "FashionMNIST" / "raw")
            found = _from(target, split)
            if found is not None:
                return found
        except Exception as exc:
            errors.append(f"the Debian archive: {type(exc).__name__}: {exc}")
    package = "dataset-fashion-mnist" if name == "fashion-mnist" else "a package with MNIST's idx files"
    raise FileNotFoundError(
        f"{name} was not found offline ({', '.join(str(r) for r in roots)}) and could not be downloaded "
        f"({'; '.join(errors)}). Install Debian's {package} (apt-get install {package}), or pass a data root "
        f"with the idx files, or run once with internet access."
    )


def stack_channels(images: Tensor, seed: int = 0) -> Tensor:
    """The stacked dataset of ``images [N, 1, H, W]``: ``[N, 3, H, W]``, each channel an image drawn at random.

    Image ``i`` of the result has channels ``images[idx[i, 0]]``, ``images[idx[i, 1]]``, ``images[idx[i, 2]]``, with
    ``idx = torch.randint(N, (N, 3))`` drawn from a generator seeded with ``seed``: the same stacked set for the same
    images and seed, on any machine.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        raise ValueError(f"stack_channels takes single-channel images [N >= 1, 1, H, W], got "
                         f"{tuple(getattr(images, 'shape', ()))}")
    idx = torch.randint(len(images), (len(images), 3), generator=torch.Generator().manual_seed(seed))
    return images[idx].squeeze(2)


def fetch_debian_fashion_mnist(folder: Path, package: Tuple[str, str] = DEBIAN_PACKAGE) -> Path:
    """Download Debian's ``dataset-fashion-mnist`` package, check its SHA256, extract the idx files to ``folder``.

    ``package`` is ``(url, sha256)``. A ``.deb`` is an ``ar`` archive whose ``data.tar.xz`` holds the files
    under ``usr/share/datasets/fashion-mnist/``; only those four ``.gz`` files are written, nothing is run.
    """
    url, sha256 = package
    print(f"downloading Fashion-MNIST (30 MB) from Debian's archive: {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as response:
        deb = response.read()
    digest = hashlib.sha256(deb).hexdigest()
    if digest != sha256:
        raise ValueError(f"the package's SHA256 is {digest}, not the expected {sha256}; nothing was extracted")
    members = _ar_members(deb)
    if "data.tar.xz" not in members:
        raise ValueError(f"the package holds {sorted(members)}, not data.tar.xz")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["data.tar.xz"]))) as tar:
        for stem in _STEMS:
            member = tar.getmember(f"./usr/share/datasets/fashion-mnist/{stem}.gz")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            tmp = folder / f".{stem}.gz.tmp"
            tmp.write_bytes(data)
            tmp.replace(folder / f"{stem}.gz")
    return folder


def _ar_members(archive: bytes) -> dict:
    """The members of a Unix ``ar`` archive (the container of a ``.deb``), by name."""
    if archive[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive (.deb)")
    members, i = {}, 8
    while i + 60 <= len(archive):
        header = archive[i: i + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        members[name] = archive[i + 60: i + 60 + size]
        i += 60 + size + size % 2
    return members
