"""Files are data: checkpoints written atomically, and read back as tensors and plain containers only; every file
read is a regular file of bounded size, checked before it is read.

    save_atomic(state, "run/checkpoint.pt")               # a crash while saving keeps the previous file
    state = load_tensors("run/checkpoint.pt", "checkpoint")  # nothing in the file is imported or called
    with open_regular("stats.npz", "FID statistics", 2**30) as f:  # a FIFO, a folder, a device or a huge file
        ...                                                          # is refused before anything is read
"""
from __future__ import annotations

import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Union

import torch

__all__ = ["save_atomic", "load_tensors", "open_regular", "check_regular", "MAX_CHECKPOINT_BYTES"]

PathLike = Union[str, "os.PathLike[str]"]

#: The default bound of :func:`load_tensors`, on the file and on the uncompressed sum of its zip members: 4 GiB,
#: far above this package's checkpoints (a DCGAN with its estimator and optimizers holds a few tens of MB).
MAX_CHECKPOINT_BYTES = 4 * 2**30


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_stat(st: os.stat_result, path: Path, what: str, max_bytes: int) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file: it is not read (reading it "
                         "could block or never end); pass the path of a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{what} {path} has {st.st_size} bytes, above the bound of {max_bytes} bytes for a {what}: "
                         "it is not read; pass the right file (or a larger bound if this one is genuine)")
    return st.st_size


def check_regular(path: PathLike, what: str, max_bytes: int) -> int:
    """The size of ``path`` after ``os.stat`` (which never blocks) shows a regular file of at most ``max_bytes``.

    Raises ``FileNotFoundError("no {what} at {path}")`` when it is missing, and ``ValueError`` naming the file, the
    cause and the fix when it is a directory, a FIFO, a device or a socket, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"no {what} at {path}") from None
    return _check_stat(st, path, what, max_bytes)


def open_regular(path: PathLike, what: str, max_bytes: int) -> IO[bytes]:
    """``open(path, "rb")`` for a regular file of at most ``max_bytes``, refusing anything else without blocking.

    ``os.stat`` first (:func:`check_regular`), then ``os.open`` with ``O_NONBLOCK`` (a FIFO swapped in meanwhile
    opens at once instead of waiting for a writer) and ``os.fstat`` of what was opened, checked again: the file
    read is the file checked. Errors as :func:`check_regular`'s.
    """
    path = Path(path)
    check_regular(path, what, max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        _check_stat(os.fstat(fd), path, what, max_bytes)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def save_atomic(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder, flushed to disk and renamed
    over ``path``: a crash while saving leaves the previous file intact, and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: PathLike, what: str = "checkpoint", hint: str = "",
                 max_bytes: int = MAX_CHECKPOINT_BYTES) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors (on the CPU, whatever device wrote
    them), numbers, strings and containers of them; a file that holds anything else is refused unread.

    The file must be a regular file (:func:`open_regular`) of at most ``max_bytes``, and a zip archive as
    ``torch.save`` writes it whose members add up to at most ``max_bytes`` uncompressed (read from the archive's
    directory before anything is loaded): the memory a load takes is bounded by ``max_bytes``.

    A file that cannot be read so raises ``ValueError("cannot read {what} {path} (why)")``, followed by ``hint``
    (what to do about it). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    with open_regular(path, what, max_bytes) as f:
        try:
            return _read_tensors(f, max_bytes)
        except ValueError as exc:
            why = str(exc)
    raise ValueError(f"cannot read {what} {path} ({why})" + (f"; {hint}" if hint else ""))


def _read_tensors(f: IO[bytes], max_bytes: int) -> Any:
    """The bounded, tensors-only ``torch.load`` of :func:`load_tensors` from an open binary file (a file on disk,
    or bytes already read and hashed, as the FID weights are); ``ValueError(why)`` where it cannot."""
    try:
        with zipfile.ZipFile(f) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a zip archive as torch.save writes: truncated, or another format ({exc}); nothing in "
                         "it was run") from None
    if total > max_bytes:
        raise ValueError(f"its members hold {total} bytes uncompressed, above the bound of {max_bytes} bytes; "
                         "nothing in it was loaded")
    f.seek(0)
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message would suggest weights_only=False: not to do
        found = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        raise ValueError("it holds objects other than tensors and plain containers"
                         + (f": {found[0]}" if found else "") + "; nothing in it was run") from None
    except Exception as exc:  # truncated, not a torch file, ...
        raise ValueError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; nothing in it "
                         "was run") from None
