"""``Unroller``: K differentiable optimizer steps of a module, and a view of the result.

This is the general piece under :class:`lbt_plugin.LBTLoss`. Given a module with
parameters :math:`\\theta_0`, an optimizer and a loss :math:`\\ell(\\theta)`, it
computes

.. math:: \\theta_{t+1} = U(\\theta_t, \\nabla_\\theta \\ell(\\theta_t), s_t), \\qquad t = 0..K-1,

where :math:`U` is the optimizer's update and :math:`s_t` its state, keeping the
graph, so that anything computed from :math:`\\theta_K` back-propagates through
all K steps (into whatever the loss depended on: a generator's samples, say).
The module, its buffers and the optimizer are left untouched.

Example: an unrolled discriminator (Metz et al., 2017)::

    unroll = Unroller(D, d_opt, k=5)
    D_K = unroll(lambda d: bce(d(real), 1) + bce(d(fake), 0))   # fake = G(z), not detached
    g_loss = bce(D_K(fake), 1)                                 # gradient flows through the 5 steps
"""
from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ._impl import rules
from ._impl.backends import BACKENDS, GradReduce, backend_class, optimizer_index

__all__ = ["Unroller", "UnrolledView"]


class UnrolledView:
    """A functional view of a module at the unrolled parameters :math:`\\theta_K`.

    Calling the view runs ``module.forward`` with :math:`\\theta_K`; so does any other
    method or callable attribute (``view.log_prob(x)``), and an attribute that is a
    submodule gives the view of that submodule. Every other attribute is read with
    :math:`\\theta_K` in place: parameters (``view.weight``, tied or parametrized ones
    included) are the unrolled tensors, properties are computed from them. Buffers are
    copies: updating them (BatchNorm in train mode) never touches the original module.
    """

    def __init__(self, backend: Any, module: nn.Module, path: str = ""):
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_path", path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._backend.within(self._path, lambda m: m(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        target = self._module.get_submodule(self._path)
        if target._modules.get(name) is not None:
            return UnrolledView(self._backend, self._module, f"{self._path}.{name}" if self._path else name)
        attr = getattr(target, name)  # what it is, read on the module itself
        if callable(attr) and not isinstance(attr, (Tensor, nn.Module)):
            backend, path = self._backend, self._path  # not self: the view caches the method, and no cycle may form

            def method(*args: Any, **kwargs: Any) -> Any:
                return backend.within(path, lambda m: getattr(m, name)(*args, **kwargs))

            method.__name__ = name
            method.__doc__ = getattr(attr, "__doc__", None)
            object.__setattr__(self, name, method)  # the view is read-only and short-lived: look it up once
            return method
        # parameters (tied or parametrized ones too), buffers and properties: read with theta_K in place
        return self._backend.within(self._path, lambda m: getattr(m, name))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("an UnrolledView is read-only; change the original module instead")

    def named_parameters(self) -> Iterator[Tuple[str, Tensor]]:
        """``(name, theta_K tensor)`` pairs, named as in the (sub)module's ``named_parameters()``."""
        prefix = self._path + "." if self._path else ""
        names = [n for n, _ in self._module.named_parameters()]
        for n, p in zip(names, self._backend.params):
            if n.startswith(prefix):
                yield n[len(prefix):], p

    def parameters(self) -> Iterator[Tensor]:
        """The unrolled parameters :math:`\\theta_K`, in ``module.parameters()`` order."""
        return (p for _, p in self.named_parameters())

    def __repr__(self) -> str:
        return f"UnrolledView({type(self._module.get_submodule(self._path)).__name__}, path={self._path!r})"


class Unroller:
    """K differentiable steps of ``optimizer`` on ``module``; returns an :class:`UnrolledView`.

    Args:
        module: the module to unroll (an estimator, a discriminator, ...).
        optimizer: a ``torch.optim`` optimizer over (some of) ``module``'s parameters.
            Its class, hyper-parameters and current state (Adam moments, momentum
            buffers, step counts) define the steps; it is not modified. Supported:
            SGD, Adam, AdamW, RMSprop, with all their flags; anything else raises.
        k: number of unrolled steps, ``k >= 1``.
        backend: ``"func"`` (default: the module's own code with ``theta_t`` in its
            parameter slots, as ``torch.func.functional_call``) or ``"higher"``
            (``higher.monkeypatch``); both compute the same numbers. ``"higher"``
            cannot patch some modules (abstract base classes, as in ``zuko``) and
            raises a ``TypeError`` naming ``"func"`` here, at construction.
        truncate: back-propagate through the last ``truncate`` steps only; the first
            ``k - truncate`` are constant steps. Memory and time of the backward pass
            then scale with ``truncate``, not ``k``. *Biased*: the hypergradient omits
            how the generator moved ``theta`` during the early steps (see
            docs/performance.md). ``None`` (default) or ``k`` is the exact unroll.
        checkpoint: recompute each differentiable step during the backward pass
            instead of storing its graph (``torch.utils.checkpoint``). *Exact*; stores
            only ``theta_t`` and the optimizer state per step, at the price of about one
            more forward/backward of the inner loss per step. Needs ``backend="func"`` (the default).
        grad_reduce: a function applied to the list of inner gradients at every step
            (``None`` entries for unused parameters), e.g. a differentiable all-reduce
            across ranks; it must keep the graph.
        check_finite: raise ``FloatingPointError`` naming the step if a loss is
            NaN or infinite (one host synchronisation per call).

    Call it with ``loss_fn(view) -> scalar`` or ``loss_fn(view, t) -> scalar``,
    evaluated at :math:`\\theta_t` for ``t = 0 .. k-1``; the result is the view at
    :math:`\\theta_K`. With ``checkpoint=True`` the loss of step ``t`` is evaluated
    again during backward: it must be a function of ``t`` (not of a counter).
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        k: int = 1,
        *,
        backend: str = "func",
        truncate: Optional[int] = None,
        checkpoint: bool = False,
        grad_reduce: Optional[GradReduce] = None,
        check_finite: bool = True,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not any(True for _ in module.parameters()):
            raise ValueError(f"{type(module).__name__} has no parameters: there is nothing to unroll")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (the number of unrolled steps), got {k!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int)
                                     or not 1 <= truncate <= k):
            raise ValueError(f"truncate must be an integer in [1, k={k}] or None, got {truncate!r}")
        if checkpoint and backend != "func":
            raise ValueError("checkpoint=True needs backend='func' (higher's patched module and optimizer hold "
                             "state that a recomputation would advance twice)")
        rules.rule_for(optimizer)  # fail now, not at the first call
        optimizer_index(module, optimizer)
        self._backend_class = backend_class(backend, module)  # a module higher cannot patch fails here, naming "func"
        self.module, self.optimizer, self.k, self.backend = module, optimizer, k, backend
        self.truncate, self.checkpoint, self.check_finite = truncate, checkpoint, check_finite
        self.grad_reduce = grad_reduce

    def __call__(self, loss_fn: Callable[..., Tensor]) -> UnrolledView:
        return self._unroll(loss_fn)[0]

    def _unroll(self, loss_fn: Callable[..., Tensor]) -> Tuple[UnrolledView, List[Tensor]]:
        """The view at theta_K and the K inner losses (detached), for callers that check them themselves."""
        backend = self._backend_class(self.module, self.optimizer, self.grad_reduce)
        view = UnrolledView(backend, self.module)
        with_t = _takes_step_index(loss_fn)
        constant_steps = self.k - (self.truncate or self.k)
        losses: List[Tensor] = []
        for t in range(self.k):
            def loss_at(t: int = t) -> Tensor:
                loss = loss_fn(view, t) if with_t else loss_fn(view)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                                     f"{tuple(getattr(loss, 'shape', ()))}")
                return loss.reshape(())

            if t >= constant_steps and self.checkpoint:
                loss = backend.checkpointed_step(loss_at)
            else:
                loss = loss_at()
                backend.step(loss, create_graph=t >= constant_steps)
            losses.append(loss.detach())
        if self.check_finite:
            finite = torch.isfinite(torch.stack(losses))
            if not bool(finite.all()):
                t = int((~finite).nonzero()[0])
                raise FloatingPointError(
                    f"the inner loss is {losses[t].item()} at unrolled step {t + 1} of {self.k}; "
                    "lower the optimizer's learning rate or check the module's outputs."
                )
        return view, losses

    def __repr__(self) -> str:
        return (f"Unroller({type(self.module).__name__}, {type(self.optimizer).__name__}, k={self.k}, "
                f"backend={self.backend!r}, truncate={self.truncate}, checkpoint={self.checkpoint})")


def _takes_step_index(fn: Callable[..., Tensor]) -> bool:
    """Whether ``fn`` accepts a second positional argument (the step index ``t``)."""
    if isinstance(fn, types.FunctionType) and not hasattr(fn, "__wrapped__"):  # a function or lambda: its code
        code = fn.__code__
        return code.co_argcount >= 2 or bool(code.co_flags & inspect.CO_VARARGS)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
