"""GAN, Unrolled GAN, LBT and LBT-GAN on the 2-D ring and grid: the mode-collapse benchmark.

    python examples/mode_collapse_2d.py                       # all methods, both datasets, 3 seeds
    python examples/mode_collapse_2d.py --steps 300 --seeds 1 # a quick look

Every method uses the same generator and discriminator (MLPs of two tanh layers of
128, as in the authors' toy code), the same optimizers and the same number of
generator updates. Prints a table of modes captured, high-quality share and
mode-histogram KL (mean +- standard error over seeds), saves a scatter plot per
dataset, and writes the table into docs/results.md between its markers.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import re
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn
from tqdm import tqdm

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin.estimators import GaussianMixture, VAE
from lbt_plugin.metrics import Mixture, ModeStats, grid, mode_stats, ring

METHODS = ("gan", "unrolled-gan", "lbt", "lbt-gan")
NAMES = {"gan": "GAN", "unrolled-gan": "Unrolled GAN", "lbt": "LBT", "lbt-gan": "LBT-GAN"}
DATASETS = {"ring": ring, "grid": grid}


@dataclass
class Config:
    """Hyper-parameters, chosen once for every method and dataset (see docs/results.md)."""

    steps: int = 6000
    batch: int = 256
    latent: int = 16
    hidden: int = 128
    g_lr: float = 1e-3
    d_lr: float = 1e-4
    betas: tuple = (0.5, 0.999)
    k: int = 5  # unrolled steps, for Unrolled GAN's discriminator and LBT's estimator
    teach_steps: int = 10  # ordinary estimator steps per generator step (authors: about 10-15)
    estimator: str = "mixture"
    components: int = 50
    component_std: float = 0.125  # fixed component std, times the data's extent
    est_optimizer: str = "sgd"  # the estimator's optimizer, for teaching and unrolled steps
    est_lr: float = 4.0  # SGD: step size in units of the components' variance (1.0 on the grid)
    adam_lr: float = 3e-3  # Adam (--est-optimizer adam, the ablation): step size
    lambda_gan: float = 0.1  # LBT-GAN: lambda * GAN loss + LBT loss (authors' toy setting)
    clip: float = 5.0
    eval_samples: int = 2500


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


def component_std(cfg: Config, mixture: Mixture) -> float:
    """The mixture estimator's fixed std: ``cfg.component_std`` times the data's extent."""
    return cfg.component_std * float(mixture.centers.abs().max())


def make_estimator(cfg: Config, mixture: Mixture) -> nn.Module:
    scale = float(mixture.centers.abs().max())
    if cfg.estimator == "mixture":
        # Fixed component std, relative to the data's extent, like the authors' fixed VAE decoder
        # variance: a learnable std lets the mixture cover far data by widening, and a short unroll
        # then rewards a generator that spreads out (docs/results.md, "What was tried").
        return GaussianMixture(2, cfg.components, init_scale=scale / 2, init_std=component_std(cfg, mixture),
                               learn_std=False)
    return VAE(2)


def make_estimator_optimizer(cfg: Config, mixture: Mixture, est: nn.Module) -> torch.optim.Optimizer:
    """SGD whose step is ``est_lr`` times the components' variance, so one setting serves both datasets.

    A mean's gradient is ``pi_k (mean of its samples - mu_k) / sigma^2``: the step moves it a fraction
    ``est_lr * pi_k`` of the way, on any scale. SGD's update is linear in the gradient, so the
    unrolled steps pass the teaching signal on in proportion; Adam divides it by its own running
    magnitude, and on the grid LBT then missed modes (the ablation in docs/results.md).
    """
    if cfg.est_optimizer == "sgd":
        return torch.optim.SGD(est.parameters(), lr=cfg.est_lr * component_std(cfg, mixture) ** 2)
    return torch.optim.Adam(est.parameters(), lr=cfg.adam_lr, betas=cfg.betas)


def evaluate(G: nn.Module, mixture: Mixture, cfg: Config, seed: int) -> tuple:
    with torch.no_grad():
        samples = G(torch.randn(cfg.eval_samples, cfg.latent, generator=torch.Generator().manual_seed(seed)))
    return mode_stats(samples, mixture), samples


def train(method: str, mixture: Mixture, seed: int, cfg: Config, progress: bool = True,
          eval_every: int = 0) -> tuple:
    """One run; returns the final ``ModeStats``, the evaluation samples and the history of
    ``(step, ModeStats)`` taken every ``eval_every`` steps (none when 0)."""
    torch.manual_seed(seed)
    data_gen = torch.Generator().manual_seed(10_000 + seed)
    G, D = mlp(cfg.latent, 2, cfg.hidden), mlp(2, 1, cfg.hidden)
    g_opt = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(cfg.batch, 1), torch.zeros(cfg.batch, 1)
    use_d = method != "lbt"
    lbt = None
    if method in ("lbt", "lbt-gan"):
        est = make_estimator(cfg, mixture)
        e_opt = make_estimator_optimizer(cfg, mixture, est)
        lbt = LBTLoss(est, k=cfg.k, optimizer=e_opt, teach_steps=cfg.teach_steps)
    unroll = Unroller(D, d_opt, k=cfg.k) if method == "unrolled-gan" else None
    bar = tqdm(range(cfg.steps), desc=f"{mixture_name(mixture)} {NAMES[method]} seed {seed}", leave=False,
               disable=not progress)
    history = []
    for step in bar:
        real = mixture.sample(cfg.batch, data_gen)
        fake = G(torch.randn(cfg.batch, cfg.latent))
        if use_d:  # one discriminator step
            d_opt.zero_grad()
            d_loss = bce(D(real), ones) + bce(D(fake.detach()), zeros)
            d_loss.backward()
            d_opt.step()
        g_opt.zero_grad()
        if method == "gan":
            g_loss = bce(D(fake), ones)
        elif method == "unrolled-gan":
            D_K = unroll(lambda d: bce(d(real), ones) + bce(d(fake), zeros))
            g_loss = bce(D_K(fake), ones)
        elif method == "lbt":
            g_loss = lbt(fake, real)
        else:
            g_loss = cfg.lambda_gan * bce(D(fake), ones) + lbt(fake, real)
        g_loss.backward()
        nn.utils.clip_grad_norm_(G.parameters(), cfg.clip)
        g_opt.step()
        if eval_every and (step + 1) % eval_every == 0:
            stats, _ = evaluate(G, mixture, cfg, seed)
            history.append((step + 1, stats))
            bar.set_postfix(modes=stats.modes, hq=f"{stats.high_quality:.2f}")
    stats, samples = evaluate(G, mixture, cfg, seed)
    return stats, samples, history


def mixture_name(m: Mixture) -> str:
    return "ring" if m.n_modes == 8 else "grid"


def mean_se(xs: List[float]) -> str:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:.2f}"
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return f"{m:.2f} ± {se:.2f}"


def table(results: Dict[str, Dict[str, List[ModeStats]]], n_seeds: int) -> str:
    lines = ["| dataset | method | modes | high-quality % | KL(modes ‖ uniform) | all modes, every seed |",
             "|---|---|---|---|---|---|"]
    for ds, by_method in results.items():
        n_modes = DATASETS[ds]().n_modes
        for method, stats in by_method.items():
            lines.append(
                f"| {ds} ({n_modes}) | {NAMES[method]} | {mean_se([s.modes for s in stats])} | "
                f"{mean_se([100 * s.high_quality for s in stats])} | {mean_se([s.kl for s in stats])} | "
                f"{'yes' if all(s.modes == n_modes for s in stats) else 'no'} |")
    return "\n".join(lines)


def plot(samples: Dict[str, torch.Tensor], mixture: Mixture, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.3), squeeze=False)
    lim = float(mixture.centers.abs().max()) * 1.4 + 0.2
    for ax, (method, s) in zip(axes[0], samples.items()):
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:blue")
        ax.scatter(mixture.centers[:, 0], mixture.centers[:, 1], s=25, marker="x", color="tab:red")
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.set_title(NAMES[method])
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(md_path: Path, body: str, name: str = "2d-table") -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = md_path.read_text() if md_path.exists() else f"# Results\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    md_path.write_text(text)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


class _Inline:
    """A stand-in for a process pool that runs each task at submission (``--jobs 1``)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, *args) -> Future:  # type: ignore[no-untyped-def]
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def main() -> None:
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=cfg.steps, help="generator updates per run")
    p.add_argument("--estimator", choices=["mixture", "vae"], default=cfg.estimator)
    p.add_argument("--est-optimizer", choices=["sgd", "adam"], default=cfg.est_optimizer,
                   help="the estimator's optimizer (default: sgd; adam is the ablation in docs/results.md)")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the scatter plots")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"),
                   help="markdown file whose 2d-table markers receive the table ('-' to skip)")
    p.add_argument("--table", default="2d-table",
                   help="name of the markers in --results that receive the table (default: 2d-table)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    args = p.parse_args()
    if args.seeds < 1 or args.steps < 1 or args.jobs < 1 or args.threads < 1:
        p.error("--seeds, --steps, --jobs and --threads must be >= 1")
    if args.estimator == "vae" and args.est_optimizer == "sgd":
        p.error("--estimator vae needs --est-optimizer adam (the SGD step is set in units of the mixture's variance)")
    torch.set_num_threads(args.threads)
    cfg.steps, cfg.estimator, cfg.est_optimizer = args.steps, args.estimator, args.est_optimizer
    t0 = time.time()
    tasks = [(ds, method, seed) for ds in args.datasets for method in args.methods for seed in range(args.seeds)]
    results: Dict[str, Dict[str, List[ModeStats]]] = {ds: {m: [] for m in args.methods} for ds in args.datasets}
    shown: Dict[str, Dict[str, torch.Tensor]] = {ds: {} for ds in args.datasets}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(args.threads,)) if args.jobs > 1 else _Inline() as pool:
        futures = {pool.submit(train, method, DATASETS[ds](), seed, cfg, args.jobs == 1): (ds, method, seed)
                   for ds, method, seed in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs", disable=args.jobs == 1):
            ds, method, seed = futures[future]
            stats, samples, _ = future.result()
            results[ds][method].append(stats)
            if seed == 0:
                shown[ds][method] = samples
            tqdm.write(f"{ds:4s} {NAMES[method]:12s} seed {seed}: modes {stats.modes:2d}/{DATASETS[ds]().n_modes}, "
                       f"high quality {100 * stats.high_quality:5.1f}%, KL {stats.kl:.3f}")
    for ds in args.datasets:
        plot({m: shown[ds][m] for m in args.methods}, DATASETS[ds](), args.out / f"mode_collapse_{ds}.png")
    minutes = (time.time() - t0) / 60
    body = table(results, args.seeds)
    cmd = (f"python examples/mode_collapse_2d.py --seeds {args.seeds} --steps {args.steps} "
           f"--estimator {args.estimator} --est-optimizer {args.est_optimizer}")
    if args.methods != list(METHODS):
        cmd += " --methods " + " ".join(args.methods)
    if args.datasets != list(DATASETS):
        cmd += " --datasets " + " ".join(args.datasets)
    if args.table != "2d-table":
        cmd += f" --table {args.table} --out {args.out}"
    footer = (f"\n\n{args.seeds} seeds, {cfg.steps} generator updates per run, {cfg.eval_samples} samples per "
              f"evaluation; {minutes:.1f} min wall clock, {args.jobs} run(s) at a time with {args.threads} CPU "
              f"thread(s) each. Command: `{cmd}`")
    print("\n" + body + footer)
    if str(args.results) != "-":
        write_results(args.results, body + footer, args.table)
        print(f"\ntable written to {args.results}; plots in {args.out}/")


if __name__ == "__main__":
    main()
