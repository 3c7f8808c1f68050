"""The LBT term's share of the generator's gradient over training, in loops nobody here tuned: before and after
the balance.

    python benchmarks/gradient_share.py                  # the panel, 3 seeds; writes the table to docs/lbt.md
    python benchmarks/gradient_share.py --steps 20 --seeds 1 --out -       # a quick look, printed only

Each loop of ``benchmarks/panel/`` is written in the shape its users write it (pytorch/examples' DCGAN,
PyTorch-GAN's DCGAN and WGAN-GP, Lightning's GAN template, caogang/wgan-gp's 2-D toy, a 2-D MLP GAN on the ring
and the grid), with only the README's lines added, run twice: the paper's fixed form
(``(g_loss + lbt(fake, real)).backward()``) and the balanced default (``lbt(fake, real, gan_loss=g_loss)``).
At the first, middle and last generator step it measures ``|grad_G LBT| / |grad_G GAN|`` on the generator's
parameters (L1, as issue 17 measured it; the balance sets the L2 ratio at the samples to ``weight`` = 1).
Each cell: the median over seeds at that step (smallest to largest).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from _common import publish

PANEL = Path(__file__).resolve().parent / "panel"

#: (label, loop module in benchmarks/panel, keyword arguments of its train(), generator steps by default)
LOOPS: List[Tuple[str, str, Dict, int]] = [
    ("pytorch/examples DCGAN, 1x64x64, BCE", "pytorch_dcgan", {}, 30),
    ("PyTorch-GAN dcgan.py, 1x32x32, BCE", "pytorchgan_dcgan", {}, 100),
    ("PyTorch-GAN wgan_gp.py, 1x28x28 MLP, WGAN-GP", "pytorchgan_wgan_gp", {}, 100),
    ("Lightning GAN template, 1x28x28 MLP, BCE", "lightning_gan", {}, 100),
    ("caogang gan_toy, 2-D WGAN-GP, GaussianMixture", "wgan_gp_2d", {"estimator": "mixture"}, 200),
    ("caogang gan_toy, 2-D WGAN-GP, RealNVP", "wgan_gp_2d", {"estimator": "flow"}, 200),
    ("caogang gan_toy, 2-D WGAN-GP, VAE", "wgan_gp_2d", {"estimator": "vae"}, 200),
    ("2-D MLP GAN, ring, BCE, VAE", "mlp_2d", {"dataset": "ring", "estimator": "vae"}, 200),
    ("2-D MLP GAN, grid, BCE, VAE", "mlp_2d", {"dataset": "grid", "estimator": "vae"}, 200),
]


def load_loop(name: str):
    """A panel loop module (one of this repository's benchmark files)."""
    spec = importlib.util.spec_from_file_location(f"_panel_{name}", PANEL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _norm1(grads) -> float:
    return float(sum(g.abs().sum() for g in grads if g is not None))


#: The loops that read Fashion-MNIST (``root``: where its idx files are; default: Debian's path, ./data).
IMAGE_LOOPS = {"pytorch_dcgan", "pytorchgan_dcgan", "pytorchgan_wgan_gp", "lightning_gan"}


def ratios(loop: str, kwargs: Dict, lbt: str, steps: int, seed: int, root: Optional[str] = None) -> Dict[int, float]:
    """``{step: |grad_G LBT|_1 / |grad_G GAN|_1}`` at the first, middle and last generator step."""
    marks, out = {0, steps // 2, steps - 1}, {}

    def record(step: int, G: torch.nn.Module, gan_loss: torch.Tensor, lbt_term: torch.Tensor) -> None:
        if step in marks and step not in out:
            params = [p for p in G.parameters() if p.requires_grad]
            g_gan = torch.autograd.grad(gan_loss, params, retain_graph=True, allow_unused=True)
            g_lbt = torch.autograd.grad(lbt_term, params, retain_graph=True, allow_unused=True)
            out[step] = _norm1(g_lbt) / _norm1(g_gan)

    module = load_loop(loop)
    if loop == "mlp_2d":
        module.train(seed=seed, steps=steps, lbt=lbt, record=record, **kwargs)
    else:
        module.train(lbt, steps, seed, record, **kwargs, **({"root": root} if loop in IMAGE_LOOPS else {}))
    return out


def _cell(values: List[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.2g} to {max(values):.2g})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="generator steps per loop (default: each loop's)")
    p.add_argument("--only", default=None, help="run only the loops whose label contains this text")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST's idx files (default: Debian's path, ./data)")
    p.add_argument("--out", type=Path, default=Path("docs/lbt.md"), help="'-' to only print")
    args = p.parse_args()
    header = ["| loop | form | first step | middle | last step |", "|---|---|---|---|---|"]
    lines = []
    for label, loop, kwargs, default_steps in LOOPS:
        if args.only and args.only not in label:
            continue
        steps = args.steps or default_steps
        for lbt in ("fixed", "balanced"):
            start = time.perf_counter()
            runs = [ratios(loop, kwargs, lbt, steps, seed, args.data_root) for seed in range(args.seeds)]
            cells = [_cell([r[s] for r in runs]) for s in sorted(runs[0])]
            lines.append(f"| {label} | {lbt} | " + " | ".join(cells) + " |")
            print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    publish("\n".join(header + lines) + (
        f"\n\n|grad_G LBT|_1 / |grad_G GAN|_1 on the generator's parameters at the first, middle and last of "
        f"each loop's generator steps: median (smallest to largest) over {args.seeds} seeds. `fixed`: the "
        "paper's form, `weight=1` in nats per dimension; `balanced`: `gan_loss=` in the call, `weight=1`. Command: "
        f"`{' '.join(['python benchmarks/gradient_share.py', *sys.argv[1:]])}`"), args.out, "gradient-share")


if __name__ == "__main__":
    sys.exit(main())
