"""What one generator update costs on the stacked protocol: every method of benchmarks/stacked_fashion.py against a
DCGAN update, timed in one process, interleaved round by round.

    python benchmarks/step_cost.py                        # every method, 1 thread; writes docs/results.md
    python benchmarks/step_cost.py --methods dcgan lbt-gan-fast --rounds 5 --out -   # a quick look, printed only

Each method is built as the benchmark builds it (``stacked_fashion.Run``: the example's DCGAN with a discriminator a
quarter as wide, batch 64, the method's estimator and LBT settings) on Stacked Fashion-MNIST, warmed up, and then
timed for ``--updates`` updates (one discriminator and one generator update each, what ``Run.step`` does) in every
round; the rounds visit the methods in a rotated order, so that a slower or faster spell of a shared machine falls
on all of them. Reported: the median over rounds of seconds per update, and its ratio to DCGAN's median.
Methods whose LBT term runs on every n-th step only are timed over a multiple of n updates.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from tqdm import tqdm

from _common import publish, stacked_images
from stacked_fashion import METHODS, NAMES, SETTINGS, Config, Run


def time_updates(methods: Sequence[str], data: torch.Tensor, rounds: int, updates: int,
                 warmup: int = 2) -> Dict[str, List[float]]:
    """``{method: [seconds per update, one per round]}`` for ``Run(method, seed=0)`` on ``data``."""
    if "dcgan" not in methods:
        raise ValueError("--methods must include dcgan: the ratios are to its update")
    runs = {m: Run(m, 0, Config(), data=data) for m in methods}
    counts = {m: updates * SETTINGS.get(m, {}).get("every", 1) for m in methods}
    for run in runs.values():
        for _ in range(warmup):
            run.step()
    seconds: Dict[str, List[float]] = {m: [] for m in methods}
    for r in tqdm(range(rounds), desc="rounds", leave=False):
        order = list(methods[r % len(methods):]) + list(methods[:r % len(methods)])
        for m in order:
            start = time.perf_counter()
            for _ in range(counts[m]):
                runs[m].step()
            seconds[m].append((time.perf_counter() - start) / counts[m])
    return seconds


def table(seconds: Dict[str, List[float]]) -> str:
    base = statistics.median(seconds["dcgan"])
    lines = ["| method | ms per update (median) | x DCGAN update | rounds (ms per update) |", "|---|---|---|---|"]
    for m, values in seconds.items():
        med = statistics.median(values)
        lines.append(f"| {NAMES[m]} | {med * 1e3:.0f} | {med / base:.1f} | "
                     f"{', '.join(f'{v * 1e3:.0f}' for v in values)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--updates", type=int, default=4, help="updates per method and round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark's runs use 1)")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/results.md"), help="'-' to only print")
    args = p.parse_args()
    if args.rounds < 1 or args.updates < 1 or args.threads < 1:
        p.error("--rounds, --updates and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    seconds = time_updates(args.methods, stacked_images(args.data_root), args.rounds, args.updates)
    text = table(seconds)
    print(text)
    publish(text + (f"\n\nOne discriminator and one generator update of each method of `benchmarks/stacked_fashion.py` "
                    f"on the CPU, {args.threads} torch thread(s), {args.rounds} interleaved rounds of {args.updates} "
                    f"updates (every-4th-step methods: {4 * args.updates}). Command: "
                    f"`{' '.join(['python benchmarks/step_cost.py', *sys.argv[1:]])}`"), args.out, "stacked-cost")


if __name__ == "__main__":
    sys.exit(main())
