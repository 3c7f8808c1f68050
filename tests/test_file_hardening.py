"""Files are data, nothing is lost, bad input meets a clear error: every file the package reads is a regular file
of bounded size, checked before it is read, and its contents are checked before memory is allocated for them."""
import gzip
import io
import math
import os
import re
import signal
import struct
import tracemalloc
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from lbt_plugin.data import load_idx_dataset, read_idx
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


# ----------------------------------------------------------------------------- idx files (lbt_plugin.data)
def _idx(shape, body=None, code=0x08):
    header = struct.pack(">I", (code << 8) | len(shape)) + struct.pack(">" + "I" * len(shape), *shape)
    return header + (bytes(math.prod(shape)) if body is None else body)


def _peak(fn):
    """The peak of Python allocations (bytes) while ``fn`` runs, and the exception it raised."""
    tracemalloc.start()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        raised = exc
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


def test_an_idx_file_is_read_no_further_than_its_header_allows(tmp_path):
    """A gzip bomb behind a small header, an absurd header, bytes missing or extra, a truncated or non-gzip .gz
    and a non-byte type: each is refused naming the file, without allocating more than the header declares."""
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(_idx((64, 28, 28)))
        for _ in range(50):
            f.write(bytes(2**20))  # 50 MB of zeros past the declared 50 KB, about 200 KB compressed
    peak, exc = _peak(lambda: read_idx(bomb))
    assert isinstance(exc, ValueError) and re.search(r"bomb-idx3-ubyte\.gz holds more bytes than its header says "
                                                     r"\(\(64, 28, 28\), 50176 bytes\)", str(exc)), exc
    assert peak < 5 * 2**20, peak  # the whole stream read at once is 50 MB
    absurd = tmp_path / "absurd.gz"
    with gzip.open(absurd, "wb") as f:
        f.write(_idx((100000, 100000, 1000), body=b""))
    peak, exc = _peak(lambda: read_idx(absurd))
    assert isinstance(exc, ValueError) and "declares a shape (100000, 100000, 1000) of 10000000000000 bytes, above " \
        "the bound of 1073741824 bytes" in str(exc), exc
    assert peak < 2**20
    cases = {
        "short": (_idx((10, 28, 28))[:-5], r"short is truncated: its header says \(10, 28, 28\) \(7840 bytes\), "
                                           r"it holds 7835; download it again"),
        "float": (_idx((3,), bytes(12), code=0x0D), r"float holds float32 \(idx type 0x0d\), not unsigned bytes"),
        "magic": (b"PK\x03\x04" + bytes(100), r"magic is not an idx file \(magic number 0x504b0304\)"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_idx(tmp_path / name)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(_idx((10, 28, 28)))[:-12])
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(_idx((10, 28, 28)))
    for path in (truncated, not_gzip):
        with pytest.raises(ValueError, match=rf"idx file {re.escape(str(path))} is not a complete gzip file "
                                             r"\((EOFError|BadGzipFile): .*\); download it again"):
            read_idx(path)
    with pytest.raises(ValueError, match=r"above the bound of 7839 bytes \(read_idx's max_bytes\)"):
        read_idx(tmp_path / "short", max_bytes=7839)
    assert read_idx(_write(tmp_path / "ok.gz", _idx((2, 3), bytes(range(6))))).tolist() == \
        [[0, 1, 2], [3, 4, 5]]


def _write(path, data):
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt is recorded (and fails), so that a test can assert none was made."""
    import torchvision.datasets as dsets

    from lbt_plugin import data

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in tests")

    for name in ("FashionMNIST", "MNIST"):
        monkeypatch.setattr(dsets, name, refuse)
    monkeypatch.setattr(data, "fetch_debian_fashion_mnist", refuse)
    return attempts


def test_a_data_root_must_hold_images_and_labels_that_belong_together(tmp_path, no_download):
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "train-images-idx3-ubyte.gz", _idx((4, 28, 28)))
    with pytest.raises(FileNotFoundError, match=r"holds .*train-images-idx3-ubyte\.gz but not "
                                                r"train-labels-idx1-ubyte \(or train-labels-idx1-ubyte\.gz\)"):
        load_idx_dataset("fashion-mnist", root)
    (root / "train-labels-idx1-ubyte.gz").mkdir()  # a folder where the labels file is expected
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz is a directory, not a regular file"):
        load_idx_dataset("fashion-mnist", root)
    (root / "train-labels-idx1-ubyte.gz").rmdir()
    for labels, why in ((_idx((5,)), "N"), (_idx((4, 1)), "1-D")):
        _write(root / "train-labels-idx1-ubyte.gz", labels)
        with pytest.raises(ValueError, match=r"\(\(4, 28, 28\)\) and .*train-labels-idx1-ubyte\.gz \(\((5|4, 1),?\)\)"
                                             r" are not a dataset: images must be \[N, H, W\] and labels \[N\]"):
            load_idx_dataset("fashion-mnist", root)
    _write(root / "train-labels-idx1-ubyte.gz", _idx((4,)))
    images, labels = load_idx_dataset("fashion-mnist", root)
    assert images.shape == (4, 28, 28) and labels.shape == (4,)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        load_idx_dataset("fashion-mnist", root / "train-labels-idx1-ubyte.gz")
    assert no_download == []


# ----------------------------------------------------------------------------- FID statistics (lbt_plugin.metrics.fid)
def _npz(path, **arrays):
    """An .npz whose members are ``name: array`` or ``name: (shape, dtype)`` (a header only, no data: what a
    crafted file declares)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, value in arrays.items():
            buf = io.BytesIO()
            if isinstance(value, tuple):
                np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(value[1]).str, "fortran_order": False,
                                                           "shape": value[0]})
            else:
                np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            z.writestr(f"{name}.npy", buf.getvalue())
    return str(path)


def test_fid_statistics_are_checked_from_their_headers_then_as_a_covariance(tmp_path):
    """Huge shapes are refused from the .npy headers (nothing allocated); a wrong dtype is named as a dtype error,
    a 0-d mu as not a vector; a sigma that is not finite, not symmetric or not positive semi-definite is refused
    naming the file; statistics that pass give pytorch-fid's own value."""
    from lbt_plugin.metrics.fid import _npz_stats, fid

    huge = _npz(tmp_path / "huge.npz", mu=((6000,), "<f8"), sigma=((6000, 6000), "<f8"))
    peak, exc = _peak(lambda: _npz_stats(huge))
    assert isinstance(exc, ValueError) and "huge.npz as FID statistics" in str(exc) \
        and "mu has 6000 features, outside [1, 4096] (FID_MAX_DIMS); not read" in str(exc), exc
    assert peak < 2**20, peak  # a 6000 x 6000 float64 sigma is 288 MB
    eye = np.eye(3)
    cases = {
        "sigma_shape": (dict(mu=np.zeros(3), sigma=((5000, 5000), "<f8")), r"sigma has shape \(5000, 5000\), not "
                                                                          r"\[3, 3\] to match mu \[3\]"),
        "dtype": (dict(mu=np.zeros(3, dtype=np.int64), sigma=eye), r"mu has dtype int64, not a float dtype \(a "
                                                                   r"dtype error\)"),
        "scalar": (dict(mu=np.float64(1.0), sigma=eye), r"mu has shape \(\), not a vector \[d\]"),
        "missing": (dict(mu=np.zeros(3)), r"it lacks \['sigma'\]"),
        "nan": (dict(mu=np.zeros(3), sigma=np.diag([1.0, np.nan, 1.0])), "the statistics contain NaN or inf"),
        "asymmetric": (dict(mu=np.zeros(3), sigma=eye + np.triu(np.ones((3, 3)), 1)),
                       r"sigma is not symmetric \(max \|sigma - sigma.T\| = 1, 1 of its largest entry"),
        "not_psd": (dict(mu=np.zeros(3), sigma=np.diag([1.0, -1.0, 1.0])),
                    r"sigma is not a covariance matrix: its smallest eigenvalue is -1 .*not positive semi-definite"),
    }
    for name, (arrays, message) in cases.items():
        path = _npz(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=rf"{re.escape(path)}.*{message}"):
            fid(path, path)
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(5, 8)), rng.normal(size=(50, 8)) + 0.5]  # 5 samples of 8 features: a singular sigma
    a, b = (_npz(tmp_path / f"ok{i}.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False)) for i, f in enumerate(feats))
    from pytorch_fid.fid_score import calculate_frechet_distance

    with np.load(a) as fa, np.load(b) as fb:
        assert fid(a, b) == float(calculate_frechet_distance(fa["mu"], fa["sigma"], fb["mu"], fb["sigma"]))
    assert fid(a, a) >= 0.0 and fid(a, a) < 1e-6


def test_fid_is_never_negative_nor_computed_from_non_finite_images(monkeypatch):
    """Rounding below zero within the stated tolerance reads 0; beyond it, and pytorch-fid's bare "Imaginary
    component" error, are errors naming both sources; a generator that draws NaN is refused by name."""
    import pytorch_fid.fid_score as fid_score

    from lbt_plugin.metrics.fid import _draw_images, frechet_distance

    mu, sigma = np.zeros(4), np.eye(4)
    for value, expected in ((-1e-12, 0.0), (2.5, 2.5)):
        monkeypatch.setattr(fid_score, "calculate_frechet_distance", lambda *a, v=value: v)
        assert frechet_distance(mu, sigma, mu, sigma) == expected
    monkeypatch.setattr(fid_score, "calculate_frechet_distance", lambda *a: -0.5)
    with pytest.raises(ValueError, match=r"the FID of x.npz and y.npz came out as -0.5 \(its terms are of size 8; "
                                         r"rounding explains at most -[0-9.e-]+\)"):
        frechet_distance(mu, sigma, mu, sigma, ("x.npz", "y.npz"))

    def imaginary(*a):
        raise ValueError("Imaginary component 1.0")

    monkeypatch.setattr(fid_score, "calculate_frechet_distance", imaginary)
    with pytest.raises(ValueError, match=r"the FID of a and b cannot be computed: sqrtm\(sigma1 sigma2\) is not "
                                         r"real \(Imaginary component 1.0\)"):
        frechet_distance(mu, sigma, mu, sigma)

    class NaNGenerator(torch.nn.Module):
        def forward(self, z):
            return torch.full((len(z), 3, 4, 4), float("nan"))

    with pytest.raises(ValueError, match=r"the generator drew NaN or inf in its images \(samples 0 to 5\)"):
        _draw_images(NaNGenerator(), 6, "cpu", (4,))


def test_fid_weights_that_are_a_fifo_or_a_folder_are_named_as_such_unread(tmp_path, monkeypatch):
    """Case "--weights FIFO / hub cache entry a FIFO": the error said "no FID Inception weights at" a path that
    exists; it now says what the path is, without opening it (a FIFO would block)."""
    from lbt_plugin.metrics import fid

    images = tmp_path / "imgs"
    images.mkdir()
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"weights\.pth is a FIFO \(named pipe\), not a regular file"):
        fid(str(images), str(images), weights=str(fifo), dims=64)
    with pytest.raises(ValueError, match=r"imgs is a directory, not a regular file"):
        fid(str(tmp_path), str(tmp_path), weights=str(images), dims=64)
    with pytest.raises(FileNotFoundError, match=r"no FID Inception weights file at .*missing\.pth"):
        fid(str(images), str(images), weights=str(tmp_path / "missing.pth"), dims=64)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    os.mkfifo(hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    for i in range(2):
        from PIL import Image
        Image.new("RGB", (8, 8)).save(images / f"{i}.png")
    with pytest.raises(ValueError, match=r"6726825d\.pth is a FIFO \(named pipe\), not a regular file"):
        fid(str(images), str(images), dims=64)


def test_fid_weights_whose_members_unpack_beyond_the_bound_are_refused_unread(tmp_path):
    """The FID weights go through the checkpoints' loader: a small zip whose members add up to more than the
    weights' bound uncompressed (a zip bomb) is refused from its directory, before anything is unpacked."""
    from lbt_plugin.metrics import fid
    from lbt_plugin.metrics.fid import _FID_WEIGHTS_MAX_BYTES

    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(images / f"{i}.png")
    bomb = tmp_path / "weights.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(2**24)
            for _ in range(_FID_WEIGHTS_MAX_BYTES // len(chunk) + 1):
                member.write(chunk)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(ValueError, match=rf"weights\.pth is not a file of FID Inception weights: .*members hold "
                                         rf"{_FID_WEIGHTS_MAX_BYTES + 2**24} bytes uncompressed"):
        fid(str(images), str(images), weights=str(bomb), dims=64)
