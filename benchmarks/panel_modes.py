"""GAN against LBT-GAN in the panel's 2-D loop (MLP G and D, BCE, Adam, as users write it), every seed shown.

    python benchmarks/panel_modes.py                      # ring and grid, 5 seeds, 3,000 updates; table to docs/lbt.md
    python benchmarks/panel_modes.py --results runs/panel_modes.jsonl   # resume: finished runs are reused

Methods: the plain GAN, and LBT-GAN with the README's lines and the balanced default (``gan_loss=g_loss``,
``weight=1``) for each of the package's point estimators (``GaussianMixture(2, 32)``, ``VAE(2)``,
``RealNVP(2)``, their defaults; and docs/estimators.md's fixed-std mixture taught by SGD, 10 teaching steps),
and the paper's fixed form with the VAE (the issue's coin toss). Metrics of
2,500 samples at the end (the VEEGAN / PacGAN protocol: modes captured, share of high-quality samples within
3 standard deviations of a mode, KL of the mode histogram to uniform).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

from _common import mean_se, publish

PANEL = Path(__file__).resolve().parent / "panel"
#: (label, lbt form, estimator)
METHODS: List[Tuple[str, str, str]] = [
    ("GAN", "none", "-"),
    ("LBT-GAN, GaussianMixture, balanced", "balanced", "mixture"),
    ("LBT-GAN, VAE, balanced", "balanced", "vae"),
    ("LBT-GAN, RealNVP, balanced", "balanced", "flow"),
    ("LBT-GAN, fixed-std mixture + SGD, balanced", "balanced", "mixture-sgd"),
    ("LBT-GAN, VAE, fixed form", "fixed", "vae"),
]


def _loop():
    spec = importlib.util.spec_from_file_location("_panel_mlp_2d", PANEL / "mlp_2d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key(d: Dict) -> Tuple:
    return d["dataset"], d["seed"], d["steps"], d["lbt"], d["estimator"] if d["lbt"] != "none" else "-", d["weight"]


def table(results: List[Dict], datasets: List[str], seeds: int, steps: int, weight: float) -> str:
    lines = ["| data | method | modes (mean ± s.e.) | high quality % | KL | every seed: modes / HQ % |",
             "|---|---|---|---|---|---|"]
    done = {_key(r): r for r in results}
    for ds in datasets:
        for label, lbt, est in METHODS:
            runs = [done.get((ds, s, steps, lbt, est, weight)) for s in range(seeds)]
            runs = [r for r in runs if r is not None]
            if not runs:
                continue
            per = ", ".join(f"{r['modes']}/{100 * r['high_quality']:.0f}" for r in runs)
            lines.append(f"| {ds} ({runs[0]['n_modes']} modes) | {label} | {mean_se([r['modes'] for r in runs], 1)} | "
                         f"{mean_se([100 * r['high_quality'] for r in runs], 1)} | {mean_se([r['kl'] for r in runs])} | "
                         f"{per} |")
    return "\n".join(lines) + (
        f"\n\nThe panel's 2-D loop (`benchmarks/panel/mlp_2d.py`: MLP G and D of 128, BCE, Adam 1e-3 with "
        f"beta1 0.5, batch 256, {steps} updates), {seeds} seeds; 2,500 samples at the end. Command: "
        f"`python benchmarks/panel_modes.py --seeds {seeds} --steps {steps}`")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["ring", "grid"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--results", type=Path, default=Path("runs/panel_modes.jsonl"))
    p.add_argument("--out", type=Path, default=Path("docs/lbt.md"), help="'-' to only print")
    args = p.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    results = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    done = {_key(r) for r in results}
    loop = _loop()
    for seed in range(args.seeds):
        for ds in args.datasets:
            for label, lbt, est in METHODS:
                key = (ds, seed, args.steps, lbt, est, args.weight)
                if key in done:
                    continue
                start = time.perf_counter()
                out = loop.train(ds, seed, args.steps, lbt, args.weight, est if est != "-" else "vae")
                record = {"dataset": ds, "seed": seed, "steps": args.steps, "lbt": lbt, "weight": args.weight,
                          "estimator": est if lbt != "none" else "-", **out,
                          "seconds": round(time.perf_counter() - start, 1)}
                with open(args.results, "a") as f:
                    f.write(json.dumps(record) + "\n")
                results.append(record)
                print(json.dumps(record), flush=True)
    publish(table(results, args.datasets, args.seeds, args.steps, args.weight), args.out, "panel-modes")


if __name__ == "__main__":
    main()
