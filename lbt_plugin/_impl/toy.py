"""Tiny built-in models: the defaults of ``lbt-plugin check`` and ``lbt-plugin profile``, and of the tests."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TinyGenerator(nn.Module):
    """An MLP ``z [B, latent_dim] -> x [B, dim]``."""

    def __init__(self, latent_dim: int = 4, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class TinyCoupling(nn.Module):
    """One affine coupling layer over a standard normal: an exact density with a BatchNorm buffer.

    ``x = (x_a, x_b)``; ``x_b`` is standardised by a shift and log-scale predicted
    from ``x_a`` by an MLP with BatchNorm, so ``log_prob`` is exact (change of
    variables) and the model has buffers (running statistics) to get right.
    """

    def __init__(self, dim: int = 2, hidden: int = 16, batchnorm: bool = True):
        super().__init__()
        if dim < 2:
            raise ValueError("TinyCoupling needs dim >= 2")
        self.split = dim // 2
        layers = [nn.Linear(self.split, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.Tanh(), nn.Linear(hidden, 2 * (dim - self.split))]
        self.conditioner = nn.Sequential(*layers)
        self.loc = nn.Parameter(torch.zeros(self.split))

    def log_prob(self, x: Tensor) -> Tensor:
        xa, xb = x[:, : self.split], x[:, self.split:]
        shift, log_scale = self.conditioner(xa).chunk(2, dim=-1)
        log_scale = torch.tanh(log_scale)
        ub = (xb - shift) * torch.exp(-log_scale)
        ua = xa - self.loc
        u = torch.cat([ua, ub], dim=-1)
        return -0.5 * (u**2).sum(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi) - log_scale.sum(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
