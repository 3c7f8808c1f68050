"""What LBT costs: the package against a hand-written exact unroll (the floor), other libraries, and memory per K.

    python benchmarks/performance.py                      # CPU, every setting; writes docs/performance.md
    python benchmarks/performance.py --settings mixture   # one setting
    python benchmarks/performance.py --device cuda        # on a GPU

Settings (K unrolled steps of the estimator's own optimizer, ``teach_steps=0``, so every
variant does the same work from the same warm optimizer state):

- ``dcgan``: the DCGAN example's generator (z of 100 -> 28x28, 1.8M parameters) and the package's
  ConvVAE, Adam, batch 64;
- ``mixture``: a tiny 2-D generator (MLP 2x128) and a 50-component Gaussian mixture, SGD, batch 256;
- ``flow``: the same generator and a small RealNVP (4 couplings of width 32), SGD, batch 256.

Variants, timed side by side in one process, interleaved round by round (median of rounds):

- floor: the same LBT step written with plain autograd (``functional_call``,
  ``autograd.grad(create_graph=True)``, the update rule inline), no package code;
- lbt func (default) / lbt higher: ``LBTLoss(..., backend=...)`` and its backward; and the default
  with ``check_finite=False`` (no host synchronisations), and with its update mode forced: one update-rule
  call per parameter, or one per bucket of parameters (``FuncBackend.flat``; the default chooses by device
  and rule);
- stock higher: ``higher.innerloop_ctx`` with higher's own differentiable optimizer;
- TorchOpt: its functional optimizer (when ``torchopt`` is installed).

Beside time: the largest difference of the float64 generator gradient from the floor's
(0 means the same numbers; stock higher and TorchOpt compute Adam slightly differently).
The number of aten operations of one step that are not views (each is a kernel launch, or more, on a GPU).
Then the memory table: graph memory of the full unroll, ``checkpoint=True`` and ``truncate=5``.
"""
from __future__ import annotations

import argparse
import copy
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from _common import dcgan_example, publish
from lbt_plugin import LBTLoss
from lbt_plugin._impl.backends import FuncBackend
from lbt_plugin.estimators import ConvVAE, GaussianMixture, RealNVP
from lbt_plugin.profile import GraphMemory


# ----------------------------------------------------------------------------- settings
def dcgan_generator(nz: int = 100, ngf: int = 64) -> nn.Module:
    """examples/dcgan_lbt.py's generator at 28x28, one channel: z [B, nz, 1, 1] -> [B, 1, 28, 28]."""
    return dcgan_example().Generator(nz, ngf, 1, 28)


def mlp_generator() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 2))


class Setting:
    """A generator, an estimator factory, its optimizer's rule and the data of one benchmark setting."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype = torch.float32):
        torch.manual_seed(0)
        self.name, self.device, self.dtype = name, device, dtype
        if name == "dcgan":
            self.G, batch, data_shape, z_shape = dcgan_generator(), 64, (1, 28, 28), (100, 1, 1)
            self.make_estimator = lambda: ConvVAE(1, 28, latent_dim=64, base=32)
            self.opt = ("adam", dict(lr=3e-4, betas=(0.5, 0.999), eps=1e-8))
        elif name in ("mixture", "flow"):
            self.G, batch, data_shape, z_shape = mlp_generator(), 256, (2,), (16,)
            if name == "mixture":
                self.make_estimator = lambda: GaussianMixture(2, 50, init_scale=2.0, init_std=0.5, learn_std=False)
                self.opt = ("sgd", dict(lr=1.0))
            else:
                self.make_estimator = lambda: RealNVP(2, n_layers=4, hidden=32)
                self.opt = ("sgd", dict(lr=1e-2))
        else:
            raise ValueError(f"unknown setting {name!r}")
        self.G = self.G.to(device, dtype)
        self.g_opt = torch.optim.Adam(self.G.parameters(), lr=1e-4)
        self.data = torch.randn(batch, *data_shape, device=device, dtype=dtype).clamp(-1, 1)
        self.z = torch.randn(batch, *z_shape, device=device, dtype=dtype)
        est = self.make_estimator().to(device, dtype)
        opt = self.optimizer(est)
        for _ in range(3):  # a warm optimizer state, as in training (and Adam's first step is almost a sign step)
            opt.zero_grad()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                (-est.log_prob(self.G(self.z).detach()).mean()).backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        self.estimator, self.est_opt = est, opt

    def optimizer(self, est: nn.Module) -> torch.optim.Optimizer:
        kind, hp = self.opt
        return (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(est.parameters(), **hp)

    def fresh(self) -> Tuple[nn.Module, torch.optim.Optimizer]:
        """A copy of the warm estimator and of its optimizer (the same state)."""
        est = copy.deepcopy(self.estimator)
        opt = self.optimizer(est)
        opt.load_state_dict(copy.deepcopy(self.est_opt.state_dict()))
        return est, opt


# ----------------------------------------------------------------------------- variants: each returns a step
def lbt_step(s: Setting, k: int, backend: str, **options) -> Callable[[], Tensor]:
    est, opt = s.fresh()
    lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=0, backend=backend, reduction="batchmean", **options)

    def run() -> Tensor:
        s.G.zero_grad(set_to_none=True)
        lbt(s.G, s.data, z=s.z).backward()
        return _grad(s.G)

    return run


def _grad(G: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in G.parameters()])


def floor_step(s: Setting, k: int) -> Callable[[], Tensor]:
    """The LBT step written by hand with plain autograd: what the maths costs."""
    est, opt = s.fresh()
    names = [n for n, _ in est.named_parameters()]
    kind, hp = s.opt
    state = [opt.state[p] for p in est.parameters()]

    def run() -> Tensor:
        s.G.zero_grad(set_to_none=True)
        fake = s.G(s.z)
        params = [p.detach().clone().requires_grad_() for p in est.parameters()]
        buffers = {n: b.clone() for n, b in est.named_buffers()}
        if kind == "adam":
            b1, b2 = hp["betas"]
            m = [st["exp_avg"].clone() for st in state]
            v = [st["exp_avg_sq"].clone() for st in state]
            step = float(state[0]["step"])
        for _ in range(k):
            loss = -torch.func.functional_call(est, {**dict(zip(names, params)), **buffers}, (fake,)).mean()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            if kind == "sgd":
                params = [p.add(g, alpha=-hp["lr"]) for p, g in zip(params, grads)]
                continue
            step += 1
            new = []
            for i, (p, g) in enumerate(zip(params, grads)):
                m[i] = m[i].lerp(g, 1 - b1)
                v[i] = v[i].mul(b2).addcmul(g, g, value=1 - b2)
                denom = (v[i].sqrt() / (1 - b2**step) ** 0.5).add(hp["eps"])
                new.append(p.addcdiv(m[i], denom, value=-hp["lr"] / (1 - b1**step)))
            params = new
        (-torch.func.functional_call(est, {**dict(zip(names, params)), **buffers}, (s.data,)).mean()).backward()
        return _grad(s.G)

    return run


def stock_higher_step(s: Setting, k: int) -> Callable[[], Tensor]:
    import higher

    est, opt = s.fresh()

    def run() -> Tensor:
        s.G.zero_grad(set_to_none=True)
        fake = s.G(s.z)
        with higher.innerloop_ctx(est, opt, copy_initial_weights=True) as (fmodel, diffopt):
            for _ in range(k):
                diffopt.step(-fmodel(fake).mean())
            (-fmodel(s.data).mean()).backward()
        return _grad(s.G)

    return run


def torchopt_step(s: Setting, k: int) -> Callable[[], Tensor]:
    import torchopt

    est, opt = s.fresh()
    names = [n for n, _ in est.named_parameters()]
    kind, hp = s.opt
    make = torchopt.adam(lr=hp["lr"], betas=hp["betas"], eps=hp["eps"]) if kind == "adam" else torchopt.sgd(lr=hp["lr"])
    buffers = {n: b for n, b in est.named_buffers()}

    def run() -> Tensor:
        s.G.zero_grad(set_to_none=True)
        fake = s.G(s.z)
        params = tuple(p.detach().clone().requires_grad_() for p in est.parameters())
        state = make.init(params)
        if kind == "adam":  # start from the same moments as every other variant
            st = [opt.state[p] for p in est.parameters()]
            leaves = type(state[0].mu)  # TorchOpt keeps one entry per parameter
            adam_state = state[0]._replace(
                mu=leaves(x["exp_avg"].clone() for x in st), nu=leaves(x["exp_avg_sq"].clone() for x in st),
                count=leaves(torch.tensor(int(x["step"]), dtype=torch.int64) for x in st))
            state = (adam_state, *state[1:])
        for _ in range(k):
            loss = -torch.func.functional_call(est, {**dict(zip(names, params)), **buffers}, (fake,)).mean()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            updates, state = make.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        (-torch.func.functional_call(est, {**dict(zip(names, params)), **{n: b.clone() for n, b in buffers.items()}},
                                     (s.data,)).mean()).backward()
        return _grad(s.G)

    return run


def forced_step(s: Setting, k: int, flat: bool) -> Callable[[], Tensor]:
    """The default with its update mode forced: one rule call per bucket of parameters (``flat``) or per
    parameter (``FuncBackend.flat``; the default chooses by device and rule)."""
    step = lbt_step(s, k, "func")

    def run() -> Tensor:
        before, FuncBackend.flat = FuncBackend.flat, flat
        try:
            return step()
        finally:
            FuncBackend.flat = before

    return run


def variants(s: Setting, k: int, extra: bool) -> Dict[str, Callable[[], Tensor]]:
    out = {"floor": floor_step(s, k), "lbt func (default)": lbt_step(s, k, "func"),
           "lbt func, no finite checks": lbt_step(s, k, "func", check_finite=False),
           "lbt func, per-parameter updates": forced_step(s, k, flat=False),
           "lbt func, flat updates": forced_step(s, k, flat=True),
           "lbt higher": lbt_step(s, k, "higher")}
    if extra:
        out["stock higher"] = stock_higher_step(s, k)
        try:
            import torchopt  # noqa: F401
            out["TorchOpt"] = torchopt_step(s, k)
        except ImportError:
            pass
    return out


# ----------------------------------------------------------------------------- measurements
def timed(fns: Dict[str, Callable[[], Tensor]], rounds: int, device: torch.device,
          seconds: float = 0.0) -> Tuple[Dict[str, float], int]:
    """Median seconds per call, and the number of rounds; each round calls every variant once, in turn, so load
    affects all alike. At least ``rounds`` rounds, more for fast steps: as many as fit in ``seconds``."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    for fn in fns.values():  # round 0 warms up
        fn()
    rounds = max(rounds, int(seconds / max(time.perf_counter() - start_all, 1e-9)))
    for r in range(1, rounds + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, rounds


def exactness(setting: str, k: int, device: torch.device, extra: bool) -> Dict[str, float]:
    """Largest |difference| of each variant's float64 generator gradient from the floor's (same RNG)."""
    s = Setting(setting, device, torch.float64)
    grads = {}
    for name, fn in variants(s, k, extra).items():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(7)
            grads[name] = fn().clone()
    ref = grads["floor"]
    return {name: float((g - ref).abs().max() / ref.abs().max()) for name, g in grads.items()}


class _Operations(TorchDispatchMode):
    """Counts the aten operations of a call that are not views: each is one kernel launch, or more, on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def operations(fns: Dict[str, Callable[[], Tensor]]) -> Dict[str, int]:
    """Non-view aten operations of one step of each variant (after one step that warms it up)."""
    out = {}
    for name, fn in fns.items():
        fn()
        with _Operations() as ops:
            fn()
        out[name] = ops.count
    return out


def graph_mib(s: Setting, k: int, **options) -> Tuple[float, Optional[float]]:
    est, opt = s.fresh()
    lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=0, **options)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    with GraphMemory() as mem:
        loss = lbt(s.G, s.data, z=s.z)
    loss.backward()
    s.G.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated(s.device) / 2**20 if s.device.type == "cuda" else None
    return mem.bytes / 2**20, peak


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", nargs="+", default=["dcgan", "mixture", "flow"], choices=["dcgan", "mixture", "flow"])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--rounds", type=int, default=41, help="interleaved rounds at least (median reported)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="more rounds for fast settings: as many as fit in this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--memory-ks", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--no-extra", action="store_true", help="skip stock higher and TorchOpt")
    p.add_argument("--out", type=Path, default=Path("docs/performance.md"), help="'-' to only print")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    extra = not args.no_extra

    rows = []
    for name in tqdm(args.settings, desc="settings"):
        s = Setting(name, device)
        t, rounds = timed(variants(s, args.k, extra), args.rounds, device, args.seconds)
        rows.append((name, t, exactness(name, args.k, device, extra), rounds, operations(variants(s, args.k, extra))))
    names = list(rows[0][1])
    timing = ["| setting | rounds | " + " | ".join(f"{n} (ms)" for n in names) + " | " +
              " | ".join(f"{n} / floor" for n in names[1:]) + " |",
              "|---|---|" + "---|" * (2 * len(names) - 1)]
    exact = ["| setting | " + " | ".join(names[1:]) + " |", "|---|" + "---|" * (len(names) - 1)]
    ops = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, t, e, rounds, counts in rows:
        ops.append(f"| {name} | " + " | ".join(str(counts[n]) for n in names) + " |")
        timing.append(f"| {name} | {rounds} | " + " | ".join(f"{1e3 * t[n]:.2f}" for n in names) + " | " +
                      " | ".join(f"{t[n] / t['floor']:.3f}" for n in names[1:]) + " |")
        exact.append(f"| {name} | " + " | ".join(f"{e[n]:.1e}" for n in names[1:]) + " |")

    s = Setting("dcgan", device)
    memory = ["| K | full unroll: graph MiB | checkpoint=True | truncate=5 |" +
              (" full: CUDA peak MiB | checkpoint: CUDA peak MiB |" if device.type == "cuda" else ""),
              "|---|---|---|---|" + ("---|---|" if device.type == "cuda" else "")]
    for k in tqdm(args.memory_ks, desc="memory"):
        full, full_peak = graph_mib(s, k)
        ck, ck_peak = graph_mib(s, k, checkpoint=True)
        tr, _ = graph_mib(s, k, truncate=min(5, k))
        line = f"| {k} | {full:.1f} | {ck:.1f} | {tr:.1f} |"
        if device.type == "cuda":
            line += f" {full_peak:.0f} | {ck_peak:.0f} |"
        memory.append(line)

    cmd = (f"python benchmarks/performance.py --device {args.device} --settings {' '.join(args.settings)} "
           f"--k {args.k} --rounds {args.rounds} --seconds {args.seconds:g}"
           + (f" --threads {args.threads}" if args.threads else ""))
    body = (f"Machine: {machine(device)}. K = {args.k}, teach_steps = 0. Command: `{cmd}`\n\n"
            "Time of one generator step, loss and backward (median of the interleaved rounds):\n\n"
            + "\n".join(timing) +
            "\n\nLargest difference of the float64 generator gradient from the floor's, relative to its largest "
            "entry:\n\n" + "\n".join(exact) +
            "\n\naten operations of one step that are not views (kernel launches on a GPU: one or more each):\n\n"
            + "\n".join(ops) +
            "\n\nMemory the autograd graph holds for the backward pass (dcgan setting, default backend; saved "
            "storages):\n\n" + "\n".join(memory))
    tag = "cuda" if device.type == "cuda" else f"cpu-{torch.get_num_threads()}t"
    publish(body, args.out, f"perf-{tag}", title="# Performance")


if __name__ == "__main__":
    main()
