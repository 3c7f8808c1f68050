"""Digit datasets from disk, offline first: MNIST and Fashion-MNIST idx files.

Looks in ``root`` (if given), then Debian's paths (``/usr/share/datasets/fashion-mnist`` from the
package ``dataset-fashion-mnist``, ``/usr/share/datasets/mnist``) and ``./data``; then tries
torchvision's download; otherwise raises an error that names both remedies.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["read_idx", "load_digits", "DEBIAN_ROOTS"]

DEBIAN_ROOTS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist"), "mnist": Path("/usr/share/datasets/mnist")}


def read_idx(path: Path) -> Tensor:
    """An idx file of unsigned bytes (optionally gzipped), as MNIST ships, to a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or not 1 <= ndim <= 4:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def load_digits(name: str, root: Optional[Path] = None, train: bool = True) -> Tuple[Tensor, Tensor]:
    """Images ``[N, 28, 28]`` (uint8) and labels of ``"mnist"`` or ``"fashion-mnist"``."""
    if name not in DEBIAN_ROOTS:
        raise ValueError(f"unknown digit dataset {name!r}; choose from {sorted(DEBIAN_ROOTS)}")
    split = "train" if train else "t10k"
    roots = [Path(root)] if root else [DEBIAN_ROOTS[name], Path("data")]
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"data root {root} does not exist")
    for r in roots:
        if r.exists():
            images, labels = _find_idx(r, f"{split}-images-idx3-ubyte"), _find_idx(r, f"{split}-labels-idx1-ubyte")
            if images and labels:
                return read_idx(images), read_idx(labels)
    try:
        import torchvision.datasets as dsets

        cls = dsets.FashionMNIST if name == "fashion-mnist" else dsets.MNIST
        ds = cls(str(root or "data"), train=train, download=True)
        return ds.data, ds.targets
    except Exception as exc:  # offline, or the mirror is unreachable
        package = "dataset-fashion-mnist" if name == "fashion-mnist" else "a package with MNIST's idx files"
        raise FileNotFoundError(
            f"{name} was not found offline ({', '.join(str(r) for r in roots)}) and could not be downloaded "
            f"({type(exc).__name__}). Install Debian's {package} (apt-get install {package}), or pass a data root "
            f"with the idx files, or run once with internet access."
        ) from None
