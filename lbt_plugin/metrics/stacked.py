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

__all__ = ["ChannelClassifier", "train_channel_classifier", "load_channel_classifier", "classifier_features",
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


def train_channel_classifier(images: Tensor, labels: Tensor, *, epochs: int = 2, batch_size: int = 128,
                             cache: Optional[str] = None, seed: int = 0, progress: bool = True,
                             device: Union[str, torch.device] = "cpu") -> Tuple[ChannelClassifier, float]:
    """Train the classifier that the stacked mode count relies on; with ``cache``, load it from there if the
    file exists (:func:`load_channel_classifier`), else train it and write it there.

    ``images``: ``[N, 28, 28]`` uint8 or ``[N, 1, H, W]`` in [-1, 1]; ``labels``: ``[N]`` class indices. A tenth
    is held out. Returns the model (in eval mode, on ``device``) and its held-out accuracy, which should be
    printed beside any mode count: a mode count is only as good as the classifier.
    """
    from pathlib import Path

    if cache is not None and Path(cache).is_file():
        model, accuracy = load_channel_classifier(cache)
        return model.to(device), accuracy
    x, y = _as_channels(images), labels.long()
    if len(x) != len(y) or len(x) < 20:
        raise ValueError(f"need at least 20 labelled images, got {len(x)} images and {len(y)} labels")
    n_test = max(len(x) // 10, 10)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    train_idx, test_idx = perm[:-n_test], perm[-n_test:]
    torch.manual_seed(seed)
    n_classes = int(y.max()) + 1
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
    with torch.no_grad():
        pred = torch.cat([model(x[test_idx[i: i + 1000]].to(device)).argmax(1).cpu() for i in range(0, n_test, 1000)])
    accuracy = float((pred == y[test_idx]).float().mean())
    if cache is not None:
        save_atomic({"model": model.state_dict(), "accuracy": accuracy, "n_classes": n_classes}, cache)
    return model, accuracy


def load_channel_classifier(path: str) -> Tuple[ChannelClassifier, float]:
    """The classifier cached by :func:`train_channel_classifier` at ``path`` (in eval mode, on the CPU) and its
    held-out accuracy. The file is read as data (tensors and two numbers) and validated."""
    state = load_tensors(path, "the classifier cache", "delete it to train the classifier again")
    n_classes, accuracy = (state.get("n_classes"), state.get("accuracy")) if isinstance(state, dict) else (None, None)
    if (isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= 1000
            or not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0 or not isinstance(state.get("model"), dict)):
        raise ValueError(f"{path} is not a classifier cache of train_channel_classifier (model, n_classes in "
                         "[2, 1000], accuracy in [0, 1]); delete it to train the classifier again")
    model = ChannelClassifier(n_classes)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the classifier cache {path} does not fit ChannelClassifier: {exc}") from None
    return model.eval(), accuracy


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
def stacked_mode_stats(samples: Tensor, classifier: nn.Module, batch_size: int = 500) -> StackedModeStats:
    """Modes covered and KL to uniform of stacked samples ``[N, 3, H, W]`` in [-1, 1].

    The Stacked MNIST protocol (VEEGAN, PacGAN): each channel is classified by ``classifier``
    (a :class:`ChannelClassifier`, or any module with ten outputs), the triple of classes is the
    mode, 26,000 samples are usual.
    """
    if not isinstance(samples, Tensor) or samples.dim() != 4 or samples.shape[1] != 3:
        raise ValueError(f"stacked samples must have shape [N, 3, H, W], got {tuple(getattr(samples, 'shape', ()))}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    n_classes = classifier.net[-1].out_features if isinstance(classifier, ChannelClassifier) else 10
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
