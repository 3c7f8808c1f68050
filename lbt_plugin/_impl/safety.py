"""What keeps a failed ``LBTLoss`` call harmless: a restorable snapshot of the estimator and its optimizer, and
finiteness checks batched into few host synchronisations."""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, List, Tuple

import torch
from torch import Tensor, nn


class Snapshot:
    """The estimator's parameters, buffers and gradients and its optimizer's state, restorable in place
    (parameter and param-group identity kept: the user's optimizer and any references stay valid)."""

    def __init__(self, estimator: nn.Module, optimizer: torch.optim.Optimizer):
        self.estimator, self.optimizer = estimator, optimizer
        self.tensors = [*estimator.parameters(), *estimator.buffers()]
        self.values = [t.detach().clone() for t in self.tensors]
        self.grads = [None if p.grad is None else p.grad.clone() for p in estimator.parameters()]
        self.groups = [dict(g) for g in optimizer.param_groups]
        self.state = {p: {k: v.clone() if isinstance(v, Tensor) else copy.copy(v) for k, v in s.items()}
                      for p, s in optimizer.state.items()}

    def restore(self) -> None:
        with torch.no_grad():
            for t, v in zip(self.tensors, self.values):
                t.copy_(v)
        for p, g in zip(self.estimator.parameters(), self.grads):
            p.grad = g
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            group.clear()
            group.update(saved)
        self.optimizer.state.clear()
        self.optimizer.state.update(self.state)


@contextlib.contextmanager
def restored_on_error(estimator: nn.Module, optimizer: torch.optim.Optimizer, active: bool = True) -> Iterator[None]:
    """Puts the estimator and its optimizer back as they were when the block raises (when ``active``)."""
    if not active:
        yield
        return
    snapshot = Snapshot(estimator, optimizer)
    try:
        yield
    except BaseException:
        snapshot.restore()
        raise


class FiniteChecks:
    """The tensors of a call whose values must be finite, checked in one fused reduction and one host
    synchronisation per :meth:`raise_first` (small models feel every extra op). ``error_for(what, value)``
    builds the exception for the first non-finite tensor, naming the cause and the fix."""

    def __init__(self, enabled: bool, error_for: Callable[[str, Tensor], BaseException]):
        self.enabled, self.error_for = enabled, error_for
        self.pending: List[Tuple[str, Tensor]] = []

    def add(self, what: str, value: Tensor) -> None:
        if self.enabled:
            self.pending.append((what, value))

    def raise_first(self) -> None:
        """Raise the error of the first non-finite tensor added so far, if any."""
        pending, self.pending = self.pending, []
        if not pending or bool(torch.isfinite(torch.cat([v.reshape(-1) for _, v in pending])).all()):
            return
        what, value = next((w, v) for w, v in pending if not bool(torch.isfinite(v).all()))
        raise self.error_for(what, value)
