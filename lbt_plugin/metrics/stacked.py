"""Stacked-image mode counts (the Stacked MNIST protocol): a classifier of single 28x28 grayscale channels, its
training and cache, its features, and the mode histogram of three-channel samples.

A stacked image has three channels, each one image of a ten-class set (MNIST's digits, Fashion-MNIST's
clothing; :func:`lbt_plugin.data.stack_channels`): 1000 modes, one per triple of classes. Each channel
of a sample is classified by :class:`ChannelClassifier`; the triple is the sample's mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..files import load_tensors, save_atomic

__all__ = ["N_CLASSES", "MIN_ACCURACY", "ChannelClassifier", "train_channel_classifier", "load_channel_classifier", "classifier_features",
           "StackedModeStats", "stacked_mode_stats"]


class ChannelClassifier(nn.Module):
    """A small CNN that classifies one 28x28 grayscale channel in [-1, 1] (a digit, a Fashion-MNIST item) into
    ``n_classes``; inputs of another size are resized to 28x28."""

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


def _as_channels(images: Tensor) -> Tensor:
    """``[N, 28, 28]`` uint8 (as the idx files hold them) or ``[N, 1, H, W]`` floats, as ``[N, 1, H, W]`` in [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.float().div(255).mul(2).sub(1)
    return images if images.dim() == 4 else images.unsqueeze(1)


#: The class count of the ten-class sets of the protocol (MNIST's digits, Fashion-MNIST's items): 1000 modes.
N_CLASSES = 10

#: The held-out accuracy below which a classifier is refused: five times chance (0.1). A mode count is only as
#: good as the classifier; the package's reaches about 0.9 on Fashion-MNIST after 2 epochs.
MIN_ACCURACY = 0.5

#: A classifier cache holds about 1 MB of weights; a larger file is not one (and is not read).
_CACHE_MAX_BYTES = 64 * 2**20


def _data_key(images: Tensor, labels: Tensor) -> str:
    """SHA256 of the images and labels (shapes, dtypes and values): which data a cache was trained on."""
    import hashlib

    h = hashlib.sha256(b"lbt-channel-classifier-data-v1")
    for t in (images, labels.long()):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _settings_key(data_key: str, epochs: int, batch_size: int, seed: int, n_classes: int) -> str:
    """SHA256 of the data key and the training settings: the key a cache is looked up by."""
    import hashlib

    return hashlib.sha256(f"{data_key} epochs={epochs} batch_size={batch_size} seed={seed} "
                          f"n_classes={n_classes}".encode()).hexdigest()


def _split(n: int, seed: int) -> Tuple[Tensor, Tensor, torch.Generator]:
    """The training and held-out indices (a tenth, at least 10) of ``n`` images for ``seed``, and the generator
    that drew them (training goes on drawing from it)."""
    n_test = max(n // 10, 10)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return perm[:-n_test], perm[-n_test:], gen


def _checked_data(images: Tensor, labels: Tensor, n_classes: int) -> Tuple[Tensor, Tensor]:
    x, y = _as_channels(images), labels.long()
    if len(x) != len(y) or len(x) < 20:
        raise ValueError(f"need at least 20 labelled images, got {len(x)} images and {len(y)} labels")
    if y.dim() != 1 or int(y.min()) < 0 or int(y.max()) + 1 != n_classes:
        raise ValueError(f"the labels hold classes {int(y.min())} to {int(y.max())}; the stacked protocol needs "
                         f"labels 0 to {n_classes - 1} ({n_classes} classes): pass the dataset's labels")
    return x, y


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, device: Union[str, torch.device]) -> float:
    pred = torch.cat([model(x[idx[i: i + 1000]].to(device)).argmax(1).cpu() for i in range(0, len(idx), 1000)])
    return float((pred == y[idx]).float().mean())


def train_channel_classifier(images: Tensor, labels: Tensor, *, epochs: int = 2, batch_size: int = 128,
                             cache: Optional[str] = None, seed: int = 0, progress: bool = True,
                             device: Union[str, torch.device] = "cpu", n_classes: int = N_CLASSES,
                             min_accuracy: float = MIN_ACCURACY) -> Tuple[ChannelClassifier, float]:
    """Train the classifier that the stacked mode count relies on; with ``cache``, reuse the one there if it was
    trained on these images and labels with these settings, else train it and write it there.

    ``images``: ``[N, 28, 28]`` uint8 or ``[N, 1, H, W]`` in [-1, 1]; ``labels``: ``[N]`` class indices, 0 to
    ``n_classes - 1``. A tenth is held out. Returns the model (in eval mode, on ``device``) and its held-out
    accuracy, measured (for a cache, measured again by :func:`load_channel_classifier`), which should be printed
    beside any mode count: a mode count is only as good as the classifier.

    A cache is keyed by a SHA256 of the images, the labels and the settings (``epochs``, ``batch_size``, ``seed``,
    ``n_classes``): another key, or a held-out accuracy below ``min_accuracy``, retrains and rewrites it (with a
    note on stderr). A classifier that reaches less than ``min_accuracy`` is an error, and is not cached.
    """
    import sys
    from pathlib import Path

    cached = _read_cache(cache, n_classes) if cache is not None and Path(cache).exists() else None
    x, y = _checked_data(images, labels, n_classes)
    data_key = _data_key(images, labels)
    key = _settings_key(data_key, epochs, batch_size, seed, n_classes)
    if cached is not None:
        model, state = cached
        if state.get("key") != key:
            print(f"the classifier cache {cache} was trained on other images, labels or settings: training again",
                  file=sys.stderr)
        else:
            _, test_idx, _ = _split(len(x), seed)
            model = model.to(device)
            accuracy = _accuracy(model, x, y, test_idx, device)
            if accuracy >= min_accuracy:
                return model, accuracy
            print(f"the classifier cache {cache} measures {accuracy:.3f} on held-out data (it records "
                  f"{state['accuracy']:.3f}), below {min_accuracy}: training again", file=sys.stderr)
    train_idx, test_idx, gen = _split(len(x), seed)
    torch.manual_seed(seed)
    model = ChannelClassifier(n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    from tqdm import tqdm

    for epoch in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in tqdm(range(0, len(order), batch_size), desc=f"classifier epoch {epoch + 1}/{epochs}",
                      disable=not progress, leave=False):
            idx = order[i: i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
    model.eval()
    accuracy = _accuracy(model, x, y, test_idx, device)
    if accuracy < min_accuracy:
        raise ValueError(f"the classifier reaches {accuracy:.3f} held-out accuracy, below min_accuracy "
                         f"{min_accuracy}: a mode count by it would mean nothing (not cached); train longer (epochs) "
                         "or check that the labels belong to the images")
    if cache is not None:
        save_atomic({"model": model.state_dict(), "accuracy": accuracy, "n_classes": n_classes, "key": key,
                     "data_key": data_key, "seed": seed}, cache)
    return model, accuracy


def _read_cache(path: str, n_classes: int) -> Tuple[ChannelClassifier, dict]:
    """The classifier of a cache file and the file's contents, validated: a classifier of ``n_classes`` whose
    state dict fits :class:`ChannelClassifier` and whose weights are finite."""
    fix = "delete it to train the classifier again"
    state = load_tensors(path, "the classifier cache", fix, max_bytes=_CACHE_MAX_BYTES)
    stored, accuracy = (state.get("n_classes"), state.get("accuracy")) if isinstance(state, dict) else (None, None)
    if (isinstance(stored, bool) or not isinstance(stored, int) or not 2 <= stored <= 1000
            or not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0 or not isinstance(state.get("model"), dict)):
        raise ValueError(f"{path} is not a classifier cache of train_channel_classifier (model, n_classes in "
                         f"[2, 1000], accuracy in [0, 1]); {fix}")
    model = ChannelClassifier(stored)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the classifier cache {path} does not fit ChannelClassifier: {exc}; {fix}") from None
    if stored != n_classes:
        raise ValueError(f"the classifier cache {path} holds a classifier of {stored} classes, not {n_classes}: it "
                         f"would count {stored ** 3} modes instead of {n_classes ** 3}; {fix}")
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"the classifier cache {path} holds NaN or inf weights ({', '.join(bad)}); {fix}")
    return model.eval(), state


def load_channel_classifier(path: str, images: Optional[Tensor] = None, labels: Optional[Tensor] = None, *,
                            n_classes: int = N_CLASSES, min_accuracy: float = MIN_ACCURACY,
                            device: Union[str, torch.device] = "cpu") -> Tuple[ChannelClassifier, Optional[float]]:
    """The classifier cached by :func:`train_channel_classifier` at ``path`` (in eval mode, on ``device``) and its
    held-out accuracy, measured now.

    The file is read as data (tensors, numbers, strings) and validated: a classifier of ``n_classes`` classes, a
    state dict that fits, finite weights. With the ``images`` and ``labels`` it was trained on (checked by their
    SHA256, stored in the cache), its accuracy is measured again on the held-out tenth and must reach
    ``min_accuracy``; the number stored in the file is not trusted. Without them the accuracy is ``None``
    (not measured).
    """
    model, state = _read_cache(path, n_classes)
    model = model.to(device)
    if images is None and labels is None:
        return model, None
    if images is None or labels is None:
        raise ValueError("pass both images and labels (the data the classifier was trained on), or neither")
    x, y = _checked_data(images, labels, n_classes)
    if state.get("data_key") != _data_key(images, labels) or not isinstance(state.get("seed"), int):
        raise ValueError(f"the classifier cache {path} was not trained on these images and labels (its data key "
                         "differs or is missing): its accuracy on them is unknown; delete it to train the classifier "
                         "again (train_channel_classifier)")
    _, test_idx, _ = _split(len(x), state["seed"])
    accuracy = _accuracy(model, x, y, test_idx, device)
    if accuracy < min_accuracy:
        raise ValueError(f"the classifier cache {path} measures {accuracy:.3f} held-out accuracy (it records "
                         f"{state['accuracy']:.3f}), below min_accuracy {min_accuracy}: its mode counts would mean "
                         "nothing; delete it to train the classifier again")
    return model, accuracy


@torch.no_grad()
def classifier_features(samples: Tensor, classifier: ChannelClassifier, batch_size: int = 500) -> Tensor:
    """The classifier's penultimate features (after its last hidden ReLU) of every channel of ``samples
    [N, C, H, W]``, concatenated per sample: ``[N, C * 128]``. A feature space for a Fréchet distance between
    generated and real stacked images where Inception weights are not at hand."""
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
    modes: int  #: modes (class triples) with at least one sample, out of n_classes ** 3
    kl: float  #: KL(histogram of modes || uniform over all n_classes ** 3 modes)
    counts: Tensor  #: samples per mode, index (c0 * n_classes + c1) * n_classes + c2 (100 c0 + 10 c1 + c2 for ten)


@torch.no_grad()
@torch.no_grad()
def stacked_mode_stats(samples: Tensor, classifier: nn.Module, batch_size: int = 500, *,
                       features: Optional[Tensor] = None) -> StackedModeStats:
    """Modes covered and KL to uniform of stacked samples ``[N, 3, H, W]`` in [-1, 1].

    The Stacked MNIST protocol (VEEGAN, PacGAN): each channel is classified by ``classifier``
    (a :class:`ChannelClassifier`, or any module with ten outputs), the triple of classes is the
    mode, 26,000 samples are usual.

    ``features``: the :func:`classifier_features` ``[N, 3 * 128]`` of these samples by this
    :class:`ChannelClassifier`, where they are computed anyway (for a Fréchet distance): the classes are then
    read from them by the classifier's last layer, one pass over the images instead of two.
    """
    if not isinstance(samples, Tensor) or samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"stacked samples must have shape [N, 3, H, W], got {tuple(getattr(samples, 'shape', ()))}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    n_classes = classifier.net[-1].out_features if isinstance(classifier, ChannelClassifier) else 10
    device = next(classifier.parameters()).device
    preds = []  # [b, 3]: the class of each channel
    if features is not None:
        if not isinstance(classifier, ChannelClassifier):
            raise TypeError("features= needs the ChannelClassifier that computed them (its last layer reads them); "
                            f"got a {type(classifier).__name__}: pass the samples alone")
        head = classifier.net[-1]
        if not isinstance(features, Tensor) or features.shape != (len(samples), 3 * head.in_features):
            raise ValueError(f"features must be classifier_features(samples, classifier), shape "
                             f"[{len(samples)}, {3 * head.in_features}]; got {tuple(getattr(features, 'shape', ()))}")
        for i in range(0, len(features), batch_size):
            f = features[i: i + batch_size].to(device)
            preds.append(head(f.reshape(-1, head.in_features)).argmax(1).reshape(-1, 3))
    else:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i: i + batch_size].to(device)
            b = chunk.shape[0]
            preds.append(classifier(chunk.reshape(b * 3, 1, *chunk.shape[2:])).argmax(1).reshape(b, 3))
    pred = torch.cat(preds).cpu()
    modes = (pred[:, 0] * n_classes + pred[:, 1]) * n_classes + pred[:, 2]
    counts = torch.bincount(modes, minlength=n_classes**3)
    q = counts.double() / counts.sum()
    kl = float((q[q > 0] * (q[q > 0] * n_classes**3).log()).sum())
    return StackedModeStats(int((counts > 0).sum()), kl, counts)
