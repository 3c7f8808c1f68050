"""A 2-D GAN loop as users write it (MLP generator and discriminator, BCE, Adam), plus the README's lines.

    python benchmarks/panel/mlp_2d.py --dataset ring --seed 0 --lbt balanced

The loop is the shape of the toy GANs in people's notebooks: a data sampler, two small MLPs, one
discriminator and one generator step per iteration on the same generated batch. The lines marked
``# LBT`` are the README's; ``--lbt none`` is the plain GAN, ``fixed`` the paper's fixed-weight form
(``(g_loss + lbt(fake, real)).backward()``), ``balanced`` the package's default LBT-GAN
(``gan_loss=g_loss`` in the call). ``record`` (marked ``# panel``) only measures.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.estimators import VAE, GaussianMixture, RealNVP  # LBT
from lbt_plugin.metrics import grid, mode_stats, ring

def _fixed_std_mixture(sample: Callable[[int], torch.Tensor]) -> Tuple[nn.Module, dict]:
    """docs/estimators.md's snippet at the data's scale: 50 components of fixed std an eighth of the data's
    half-width, taught by SGD at 4 std^2 with 10 teaching steps (the 2-D benchmark's recipe estimator)."""
    extent = float(sample(4096).abs().max())
    std = extent / 8
    est = GaussianMixture(2, 50, init_scale=extent / 2, init_std=std, learn_std=False)
    return est, {"optimizer": torch.optim.SGD(est.parameters(), lr=4 * std**2), "teach_steps": 10}


#: The package's point estimators, as a user builds them from their data sampler: (estimator, LBTLoss kwargs).
ESTIMATORS: Dict[str, Callable[[Callable[[int], torch.Tensor]], Tuple[nn.Module, dict]]] = {
    "vae": lambda sample: (VAE(2), {}),
    "mixture": lambda sample: (GaussianMixture.from_data(sample(4096), 32), {}),
    "flow": lambda sample: (RealNVP(2), {}),
    "mixture-sgd": _fixed_std_mixture,
}


def train(dataset: str = "ring", seed: int = 0, steps: int = 3000, lbt: str = "balanced", weight: float = 1.0,
          estimator: str = "vae", k: int = 5, batch: int = 256, record: Optional[Callable] = None) -> dict:
    torch.manual_seed(seed)
    target = {"ring": ring, "grid": grid}[dataset]()
    G = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
    D = nn.Sequential(nn.Linear(2, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128), nn.LeakyReLU(0.2),
                      nn.Linear(128, 1))
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    if lbt != "none":
        estimator_module, options = ESTIMATORS[estimator](target.sample)  # LBT
        loss_lbt = LBTLoss(estimator_module, k=k, weight=weight, **options)  # LBT
    for step in range(steps):
        real = target.sample(batch)
        fake = G(torch.randn(batch, 2))
        # discriminator
        opt_d.zero_grad()
        d_loss = criterion(D(real), ones) + criterion(D(fake.detach()), zeros)
        d_loss.backward()
        opt_d.step()
        # generator
        opt_g.zero_grad()
        g_loss = criterion(D(fake), ones)
        if lbt == "none":
            g_loss.backward()
        else:
            extra = loss_lbt(fake, real, gan_loss=g_loss if lbt == "balanced" else None)  # LBT
            if record is not None:  # panel
                record(step, G, g_loss, extra)  # panel
            (g_loss + extra).backward()  # LBT
        opt_g.step()
    with torch.no_grad():
        stats = mode_stats(G(torch.randn(2500, 2)), target)
    return {"modes": stats.modes, "high_quality": stats.high_quality, "kl": stats.kl, "n_modes": target.n_modes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["ring", "grid"], default="ring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lbt", choices=["none", "fixed", "balanced"], default="balanced")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--estimator", choices=sorted(ESTIMATORS), default="vae")
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args()
    print(json.dumps({**vars(args), **train(args.dataset, args.seed, args.steps, args.lbt, args.weight,
                                            args.estimator, args.k)}))


if __name__ == "__main__":
    main()
