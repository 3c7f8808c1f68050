"""What LBT costs: overhead against the same work without differentiation, backends, and memory per K.

    python benchmarks/performance.py                 # CPU, writes docs/performance.md
    python benchmarks/performance.py --device cuda   # on a GPU

Setting: a DCGAN-size generator (z of 100 -> 28x28, 1.8M parameters) and the package's
ConvVAE estimator, batch 64, Adam everywhere.

- LBT step: ``LBTLoss(teach_steps=1, k=K)(G, data, z)``, ``backward``, ``g_opt.step()``.
- Plain work: the same work without differentiating through the estimator's steps:
  K+1 ordinary estimator steps on detached samples, then one generator step
  through the estimator (``-log_prob(G(z)).mean()``).
- Floor: a hand-written unroll with plain autograd (``functional_call``,
  ``autograd.grad(create_graph=True)``, Adam written inline), no package code.
- truncate=1: the LBT step back-propagating through the last unrolled step only (biased).

All three are timed side by side, interleaved, in one process (median of repeats).
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn
from tqdm import tqdm

from lbt_plugin import LBTLoss
from lbt_plugin.estimators import ConvVAE
from lbt_plugin.profile import GraphMemory


def dcgan_generator(nz: int = 100, ngf: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, 4 * ngf, 7, 1, 0, bias=False), nn.BatchNorm2d(4 * ngf), nn.ReLU(True),
        nn.ConvTranspose2d(4 * ngf, 2 * ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ngf), nn.ReLU(True),
        nn.ConvTranspose2d(2 * ngf, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )


def estimator() -> nn.Module:
    return ConvVAE(1, 28, latent_dim=64, base=32)


def adam(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(m.parameters(), lr=3e-4, betas=(0.5, 0.999))


class Setup:
    def __init__(self, device: torch.device, batch: int):
        torch.manual_seed(0)
        self.device = device
        self.G = dcgan_generator().to(device)
        self.g_opt = adam(self.G)
        self.data = (torch.rand(batch, 1, 28, 28, device=device) * 2 - 1)
        self.z = torch.randn(batch, 100, 1, 1, device=device)

    def fresh_estimator(self) -> tuple:
        est = estimator().to(self.device)
        return est, adam(est)


def lbt_step(s: Setup, k: int, backend: str, **options) -> Callable[[], None]:
    est, opt = s.fresh_estimator()
    lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=1, backend=backend, **options)

    def run() -> None:
        s.g_opt.zero_grad(set_to_none=True)
        lbt(s.G, s.data, z=s.z).backward()
        s.g_opt.step()

    return run


def plain_step(s: Setup, k: int) -> Callable[[], None]:
    est, opt = s.fresh_estimator()

    def run() -> None:
        fake = s.G(s.z)
        for _ in range(k + 1):
            opt.zero_grad(set_to_none=True)
            (-est.log_prob(fake.detach()).mean()).backward()
            opt.step()
        s.g_opt.zero_grad(set_to_none=True)
        (-est.log_prob(fake).mean()).backward()
        s.g_opt.step()

    return run


def floor_step(s: Setup, k: int) -> Callable[[], None]:
    """A minimal hand-written LBT step: the reference for what the package adds."""
    est, opt = s.fresh_estimator()
    names = [n for n, _ in est.named_parameters()]
    b1, b2, lr, eps = 0.5, 0.999, 3e-4, 1e-8

    def run() -> None:
        fake = s.G(s.z)
        opt.zero_grad(set_to_none=True)
        (-est.log_prob(fake.detach()).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        params = [p.detach().clone().requires_grad_() for p in est.parameters()]
        buffers = {n: b.clone() for n, b in est.named_buffers()}
        state = [opt.state[p] for p in est.parameters()]
        m = [st["exp_avg"].clone() for st in state]
        v = [st["exp_avg_sq"].clone() for st in state]
        step = float(state[0]["step"])
        for _ in range(k):
            mapping = {**dict(zip(names, params)), **buffers}
            loss = -torch.func.functional_call(est, mapping, (fake,)).mean()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            step += 1
            new = []
            for i, (p, g) in enumerate(zip(params, grads)):
                m[i] = m[i].lerp(g, 1 - b1)
                v[i] = v[i].mul(b2).addcmul(g, g, value=1 - b2)
                denom = (v[i].sqrt() / (1 - b2**step) ** 0.5).add(eps)
                new.append(p.addcdiv(m[i], denom, value=-lr / (1 - b1**step)))
            params = new
        mapping = {**dict(zip(names, params)), **buffers}
        s.g_opt.zero_grad(set_to_none=True)
        (-torch.func.functional_call(est, mapping, (s.data,)).mean()).backward()
        s.g_opt.step()

    return run


def timed(fns: Dict[str, Callable[[], None]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per call, the calls of each round interleaved so load affects all alike."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def graph_mib(s: Setup, k: int, **options) -> float:
    est, opt = s.fresh_estimator()
    lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=0, backend="func", **options)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    with GraphMemory() as mem:
        loss = lbt(s.G, s.data, z=s.z)
    loss.backward()
    s.G.zero_grad(set_to_none=True)
    if s.device.type == "cuda":
        return mem.bytes / 2**20, torch.cuda.max_memory_allocated(s.device) / 2**20
    return mem.bytes / 2**20, None


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
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 15])
    p.add_argument("--memory-ks", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/performance.md"), help="'-' to only print")
    args = p.parse_args()
    device = torch.device(args.device)
    s = Setup(device, args.batch)

    rows = []
    for k in tqdm(args.ks, desc="overhead"):
        fns = {"plain": plain_step(s, k), "floor": floor_step(s, k),
               "higher": lbt_step(s, k, "higher"), "func": lbt_step(s, k, "func"),
               "truncate": lbt_step(s, k, "higher", truncate=1)}
        t = timed(fns, args.repeats, device)
        rows.append((k, t))
    overhead = ["| K | plain work (ms) | hand-written floor (ms) | higher (ms) | func (ms) | higher / plain | "
                "func / plain | floor / plain | higher / func | truncate=1 / plain |",
                "|---|---|---|---|---|---|---|---|---|---|"]
    for k, t in rows:
        overhead.append(
            f"| {k} | {1e3 * t['plain']:.0f} | {1e3 * t['floor']:.0f} | {1e3 * t['higher']:.0f} | "
            f"{1e3 * t['func']:.0f} | {t['higher'] / t['plain']:.2f} | {t['func'] / t['plain']:.2f} | "
            f"{t['floor'] / t['plain']:.2f} | {t['higher'] / t['func']:.2f} | {t['truncate'] / t['plain']:.2f} |")

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

    cmd = f"python benchmarks/performance.py --device {args.device} --batch {args.batch} --repeats {args.repeats}"
    body = (f"Machine: {machine(device)}. Batch {args.batch}. Command: `{cmd}`\n\n"
            "Time of one generator step (median of repeats, interleaved):\n\n" + "\n".join(overhead) +
            "\n\nMemory the autograd graph holds for the backward pass (saved storages, func backend):\n\n" +
            "\n".join(memory))
    print(body)
    if str(args.out) != "-":
        tag = "cuda" if device.type == "cuda" else "cpu"
        start, end = f"<!-- perf-{tag}:start -->", f"<!-- perf-{tag}:end -->"
        text = args.out.read_text() if args.out.exists() else "# Performance\n"
        if start not in text:
            text += f"\n{start}\n{end}\n"
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text,
                      flags=re.S)
        args.out.write_text(text)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
