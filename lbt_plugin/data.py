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
import math
import struct
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["DATASETS", "MAX_IDX_BYTES", "read_idx", "load_idx_dataset", "stack_channels"]

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
#: The bound on the download of the package (30 MB).
_DEB_MAX_BYTES = 64 * 2**20
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


#: The bound of :func:`read_idx` on an idx file's elements (bytes) by default: 1 GiB, 20 times MNIST's training
#: images (60000 x 28 x 28 = 47 MB); a header that claims more is refused before anything is allocated.
MAX_IDX_BYTES = 2**30

#: idx type codes (the third byte of the magic number), to name what a file holds when it is not unsigned bytes.
_IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}


def read_idx(path: Path, max_bytes: int = MAX_IDX_BYTES) -> Tensor:
    """An idx file of unsigned bytes (optionally gzipped, ``.gz``), as MNIST ships, to a uint8 tensor.

    The file must be a regular file (:func:`lbt_plugin.files.open_regular`). Its header is read first; the element
    count it declares must be at most ``max_bytes``, and exactly that many bytes are read (decompressed) after it:
    memory is bounded by what the header declares, checked before allocation, and a file that holds more or
    fewer bytes than its header says is refused (a gzip bomb behind a small header decompresses no further than
    one byte past the declared size). Every error names the file, the cause and the fix.
    """
    import zlib

    from .files import open_regular

    path = Path(path)
    fix = "download it again (or delete it so that it is downloaded again)"
    # a gzip of n bytes of data is at most about n + n / 1000 + a header: the compressed file is bounded too
    with open_regular(path, "idx file", max_bytes + max_bytes // 100 + 2**16) as raw:
        f = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
        try:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"idx file {path} is not an idx file of unsigned bytes (too short); {fix}")
            magic, = struct.unpack(">I", head)
            code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
            if magic >> 16 != 0 or code not in _IDX_TYPES or not 1 <= ndim <= 4:
                raise ValueError(f"idx file {path} is not an idx file (magic number {magic:#010x}); {fix}")
            if code != 0x08:
                raise ValueError(f"idx file {path} holds {_IDX_TYPES[code]} (idx type {code:#04x}), not unsigned "
                                 "bytes as MNIST's images and labels; pass MNIST-format idx files")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"idx file {path} is truncated in its header; {fix}")
            shape = struct.unpack(">" + "I" * ndim, dims)
            n = math.prod(shape)
            if n > max_bytes:
                raise ValueError(f"idx file {path} declares a shape {shape} of {n} bytes, above the bound of "
                                 f"{max_bytes} bytes (read_idx's max_bytes): not read; pass a genuine idx file "
                                 "(or a larger max_bytes)")
            body = bytearray(n)
            view, got = memoryview(body), 0
            while got < n:
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
            extra = f.read(1) if got == n else b""
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"idx file {path} is not a complete gzip file ({type(exc).__name__}: {exc}); "
                             f"{fix}") from None
    if got < n:
        raise ValueError(f"idx file {path} is truncated: its header says {shape} ({n} bytes), it holds {got}; {fix}")
    if extra:
        raise ValueError(f"idx file {path} holds more bytes than its header says ({shape}, {n} bytes): not an idx "
                         f"file as MNIST ships; {fix}")
    return torch.frombuffer(body, dtype=torch.uint8).reshape(shape) if n else torch.zeros(shape, dtype=torch.uint8)


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    """The idx file ``stem`` (or ``stem.gz``) under ``root`` or its usual subfolders; something else at one of those
    paths (a folder, a FIFO) is an error, not a missing file."""
    import os
    import stat

    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            try:
                mode = os.stat(p).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISREG(mode):
                from .files import check_regular

                check_regular(p, "idx file", MAX_IDX_BYTES)  # raises, naming what it is
            return p
    return None


def _pair(images: Tensor, labels: Tensor, image_path: Path, label_path: Path) -> Tuple[Tensor, Tensor]:
    """The images and labels, checked to belong together: ``[N, H, W]`` and ``[N]``, the same N >= 1."""
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"the idx files {image_path} ({tuple(images.shape)}) and {label_path} "
                         f"({tuple(labels.shape)}) are not a dataset: images must be [N, H, W] and labels [N], the "
                         "same N >= 1; pass the images and labels of one split of one dataset")
    return images, labels


def _from(root: Path, split: str, strict: bool = False) -> Optional[Tuple[Tensor, Tensor]]:
    """Images and labels of ``split`` in ``root``, or None when neither is there; with ``strict``, one without the
    other is an error that names the missing file (else None: the caller looks elsewhere or downloads)."""
    stems = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    images, labels = _find_idx(root, stems[0]), _find_idx(root, stems[1])
    if images and labels:
        return _pair(read_idx(images), read_idx(labels), images, labels)
    if strict and (images or labels):
        present, missing = (images, stems[1]) if images else (labels, stems[0])
        raise FileNotFoundError(f"the data root {root} holds {present} but not {missing} (or {missing}.gz) beside "
                                f"it: add the missing file, or pass a root that holds both")
    return None


def load_idx_dataset(name: str, root: Optional[Path] = None, train: bool = True) -> Tuple[Tensor, Tensor]:
    """Images ``[N, 28, 28]`` (uint8) and labels ``[N]`` of a name in :data:`DATASETS`; see the module docstring.

    The idx files are read by :func:`read_idx` (bounded, checked) and must belong together (the same N). A
    ``root`` given that holds the images but not the labels (or the reverse) is an error naming the missing file,
    and so is a folder or a FIFO where a file is expected: nothing is downloaded over them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown idx dataset {name!r}; choose from {', '.join(DATASETS)}")
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"data root {root} does not exist")
    split = "train" if train else "t10k"
    roots = [Path(root)] if root else [_DEBIAN_ROOTS[name], Path("data")]
    if root is not None and not Path(root).is_dir():
        raise NotADirectoryError(f"data root {root} is not a folder: pass the folder that holds the idx files")
    for r in roots:
        found = _from(r, split, strict=root is not None) if r.exists() else None
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
        deb = response.read(_DEB_MAX_BYTES + 1)
    if len(deb) > _DEB_MAX_BYTES:
        raise ValueError(f"{url} serves more than {_DEB_MAX_BYTES} bytes; the package has 30 MB: not read")
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
