"""FID through pytorch-fid's own functions, with every file read as data.

:func:`fid` takes two sources (folders of images, ``.npz`` statistics, dataset names, generator
checkpoints) and returns ``pytorch_fid.fid_score.calculate_fid_given_paths``'s value; the Inception
weights are read with ``torch.load(weights_only=True)``, never unpickled as pytorch-fid does.
:func:`save_images` writes samples as PNG files for it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..files import _read_tensors, check_regular, load_tensors, open_regular

__all__ = ["FID_WEIGHTS_FILE", "FID_MAX_DIMS", "fid", "frechet_distance", "save_images"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


def fid(source_a: str, source_b: str, *, weights: Optional[str] = None, dims: int = 2048, batch_size: int = 50,
        device: str = "cpu", num_workers: int = 0, num_samples: int = 10000, data_root: Optional[str] = None,
        generator_loader: Optional[Callable[[Any], nn.Module]] = None,
        latent_shape: Optional[Sequence[int]] = None) -> float:
    """Fréchet Inception Distance between two sources, computed by pytorch-fid.

    A source is a folder of at least two images or a ``.npz`` of statistics (``mu [d]``,
    ``sigma [d, d]``, passed to pytorch-fid as they are), a dataset name, ``"fashion-mnist"`` or
    ``"mnist"`` (its first ``num_samples`` training images, from :func:`lbt_plugin.data.load_idx_dataset`),
    or a generator checkpoint: any other file, read with ``torch.load(weights_only=True)`` and
    handed to ``generator_loader(state) -> nn.Module``, a function of the caller's choosing that
    knows its own checkpoint format (for example ``examples/dcgan_lbt.py``'s ``load_generator``).
    Nothing read from a file is imported or called. The generator draws ``num_samples`` images
    ``[N, C, H, W]`` (C = 1 or 3) from ``z ~ N(0, I)`` of shape ``latent_shape`` (one sample's,
    without the batch dimension); by default the generator's ``latent_shape`` or ``latent_dim``
    attribute, else the input of its first layer (``nn.Linear(d, ...)``: ``[d]``;
    ``nn.ConvTranspose2d(c, ...)``: ``[c, 1, 1]``), as ``LBTLoss`` reads it. Generated and
    dataset images are written as PNG files to a temporary folder first, so that pytorch-fid reads
    every source the same way. The value is ``pytorch_fid.fid_score.calculate_fid_given_paths``'s;
    between two ``.npz`` files it is
    ``calculate_frechet_distance`` of their statistics, and no Inception weights are needed. Every source's
    statistics are checked first (:func:`frechet_distance`): finite, ``sigma`` a covariance matrix; a generator
    that draws NaN or inf is refused by name. The
    FID Inception weights come from ``weights``, a path to that file, or from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/``), where they are downloaded once when missing; either way they
    are read as data (tensors only, sizes checked), never unpickled as pytorch-fid itself does.
    """
    import tempfile
    from pathlib import Path

    from pytorch_fid.fid_score import compute_statistics_of_path
    from pytorch_fid.inception import InceptionV3

    if weights is not None:  # missing, or a folder, FIFO or device named as such (os.stat: never blocks)
        check_regular(weights, "FID Inception weights file", _FID_WEIGHTS_MAX_BYTES)
    if all(Path(s).suffix == ".npz" for s in (source_a, source_b)):
        (mu1, s1), (mu2, s2) = (_npz_stats(s) for s in (source_a, source_b))
        if mu1.shape != mu2.shape:
            raise ValueError(f"the two .npz files hold statistics of different dimensions ({mu1.shape[0]} and "
                             f"{mu2.shape[0]})")
        return frechet_distance(mu1, s1, mu2, s2, (source_a, source_b))
    weights_path = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    with tempfile.TemporaryDirectory() as tmp, _fid_weights_as_data(weights_path, download=weights is None):
        paths = [_fid_source(s, Path(tmp) / f"source{i}", num_samples, data_root, device, generator_loader, dims,
                             latent_shape) for i, s in enumerate((source_a, source_b))]
        # calculate_fid_given_paths's steps, with each source's statistics checked before the distance
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).to(device)
        stats = []
        for source, path in zip((source_a, source_b), paths):
            if path.endswith(".npz"):
                stats.append(_npz_stats(path))
                continue
            mu, sigma = compute_statistics_of_path(path, model, batch_size, dims, device, num_workers)
            _check_stats(mu, sigma, f"the Inception activations of {source}",
                         "check the FID weights (--weights) and the images")
            stats.append((mu, sigma))
        (mu1, s1), (mu2, s2) = stats
        return frechet_distance(mu1, s1, mu2, s2, (source_a, source_b))


#: The FID Inception weights file is about 91 MiB; anything much larger is not it (and is not read).
_FID_WEIGHTS_MAX_BYTES = 256 * 2**20


@contextlib.contextmanager
def _fid_weights_as_data(path: "Path", download: bool) -> Iterator[None]:
    """While active, pytorch-fid's Inception network gets its weights from ``path``, read as data.

    pytorch-fid loads them with ``torch.hub.load_state_dict_from_url``, which unpickles the file in full: a
    planted file runs code. Here the file is read with ``torch.load(weights_only=True)`` (tensors and plain
    containers only; anything else is refused), its size is bounded before reading, and the state dict is
    loaded by pytorch-fid's own ``load_state_dict`` (strict: every key and shape of the network). A file whose
    SHA256 does not start with the hash in its reference name (``6726825d``) is used with a warning: its FIDs
    are not comparable to published ones. Missing in the hub cache (``download``), the file is downloaded
    once as pytorch-fid does, then read the same way.
    """
    import hashlib
    import io
    import warnings
    from pathlib import Path

    import pytorch_fid.inception as inception

    path = Path(path)

    def load(url: str, *args: Any, **kwargs: Any) -> Dict[str, Tensor]:
        if not path.exists() and download:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(path), progress=True)
            except OSError as exc:  # urllib's URLError is an OSError: offline
                raise RuntimeError(
                    f"the FID Inception weights ({FID_WEIGHTS_FILE}) are not in the torch hub cache ({path.parent}) "
                    f"and could not be downloaded ({type(exc).__name__}: {exc}): run once online (pytorch-fid "
                    "downloads them), or pass --weights PATH."
                ) from None
        # one read of one checked file (a folder, FIFO, ... is named): the bytes hashed are the bytes loaded
        with open_regular(path, "FID Inception weights file", _FID_WEIGHTS_MAX_BYTES) as f:
            data = f.read(_FID_WEIGHTS_MAX_BYTES + 1)
        if len(data) > _FID_WEIGHTS_MAX_BYTES:
            raise ValueError(f"{path} grew beyond {_FID_WEIGHTS_MAX_BYTES} bytes while read: not FID Inception weights")
        digest = hashlib.sha256(data).hexdigest()
        try:  # the checkpoints' loader: a zip of bounded members, tensors and plain containers only
            state = _read_tensors(io.BytesIO(data), _FID_WEIGHTS_MAX_BYTES)
        except ValueError as exc:
            raise ValueError(f"{path} is not a file of FID Inception weights: it cannot be read as tensors only "
                             f"({exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} is not a state dict of tensors (FID Inception weights)")
        reference = FID_WEIGHTS_FILE.rsplit("-", 1)[1].split(".")[0]
        if not digest.startswith(reference):
            warnings.warn(f"{path} is not the reference FID Inception weights file (its SHA256 starts with "
                          f"{digest[:8]}, not {reference}): these FIDs are not comparable to published ones",
                          stacklevel=2)
        return state

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = load
    try:
        yield
    except RuntimeError as exc:
        if "Error(s) in loading state_dict" in str(exc):
            raise ValueError(f"{path} does not fit the FID Inception network: {str(exc).splitlines()[0]} "
                             f"...") from None
        raise
    finally:
        inception.load_state_dict_from_url = original


#: The largest feature dimension of FID statistics read from a ``.npz`` (Inception's features have at most 2048):
#: a header that declares more is refused before anything is allocated (a 4096 x 4096 float64 sigma is 128 MiB).
FID_MAX_DIMS = 4096

#: ``sigma`` must equal its transpose within this fraction of its largest entry: a covariance computed and stored
#: in float32 is symmetric to about 1e-7 of it (its rounding); a matrix that is not a covariance is off by O(1).
SYMMETRY_RTOL = 1e-5

#: ``sigma``'s smallest eigenvalue may be negative down to this fraction of its largest: a covariance of fewer
#: samples than features is singular, and rounding leaves eigenvalues of about ``d * eps`` (float32 storage, d =
#: 2048: 1.2e-4 at worst, about 3e-6 typically) on either side of 0. A matrix that is not a covariance has
#: eigenvalues negative by a sizeable fraction of its scale.
PSD_RTOL = 1e-4


class _Refused(ValueError):
    pass


def _npy_member(archive: Any, name: str, source: str) -> Tuple[Tuple[int, ...], Any]:
    """The shape and dtype of the ``.npy`` member ``name`` of an open ``zipfile.ZipFile``, from its header only."""
    import numpy as np

    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise _Refused(f"cannot read {source} as FID statistics: {name} is in .npy format {version}, not 1.0 "
                           "or 2.0; save it with numpy.savez")
    return shape, dtype


def _npz_stats(source: str, max_dims: int = FID_MAX_DIMS) -> Tuple[Any, Any]:
    """``mu [d]`` and ``sigma [d, d]`` of a ``.npz`` file, validated before and after reading.

    The file is a regular file of bounded size (:func:`lbt_plugin.files.open_regular`); the shapes and dtypes of
    ``mu.npy`` and ``sigma.npy`` are read from their ``.npy`` headers first (float, ``mu`` a vector of ``d <=
    max_dims``, ``sigma [d, d]``), so that no more than ``8 (d + d^2)`` bytes are allocated; then the arrays are
    read with ``allow_pickle=False`` and checked by :func:`_check_stats` (finite, ``sigma`` a covariance).
    """
    import zipfile

    import numpy as np

    head = f"cannot read {source} as FID statistics (an .npz with float mu [d] and sigma [d, d], d <= {max_dims})"
    with open_regular(source, "FID statistics file", 8 * (max_dims + max_dims**2) + 2**20) as f:
        try:
            with zipfile.ZipFile(f) as archive:
                names = set(archive.namelist())
                missing = [k for k in ("mu", "sigma") if f"{k}.npy" not in names]
                if missing:
                    raise _Refused(f"{head}: it lacks {missing}; save it as numpy.savez(path, mu=mu, sigma=sigma)")
                (mu_shape, mu_dtype), (s_shape, s_dtype) = (_npy_member(archive, f"{k}.npy", source)
                                                            for k in ("mu", "sigma"))
                for key, dtype in (("mu", mu_dtype), ("sigma", s_dtype)):
                    if dtype.kind != "f":
                        raise _Refused(f"{head}: {key} has dtype {dtype}, not a float dtype (a dtype error); save "
                                       "the statistics as float64 arrays")
                if len(mu_shape) != 1:
                    raise _Refused(f"{head}: mu has shape {mu_shape}, not a vector [d]; save mu as the mean "
                                   "feature vector")
                d = mu_shape[0]
                if not 1 <= d <= max_dims:
                    raise _Refused(f"{head}: mu has {d} features, outside [1, {max_dims}] (FID_MAX_DIMS); not read")
                if s_shape != (d, d):
                    raise _Refused(f"{head}: sigma has shape {s_shape}, not [{d}, {d}] to match mu [{d}]")
                arrays = []
                for key in ("mu", "sigma"):
                    with archive.open(f"{key}.npy") as member:
                        arrays.append(np.lib.format.read_array(member, allow_pickle=False))
        except _Refused:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{head}: {type(exc).__name__}: {exc}; save it with numpy.savez") from None
    mu, sigma = arrays
    _check_stats(mu, sigma, source, "recompute the statistics (pytorch-fid --save-stats)")
    return mu, sigma


def _check_stats(mu: Any, sigma: Any, where: str, fix: str) -> None:
    """``mu [d]`` and ``sigma [d, d]`` are finite, and ``sigma`` is a covariance matrix: symmetric within
    :data:`SYMMETRY_RTOL`, positive semi-definite within :data:`PSD_RTOL`; else a ``ValueError`` naming ``where``."""
    import numpy as np

    mu, sigma = np.asarray(mu), np.asarray(sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: mu must be a vector [d] and sigma a matrix [d, d]; got shapes {mu.shape} and "
                         f"{sigma.shape}; {fix}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}: the statistics contain NaN or inf; {fix}")
    s = sigma.astype(np.float64)
    scale = float(np.abs(s).max())
    asymmetry = float(np.abs(s - s.T).max())
    if asymmetry > SYMMETRY_RTOL * scale:
        raise ValueError(f"{where}: sigma is not symmetric (max |sigma - sigma.T| = {asymmetry:.3g}, "
                         f"{asymmetry / scale:.2g} of its largest entry, above {SYMMETRY_RTOL}): not a covariance "
                         f"matrix; {fix}")
    eig = np.linalg.eigvalsh(s)
    if eig[0] < -PSD_RTOL * max(float(eig[-1]), 0.0):
        raise ValueError(f"{where}: sigma is not a covariance matrix: its smallest eigenvalue is {eig[0]:.3g} "
                         f"(largest {eig[-1]:.3g}), not positive semi-definite; {fix}")


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, names: Sequence[str] = ("a", "b")) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` of two checked sets of statistics (see :func:`_check_stats`),
    never negative, never NaN.

    FID is ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``: a difference of terms of size
    ``scale = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2)``. ``sqrtm`` of a (near-)singular product turns rounding
    of its zero eigenvalues (``eps``) into errors of ``sqrt(eps)`` each: a computed FID may be negative by up to
    about ``d * sqrt(eps) * scale`` when the true one is 0, and is returned as 0 there; below that it is an error.
    ``names`` name the two sources in errors.
    """
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    for (mu, sigma), name in zip(((mu1, sigma1), (mu2, sigma2)), names):
        _check_stats(mu, sigma, name, "recompute its statistics")
    try:
        value = float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
    except ValueError as exc:  # "Imaginary component ...": sqrtm(sigma1 sigma2) is far from real
        raise ValueError(f"the FID of {names[0]} and {names[1]} cannot be computed: sqrtm(sigma1 sigma2) is not real "
                         f"({exc}); one of the sigmas is not a covariance matrix of these features") from None
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    scale = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2))
    tolerance = len(diff) * float(np.sqrt(np.finfo(np.float64).eps)) * scale
    if not np.isfinite(value) or value < -tolerance:
        raise ValueError(f"the FID of {names[0]} and {names[1]} came out as {value:.6g} (its terms are of size "
                         f"{scale:.3g}; rounding explains at most -{tolerance:.2g}): their statistics are not "
                         "those of a distribution; recompute them")
    return max(value, 0.0)


def _fid_source(source: str, folder, num_samples: int, data_root: Optional[str], device: str,
                generator_loader: Optional[Callable[[Any], nn.Module]], dims: int,
                latent_shape: Optional[Sequence[int]]) -> str:
    """A path pytorch-fid can read for ``source`` (see :func:`fid`)."""
    from pathlib import Path

    from pytorch_fid.fid_score import IMAGE_EXTENSIONS

    from ..data import DATASETS, load_idx_dataset

    path = Path(source)
    if source in DATASETS:
        images, _ = load_idx_dataset(source, Path(data_root) if data_root else None)
        save_images(images[:num_samples].float().div(255).unsqueeze(1), str(folder), value_range=(0.0, 1.0))
        return str(folder)
    if path.suffix == ".npz":
        mu, _ = _npz_stats(source)
        if mu.shape[0] != dims:
            raise ValueError(f"{source} holds statistics of {mu.shape[0]} features; pass --dims {mu.shape[0]} (or "
                             f"statistics of {dims} features)")
        return str(path)
    if path.is_dir():
        n = sum(1 for f in path.iterdir() if f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if n < 2:
            raise ValueError(f"{source} holds {n} image(s); FID needs at least 2 per source (thousands for a "
                             "meaningful value)")
        return str(path)
    if path.is_file():
        if generator_loader is None:
            raise ValueError(f"{source} is a file, not a folder, a .npz or a dataset name: to draw images from a "
                             "generator checkpoint, name the function that rebuilds its generator from it, "
                             "--generator FILE.py:FUNCTION or MODULE:FUNCTION (nothing read from a checkpoint is "
                             "imported or called)")
        state = load_tensors(path, "checkpoint")
        G = generator_loader(state)
        if not isinstance(G, nn.Module):
            raise ValueError(f"the generator loader returned {type(G).__name__}; it must return the generator, an "
                             "nn.Module")
        save_images(_draw_images(G, num_samples, device, latent_shape), str(folder))
        return str(folder)
    raise FileNotFoundError(f"{source} is neither a folder, a .npz file, a checkpoint nor a dataset name "
                            f"({', '.join(DATASETS)})")


def _draw_images(G: nn.Module, n: int, device: str, latent_shape: Optional[Sequence[int]]) -> Tensor:
    """``n`` images ``[n, C, H, W]`` (on the CPU) from ``G`` in eval mode, ``z ~ N(0, I)`` drawn on ``device`` with
    seed 0, 500 at a time; the latent shape given, else read off ``G`` (see :func:`fid`) and checked by its output."""
    from .._impl.latent import as_shape
    from .._impl.latent import latent_shape as latent_shape_of

    if latent_shape is not None:
        shape, where = as_shape(latent_shape), f"--latent-shape {','.join(map(str, latent_shape))}"
    else:
        shape, where, _ = latent_shape_of(G)
        if shape is None:
            raise ValueError(f"cannot tell the latent shape of the {type(G).__name__} the loader returned: pass "
                             "--latent-shape (one sample's, e.g. 100,1,1), or give it a latent_dim / latent_shape "
                             "attribute")
    G.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    images = []
    with torch.no_grad():
        for i in range(0, n, 500):
            z = torch.randn(min(500, n - i), *shape, generator=gen, device=device)
            try:
                x = G(z)
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                raise ValueError(f"the generator does not take z of shape {tuple(z.shape)} ({where}): "
                                 f"{str(exc).splitlines()[0]}; pass its --latent-shape") from None
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != len(z) or x.shape[1] not in (1, 3):
                raise ValueError(f"from z of shape {tuple(z.shape)} ({where}) the generator returned "
                                 f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}, not images "
                                 f"[{len(z)}, 1 or 3, H, W]; pass its --latent-shape if that is the cause")
            if not torch.isfinite(x).all():
                raise ValueError(f"the generator drew NaN or inf in its images (samples {i} to {i + len(z) - 1}): "
                                 "it has diverged or its checkpoint holds NaN weights; FID of such images means "
                                 "nothing; use a checkpoint from before it diverged")
            images.append(x.cpu())
    return torch.cat(images)


def save_images(images: Tensor, folder: str, value_range: Tuple[float, float] = (-1.0, 1.0)) -> None:
    """Write a batch ``[N, C, H, W]`` as PNG files (``0000000.png``, ...), e.g. to compute FID of samples."""
    from pathlib import Path

    import torchvision.utils as vutils

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        vutils.save_image(img, out / f"{i:07d}.png", normalize=True, value_range=value_range)
