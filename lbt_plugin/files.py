"""Files are data: checkpoints written atomically, and read back as tensors and plain containers only.

    save_atomic(state, "run/checkpoint.pt")               # a crash while saving keeps the previous file
    state = load_tensors("run/checkpoint.pt", "checkpoint")  # nothing in the file is imported or called
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["save_atomic", "load_tensors"]

PathLike = Union[str, "os.PathLike[str]"]


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


def load_tensors(path: PathLike, what: str = "checkpoint", hint: str = "") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors (on the CPU, whatever device wrote
    them), numbers, strings and containers of them; a file that holds anything else is refused unread.

    A file that cannot be read so raises ``ValueError("cannot read {what} {path} (why)")``, followed by ``hint``
    (what to do about it). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message would suggest weights_only=False: the one thing not to do
        found = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        why = ("it holds objects other than tensors and plain containers" + (f": {found[0]}" if found else "")
               + "; nothing in it was run")
    except Exception as exc:  # truncated, not a torch file, ...
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise ValueError(f"cannot read {what} {path} ({why})" + (f"; {hint}" if hint else ""))
