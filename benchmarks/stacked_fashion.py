"""Stacked Fashion-MNIST with a reduced discriminator: DCGAN, Unrolled GAN and LBT-GAN, several seeds, resumable.

    python benchmarks/stacked_fashion.py                 # all four methods (docs/results.md ran the first three:
                                                         # 9 runs, about 2 hours on 2 cores)
    python benchmarks/stacked_fashion.py --quick         # minutes: the same protocol, tiny budget, 1 seed
    python benchmarks/stacked_fashion.py --runs DIR      # continue an interrupted benchmark; finished runs are reused
    python benchmarks/stacked_fashion.py --device cuda   # on a GPU (the default where one is visible)

The protocol is the Stacked MNIST experiment of the Unrolled GAN paper as PacGAN's code runs it
(github fjxmlzn/PacGAN, ``unrolled_GAN_experiment``), where a discriminator narrower than the
generator makes a DCGAN drop modes on purpose: three random images as the three channels of one
28 x 28 image (1000 modes: one per triple of classes), a DCGAN generator, and a discriminator a quarter (``--d-width quarter``,
the default) or a half as wide as the standard one. The networks are ``examples/dcgan_lbt.py``'s
DCGAN (``--arch dcgan``: generator width ``ngf`` = 32, and discriminator width ``ngf / 4`` = 8 where
the example's standard is ``ndf = ngf``), trained as that example trains them (Adam 2e-4, betas
0.5 / 0.999, batch 64, z of 100);
PacGAN's own small networks (``--arch pacgan``: z of 256 -> 4x4x64 -> 3x3 deconvolutions to
7x7x32, 14x14x16, 28x28x8 -> 3 channels; discriminator widths 2, 4, 8; Adam G 1e-4, D 2e-4,
batch 128) are kept for comparison. Fashion-MNIST stands in for MNIST (of the two, the only one
offline here), and the budget is far smaller than the paper's 500,000 iterations (docs/results.md).

Methods (the same networks, optimizers, data order and number of generator updates):

- ``dcgan``: the non-saturating GAN loss;
- ``unrolled``: the generator loss through 5 unrolled discriminator steps (``lbt_plugin.Unroller``);
- ``lbt-gan``: GAN loss + ``LBTLoss(estimator, k=5)`` with the package's defaults and the example's
  estimator (``ConvVAE(3, 28)``, its default Adam, ``teach_steps=1``, ``weight=1``: nats per dimension), the
  fixed-weight form (the loss added, no ``gan_loss``);
- ``lbt-gan-small``: the same with a small estimator (``SMALL``: 8 base channels, latent 16, three
  teaching steps), cheaper (not in docs/results.md's table);
- ``lbt-gan-balanced``: ``lbt-gan`` with the balance (``lbt(fake, real, gan_loss=g_loss)``), the README's lines;
- the cost knobs, all balanced (``SETTINGS``): ``lbt-gan-fast`` (the small estimator, ``k=2``),
  ``lbt-gan-fast-k5`` (the small estimator, ``k=5``), ``lbt-gan-fast-every4`` (the small estimator, ``k=5``, the
  LBT term on every 4th generator step only, the estimator neither taught nor unrolled in between),
  ``lbt-gan-fast-every4-taught`` (the same, the estimator taught one step on the detached samples in between),
  ``lbt-gan-fast-k1``, ``lbt-gan-fast-k5-truncate1``, ``lbt-gan-fast-k5-checkpoint``, ``lbt-gan-fast-teach0`` and
  ``lbt-gan-fast-teach3``. ``benchmarks/step_cost.py`` times them all against a DCGAN update.

Metrics, from 26,000 samples (the Stacked MNIST protocol) at every evaluation: modes with at least
one sample and KL(mode histogram || uniform), channel by channel by the package's classifier
(``lbt_plugin.metrics.ChannelClassifier``) trained on Fashion-MNIST (its held-out accuracy is printed); and two quality measures in that classifier's
feature space, as FID needs Inception weights that are not offline here: the Fréchet distance
between generated and real stacked images (each channel's 128 features, concatenated) and the mean
confidence of the classifier on generated channels.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm import tqdm

from _common import (ResumableRun, add_device_flag, dcgan_example, mean_se, plot_mean_se, pool, publish, pyplot,
                     require_positive, stacked_images, train_resumable)
from lbt_plugin import LBTLoss, Unroller
from lbt_plugin.data import load_idx_dataset
from lbt_plugin.estimators import ConvVAE
from lbt_plugin.metrics import (classifier_features, load_channel_classifier, stacked_mode_stats,
                                train_channel_classifier)
from lbt_plugin.metrics.stacked import MIN_ACCURACY

METHODS = ("dcgan", "unrolled", "lbt-gan", "lbt-gan-small", "lbt-gan-balanced", "lbt-gan-fast", "lbt-gan-fast-k5",
           "lbt-gan-fast-every4", "lbt-gan-fast-every4-taught", "lbt-gan-fast-k1", "lbt-gan-fast-k5-truncate1",
           "lbt-gan-fast-k5-checkpoint", "lbt-gan-fast-teach0", "lbt-gan-fast-teach3")
NAMES = {"dcgan": "DCGAN", "unrolled": "Unrolled GAN", "lbt-gan": "LBT-GAN (fixed form)",
         "lbt-gan-small": "LBT-GAN (small estimator, fixed form)", "lbt-gan-balanced": "LBT-GAN (balanced)",
         "lbt-gan-fast": "LBT-GAN (small estimator, K=2, balanced)",
         "lbt-gan-fast-k5": "LBT-GAN (small estimator, K=5, balanced)",
         "lbt-gan-fast-every4": "LBT-GAN (small estimator, K=5, every 4th step, balanced)",
         "lbt-gan-fast-every4-taught": "LBT-GAN (small estimator, K=5, every 4th step, taught every step, balanced)",
         "lbt-gan-fast-k1": "LBT-GAN (small estimator, K=1, balanced)",
         "lbt-gan-fast-k5-truncate1": "LBT-GAN (small estimator, K=5, truncate=1, balanced)",
         "lbt-gan-fast-k5-checkpoint": "LBT-GAN (small estimator, K=5, checkpoint=True, balanced)",
         "lbt-gan-fast-teach0": "LBT-GAN (small estimator, K=2, teach_steps=0, balanced)",
         "lbt-gan-fast-teach3": "LBT-GAN (small estimator, K=2, teach_steps=3, balanced)"}
#: What the benchmark runs without --methods (docs/results.md's table).
DEFAULT_METHODS = ("dcgan", "unrolled", "lbt-gan")
#: ``--steps`` under ``--minutes`` when not given: no cap on the updates, the clock ends the run.
NO_CAP = 10 ** 12
#: PacGAN's discriminator widths, against its generator's 8, 16, 32.
D_WIDTHS = {"quarter": (2, 4, 8), "half": (4, 8, 16), "full": (8, 16, 32)}
#: The DCGAN discriminator's width as a fraction of the generator's.
D_RATIO = {"eighth": 8, "quarter": 4, "half": 2, "full": 1}


@dataclass
class Config:
    steps: int = 5000
    arch: str = "dcgan"  # "dcgan": examples/dcgan_lbt.py's networks; "pacgan": PacGAN's (below)
    ngf: int = 32  # arch "dcgan": generator width; the discriminator's is ngf / 4 (quarter), / 2 (half), ...
    d_width: str = "quarter"
    batch: int = 64
    nz: int = 100
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: Tuple[float, float] = (0.5, 0.999)
    unroll_k: int = 5
    eval_every: int = 1000
    eval_samples: int = 26000
    minutes: Optional[float] = None  # equal wall-clock time: training minutes per run (``steps`` then only caps)
    evals: int = 10  # with ``minutes``: evaluations per run, ``minutes / evals`` apart on the training clock


#: PacGAN's own setting of this experiment (``--arch pacgan``).
PACGAN = dict(arch="pacgan", batch=128, nz=256, g_lr=1e-4, d_lr=2e-4, betas=(0.5, 0.99))
#: "lbt-gan-small": a small estimator (latent 16, 8 base channels), three teaching steps, Adam 1e-3.
SMALL: Dict = dict(estimator=dict(latent_dim=16, base=8), k=5, teach_steps=3, weight=1.0, optimizer="adam",
                   est_lr=1e-3, warmup=0)
#: "lbt-gan": the package's defaults, the estimator the example uses, the fixed-weight form (GAN + LBT).
DEFAULT: Dict = dict(estimator=dict(), k=5, teach_steps=1, weight=1.0, optimizer="default", est_lr=3e-4, warmup=0)
#: The balanced forms (``gan_loss=`` in the call) and the cost knobs: estimator size, K, the LBT term on every
#: n-th generator step only (``every``; the estimator is neither taught nor unrolled in between, or, with
#: ``teach_between``, taught one ordinary step on the detached samples), ``truncate``, ``checkpoint``.
BALANCED: Dict = dict(DEFAULT, balanced=True)
SMALL_ESTIMATOR = dict(latent_dim=16, base=8)
SETTINGS: Dict[str, Dict] = {
    "lbt-gan": DEFAULT, "lbt-gan-small": SMALL, "lbt-gan-balanced": BALANCED,
    "lbt-gan-fast": dict(BALANCED, estimator=SMALL_ESTIMATOR, k=2),
    "lbt-gan-fast-k5": dict(BALANCED, estimator=SMALL_ESTIMATOR),
    "lbt-gan-fast-every4": dict(BALANCED, estimator=SMALL_ESTIMATOR, every=4),
    "lbt-gan-fast-every4-taught": dict(BALANCED, estimator=SMALL_ESTIMATOR, every=4, teach_between=True),
    "lbt-gan-fast-k1": dict(BALANCED, estimator=SMALL_ESTIMATOR, k=1),
    "lbt-gan-fast-k5-truncate1": dict(BALANCED, estimator=SMALL_ESTIMATOR, truncate=1),
    "lbt-gan-fast-k5-checkpoint": dict(BALANCED, estimator=SMALL_ESTIMATOR, checkpoint=True),
    "lbt-gan-fast-teach0": dict(BALANCED, estimator=SMALL_ESTIMATOR, k=2, teach_steps=0),
    "lbt-gan-fast-teach3": dict(BALANCED, estimator=SMALL_ESTIMATOR, k=2, teach_steps=3),
}


# ----------------------------------------------------------------------------- networks (PacGAN's shapes)
class Generator(nn.Module):
    """z [B, nz] -> [B, 3, 28, 28] in [-1, 1]."""

    def __init__(self, nz: int = 256):
        super().__init__()
        self.latent_dim = nz
        block = lambda a, b, pad: [nn.ConvTranspose2d(a, b, 3, 2, 1, output_padding=pad),  # noqa: E731
                                   nn.BatchNorm2d(b), nn.ReLU(True)]
        self.fc = nn.Sequential(nn.Linear(nz, 4 * 4 * 64), nn.BatchNorm1d(4 * 4 * 64), nn.ReLU(True))
        self.conv = nn.Sequential(*block(64, 32, 0), *block(32, 16, 1), *block(16, 8, 1),
                                  nn.Conv2d(8, 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(self.fc(z).view(-1, 64, 4, 4))


class Discriminator(nn.Module):
    """[B, 3, 28, 28] -> logit [B]: three stride-2 3x3 convolutions with batch norm and leaky ReLU (0.3)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.3)]
            c = w
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 4 * 4, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(-1)


# ----------------------------------------------------------------------------- one run
class Run(ResumableRun):
    """One method, one seed: ``step()`` is one discriminator and one generator update on ``data``.

    The networks are initialised on the CPU and moved to ``device``; data order and latents are drawn on the CPU
    from the run's own generator: the same numbers go in on every device.
    """

    def __init__(self, method: str, seed: int, cfg: Config, lbt: Optional[Dict] = None,
                 data: Optional[Tensor] = None, device: Union[str, torch.device] = "cpu"):
        self.method, self.seed, self.cfg, self.data = method, seed, cfg, data
        self.device = torch.device(device)
        torch.manual_seed(seed)
        if cfg.arch == "dcgan":
            dcgan_lbt = dcgan_example()
            ratio = D_RATIO[cfg.d_width]
            self.G = dcgan_lbt.Generator(cfg.nz, cfg.ngf, 3, 28)
            self.D = dcgan_lbt.Discriminator(cfg.ngf // ratio, 3, 28)
            self.G.apply(dcgan_lbt.weights_init), self.D.apply(dcgan_lbt.weights_init)
        else:
            self.G, self.D = Generator(cfg.nz), Discriminator(D_WIDTHS[cfg.d_width])
        self.G, self.D = self.G.to(self.device), self.D.to(self.device)
        self.z_shape = (cfg.nz, 1, 1) if cfg.arch == "dcgan" else (cfg.nz,)
        self.g_opt = torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
        self.d_opt = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
        self.bce = nn.BCEWithLogitsLoss()
        self.unroll = Unroller(self.D, self.d_opt, k=cfg.unroll_k) if method == "unrolled" else None
        self.lbt: Optional[LBTLoss] = None
        self.settings = lbt or SETTINGS.get(method, DEFAULT)
        if method.startswith("lbt"):
            s = self.settings
            self.E = ConvVAE(3, 28, **s["estimator"]).to(self.device)
            opt = {"default": None,
                   "adam": lambda: torch.optim.Adam(self.E.parameters(), lr=s["est_lr"], betas=(0.5, 0.999)),
                   "sgd": lambda: torch.optim.SGD(self.E.parameters(), lr=s["est_lr"])}[s["optimizer"]]
            self.lbt = LBTLoss(self.E, k=s["k"], teach_steps=s["teach_steps"], weight=s["weight"],
                               optimizer=opt() if opt else None, truncate=s.get("truncate"),
                               checkpoint=s.get("checkpoint", False))
        self.gen = torch.Generator().manual_seed(1000 + seed)  # data order and latents
        self.step_count = 0
        self.history: List[Dict] = []

    def step(self) -> None:
        cfg, data = self.cfg, self.data
        real = data[torch.randint(len(data), (cfg.batch,), generator=self.gen)]
        z = torch.randn(cfg.batch, *self.z_shape, generator=self.gen).to(self.device)
        ones, zeros = torch.ones(cfg.batch, device=self.device), torch.zeros(cfg.batch, device=self.device)
        fake = self.G(z)
        self.d_opt.zero_grad(set_to_none=True)
        (self.bce(self.D(real), ones) + self.bce(self.D(fake.detach()), zeros)).backward()
        self.d_opt.step()
        self.g_opt.zero_grad(set_to_none=True)
        if self.unroll is not None:
            D_K = self.unroll(lambda d: self.bce(d(real), ones) + self.bce(d(fake), zeros))
            loss = self.bce(D_K(fake), ones)
        else:
            loss = self.bce(self.D(fake), ones)
        s = self.settings
        if self.lbt is not None and self.step_count >= s["warmup"]:
            if (self.step_count - s["warmup"]) % s.get("every", 1) == 0:
                loss = loss + self.lbt(fake, real, gan_loss=loss if s.get("balanced") else None)
            elif s.get("teach_between"):  # one ordinary maximum-likelihood step of the estimator on G's samples
                self.lbt.optimizer.zero_grad(set_to_none=True)
                (-self.E.log_prob(fake.detach()).mean()).backward()
                self.lbt.optimizer.step()
                self.lbt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        self.step_count += 1

    @torch.no_grad()
    def samples(self, n: int) -> Tensor:
        """``n`` samples from fixed latents, batch statistics in batches of ``cfg.batch`` (as PacGAN samples)."""
        gen = torch.Generator().manual_seed(2333)
        return torch.cat([self.G(torch.randn(min(self.cfg.batch, n - i), *self.z_shape, generator=gen
                                             ).to(self.device)) for i in range(0, n, self.cfg.batch)])

    def extra_state(self) -> Dict[str, Any]:
        state = {"rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "history": self.history,
                 "config": _plain(dataclasses.asdict(self.cfg)), "settings": _plain(self.settings)}
        if self.device.type == "cuda":  # the estimator's reparameterisation noise is drawn there
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def check_state(self, state: Dict[str, Any]) -> None:
        if state["config"] != _plain(dataclasses.asdict(self.cfg)) or state["settings"] != _plain(self.settings):
            raise ValueError("the checkpoint was written with another Config or LBT setting; use another --runs")

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = list(state["history"])


def _plain(x):
    """Tuples as lists: what a checkpoint gives back."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class Evaluator:
    """Modes, KL, classifier confidence and classifier-feature Fréchet distance of a generator's samples."""

    def __init__(self, classifier: nn.Module, data: Tensor, n: int):
        self.classifier, self.n = classifier, n
        self.real_mu, self.real_sigma = _gaussian(classifier_features(data[:n], classifier))

    @torch.no_grad()
    def __call__(self, samples: Tensor) -> Dict:
        """One pass of the classifier over the samples' channels: its features give the Fréchet distance, and its
        last layer on them the modes and the confidence."""
        from pytorch_fid.fid_score import calculate_frechet_distance

        features = classifier_features(samples, self.classifier)
        stats = stacked_mode_stats(samples, self.classifier, features=features)
        mu, sigma = _gaussian(features)
        head = self.classifier.net[-1]
        probs = head(features.reshape(-1, head.in_features).to(samples.device)).softmax(-1)
        return {"modes": stats.modes, "kl": stats.kl, "counts": stats.counts.tolist(),
                "confidence": float(probs.max(-1).values.mean()),
                "fd": float(calculate_frechet_distance(mu, sigma, self.real_mu, self.real_sigma))}


def _gaussian(features: Tensor):
    f = features.double().numpy()
    import numpy as np

    return f.mean(0), np.cov(f, rowvar=False)


def train(method: str, seed: int, cfg: Config, runs: Path, data_root: Optional[Path], classifier_path: Path,
          lbt: Optional[Dict] = None, name: Optional[str] = None, progress: bool = False,
          device: Union[str, torch.device] = "cpu", min_accuracy: float = MIN_ACCURACY) -> Dict:
    """Train (or continue) one run on ``device`` (models, data, classifier and metrics there), evaluating every
    ``eval_every`` updates; returns its history and a grid of samples (on the CPU). A checkpoint written on one
    device continues on another. The classifier at ``classifier_path`` must have been trained on Fashion-MNIST
    from ``data_root`` (its data key) and is measured again on its held-out tenth (at least ``min_accuracy``)."""
    torch.set_num_threads(1)
    data = stacked_images(data_root).to(device)
    images, labels = load_idx_dataset("fashion-mnist", data_root)
    classifier, _ = load_channel_classifier(str(classifier_path), images, labels, min_accuracy=min_accuracy)
    evaluator = Evaluator(classifier.to(device), data, cfg.eval_samples)
    run = Run(method, seed, cfg, lbt, data=data, device=device)

    def evaluate(seconds: float) -> Dict[str, Any]:
        return {"step": run.step_count, "seconds": seconds, **evaluator(run.samples(cfg.eval_samples))}

    seconds = train_resumable(run, runs / f"{name or method}_seed{seed}.pt", cfg.steps, cfg.eval_every, evaluate,
                              f"{name or method} seed {seed}", progress,
                              budget=None if cfg.minutes is None else 60 * cfg.minutes, evals=cfg.evals)
    return {"history": run.history, "grid": run.samples(64).cpu(), "seconds": seconds}


# ----------------------------------------------------------------------------- reporting
def table(results: Dict[str, List[Dict]], methods: Sequence[str], updates: bool = False) -> str:
    """One row per method: the last evaluation's measures, mean ± s.e. over seeds, and every seed's; with
    ``updates``, a column of the generator updates each run reached (an equal-time comparison)."""
    lines = ["| method | modes | KL | classifier FD | confidence | minutes per run |"
             + (" updates per run |" if updates else "") + " per seed: modes / KL / FD |",
             "|---|---|---|---|---|---|" + ("---|" if updates else "") + "---|"]
    for m in methods:
        finals = [r["history"][-1] for r in results[m]]
        per_seed = ", ".join(f"{f['modes']} / {f['kl']:.2f} / {f['fd']:.1f}" for f in finals)
        steps = f" {mean_se([r['history'][-1]['step'] for r in results[m]], 0)} |" if updates else ""
        lines.append(f"| {NAMES[m]} | {mean_se([f['modes'] for f in finals], 1)} | "
                     f"{mean_se([f['kl'] for f in finals])} | {mean_se([f['fd'] for f in finals], 1)} | "
                     f"{mean_se([f['confidence'] for f in finals])} | "
                     f"{mean_se([r['seconds'] / 60 for r in results[m]], 1)} |{steps} {per_seed} |")
    return "\n".join(lines)


def plots(results: Dict[str, List[Dict]], methods: Sequence[str], out: Path) -> None:
    """Curves of modes, KL and classifier FD (mean ± s.e. over seeds), seed 0's mode histogram and sample grids."""
    import torchvision.utils as vutils

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    # against updates and against training minutes: at each evaluation, the seeds' mean of either (equal
    # within a method at equal updates; within a few updates' time of each other at equal time)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for m in methods:
        n = min(len(r["history"]) for r in results[m])
        for row, clock in zip(axes, ("step", "seconds")):
            x = torch.tensor([[h[clock] for h in r["history"][:n]] for r in results[m]], dtype=torch.float64)
            x = x.mean(0) / (60 if clock == "seconds" else 1)
            for ax, key in zip(row, ("modes", "kl", "fd")):
                values = torch.tensor([[h[key] for h in r["history"][:n]] for r in results[m]], dtype=torch.float64)
                plot_mean_se(ax, x.tolist(), values, 0, NAMES[m])
    for row, xlabel in zip(axes, ("generator updates", "training minutes (one CPU thread)")):
        for ax, title in zip(row, ("modes (of 1000)", "KL(modes ‖ uniform)", "classifier Fréchet distance")):
            ax.set_title(title), ax.set_xlabel(xlabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "stacked_curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for m in methods:
        counts = torch.tensor(results[m][0]["history"][-1]["counts"], dtype=torch.float64)
        ax.plot(torch.sort(counts, descending=True).values, label=NAMES[m])
    ax.axhline(26000 / 1000, color="gray", ls=":", label="uniform")
    ax.set_yscale("symlog", linthresh=1), ax.set_xlabel("mode, by count"), ax.set_ylabel("samples")
    ax.set_title("mode histogram, seed 0 (26,000 samples)"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "stacked_histogram.png", dpi=100)
    plt.close(fig)
    for m in methods:
        vutils.save_image(results[m][0]["grid"], out / f"stacked_{m.replace('-', '_')}.png", nrow=8, normalize=True,
                          value_range=(-1, 1))


def main(argv: Optional[Sequence[str]] = None) -> None:
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None,
                   help=f"generator updates per run (default {cfg.steps}; with --minutes, a cap, none by default)")
    p.add_argument("--minutes", type=float, default=None,
                   help="equal wall-clock time: train every run for this many minutes of its own training clock "
                        "(evaluations excluded), evaluated --evals times on the way")
    p.add_argument("--evals", type=int, default=cfg.evals, help="with --minutes: evaluations per run")
    p.add_argument("--eval-every", type=int, default=cfg.eval_every)
    p.add_argument("--eval-samples", type=int, default=cfg.eval_samples)
    p.add_argument("--d-width", choices=sorted(D_RATIO), default=cfg.d_width)
    p.add_argument("--arch", choices=["dcgan", "pacgan"], default=cfg.arch,
                   help="dcgan: examples/dcgan_lbt.py's networks (default); pacgan: PacGAN's, with its optimizers")
    p.add_argument("--quick", action="store_true", help="1 seed, 200 updates, 2,000 samples: a minutes-long look")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--runs", type=Path, default=Path("runs/stacked_fashion"), help="checkpoints; rerun to continue")
    p.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the plots and sample grids")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="'-' to only print")
    p.add_argument("--table", default="stacked-table")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--min-classifier-accuracy", type=float, default=MIN_ACCURACY,
                   help="refuse a mode classifier below this held-out accuracy (measured, cached or not)")
    add_device_flag(p)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every, args.eval_samples = 1, 200, 100, 2000
    if args.steps is None:
        args.steps = cfg.steps if args.minutes is None else NO_CAP
    require_positive(p, args, ("seeds", "steps", "eval_every", "eval_samples", "jobs", "evals"))
    if args.minutes is not None and not (0 < args.minutes < float("inf")):
        p.error(f"--minutes must be a positive number of minutes, got {args.minutes}")
    if args.arch == "pacgan":
        if args.d_width not in D_WIDTHS:
            p.error(f"--arch pacgan takes --d-width {' / '.join(D_WIDTHS)}")
        cfg = dataclasses.replace(cfg, **PACGAN)
    cfg = dataclasses.replace(cfg, steps=args.steps, eval_every=min(args.eval_every, args.steps),
                              eval_samples=args.eval_samples, d_width=args.d_width, minutes=args.minutes,
                              evals=args.evals)
    args.runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    images, labels = load_idx_dataset("fashion-mnist", args.data_root)
    classifier_path = args.runs / "classifier.pt"
    _, accuracy = train_channel_classifier(images, labels, epochs=2, cache=str(classifier_path), device=args.device,
                                           min_accuracy=args.min_classifier_accuracy)
    print(f"classifier: held-out accuracy {100 * accuracy:.1f}%", flush=True)

    # longest runs first: the pool packs better
    cost = {"lbt-gan": 0, "lbt-gan-balanced": 0, "unrolled": 3, "dcgan": 4}  # the small estimators: 1
    tasks = [(m, s) for m in sorted(args.methods, key=lambda m: cost.get(m, 1)) for s in range(args.seeds)]
    results: Dict[str, List[Dict]] = {m: [None] * args.seeds for m in args.methods}  # type: ignore[list-item]
    with pool(args.jobs) as workers:
        futures = {workers.submit(train, m, s, cfg, args.runs, args.data_root, classifier_path, device=args.device,
                                  min_accuracy=args.min_classifier_accuracy):
                   (m, s) for m, s in tasks}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs"):
            m, s = futures[future]
            results[m][s] = res = future.result()
            last = res["history"][-1]
            tqdm.write(f"{NAMES[m]} seed {s}: {last['modes']} modes, KL {last['kl']:.2f}, FD {last['fd']:.1f}, "
                       f"{res['seconds'] / 60:.1f} min")
    plots(results, args.methods, args.out)
    body = table(results, args.methods, updates=args.minutes is not None)
    budget = f"--steps {args.steps}" if args.minutes is None else f"--minutes {args.minutes:g} --evals {args.evals}"
    if args.minutes is not None and args.steps != NO_CAP:
        budget += f" --steps {args.steps}"
    cmd = f"python benchmarks/stacked_fashion.py --seeds {args.seeds} {budget} --arch {args.arch} --d-width {args.d_width}"
    if args.methods != list(DEFAULT_METHODS):
        cmd += " --methods " + " ".join(args.methods)
    if args.table != "stacked-table":
        cmd += f" --table {args.table} --runs {args.runs}"
    if args.eval_every != Config.eval_every:
        cmd += f" --eval-every {args.eval_every}"
    where = "one CPU thread"
    if torch.device(args.device).type != "cpu":
        cmd += f" --device {args.device}"
        where = args.device
    if args.out != Path("docs/img"):
        cmd += f" --out {args.out}"
    length = (f"{args.steps} generator updates per run" if args.minutes is None else
              f"{args.minutes:g} training minutes per run (equal wall-clock time; evaluations excluded)")
    footer = (f"\n\n{args.seeds} seeds, {length}, batch {cfg.batch}, "
              f"{cfg.eval_samples} samples per evaluation; the classifier's held-out accuracy "
              f"{100 * accuracy:.1f}%; minutes: training time of one run on {where}, {args.jobs} runs at a "
              f"time; {(time.time() - t0) / 60:.0f} min wall clock for the command. Command: `{cmd}`")
    publish(body + footer, args.results, args.table)


if __name__ == "__main__":
    main()
