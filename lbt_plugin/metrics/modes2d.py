"""Mode-collapse metrics for 2-D mixtures (VEEGAN / PacGAN protocol): the ring and grid layouts and their scores.

A generated sample is *high quality* when it lies within ``n_std`` (3) standard
deviations of its nearest mode centre. A mode is *captured* when at least one
high-quality sample is nearest to it. The *KL* is ``KL(q || u)`` between the
histogram ``q`` of high-quality samples over modes and the uniform ``u`` (PacGAN's
"reverse KL"): 0 when every mode gets the same share, ``log(n_modes)`` when all
fall on one mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["DataMixture", "ring", "grid", "ModeStats", "mode_stats"]


@dataclass(frozen=True)
class DataMixture:
    """The data distribution of a 2-D benchmark: an equal-weight mixture of isotropic Gaussians, ``centers [M, D]``,
    common ``std``. (What LBT teaches on such data is an estimator, e.g. :class:`lbt_plugin.estimators.GaussianMixture`;
    this is the ground truth that samples are scored against.)"""

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


def ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.01) -> DataMixture:
    """``n_modes`` Gaussians evenly on a circle (VEEGAN: 8 modes, radius 1, std 0.01)."""
    if n_modes < 1:
        raise ValueError(f"a ring needs at least one mode, got {n_modes}")
    angle = torch.arange(n_modes, dtype=torch.float32) * (2 * math.pi / n_modes)
    return DataMixture(radius * torch.stack([angle.cos(), angle.sin()], dim=1), std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> DataMixture:
    """``side x side`` Gaussians on a centred grid (VEEGAN: 5x5, means in {-4,-2,0,2,4}^2, std 0.05)."""
    if side < 1:
        raise ValueError(f"a grid needs at least one mode per side, got {side}")
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return DataMixture(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), std)


@dataclass(frozen=True)
class ModeStats:
    modes: int  #: modes captured
    high_quality: float  #: share of samples within n_std standard deviations of a centre
    kl: float  #: KL(histogram of high-quality samples || uniform); inf if there are none
    counts: Tensor  #: high-quality samples per mode


def mode_stats(samples: Tensor, mixture: DataMixture, n_std: float = 3.0) -> ModeStats:
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
