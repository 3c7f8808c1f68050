"""How large the LBT term's gradient on G is against the GAN loss's, at the start of training, per reduction.

    python benchmarks/gradient_balance.py             # prints the table and writes it to docs/lbt.md

For three loops, at the first generator step (freshly initialised networks, one teaching step,
K = 5, the estimator's default Adam), the ratio of the norms of the two gradients on the
generator's parameters, ``|grad_G LBT| / |grad_G GAN|`` (L1 norms, as the issue that asked for
it measured, and L2), with ``LBTLoss``'s ``reduction="batchmean"`` (the summed log-likelihood,
the paper's form and this package's former default) and ``reduction="mean"`` (nats per data
dimension, the default):

- 2-D: the mode-collapse benchmark's generator and mixture estimator on the 25-mode grid
  (``benchmarks/mode_collapse_2d.py``);
- stacked: ``examples/dcgan_lbt.py`` on Stacked Fashion-MNIST (3 x 28 x 28), its ConvVAE;
- pytorch DCGAN: the 64 x 64 x 3 DCGAN of pytorch/examples' ``dcgan/main.py`` (ngf = ndf = 64,
  nz = 100), written out here, with ``ConvVAE(3, 64)`` as in the line
  ``errG = criterion(output, label) + LBTLoss(ConvVAE(nc, 64), k=5)(netG, real_cpu, z=noise)``;
  real images: Stacked Fashion-MNIST resized to 64 x 64 (the loop's own datasets are not
  offline here; the ratio depends on the data only through its scale, [-1, 1] in both).

Each cell is the median (and range) over 5 seeds of network initialisation.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Callable, Tuple

import torch
from torch import nn

import mode_collapse_2d as mc
from _common import dcgan_example, publish, stacked_images
from lbt_plugin import LBTLoss
from lbt_plugin.estimators import ConvVAE


class PytorchDCGANGenerator(nn.Module):
    """The generator of pytorch/examples' dcgan/main.py: z [B, nz, 1, 1] -> [B, nc, 64, 64]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        self.main = nn.Sequential(*layers, nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class PytorchDCGANDiscriminator(nn.Module):
    """The discriminator of pytorch/examples' dcgan/main.py: [B, nc, 64, 64] -> probability [B]."""

    def __init__(self, ndf: int = 64, nc: int = 3):
        super().__init__()
        widths = [ndf, ndf * 2, ndf * 4, ndf * 8]
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
        self.main = nn.Sequential(*layers, nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


Problem = Tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable[[], nn.Module], torch.Tensor, torch.Tensor]


def two_d(seed: int) -> Problem:
    run = mc.Run("lbt-gan", "grid", [seed], mc.Config())
    real, z = run.batch()
    gan = lambda fake: mc.gan_loss(run.D(fake.transpose(0, 1)), 1.0)  # noqa: E731  (fake: [B, 1, 2])
    return _BatchFirst(run.G), gan, lambda: run.est, real.transpose(0, 1), z.transpose(0, 1)


class _BatchFirst(nn.Module):
    """The benchmark's seed-batched generator ``[S, B, .] -> [S, B, 2]`` seen as ``[B, S, .] -> [B, S, 2]``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z.transpose(0, 1)).transpose(0, 1)


def _images(size: int, n: int) -> torch.Tensor:
    x = stacked_images(None, size)
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]


def stacked(seed: int) -> Problem:
    dcgan_lbt = dcgan_example()
    torch.manual_seed(seed)
    G, D = dcgan_lbt.Generator(100, 64, 3, 28), dcgan_lbt.Discriminator(64, 3, 28)
    G.apply(dcgan_lbt.weights_init), D.apply(dcgan_lbt.weights_init)
    bce = nn.BCEWithLogitsLoss()
    gan = lambda fake: bce(D(fake), torch.ones(fake.shape[0]))  # noqa: E731
    return G, gan, lambda: ConvVAE(3, 28, latent_dim=64, base=32), _images(28, 64), torch.randn(64, 100, 1, 1)


def pytorch_dcgan(seed: int) -> Problem:
    weights_init = dcgan_example().weights_init  # the same as pytorch/examples' weights_init
    torch.manual_seed(seed)
    G, D = PytorchDCGANGenerator(), PytorchDCGANDiscriminator()
    G.apply(weights_init), D.apply(weights_init)
    bce = nn.BCELoss()
    gan = lambda fake: bce(D(fake), torch.ones(fake.shape[0]))  # noqa: E731
    return G, gan, lambda: ConvVAE(3, 64), _images(64, 64), torch.randn(64, 100, 1, 1)


PROBLEMS = {"2-D grid (2 dims)": two_d, "stacked Fashion-MNIST (2,352 dims)": stacked,
            "pytorch DCGAN 64x64x3 (12,288 dims)": pytorch_dcgan}


def ratios(make: Callable[[int], Problem], seed: int, reduction: str) -> Tuple[float, float]:
    G, gan, estimator, real, z = make(seed)
    params = [p for p in G.parameters() if p.requires_grad]
    fake = G(z)
    g_gan = torch.autograd.grad(gan(fake), params, retain_graph=True)
    torch.manual_seed(seed)
    g_lbt = torch.autograd.grad(LBTLoss(estimator(), k=5, reduction=reduction)(fake, real), params)
    l1 = sum(g.abs().sum() for g in g_lbt) / sum(g.abs().sum() for g in g_gan)
    l2 = torch.cat([g.reshape(-1) for g in g_lbt]).norm() / torch.cat([g.reshape(-1) for g in g_gan]).norm()
    return float(l1), float(l2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/lbt.md"), help="'-' to only print")
    args = p.parse_args()
    lines = ["| loop | batchmean (summed): L1 ratio | batchmean: L2 ratio | mean (default): L1 ratio | "
             "mean: L2 ratio |", "|---|---|---|---|---|"]
    for name, make in PROBLEMS.items():
        cells = []
        for reduction in ("batchmean", "mean"):
            values = [ratios(make, seed, reduction) for seed in range(args.seeds)]
            for norm in (0, 1):
                v = [x[norm] for x in values]
                cells.append(f"{statistics.median(v):.3g} ({min(v):.2g} to {max(v):.2g})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    body = "\n".join(lines) + (f"\n\n|grad_G LBT| / |grad_G GAN| at the first generator step: median (smallest to "
                               f"largest) over {args.seeds} initialisations. Command: "
                               "`python benchmarks/gradient_balance.py`")
    publish(body, args.out, "balance", title="# LBT")


if __name__ == "__main__":
    main()
