"""Files are data, nothing is lost, bad input meets a clear error: every file the package reads is a regular file
of bounded size, checked before it is read, and its contents are checked before memory is allocated for them."""
import os
import re
import signal
import zipfile
from contextlib import contextmanager

import pytest
import torch

from lbt_plugin.files import check_regular, load_tensors, open_regular, save_atomic


@contextmanager
def _within(seconds):
    """Fail (instead of hanging the suite) when the body blocks longer than ``seconds``."""
    def timeout(*_):
        raise AssertionError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_only_regular_files_of_bounded_size_are_opened(tmp_path):
    """A FIFO (which blocks forever when opened for reading with no writer), a folder and a device are refused by
    name without blocking; so is a file above the bound, before a byte of it is read."""
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    with _within(5):
        for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"), ("/dev/zero", "a character device")):
            with pytest.raises(ValueError, match=rf"FID statistics {re.escape(str(path))} is {kind}.*, not a regular "
                                                 "file: it is not read .*pass the path of a regular file"):
                open_regular(path, "FID statistics", 2**20)
            with pytest.raises(ValueError, match=f"checkpoint {path} is {kind}"):
                load_tensors(path)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 1001)
    with pytest.raises(ValueError, match=r"big\.bin has 1001 bytes, above the bound of 1000 bytes"):
        open_regular(big, "data file", 1000)
    assert check_regular(big, "data file", 1001) == 1001
    with open_regular(big, "data file", 1001) as f:
        assert len(f.read()) == 1001
    with pytest.raises(FileNotFoundError, match="no data file at"):
        check_regular(tmp_path / "missing", "data file", 10)


def test_load_tensors_bounds_the_uncompressed_size_of_the_archive(tmp_path):
    """A 10 MB member deflated to a few KB (a zip bomb) is refused from the archive's directory, unread."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", b"\0" * 10_000_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*bomb\.pt \(its members hold 10000\d+ bytes "
                                         r"uncompressed, above the bound of 1000000 bytes"):
        load_tensors(bomb, max_bytes=1_000_000)
    save_atomic({"x": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt", max_bytes=100_000)["x"], torch.arange(3))
    with pytest.raises(ValueError, match=r"ok\.pt has \d+ bytes, above the bound of 100 bytes"):
        load_tensors(tmp_path / "ok.pt", max_bytes=100)
