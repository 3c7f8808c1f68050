"""GAN, Unrolled GAN, LBT and LBT-GAN on the 2-D ring and grid: the mode-collapse benchmark.

    python benchmarks/mode_collapse_2d.py                   # docs/results.md's table: 4 methods x 2 datasets x 5 seeds
    python benchmarks/mode_collapse_2d.py --quick           # a minutes-long look at the same protocol
    python benchmarks/mode_collapse_2d.py --runs runs/2d    # resume: finished runs are reused, others continue
    python benchmarks/mode_collapse_2d.py --device cuda     # on a GPU (the default where one is visible)

The protocol follows PacGAN's 2-D code (github fjxmlzn/PacGAN): a 2-D Gaussian latent, a
generator of ReLU layers with batch normalisation, a maxout discriminator, Adam with
beta1 = 0.8, batch 100, one discriminator and one generator update per iteration computed
at the same parameters, 2,500 samples per evaluation. Where we differ from it (widths,
learning rate, number of updates; see ``Config`` and docs/results.md) we say so.

All seeds of one method train as one batched model: every parameter has a leading seed
dimension, layers are batched matrix products, and each loss is the *sum* over seeds of
the per-seed loss, so every seed's gradients are those of the seed run alone in exact
arithmetic (``tests/test_mode_collapse_benchmark.py`` checks it in float64; in float32 a
seed's rounding can depend on how many seeds share the batch, and training amplifies it).
One ``LBTLoss`` call teaches and unrolls the estimators of all seeds at once.

Every run checkpoints to ``--runs`` at each evaluation; an interrupted benchmark continues
where it stopped and rebuilds the table from what is done. The table, a plot of modes,
high-quality share and KL against generator updates (all methods, mean ± s.e. over seeds),
and the final scatter plots go to docs/results.md and docs/img.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm import tqdm

from _common import (ResumableRun, add_device_flag, mean_se, plot_mean_se, pool, publish, pyplot, require_positive,
                     train_resumable)
from lbt_plugin import LBTLoss, Unroller
from lbt_plugin.estimators import GaussianMixture, RealNVP
from lbt_plugin.metrics import DataMixture, ModeStats, grid, mode_stats, ring

METHODS = ("gan", "unrolled-gan", "lbt", "lbt-gan", "lbt-gan-defaults")
NAMES = {"gan": "GAN", "unrolled-gan": "Unrolled GAN", "lbt": "LBT", "lbt-gan": "LBT-GAN (recipe)",
         "lbt-gan-defaults": "LBT-GAN (defaults)"}


def _flow(cfg: "Config", extent: float) -> Tuple[nn.Module, Optional[Callable[..., torch.optim.Optimizer]]]:
    """The package's documented point estimator, taught by LBTLoss's default optimizer (Adam 3e-4)."""
    return RealNVP(2), None


def _mixture(cfg: "Config", extent: float) -> Tuple[nn.Module, Optional[Callable[..., torch.optim.Optimizer]]]:
    """The recipe's estimator in the package's form: ``GaussianMixture`` of ``components`` fixed stds
    ``est_std * extent`` (``learn_std=False``; no annealing), means ~ N(0, (extent / 2)^2), taught by SGD at
    ``est_lr * std^2`` (docs/estimators.md's snippet). Its soft lower bound on log-std widens the std by 2% on the
    ring, 0.5% on the grid."""
    std = cfg.est_std * extent
    est = GaussianMixture(2, cfg.components, init_scale=extent / 2, init_std=std, learn_std=False)
    return est, lambda params: torch.optim.SGD(params, lr=cfg.est_lr * std**2)


#: "lbt-gan-defaults": the README's lines, ``LBTLoss(estimator, k=5)(fake, real, gan_loss=g_loss)`` (balanced,
#: weight 1, one teaching step), with the estimator ``Config.defaults_estimator`` names (``--set
#: defaults_estimator=mixture``): each entry makes ``(estimator, optimizer factory or None for LBTLoss's)``.
POINT_ESTIMATORS = {"flow": _flow, "mixture": _mixture}
DATASETS = {"ring": ring, "grid": grid}


@dataclass
class Config:
    """Hyper-parameters, one set for every method and dataset (docs/results.md says why each)."""

    steps: int = 20000  # generator updates (= discriminator updates) per run
    batch: int = 100  # PacGAN
    latent: int = 2  # PacGAN: z ~ N(0, I_2)
    g_hidden: int = 128  # PacGAN: 400
    g_layers: int = 4  # PacGAN: 4 x (linear, batch norm, ReLU)
    d_units: int = 64  # PacGAN: 200 maxout units of 5 pieces, 3 layers
    d_pieces: int = 5
    d_layers: int = 3
    lr: float = 1e-3  # the generator's (the LBT authors' toy setting); PacGAN: 1e-4 for both, 400k updates
    d_lr: float = 1e-4  # the discriminator's (the LBT authors' toy setting)
    lr_final: float = 0.0  # G's learning rate decays linearly to this over the run, D's in proportion
    betas: Tuple[float, float] = (0.8, 0.999)  # PacGAN
    init_std: float = 0.02  # PacGAN: weights ~ N(0, 0.02^2), biases 0
    k: int = 5  # unrolled steps: Unrolled GAN's discriminator, LBT's estimator
    teach_steps: int = 10  # ordinary estimator steps per generator step (the authors: about 10-15)
    components: int = 50  # the mixture estimator's components
    est_std: float = 0.125  # the mixture's fixed component std, times the data's extent
    est_std_final: float = 0.125  # annealed geometrically to this over the run (equal: no annealing)
    est_lr: float = 4.0  # SGD step of the estimator, in units of its variance
    lbt_weight: float = 1.0  # LBTLoss weight: the recipe's in nats per dimension; the defaults' balance ratio
    defaults_teach_steps: int = 1  # the defaults' LBTLoss teach_steps (the package's default; --set ablates it)
    defaults_estimator: str = "flow"  # the defaults' estimator, a POINT_ESTIMATORS name (--set ablates it)
    defaults_smoothing: float = 0.0  # the defaults' LBTLoss smoothing (the package's default; --set ablates it)
    defaults_weight_decay: bool = False  # the defaults' ratio follows the learning rates' schedule (lbt_weight * it)
    gan_weight: float = 0.05  # LBT-GAN: gan_weight * GAN loss + LBT loss (the authors' lambda 0.1 on the summed term)
    eval_every: int = 1000
    eval_samples: int = 2500  # VEEGAN / PacGAN


# ----------------------------------------------------------------------------------------------- batched models
def _draw(gens: Sequence[torch.Generator], shape: Tuple[int, ...], std: float) -> Tensor:
    """``[S, *shape]`` of N(0, std^2), slice ``s`` drawn from ``gens[s]`` (so one seed alone draws the same)."""
    return torch.stack([torch.randn(shape, generator=g) * std for g in gens])


class SeedLinear(nn.Module):
    """S independent linear layers, ``x [S, B, n_in] -> [S, B, n_out]`` by batched matrix products."""

    def __init__(self, gens: Sequence[torch.Generator], n_in: int, n_out: int, std: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(_draw(gens, (n_in, n_out), std))
        self.bias = nn.Parameter(torch.zeros(len(gens), 1, n_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)


class SeedBatchNorm(nn.Module):
    """Batch normalisation over each seed's batch (dimension 1), with a learned scale and shift per seed."""

    def __init__(self, seeds: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(seeds, 1, features))
        self.bias = nn.Parameter(torch.zeros(seeds, 1, features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class Maxout(nn.Module):
    """A maxout layer: ``units`` outputs, each the max of ``pieces`` linear functions."""

    def __init__(self, gens: Sequence[torch.Generator], n_in: int, units: int, pieces: int, std: float):
        super().__init__()
        self.linear, self.units, self.pieces = SeedLinear(gens, n_in, units * pieces, std), units, pieces

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).unflatten(-1, (self.units, self.pieces)).amax(-1)


def generator(cfg: Config, gens: Sequence[torch.Generator]) -> nn.Sequential:
    """PacGAN's generator shape: ``g_layers`` x (linear without bias, batch norm, ReLU), then linear to 2-D."""
    layers: List[nn.Module] = []
    n_in = cfg.latent
    for _ in range(cfg.g_layers):
        layers += [SeedLinear(gens, n_in, cfg.g_hidden, cfg.init_std, bias=False),
                   SeedBatchNorm(len(gens), cfg.g_hidden), nn.ReLU()]
        n_in = cfg.g_hidden
    return nn.Sequential(*layers, SeedLinear(gens, n_in, 2, cfg.init_std))


def discriminator(cfg: Config, gens: Sequence[torch.Generator]) -> nn.Sequential:
    """PacGAN's discriminator shape: ``d_layers`` maxout layers, then a linear logit."""
    layers: List[nn.Module] = []
    n_in = 2
    for _ in range(cfg.d_layers):
        layers.append(Maxout(gens, n_in, cfg.d_units, cfg.d_pieces, cfg.init_std))
        n_in = cfg.d_units
    return nn.Sequential(*layers, SeedLinear(gens, n_in, 1, cfg.init_std))


class SeedMixture(nn.Module):
    """S Gaussian mixtures with a common fixed std (a buffer the loop may anneal), one per seed.

    ``log_prob(x [B, S, 2]) -> [B]`` is the sum over seeds of each seed's log-density, so the
    estimator of seed ``s`` only ever sees seed ``s``'s samples and gets its own gradient.
    """

    def __init__(self, gens: Sequence[torch.Generator], components: int, init_scale: float, std: float):
        super().__init__()
        self.loc = nn.Parameter(_draw(gens, (components, 2), init_scale))  # [S, C, 2]
        self.logits = nn.Parameter(torch.zeros(len(gens), components))
        self.register_buffer("std", torch.tensor(float(std)))

    def log_prob(self, x: Tensor) -> Tensor:
        d2 = (x.unsqueeze(2) - self.loc).pow(2).sum(-1)  # [B, S, C]
        comp = -0.5 * d2 / self.std**2 - 2 * self.std.log() - math.log(2 * math.pi)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, -1), dim=-1).sum(-1)


# ----------------------------------------------------------------------------------------------- training
def seed_generators(seeds: Sequence[int], stream: int) -> List[torch.Generator]:
    return [torch.Generator().manual_seed(1_000_003 * stream + s) for s in seeds]


def gan_loss(logits: Tensor, target: float) -> Tensor:
    """The GAN loss of seed-batched logits ``[S, B, 1]``: the sum over seeds of each seed's mean binary
    cross-entropy against ``target`` (1 for real, 0 for fake), so that each seed gets its own gradient."""
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target),
                                                          reduction="none").mean(dim=(1, 2)).sum()


class _PerSeed:
    """One ``LBTLoss(estimator, k=5, optimizer=..., weight=cfg.lbt_weight, teach_steps=cfg.defaults_teach_steps,
    smoothing=cfg.defaults_smoothing)`` per seed, the estimator and optimizer from
    ``POINT_ESTIMATORS[cfg.defaults_estimator]`` (the package's defaults: RealNVP(2), Adam, weight 1, one teaching
    step, the ratio held per step; ``weight`` is the balance's ratio ``|g_LBT| = weight * |g_GAN|``; ``--set
    lbt_weight=W defaults_teach_steps=N defaults_estimator=NAME defaults_smoothing=B`` changes them, and
    ``defaults_weight_decay=1`` scales the ratio by the learning rates' schedule at every step): each seed's
    estimator and balance see only its own samples and GAN gradient, so every seed is the run it would be alone.
    The estimators are initialised from seed-specific generators (stream 3)."""

    def __init__(self, seeds: Sequence[int], device: torch.device, cfg: Config, extent: float):
        if cfg.defaults_estimator not in POINT_ESTIMATORS:
            raise ValueError(f"defaults_estimator must be one of {sorted(POINT_ESTIMATORS)}, "
                             f"got {cfg.defaults_estimator!r}")
        self.losses = []
        for s in seeds:
            with torch.random.fork_rng():
                torch.manual_seed(1_000_003 * 3 + s)
                estimator, make_optimizer = POINT_ESTIMATORS[cfg.defaults_estimator](cfg, extent)
            estimator = estimator.to(device)
            optimizer = make_optimizer(estimator.parameters()) if make_optimizer else None
            self.losses.append(LBTLoss(estimator, k=5, optimizer=optimizer, weight=cfg.lbt_weight,
                                       teach_steps=cfg.defaults_teach_steps, smoothing=cfg.defaults_smoothing))

    def state_dict(self) -> Dict[str, Any]:
        return {"per_seed": [lbt.state_dict() for lbt in self.losses]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for lbt, s in zip(self.losses, state["per_seed"]):
            lbt.load_state_dict(s)


class Run(ResumableRun):
    """One method on one dataset, all ``seeds`` batched; ``step()`` is one training iteration.

    Initial weights, data and latents are drawn on the CPU from the seeds' generators and moved to ``device``, so
    a run starts from the same numbers on every device.
    """

    def __init__(self, method: str, dataset: str, seeds: Sequence[int], cfg: Config,
                 device: Union[str, torch.device] = "cpu"):
        self.method, self.dataset, self.seeds, self.cfg = method, dataset, list(seeds), cfg
        self.device = torch.device(device)
        self.mixture = DATASETS[dataset]()
        init = seed_generators(seeds, 0)
        self.data_gens, self.noise_gens = seed_generators(seeds, 1), seed_generators(seeds, 2)
        self.G, self.D = generator(cfg, init).to(self.device), discriminator(cfg, init).to(self.device)
        self.g_opt = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.d_opt = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
        self.lbt: Optional[LBTLoss] = None
        if method in ("lbt", "lbt-gan"):
            extent = float(self.mixture.centers.abs().max())
            est = SeedMixture(init, cfg.components, extent / 2, cfg.est_std * extent)
            lr = cfg.est_lr * float(est.std) ** 2  # the float32 std's square, read on the CPU
            self.est = est.to(self.device)
            self.e_opt = torch.optim.SGD(self.est.parameters(), lr=lr)
            # The LBT term per seed is LBTLoss's default, nats per dimension (2 here); the batched
            # data [B, S, 2] has 2S dimensions, so the weight carries the factor S that sums the seeds.
            self.lbt = LBTLoss(self.est, k=cfg.k, optimizer=self.e_opt, teach_steps=cfg.teach_steps,
                               weight=cfg.lbt_weight * len(self.seeds))
        if method == "lbt-gan-defaults":
            self.lbt = _PerSeed(seeds, self.device, cfg, float(self.mixture.centers.abs().max()))
        self.unroll = Unroller(self.D, self.d_opt, k=cfg.k) if method == "unrolled-gan" else None
        self.step_count = 0
        self.history: List[Tuple[int, List[ModeStats]]] = []

    def _anneal(self) -> None:  # the recipe's mixture only
        cfg = self.cfg
        if cfg.est_std_final == cfg.est_std:
            return
        extent = float(self.mixture.centers.abs().max())
        frac = min(self.step_count / max(cfg.steps - 1, 1), 1.0)
        std = extent * cfg.est_std * (cfg.est_std_final / cfg.est_std) ** frac
        self.est.std.fill_(std)
        self.e_opt.param_groups[0]["lr"] = cfg.est_lr * std**2

    def batch(self) -> Tuple[Tensor, Tensor]:
        """The next real batch ``[S, B, 2]`` and latents ``[S, B, latent]``, each seed from its own generators."""
        real = torch.stack([self.mixture.sample(self.cfg.batch, g) for g in self.data_gens])
        z = torch.stack([torch.randn(self.cfg.batch, self.cfg.latent, generator=g) for g in self.noise_gens])
        return real.to(self.device), z.to(self.device)

    def step(self) -> None:
        cfg, S = self.cfg, len(self.seeds)
        scale = 1 + (cfg.lr_final / cfg.lr - 1) * self.step_count / max(cfg.steps - 1, 1)
        for opt, lr in ((self.g_opt, cfg.lr), (self.d_opt, cfg.d_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        real, z = self.batch()
        fake = self.G(z)
        g_params, d_params = list(self.G.parameters()), list(self.D.parameters())
        # As PacGAN: both updates computed at the same parameters, then both applied.
        if self.method != "lbt":
            d_loss = gan_loss(self.D(real), 1.0) + gan_loss(self.D(fake.detach()), 0.0)
            d_grads = torch.autograd.grad(d_loss, d_params)
        g_loss = torch.zeros(())
        if self.method == "gan":
            g_loss = gan_loss(self.D(fake), 1.0)
        elif self.method == "unrolled-gan":
            D_K = self.unroll(lambda d: gan_loss(d(real), 1.0) + gan_loss(d(fake), 0.0))
            g_loss = gan_loss(D_K(fake), 1.0)
        elif self.method == "lbt-gan":
            g_loss = cfg.gan_weight * gan_loss(self.D(fake), 1.0)
        elif self.method == "lbt-gan-defaults":
            if cfg.defaults_weight_decay:  # the ratio decays as the learning rates do (to 0 with lr_final=0)
                for lbt in self.lbt.losses:
                    lbt.weight = cfg.lbt_weight * scale
            # each seed's samples as their own tensor, so that the GAN loss's gradient at them is that seed's
            parts = fake.unbind(0)
            g_loss = gan_loss(self.D(torch.stack(parts)), 1.0)
            g_loss = g_loss + sum(lbt(x, r, gan_loss=g_loss) for lbt, x, r in zip(self.lbt.losses, parts, real))
        if self.lbt is not None and self.method != "lbt-gan-defaults":
            self._anneal()
            g_loss = g_loss + self.lbt(fake.transpose(0, 1), real.transpose(0, 1))
        g_grads = torch.autograd.grad(g_loss, g_params)
        for p, g in zip(g_params, g_grads):
            p.grad = g
        self.g_opt.step()
        if self.method != "lbt":
            for p, g in zip(d_params, d_grads):
                p.grad = g
            self.d_opt.step()
        self.step_count += 1

    @torch.no_grad()
    def samples(self) -> Tensor:
        """``[S, eval_samples, 2]``, from each seed's own fixed latents (batch statistics of these samples)."""
        z = torch.stack([torch.randn(self.cfg.eval_samples, self.cfg.latent,
                                     generator=torch.Generator().manual_seed(2333 + s)) for s in self.seeds])
        return self.G(z.to(self.device))

    def evaluate(self) -> List[ModeStats]:
        return [mode_stats(x, self.mixture) for x in self.samples()]

    # -- checkpoints: plain tensors and numbers only, loaded with weights_only=True
    def extra_state(self) -> Dict[str, Any]:
        return {"rng": [g.get_state() for g in self.data_gens + self.noise_gens],
                "history": [(step, [dataclasses.asdict(s) for s in stats]) for step, stats in self.history],
                "seeds": self.seeds, "config": dataclasses.asdict(self.cfg)}

    def check_state(self, state: Dict[str, Any]) -> None:
        # a field added to Config after the checkpoint was written reads as its default there
        written = {**dataclasses.asdict(Config()), **state["config"]}
        if state["seeds"] != self.seeds or written != dataclasses.asdict(self.cfg):
            raise ValueError("the checkpoint was written with other seeds or another Config; use another --runs")

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        for g, s in zip(self.data_gens + self.noise_gens, state["rng"]):
            g.set_state(s)
        self.history = [(step, [ModeStats(**s) for s in stats]) for step, stats in state["history"]]


def train(method: str, dataset: str, seeds: Sequence[int], cfg: Config, runs: Optional[Path],
          threads: int = 1, progress: bool = True, device: Union[str, torch.device] = "cpu") -> Dict:
    """Train (or continue) one run on ``device``; returns its history, final samples (on the CPU) and seconds
    spent training. A checkpoint written on one device continues on another."""
    torch.set_num_threads(threads)
    run = Run(method, dataset, seeds, cfg, device)
    path = runs / f"{dataset}_{method}.pt" if runs else None

    def evaluate(seconds: float) -> Tuple[int, List[ModeStats]]:
        return run.step_count, run.evaluate()

    def postfix(entry: Tuple[int, List[ModeStats]]) -> Dict[str, str]:
        stats = entry[1]
        return {"modes": f"{sum(s.modes for s in stats) / len(stats):.1f}",
                "hq": f"{sum(s.high_quality for s in stats) / len(stats):.2f}"}

    seconds = train_resumable(run, path, cfg.steps, cfg.eval_every, evaluate, f"{dataset} {NAMES[method]}",
                              progress, postfix, leave=False)
    return {"history": run.history, "samples": run.samples().cpu(), "seconds": seconds}


# ----------------------------------------------------------------------------------------------- reporting
def table(results: Dict[Tuple[str, str], Dict], methods: Sequence[str], datasets: Sequence[str]) -> str:
    lines = ["| dataset | method | modes | high-quality % | KL(modes ‖ uniform) | all modes, every seed | "
             "per seed: modes / HQ % | minutes |", "|---|---|---|---|---|---|---|---|"]
    for ds in datasets:
        n_modes = DATASETS[ds]().n_modes
        for method in methods:
            res = results[(ds, method)]
            final = res["history"][-1][1]
            per_seed = ", ".join(f"{s.modes}/{100 * s.high_quality:.0f}" for s in final)
            lines.append(
                f"| {ds} ({n_modes}) | {NAMES[method]} | {mean_se([s.modes for s in final])} | "
                f"{mean_se([100 * s.high_quality for s in final], 1)} | {mean_se([s.kl for s in final])} | "
                f"{'yes' if all(s.modes == n_modes for s in final) else 'no'} | {per_seed} | "
                f"{res['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def plot_curves(results: Dict[Tuple[str, str], Dict], methods: Sequence[str], dataset: str, path: Path) -> None:
    """Modes, high-quality share and KL against generator updates: mean over seeds, band of ± one s.e."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for method in methods:
        history = results[(dataset, method)]["history"]
        steps = [step for step, _ in history]
        for ax, metric in zip(axes, ("modes", "high_quality", "kl")):
            values = torch.tensor([[float(getattr(s, metric)) for s in stats] for _, stats in history])
            values = values.clamp(max=10.0) if metric == "kl" else values  # inf (no high-quality sample) drawn at 10
            plot_mean_se(ax, steps, values, 1, NAMES[method])
    for ax, title in zip(axes, ("modes captured", "high-quality share", "KL(modes ‖ uniform)")):
        ax.set_title(f"{dataset}: {title}"), ax.set_xlabel("generator updates")
    axes[2].set_yscale("symlog", linthresh=0.01)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(samples: Dict[str, Tensor], mixture: DataMixture, dataset: str, path: Path) -> None:
    """Scatter plots of one seed's samples per method over the mixture's centres."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.3), squeeze=False)
    lim = float(mixture.centers.abs().max()) * 1.4 + 0.2
    for ax, (method, s) in zip(axes[0], samples.items()):
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:blue")
        ax.scatter(mixture.centers[:, 0], mixture.centers[:, 1], s=25, marker="x", color="tab:red")
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.set_title(NAMES[method])
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{dataset}, first seed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Config]:
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds are first-seed ... first-seed + seeds - 1 (default 0): more seeds of a finished run")
    p.add_argument("--steps", type=int, default=cfg.steps, help="generator updates per run")
    p.add_argument("--eval-every", type=int, default=cfg.eval_every)
    p.add_argument("--quick", action="store_true", help="2 seeds, 2000 updates: a minutes-long look")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override Config fields, e.g. --set est_std_final=0.02 gan_weight=0.5 (an ablation)")
    p.add_argument("--runs", type=Path, default=Path("runs/mode_collapse_2d"),
                   help="checkpoints of every run; an interrupted benchmark continues from them")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the plots")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"),
                   help="markdown file whose markers receive the table ('-' to skip)")
    p.add_argument("--table", default="2d-table", help="name of the markers in --results (default: 2d-table)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    add_device_flag(p)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every = 2, 2000, 500
    require_positive(p, args, ("seeds", "steps", "eval_every", "jobs", "threads"))
    if args.first_seed < 0:
        p.error(f"--first-seed {args.first_seed}: must be >= 0")
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields or not value:
            p.error(f"--set takes FIELD=VALUE with FIELD one of {sorted(fields)}, got {item!r}")
        if name == "defaults_estimator":
            if value not in POINT_ESTIMATORS:
                p.error(f"--set {item}: defaults_estimator is one of {sorted(POINT_ESTIMATORS)}")
            setattr(cfg, name, value)
            continue
        if isinstance(getattr(cfg, name), bool):
            if value.lower() not in ("0", "1", "true", "false"):
                p.error(f"--set {item}: {name} is 0, 1, true or false")
            setattr(cfg, name, value.lower() in ("1", "true"))
            continue
        try:
            parsed = type(getattr(cfg, name))(float(value)) if name != "betas" else tuple(map(float, value.split(",")))
        except ValueError:
            p.error(f"--set {item}: not a number")
        setattr(cfg, name, parsed)
    cfg.steps, cfg.eval_every = args.steps, min(args.eval_every, args.steps)
    return args, cfg


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, cfg = parse_args(argv)
    t0 = time.time()
    seeds = args.seed_list
    tasks = [(ds, m) for m in args.methods for ds in args.datasets]
    results: Dict[Tuple[str, str], Dict] = {}
    with pool(args.jobs) as workers:
        futures = {workers.submit(train, m, ds, seeds, cfg, args.runs, args.threads, args.jobs == 1, args.device):
                   (ds, m) for ds, m in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs", disable=args.jobs == 1):
            ds, m = futures[future]
            results[(ds, m)] = res = future.result()
            final = res["history"][-1][1]
            tqdm.write(f"{ds:4s} {NAMES[m]:12s}: modes {[s.modes for s in final]}, high quality "
                       f"{[round(100 * s.high_quality, 1) for s in final]}%, {res['seconds'] / 60:.1f} min")
    for ds in args.datasets:
        plot_curves(results, args.methods, ds, args.out / f"mode_collapse_{ds}_curves.png")
        plot_samples({m: results[(ds, m)]["samples"][0] for m in args.methods}, DATASETS[ds](), ds,
                     args.out / f"mode_collapse_{ds}.png")
    minutes = (time.time() - t0) / 60
    body = table(results, args.methods, args.datasets)
    cmd = f"python benchmarks/mode_collapse_2d.py --seeds {args.seeds} --steps {args.steps}"
    if args.first_seed:
        cmd += f" --first-seed {args.first_seed}"
    if args.methods != list(METHODS):
        cmd += " --methods " + " ".join(args.methods)
    if args.datasets != list(DATASETS):
        cmd += " --datasets " + " ".join(args.datasets)
    if args.set:
        cmd += " --set " + " ".join(args.set)
    if args.table != "2d-table":
        cmd += f" --table {args.table} --out {args.out} --runs {args.runs}"
    where = f"{args.threads} CPU thread"
    if torch.device(args.device).type != "cpu":
        cmd += f" --device {args.device}"
        where = f"on {args.device}"
    which = f": {seeds[0]} to {seeds[-1]}" if args.first_seed else ""
    footer = (f"\n\n{args.seeds} seeds{which} (per seed: modes / high-quality %), {cfg.steps} generator updates per run, "
              f"{cfg.eval_samples} samples per evaluation; minutes: training time of the run (all seeds batched, "
              f"{where}). {minutes:.1f} min wall clock for this command, {min(args.jobs, len(tasks))} run(s) at a "
              f"time. Command: `{cmd}`")
    publish(body + footer, args.results, args.table)
    print(f"plots in {args.out}/")


if __name__ == "__main__":
    main()
