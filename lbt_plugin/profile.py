"""Time and memory of one LBT step per K: the functions behind ``lbt-plugin profile``.

Memory is measured two ways:

- ``graph_bytes``: the bytes of distinct storages that autograd saves for the
  backward pass while the loss is built (``torch.autograd.graph.saved_tensors_hooks``).
  This is the memory the unroll keeps alive until ``backward()``, the part that grows
  with K; it is exact and the same on every device.
- ``peak_bytes`` (CUDA only): ``torch.cuda.max_memory_allocated`` over loss and backward.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .loss import LBTLoss

__all__ = ["StepProfile", "GraphMemory", "profile_steps", "format_profile"]


class GraphMemory:
    """Context manager counting the bytes of distinct storages saved for backward."""

    def __init__(self) -> None:
        self.storages: Dict[int, int] = {}

    def _pack(self, t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            pass
        return t

    def __enter__(self) -> "GraphMemory":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


@dataclass
class StepProfile:
    k: int
    setting: str
    seconds: float  #: median wall-clock time of loss + backward
    graph_bytes: int  #: bytes saved for backward by the loss
    peak_bytes: Optional[int]  #: CUDA peak over loss + backward; None on CPU


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(
    estimator_factory: Callable[[], nn.Module],
    generator: nn.Module,
    data: Tensor,
    z: Tensor,
    ks: Sequence[int],
    *,
    backend: str = "func",
    truncate: Optional[int] = None,
    checkpoint: bool = False,
    teach_steps: int = 1,
    repeats: int = 3,
    optimizer_factory: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> List[StepProfile]:
    """Profile one generator step (``LBTLoss`` call and ``backward``) for each K.

    Each K gets a fresh estimator; one warm-up step precedes ``repeats`` timed ones.
    ``truncate`` is capped at K.
    """
    device = data.device
    rows = []
    for k in ks:
        est = estimator_factory().to(device)
        opt = optimizer_factory(est) if optimizer_factory else None
        t = None if truncate is None else min(truncate, k)
        lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=teach_steps, backend=backend, truncate=t,
                      checkpoint=checkpoint)
        setting = backend + (f", truncate={t}" if t is not None else "") + (", checkpoint" if checkpoint else "")
        if progress:
            progress(f"K={k} {setting}")
        times = []
        for i in range(repeats + 1):
            generator.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            with GraphMemory() as mem:
                loss = lbt(generator, data, z=z)
            loss.backward()
            _sync(device)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - start)
            del loss
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        rows.append(StepProfile(k, setting, statistics.median(times), mem.bytes, peak))
    return rows


def format_profile(rows: Sequence[StepProfile]) -> str:
    lines = ["K    setting                          ms/step    graph MiB    peak MiB",
             "---  -------------------------------  ---------  -----------  --------"]
    for r in rows:
        peak = "" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:8.1f}"
        lines.append(f"{r.k:<4d} {r.setting:<32s} {1000 * r.seconds:9.1f}  {r.graph_bytes / 2**20:11.2f}  {peak}")
    return "\n".join(lines)
