"""Mode-collapse metrics for 2-D mixtures (VEEGAN / PacGAN protocol).

A generated sample is *high quality* when it lies within ``n_std`` (3) standard
deviations of its nearest mode centre. A mode is *captured* when at least one
high-quality sample is nearest to it. The *KL* is ``KL(q || u)`` between the
histogram ``q`` of high-quality samples over modes and the uniform ``u`` (PacGAN's
"reverse KL"): 0 when every mode gets the same share, ``log(n_modes)`` when all
fall on one mode.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from .files import load_tensors, save_atomic

__all__ = ["Mixture", "ring", "grid", "ModeStats", "mode_stats", "fid", "save_images",
           "DigitClassifier", "train_digit_classifier", "classifier_features", "StackedModeStats",
           "stacked_mode_stats"]


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic Gaussians: ``centers [M, D]``, common ``std``."""

    centers: Tensor
    std: float

    def __post_init__(self) -> None:
        if not isinstance(self.centers, Tensor) or self.centers.dim() != 2 or self.centers.shape[0] == 0:
            raise ValueError("a mixture needs centers of shape [n_modes >= 1, dim]")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def n_modes(self) -> int:
        return self.centers.shape[0]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples, modes drawn uniformly."""
        idx = torch.randint(self.n_modes, (n,), generator=generator)
        noise = torch.randn(n, self.centers.shape[1], generator=generator)
        return self.centers[idx] + self.std * noise


def ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.01) -> Mixture:
    """``n_modes`` Gaussians evenly on a circle (VEEGAN: 8 modes, radius 1, std 0.01)."""
    if n_modes < 1:
        raise ValueError(f"a ring needs at least one mode, got {n_modes}")
    angle = torch.arange(n_modes, dtype=torch.float32) * (2 * math.pi / n_modes)
    return Mixture(radius * torch.stack([angle.cos(), angle.sin()], dim=1), std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture:
    """``side x side`` Gaussians on a centred grid (VEEGAN: 5x5, means in {-4,-2,0,2,4}^2, std 0.05)."""
    if side < 1:
        raise ValueError(f"a grid needs at least one mode per side, got {side}")
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return Mixture(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), std)


@dataclass(frozen=True)
class ModeStats:
    modes: int  #: modes captured
    high_quality: float  #: share of samples within n_std standard deviations of a centre
    kl: float  #: KL(histogram of high-quality samples || uniform); inf if there are none
    counts: Tensor  #: high-quality samples per mode


def mode_stats(samples: Tensor, mixture: Mixture, n_std: float = 3.0) -> ModeStats:
    """Modes captured, high-quality share and mode-histogram KL of ``samples [N, D]``."""
    if not isinstance(samples, Tensor) or samples.dim() != 2 or samples.shape[1] != mixture.centers.shape[1]:
        raise ValueError(
            f"samples must have shape [N, {mixture.centers.shape[1]}], got {tuple(getattr(samples, 'shape', ()))}"
        )
    if samples.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{int((~torch.isfinite(samples)).any(1).sum())} samples contain NaN or inf")
    samples = samples.detach().to("cpu", torch.float64)
    dist = torch.cdist(samples, mixture.centers.to(torch.float64))  # [N, M]
    nearest_d, nearest = dist.min(dim=1)
    good = nearest_d <= n_std * mixture.std
    counts = torch.bincount(nearest[good], minlength=mixture.n_modes)
    n_good = int(good.sum())
    if n_good:
        q = counts.double() / n_good
        kl = float((q[q > 0] * (q[q > 0] * mixture.n_modes).log()).sum())
    else:
        kl = math.inf
    return ModeStats(int((counts > 0).sum()), n_good / samples.shape[0], kl, counts)


# ---------------------------------------------------------------------------------------------------------------
# FID, through pytorch-fid's own functions
# ---------------------------------------------------------------------------------------------------------------
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


def fid(source_a: str, source_b: str, *, weights: Optional[str] = None, dims: int = 2048, batch_size: int = 50,
        device: str = "cpu", num_workers: int = 0, num_samples: int = 10000,
        data_root: Optional[str] = None, generator_loader: Optional[Callable[[dict], nn.Module]] = None) -> float:
    """Fréchet Inception Distance between two sources, computed by pytorch-fid.

    A source is a folder of at least two images or a ``.npz`` of statistics (``mu [d]``,
    ``sigma [d, d]``, passed to pytorch-fid as they are), a dataset name, ``"fashion-mnist"`` or
    ``"mnist"`` (its first ``num_samples`` training images, from :func:`lbt_plugin.data.load_idx_dataset`),
    or a generator checkpoint: any other file, read with ``torch.load(weights_only=True)`` and
    handed to ``generator_loader(state) -> nn.Module``, a function of the caller's choosing (for
    ``examples/dcgan_lbt.py``: its ``load_generator``). Nothing read from a file is imported or
    called. The generator draws ``num_samples`` images from ``z ~ N(0, I)`` of its
    ``latent_shape`` (or ``latent_dim``). Generated and dataset images are written as PNG files
    to a temporary folder first, so that pytorch-fid reads every source the same way. The value
    is ``pytorch_fid.fid_score.calculate_fid_given_paths``'s; between two ``.npz`` files it is
    ``calculate_frechet_distance`` of their statistics, and no Inception weights are needed. The
    FID Inception weights come from ``weights``, a path to that file, or from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/``), where they are downloaded once when missing; either way they
    are read as data (tensors only, sizes checked), never unpickled as pytorch-fid itself does.
    """
    import tempfile
    from pathlib import Path

    from pytorch_fid.fid_score import calculate_fid_given_paths, calculate_frechet_distance

    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"no FID Inception weights at {weights}")
    if all(Path(s).suffix == ".npz" for s in (source_a, source_b)):
        (mu1, s1), (mu2, s2) = (_npz_stats(s) for s in (source_a, source_b))
        if mu1.shape != mu2.shape:
            raise ValueError(f"the two .npz files hold statistics of different dimensions ({mu1.shape[0]} and "
                             f"{mu2.shape[0]})")
        return float(calculate_frechet_distance(mu1, s1, mu2, s2))
    weights_path = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    with tempfile.TemporaryDirectory() as tmp, _fid_weights_as_data(weights_path, download=weights is None):
        paths = [_fid_source(s, Path(tmp) / f"source{i}", num_samples, data_root, device, generator_loader, dims)
                 for i, s in enumerate((source_a, source_b))]
        return float(calculate_fid_given_paths(paths, batch_size, device, dims, num_workers))


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
        if not path.is_file():
            raise FileNotFoundError(f"no FID Inception weights at {path} (a regular file is needed)")
        size = path.stat().st_size
        if size > _FID_WEIGHTS_MAX_BYTES:
            raise ValueError(f"{path} has {size} bytes; the FID Inception weights have about 91 MiB: not read")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path} is not a file of FID Inception weights: it cannot be read as tensors only "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); nothing in "
                             "it was run") from None
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


def _npz_stats(source: str) -> Tuple[Any, Any]:
    """``mu [d]`` and ``sigma [d, d]`` of a ``.npz`` file, validated (no pickled objects are loaded)."""
    import zipfile

    import numpy as np

    try:
        with np.load(source, allow_pickle=False) as f:
            missing = {"mu", "sigma"} - set(f.files)
            if missing:
                raise ValueError(f"it lacks {sorted(missing)}")
            mu, sigma = f["mu"][:], f["sigma"][:]
    except FileNotFoundError:
        raise FileNotFoundError(f"no such .npz file: {source}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {source} as FID statistics (an .npz with mu [d] and sigma [d, d]): "
                         f"{exc}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise ValueError(f"{source}: mu must be a float vector [d] and sigma a float matrix [d, d]; got shapes "
                         f"{mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{source}: the statistics contain NaN or inf")
    return mu, sigma


def _fid_source(source: str, folder, num_samples: int, data_root: Optional[str], device: str,
                generator_loader: Optional[Callable[[dict], nn.Module]], dims: int) -> str:
    """A path pytorch-fid can read for ``source`` (see :func:`fid`)."""
    from pathlib import Path

    from pytorch_fid.fid_score import IMAGE_EXTENSIONS

    from .data import DATASETS, load_idx_dataset

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
                             "generator checkpoint, name the function that rebuilds its generator, e.g. --generator "
                             "examples/dcgan_lbt.py:load_generator (nothing read from a checkpoint is imported or "
                             "called)")
        state = load_tensors(path, "checkpoint")
        from ._impl.latent import latent_shape

        G = generator_loader(state)
        shape = latent_shape(G)[0] if isinstance(G, nn.Module) else None
        if shape is None:
            raise ValueError(f"the generator loader returned {type(G).__name__}; it must return an nn.Module with a "
                             "latent_shape or latent_dim attribute (or a first Linear / ConvTranspose layer)")
        G.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            images = torch.cat([G(torch.randn(min(500, num_samples - i), *shape, generator=gen,
                                              device=device)).cpu() for i in range(0, num_samples, 500)])
        save_images(images, str(folder))
        return str(folder)
    raise FileNotFoundError(f"{source} is neither a folder, a .npz file, a checkpoint nor a dataset name "
                            f"({', '.join(DATASETS)})")


def save_images(images: Tensor, folder: str, value_range: Tuple[float, float] = (-1.0, 1.0)) -> None:
    """Write a batch ``[N, C, H, W]`` as PNG files (``0000000.png``, ...), e.g. to compute FID of samples."""
    from pathlib import Path

    import torchvision.utils as vutils

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        vutils.save_image(img, out / f"{i:07d}.png", normalize=True, value_range=value_range)


# ---------------------------------------------------------------------------------------------------------------
# Stacked digits: 1000 modes (three digits as the three channels)
# ---------------------------------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN for 28x28 single-channel digits in [-1, 1] (larger or smaller inputs are resized)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != 28:
            x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        return self.net(x)


def _as_digits(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        images = images.float().div(255).mul(2).sub(1)
    return images if images.dim() == 4 else images.unsqueeze(1)


def train_digit_classifier(images: Tensor, labels: Tensor, *, epochs: int = 2, batch_size: int = 128,
                           cache: Optional[str] = None, seed: int = 0, progress: bool = True) -> Tuple[nn.Module, float]:
    """Train (or load from ``cache``) the digit classifier the stacked mode count relies on.

    ``images``: ``[N, 28, 28]`` uint8 or ``[N, 1, H, W]`` in [-1, 1]. The last tenth is held out;
    returns the model (in eval mode) and its held-out accuracy, which should be printed
    beside any mode count: a mode count is only as good as the classifier.
    """
    from pathlib import Path

    if cache is not None and Path(cache).is_file():
        return _load_classifier(Path(cache))
    x, y = _as_digits(images), labels.long()
    if len(x) != len(y) or len(x) < 20:
        raise ValueError(f"need at least 20 labelled images, got {len(x)} images and {len(y)} labels")
    n_test = max(len(x) // 10, 10)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    train_idx, test_idx = perm[:-n_test], perm[-n_test:]
    torch.manual_seed(seed)
    n_classes = int(y.max()) + 1
    model = DigitClassifier(n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    from tqdm import tqdm

    for epoch in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in tqdm(range(0, len(order), batch_size), desc=f"classifier epoch {epoch + 1}/{epochs}",
                      disable=not progress, leave=False):
            idx = order[i: i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[test_idx[i: i + 1000]]).argmax(1) for i in range(0, n_test, 1000)])
    accuracy = float((pred == y[test_idx]).float().mean())
    if cache is not None:
        save_atomic({"model": model.state_dict(), "accuracy": accuracy, "n_classes": n_classes}, cache)
    return model, accuracy


def _load_classifier(path) -> Tuple[nn.Module, float]:
    """A classifier cached by :func:`train_digit_classifier`: tensors and two numbers, validated."""
    state = load_tensors(path, "the classifier cache", "delete it to train the classifier again")
    n_classes, accuracy = (state.get("n_classes"), state.get("accuracy")) if isinstance(state, dict) else (None, None)
    if (isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= 1000
            or not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0 or not isinstance(state.get("model"), dict)):
        raise ValueError(f"{path} is not a classifier cache of train_digit_classifier (model, n_classes in [2, 1000], "
                         "accuracy in [0, 1]); delete it to train the classifier again")
    model = DigitClassifier(n_classes)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the classifier cache {path} does not fit DigitClassifier: {exc}") from None
    return model.eval(), accuracy


@torch.no_grad()
def classifier_features(samples: Tensor, classifier: "DigitClassifier", batch_size: int = 500) -> Tensor:
    """The classifier's penultimate features (after its last hidden ReLU) of every channel of ``samples
    [N, C, H, W]``, concatenated per sample: ``[N, C * 128]``. A feature space for a Fréchet distance between
    generated and real stacked digits where Inception weights are not at hand."""
    if not isinstance(samples, Tensor) or samples.dim() != 4:
        raise ValueError(f"samples must have shape [N, C, H, W], got {tuple(getattr(samples, 'shape', ()))}")
    body = classifier.net[:-1]
    device = next(classifier.parameters()).device
    out = []
    for i in range(0, len(samples), batch_size):
        x = samples[i: i + batch_size].to(device)
        b, c = x.shape[:2]
        x = x.reshape(b * c, 1, *x.shape[2:])
        if x.shape[-1] != 28:
            x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        out.append(body(x).reshape(b, -1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class StackedModeStats:
    modes: int  #: modes (digit triples) with at least one sample, out of n_classes ** 3
    kl: float  #: KL(histogram of modes || uniform over all n_classes ** 3 modes)
    counts: Tensor  #: samples per mode, index 100 * c0 + 10 * c1 + c2


@torch.no_grad()
def stacked_mode_stats(samples: Tensor, classifier: nn.Module, batch_size: int = 500) -> StackedModeStats:
    """Modes covered and KL to uniform of stacked-digit samples ``[N, 3, H, W]`` in [-1, 1].

    The Stacked MNIST protocol (VEEGAN, PacGAN): each channel is classified, the
    triple of digits is the mode, 26,000 samples are usual.
    """
    if not isinstance(samples, Tensor) or samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"stacked samples must have shape [N, 3, H, W], got {tuple(getattr(samples, 'shape', ()))}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    n_classes = classifier.net[-1].out_features if isinstance(classifier, DigitClassifier) else 10
    device = next(classifier.parameters()).device
    labels = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size].to(device)
        b = chunk.shape[0]
        pred = classifier(chunk.reshape(b * 3, 1, *chunk.shape[2:])).argmax(1).reshape(b, 3)
        labels.append((pred[:, 0] * n_classes + pred[:, 1]) * n_classes + pred[:, 2])
    modes = torch.cat(labels).cpu()
    counts = torch.bincount(modes, minlength=n_classes**3)
    q = counts.double() / counts.sum()
    kl = float((q[q > 0] * (q[q > 0] * n_classes**3).log()).sum())
    return StackedModeStats(int((counts > 0).sum()), kl, counts)
