"""Resolve ``"pkg.module:name"`` or ``"path/to/file.py:name"`` to an object."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_object(spec: str) -> Any:
    """The object named by ``spec``; ``ValueError`` with the reason when it cannot be found.

    A ``FILE.py`` is imported under a private module name, with its folder first on ``sys.path`` while it is
    imported (as when it is run as a script), so that it can import the modules beside it.
    """
    if ":" not in spec:
        raise ValueError(f"expected MODULE:NAME or FILE.py:NAME, got {spec!r}")
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ValueError(f"no such file: {target}")
            name_in_process = f"_lbt_plugin_user_{path.stem}"  # never shadows a real module (json.py, ...)
            module_spec = importlib.util.spec_from_file_location(name_in_process, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name_in_process] = module
            folder = str(path.resolve().parent)
            sys.path.insert(0, folder)
            try:
                module_spec.loader.exec_module(module)
            finally:
                sys.path.remove(folder)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except ValueError:
        raise
    except Exception as exc:  # ImportError, SyntaxError, or anything the module raises while it is imported
        raise ValueError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{target!r} has no attribute {name!r}") from None
