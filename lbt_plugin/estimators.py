"""Density estimators for LBT, each an ``nn.Module`` with ``log_prob(x) -> Tensor[B]``.

Which to pick:

- :class:`VAE` / :class:`ConvVAE`: the paper's estimator. ``log_prob`` is the ELBO
  (or an importance-weighted bound with ``n_samples > 1``), a stochastic lower bound
  on :math:`\\log p_E(x)`. Flexible, scales to images; the bound's gap and noise make
  the teaching signal noisier than an exact density's.
- :class:`GaussianMixture`: exact ``log_prob``, tiny and fast; right when the data
  is (close to) a mixture of blobs, as on the 2-D mode-collapse benchmarks. With
  fewer components than modes it cannot represent every mode, and LBT then only
  asks the generator for what the mixture can express.
- :class:`RealNVP`: an exact-likelihood normalising flow (affine couplings);
  smooth densities in low to moderate dimension, no bound gap, slower per step
  than a mixture.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["VAE", "ConvVAE", "GaussianMixture", "RealNVP"]

_LOG_2PI = math.log(2 * math.pi)


def _gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * (((x - mean) * torch.exp(-log_std)) ** 2 + 2 * log_std + _LOG_2PI)


class _VAEBase(nn.Module):
    """ELBO / importance-weighted bound shared by the MLP and convolutional VAEs."""

    latent_dim: int
    n_samples: int

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decoder_log_std(self) -> Tensor:
        return self.decoder_log_std

    def _as_input(self, x: Tensor) -> Tensor:
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """The ELBO of each sample (``n_samples == 1``) or the IWAE bound with ``n_samples`` draws.

        ``log p(x) >= E_q[log p(x|z) + log p(z) - log q(z|x)]``; reparameterised, so it is
        differentiable in the parameters and in ``x``.
        """
        x = self._as_input(x)
        b, s = x.shape[0], self.n_samples
        mu, log_std = self.encode(x)
        eps = torch.randn((s, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(log_std)  # [S, B, L]
        recon = self.decode(z.reshape(s * b, -1)).reshape(s, *x.shape)
        log_px = _gaussian_log_prob(x, recon, self._decoder_log_std()).reshape(s, b, -1).sum(-1)
        if s == 1:  # closed-form KL for the plain ELBO: lower variance
            kl = 0.5 * (mu**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(-1)
            return log_px[0] - kl
        log_pz = _gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
        log_qz = _gaussian_log_prob(z, mu, log_std).sum(-1)
        return torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(s)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.latent_dim, device=self.decoder_log_std.device)
        return self.decode(z)


class VAE(_VAEBase):
    """An MLP VAE for vectors ``[B, dim]`` with a Gaussian decoder (inputs ``[B, ...]`` with ``dim`` elements per
    sample, such as ``[B, 1, 28, 28]`` for ``dim=784``, are flattened).

    Defaults follow the authors' toy estimator: two tanh layers of 128, latent 32, and a
    decoder of fixed variance 0.001 (``decoder_std=None`` learns one per dimension).
    """

    def __init__(self, dim: int, latent_dim: int = 32, hidden: int = 128, n_samples: int = 1,
                 decoder_std: float | None = math.sqrt(0.001)):
        super().__init__()
        if dim < 1 or latent_dim < 1 or n_samples < 1:
            raise ValueError("dim, latent_dim and n_samples must be >= 1")
        self.dim, self.latent_dim, self.n_samples = dim, latent_dim, n_samples
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, dim))
        log_std = torch.full((dim,), math.log(decoder_std) if decoder_std else 0.0)
        if decoder_std:
            self.register_buffer("decoder_log_std", log_std)
        else:
            self.decoder_log_std = nn.Parameter(log_std)

    def _as_input(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"VAE(dim={self.dim}) takes [B, {self.dim}] inputs (or [B, ...] of {self.dim} elements, "
                             f"flattened), got {tuple(x.shape)}; for images, ConvVAE keeps their structure")
        return x.flatten(1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.encoder(self._as_input(x)).chunk(2, dim=-1)
        return mu, log_std.clamp(-10, 5)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


class ConvVAE(_VAEBase):
    """A DCGAN-style convolutional VAE for images ``[B, C, H, W]`` with ``H == W`` divisible by 4.

    Gaussian decoder with one learned log-std per channel (or fixed with
    ``decoder_std``); images are expected in the generator's range, e.g. [-1, 1].
    """

    def __init__(self, channels: int = 1, image_size: int = 28, latent_dim: int = 64, base: int = 32,
                 n_samples: int = 1, decoder_std: float | None = None):
        super().__init__()
        if image_size % 4 or image_size < 8:
            raise ValueError(f"ConvVAE needs an image size divisible by 4 (>= 8), got {image_size}")
        self.channels, self.image_size, self.latent_dim, self.n_samples = channels, image_size, latent_dim, n_samples
        s = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, base, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(base, 2 * base, 4, 2, 1), nn.BatchNorm2d(2 * base), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * base * s * s, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * base * s * s), nn.Unflatten(1, (2 * base, s, s)),
            nn.BatchNorm2d(2 * base), nn.ReLU(),
            nn.ConvTranspose2d(2 * base, base, 4, 2, 1), nn.BatchNorm2d(base), nn.ReLU(),
            nn.ConvTranspose2d(base, channels, 4, 2, 1),
        )
        log_std = torch.full((channels, 1, 1), math.log(decoder_std) if decoder_std else math.log(0.1))
        if decoder_std:
            self.register_buffer("decoder_log_std", log_std)
        else:
            self.decoder_log_std = nn.Parameter(log_std)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        want = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"ConvVAE takes [B, {', '.join(map(str, want))}] images, got {tuple(x.shape)}")
        mu, log_std = self.encoder(x).chunk(2, dim=-1)
        return mu, log_std.clamp(-10, 5)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def _decoder_log_std(self) -> Tensor:
        return self.decoder_log_std.clamp(-7, 2)


class GaussianMixture(nn.Module):
    """A mixture of ``n_components`` diagonal Gaussians with an exact ``log_prob``.

    ``init_loc`` (``[n_components, dim]``) places the means; by default they are drawn
    from ``N(0, init_scale^2)``. ``min_log_std`` bounds the variances away from zero
    (a component collapsing onto one sample has unbounded likelihood).

    ``max_std`` bounds the learned standard deviations from above (softly: a std
    initialised at ``max_std`` starts at about half of it), and
    ``learn_std=False`` fixes every standard deviation at ``init_std``, as the
    authors fix their VAE decoder's variance: for LBT this matters, because an
    estimator that can widen its components can "cover" data far from the generator
    by going broad, and a short unroll then rewards a generator that spreads out.
    """

    def __init__(self, dim: int, n_components: int = 16, init_scale: float = 1.0,
                 init_loc: Tensor | None = None, init_std: float = 0.5, min_log_std: float = -6.0,
                 learn_std: bool = True, max_std: float | None = None):
        super().__init__()
        if dim < 1 or n_components < 1:
            raise ValueError("dim and n_components must be >= 1")
        loc = init_loc.clone().float() if init_loc is not None else torch.randn(n_components, dim) * init_scale
        if loc.shape != (n_components, dim):
            raise ValueError(f"init_loc must have shape [{n_components}, {dim}], got {tuple(loc.shape)}")
        self.dim, self.min_log_std = dim, min_log_std
        self.max_log_std = math.log(max_std) if max_std is not None else None
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(loc)
        log_std = torch.full((n_components, dim), math.log(init_std))
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    @classmethod
    def from_data(cls, data: Tensor, n_components: int = 32, **kwargs: Any) -> "GaussianMixture":
        """A mixture placed on the data's scale: means at ``n_components`` distinct random rows of ``data [N, D]``,
        every standard deviation ``s / n_components ** (1 / D)`` with ``s`` the data's mean per-dimension
        standard deviation (the spacing of ``n_components`` points spread over the data), so that the default
        optimizer's small steps fit it to a generator at any data scale. ``kwargs`` go to the constructor."""
        if not isinstance(data, Tensor) or data.dim() != 2 or data.shape[0] < n_components:
            raise ValueError(f"from_data needs a tensor [N >= n_components = {n_components}, dim] of data points, "
                             f"got {tuple(getattr(data, 'shape', ()))}")
        data = data.detach().float()
        if not bool(torch.isfinite(data).all()):
            raise ValueError("from_data: the data contain NaN or inf")
        rows = data[torch.randperm(data.shape[0], device=data.device)[:n_components]].cpu()
        spread = float(data.std(dim=0).mean())
        if not spread > 0:
            raise ValueError("from_data: the data have no spread (every point is the same)")
        std = spread / n_components ** (1.0 / data.shape[1])
        return cls(data.shape[1], n_components, init_loc=rows, init_std=std, **kwargs)

    def log_prob(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixture(dim={self.dim}) takes [B, {self.dim}] inputs, got {tuple(x.shape)}")
        log_std = self._log_std()
        comp = _gaussian_log_prob(x[:, None, :], self.loc, log_std).sum(-1)  # [B, C]
        return torch.logsumexp(comp + torch.log_softmax(self.logits, -1), dim=-1)

    def _log_std(self) -> Tensor:
        """Softly bounded log-stds: ``softplus`` keeps a gradient at the bounds (a clamp would
        freeze a component that touches one)."""
        v = self.log_std
        if self.max_log_std is not None:
            v = self.max_log_std - nn.functional.softplus(self.max_log_std - v)
        return self.min_log_std + nn.functional.softplus(v - self.min_log_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        idx = torch.multinomial(torch.softmax(self.logits, -1), n, replacement=True)
        std = self._log_std().exp()[idx]
        return self.loc[idx] + std * torch.randn_like(std)


class _Coupling(nn.Module):
    def __init__(self, mask: Tensor, hidden: int):
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Maps data towards the base: returns ``u`` and ``log|det du/dx|``."""
        shift, log_scale = self.net(x * self.mask).chunk(2, dim=-1)
        log_scale = torch.tanh(log_scale) * 2.0 * (1 - self.mask)
        u = self.mask * x + (1 - self.mask) * (x - shift) * torch.exp(-log_scale)
        return u, -log_scale.sum(-1)


class RealNVP(nn.Module):
    """A RealNVP flow (Dinh et al., 2017): alternating affine couplings over a standard normal.

    Exact ``log_prob`` by the change of variables; ``loc``/``log_scale`` of a learned
    element-wise affine first layer let it start at the data's scale.
    """

    def __init__(self, dim: int, n_layers: int = 6, hidden: int = 64):
        super().__init__()
        if dim < 2:
            raise ValueError("RealNVP needs dim >= 2 (couplings split the dimensions)")
        masks = [(torch.arange(dim) + i) % 2 == 0 for i in range(n_layers)]
        self.dim = dim
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.layers = nn.ModuleList(_Coupling(m.float(), hidden) for m in masks)

    def log_prob(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"RealNVP(dim={self.dim}) takes [B, {self.dim}] inputs, got {tuple(x.shape)}")
        u = (x - self.loc) * torch.exp(-self.log_scale)
        log_det = -self.log_scale.sum().expand(x.shape[0])
        for layer in self.layers:
            u, ld = layer(u)
            log_det = log_det + ld
        return _gaussian_log_prob(u, torch.zeros_like(u), torch.zeros_like(u)).sum(-1) + log_det

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
