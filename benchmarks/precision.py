"""Why LBTLoss computes its term in float32 inside autocast: the bf16 hypergradient, measured.

    python benchmarks/precision.py

For a small DCGAN-style generator and the package's ConvVAE (CPU, bf16 autocast), compares
with the float32 hypergradient of the LBT loss (cosine similarity, norm ratio, loss):
- "bf16 LBT term": the unroll run directly with ``Unroller`` inside autocast;
- "LBTLoss": the package's loss inside autocast (generator in bf16, LBT term in float32).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin.estimators import ConvVAE

OPTIMIZERS = {"adam": lambda m: torch.optim.Adam(m.parameters(), lr=3e-4, betas=(0.5, 0.999)),
              "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=1e-4)}


def setup():
    torch.manual_seed(0)
    G = nn.Sequential(nn.ConvTranspose2d(16, 8, 7), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 4), nn.Tanh())
    est = ConvVAE(1, 28, latent_dim=8, base=8)
    return G, est, torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 16, 1, 1)


def grad_of(G, est, data, z, make_opt, autocast, guarded):
    G, est = copy.deepcopy(G), copy.deepcopy(est)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if guarded:
            loss = LBTLoss(est, k=3, optimizer=make_opt(est), teach_steps=0,  # the summed form, as below
                           reduction="batchmean")(G, data, z=z)
        else:
            fake = G(z)
            view = Unroller(est, make_opt(est), 3)(lambda e: -e.log_prob(fake).mean())
            loss = -view.log_prob(data).mean()
    grads = torch.autograd.grad(loss, list(G.parameters()))
    return loss.float().item(), torch.cat([g.reshape(-1) for g in grads]).float()


def main() -> None:
    G, est, data, z = setup()
    print("| inner optimizer | computed as | cosine to float32 | norm ratio | loss relative error |")
    print("|---|---|---|---|---|")
    for name, make in OPTIMIZERS.items():
        ref_loss, ref = grad_of(G, est, data, z, make, autocast=False, guarded=False)
        for label, guarded in (("bf16 LBT term", False), ("LBTLoss (float32 term)", True)):
            loss, g = grad_of(G, est, data, z, make, autocast=True, guarded=guarded)
            cos = torch.nn.functional.cosine_similarity(g, ref, dim=0).item()
            print(f"| {name} | {label} | {cos:.2f} | {(g.norm() / ref.norm()).item():.3g} | "
                  f"{abs(loss - ref_loss) / abs(ref_loss):.2g} |")


if __name__ == "__main__":
    main()
