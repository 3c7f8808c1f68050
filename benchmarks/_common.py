"""What the benchmarks share, in one copy: argument checks, resumable runs, results between markers in a markdown
file, mean ± standard error and its curves, a process pool, the Stacked Fashion-MNIST images, and the DCGAN
networks of examples/dcgan_lbt.py.

Checkpoints are written with :func:`lbt_plugin.files.save_atomic` and read with
:func:`lbt_plugin.files.load_tensors` (tensors and plain numbers only, onto the CPU, whatever device wrote them).
"""
from __future__ import annotations

import abc
import argparse
import math
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lbt_plugin.data import load_idx_dataset, stack_channels
from lbt_plugin.files import load_tensors, save_atomic

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- arguments
def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``, by default ``cuda`` where a GPU is visible, else ``cpu``; checked when parsed."""
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where models, data and metrics live: cpu, cuda, cuda:1, ... (default: cuda if "
                             "available, else cpu)")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: cpu, cuda, cuda:1, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device is visible here; pass --device cpu")
    return text


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """``parser.error`` naming every flag among ``names`` whose value is below 1."""
    bad = [f"--{n.replace('_', '-')} {getattr(args, n)}" for n in names if getattr(args, n) < 1]
    if bad:
        parser.error(f"{', '.join(bad)}: must be >= 1")


# ----------------------------------------------------------------------------- resumable runs
class ResumableRun(abc.ABC):
    """A training run whose checkpoint holds everything it needs to continue exactly.

    Subclasses build ``G``, ``D``, ``g_opt``, ``d_opt`` and ``lbt`` (an ``LBTLoss`` or None), define
    :meth:`step`, and say in :meth:`extra_state` / :meth:`load_extra_state` what else a checkpoint holds (random
    number generators, history, the configuration it was written with); :meth:`check_state` refuses a
    checkpoint of another configuration before anything is loaded.
    """

    G: nn.Module
    D: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    lbt: Optional[nn.Module] = None
    step_count: int = 0
    history: List[Any]

    @abc.abstractmethod
    def step(self) -> None:
        """One training iteration; counts itself in ``step_count``."""

    @abc.abstractmethod
    def extra_state(self) -> Dict[str, Any]:
        """What the checkpoint holds beside the networks, their optimizers, the LBT loss and the step."""

    @abc.abstractmethod
    def check_state(self, state: Dict[str, Any]) -> None:
        """Raise ``ValueError`` if ``state`` was written with another configuration."""

    @abc.abstractmethod
    def load_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def state_dict(self) -> Dict[str, Any]:
        state = {"step": self.step_count, "G": self.G.state_dict(), "D": self.D.state_dict(),
                 "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(), **self.extra_state()}
        if self.lbt is not None:
            state["lbt"] = self.lbt.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.check_state(state)
        self.G.load_state_dict(state["G"]), self.D.load_state_dict(state["D"])
        self.g_opt.load_state_dict(state["g_opt"]), self.d_opt.load_state_dict(state["d_opt"])
        self.load_extra_state(state)
        if self.lbt is not None:
            self.lbt.load_state_dict(state["lbt"])
        self.step_count = int(state["step"])


def train_resumable(run: ResumableRun, path: Optional[Path], steps: int, eval_every: int,
                    evaluate: Callable[[float], Any], desc: str, progress: bool = True,
                    postfix: Optional[Callable[[Any], Dict[str, str]]] = None, leave: bool = True,
                    budget: Optional[float] = None, evals: int = 10) -> float:
    """Continue ``run`` from its checkpoint at ``path`` (when there is one) to ``steps`` updates.

    Every ``eval_every`` updates (and at the end) ``evaluate(seconds)`` makes the history entry appended to
    ``run.history`` and the run is checkpointed to ``path`` (``None``: never), with the training seconds so far
    (evaluations excluded), which this returns. An interrupted run continues from its last evaluation.

    With ``budget`` (training seconds), the run stops at the first update that reaches it (or at ``steps``) and is
    evaluated every ``budget / evals`` training seconds instead: runs of different costs are compared at equal
    wall-clock time, at the same points of their clocks.
    """
    if budget is not None and (budget <= 0 or evals < 1):
        raise ValueError(f"budget must be > 0 seconds and evals >= 1, got {budget} and {evals}")
    seconds = 0.0
    if path is not None and path.is_file():
        state = load_tensors(path, "run checkpoint", "delete it, or pass another --runs")
        run.load_state_dict(state)
        seconds = float(state.get("seconds", 0.0))
    bar = tqdm(total=steps if budget is None else round(budget), initial=run.step_count if budget is None
               else min(round(seconds), round(budget)), desc=desc, leave=leave, disable=not progress,
               unit="it" if budget is None else "s")
    while run.step_count < steps and (budget is None or seconds < budget):
        t0 = time.perf_counter()
        if budget is None:
            for _ in range(min(eval_every, steps - run.step_count)):
                run.step()
        else:  # up to the next evaluation point of the clock, budget / evals apart
            stop = min(budget, (math.floor(seconds * evals / budget + 1e-9) + 1) * budget / evals)
            while run.step_count < steps and seconds + time.perf_counter() - t0 < stop:
                run.step()
        seconds += time.perf_counter() - t0
        entry = evaluate(seconds)
        run.history.append(entry)
        bar.update((run.step_count if budget is None else min(round(seconds), round(budget))) - bar.n)
        if postfix is not None:
            bar.set_postfix(**postfix(entry))
        if path is not None:
            save_atomic({**run.state_dict(), "seconds": seconds}, path)
    bar.close()
    return seconds


class _Inline(Executor):
    """An executor that runs each task at submission, in this process (``--jobs 1``)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[no-untyped-def, override]
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def pool(jobs: int) -> Executor:
    """``jobs`` worker processes (spawned: each run starts from a fresh interpreter), or this process for 1.

    A worker exits within about a second of its parent's death (``kill`` of the benchmark's process, not only
    Ctrl-C of its process group): an orphaned worker would otherwise train on for hours, taking a core and
    writing the checkpoint that a restarted benchmark continues from."""
    if jobs == 1:
        return _Inline()
    return ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a worker: a daemon thread that ends the process once its parent ``parent`` is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


# ----------------------------------------------------------------------------- reporting
def mean_se(xs: Sequence[float], digits: int = 2) -> str:
    """``"mean ± standard error"`` of ``xs`` (the sample standard deviation over sqrt(n)); the mean alone for one."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:.{digits}f}"
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mean_se(ax: Any, steps: Sequence[int], values: Tensor, dim: int, label: str) -> None:
    """The mean of ``values`` over ``dim`` (the seeds) against ``steps``, in a band of ± one standard error."""
    mean = values.mean(dim)
    se = values.std(dim) / math.sqrt(values.shape[dim]) if values.shape[dim] > 1 else torch.zeros_like(mean)
    ax.plot(steps, mean, label=label)
    ax.fill_between(steps, mean - se, mean + se, alpha=0.2)


def write_between_markers(md_path: Path, body: str, name: str, title: str = "# Results") -> None:
    """Put ``body`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``md_path``, replacing what was
    there; markers missing are appended, a file missing is created with ``title``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = md_path.read_text() if md_path.exists() else f"{title}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    md_path.write_text(text)


def publish(text: str, md_path: Path, name: str, title: str = "# Results") -> None:
    """Print ``text`` and put it between the markers ``name`` of ``md_path`` (see :func:`write_between_markers`);
    ``md_path`` ``-`` only prints."""
    print("\n" + text)
    if str(md_path) != "-":
        write_between_markers(md_path, text, name, title)
        print(f"\nwritten to {md_path} (between the markers {name})")


# ----------------------------------------------------------------------------- data and networks
def stacked_images(root: Optional[Path] = None, size: int = 28) -> Tensor:
    """Stacked Fashion-MNIST ``[60000, 3, size, size]`` in [-1, 1], as ``examples/dcgan_lbt.py --dataset
    stacked-fashion-mnist`` builds it: the training images in [0, 1], resized (bilinear) when ``size`` is not 28,
    mapped to [-1, 1], three random ones per image (:func:`lbt_plugin.data.stack_channels`, seed 0)."""
    images, _ = load_idx_dataset("fashion-mnist", root)
    x = images.float().div(255).unsqueeze(1)
    if size != 28:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return stack_channels(x * 2 - 1)


def dcgan_example() -> ModuleType:
    """``examples/dcgan_lbt.py`` as a module, for its DCGAN networks (``Generator``, ``Discriminator``,
    ``weights_init``): benchmarks that train "the example's networks" train these, not a copy. The examples are
    scripts, not a package, so their folder goes on ``sys.path``; this is the only place a benchmark does so."""
    folder = str(ROOT / "examples")
    if folder not in sys.path:
        sys.path.append(folder)
    import dcgan_lbt

    return dcgan_lbt
