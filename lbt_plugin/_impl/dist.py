"""torch.distributed helpers: keep the estimator identical on every rank.

Every rank starts from rank 0's estimator, averages the gradients of its teaching
steps, and averages the inner gradients of the unroll with a *differentiable*
all-reduce, so that theta_t is the same on every rank and each rank's generator
samples influence every rank's theta_K (as one process on the global batch would).
"""
from __future__ import annotations

from itertools import chain
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


def active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's module, in place."""
    with torch.no_grad():
        for t in chain(module.parameters(), module.buffers()):
            dist.broadcast(t.data, src=src)


def mean_grads_(params: Iterable[Tensor]) -> None:
    """Average ``.grad`` across ranks, in place (the teaching steps)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def mean_grads_differentiable(grads: List[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Average inner gradients across ranks, keeping the graph (its backward is an all-reduce too)."""
    from torch.distributed.nn.functional import all_reduce

    world = dist.get_world_size()
    return [None if g is None else all_reduce(g) / world for g in grads]


def sum_(t: Tensor) -> None:
    """Sum a tensor over ranks, in place (the balance's squared gradient norms)."""
    dist.all_reduce(t)
