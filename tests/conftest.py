import gzip
import struct
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _write_idx(path, tensor):
    header = struct.pack(">I", 0x0800 | tensor.dim()) + struct.pack(">" + "I" * tensor.dim(), *tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + tensor.numpy().tobytes())


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A tiny synthetic digit set (64 random 28x28 images, 10 labels) as gzipped idx files."""
    root = tmp_path_factory.mktemp("digits")
    g = torch.Generator().manual_seed(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g))
    _write_idx(root / "train-labels-idx1-ubyte.gz", torch.randint(0, 10, (64,), dtype=torch.uint8, generator=g))
    return root


@pytest.fixture
def interrupt_step(monkeypatch):
    """``restore = interrupt_step(Run, n)``: ``Run.step`` raises ``KeyboardInterrupt`` at its n-th call, as a run
    killed mid-way; ``restore()`` puts the real step back."""
    def interrupt(cls, n):
        step, calls = cls.step, {"n": 0}

        def dies_at_call_n(self, *args):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            step(self, *args)

        monkeypatch.setattr(cls, "step", dies_at_call_n)
        return lambda: monkeypatch.setattr(cls, "step", step)

    return interrupt
