"""The ``"higher"`` backend: ``higher.monkeypatch`` and ``higher``'s differentiable optimizer machinery, with the
update rules of :mod:`.rules` as the optimizers. Imported only when ``backend="higher"`` is asked for."""
from __future__ import annotations

import collections
from typing import Any, Callable, List, Optional, Sequence

import higher
import higher.optim
import higher.patch
import torch
from torch import Tensor, nn

from . import rules
from .backends import GradReduce


class _RuleOptimizer(higher.optim.DifferentiableOptimizer):
    """A ``higher`` differentiable optimizer whose update is one of :mod:`.rules`.

    One subclass per ``torch.optim.SGD``, ``Adam``, ``AdamW`` and ``RMSprop``, used by
    :class:`HigherBackend` instead of ``higher``'s own versions (its Adam places eps
    differently from ``torch.optim.Adam``, ignores ``maximize`` and newer flags, and has
    no AdamW). The constructor copies the optimizer's state without deep-copying its
    parameters, which ``higher``'s base class does.
    """

    rule: rules.Rule

    def __init__(
        self,
        other: torch.optim.Optimizer,
        reference_params: Sequence[Tensor],
        fmodel: Optional[higher.patch._MonkeyPatchBase] = None,
        device: Optional[torch.device] = None,
        override: Optional[dict] = None,
        grad_callback: Any = None,
        track_higher_grads: bool = True,
        **kwargs: Any,
    ) -> None:
        position = {id(p): i for i, p in enumerate(reference_params)}
        self.param_groups = []
        self._group_to_param_list = []
        self.state = [collections.defaultdict(dict) for _ in other.param_groups]
        for g, group in enumerate(other.param_groups):
            copy = {k: v for k, v in group.items() if k != "params"}
            copy["params"] = [None] * len(group["params"])
            self.param_groups.append(copy)
            mapping = []
            for j, p in enumerate(group["params"]):
                if id(p) not in position:
                    raise ValueError(f"parameter of shape {tuple(p.shape)} is not among the reference parameters")
                mapping.append(position[id(p)])
                state = rules.copy_state(other, p)
                if device is not None:
                    state = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()}
                if state:
                    self.state[g][j] = state
            self._group_to_param_list.append(mapping)
        if override is not None:
            self._apply_override(override)
        self._grad_callback = grad_callback
        self._fmodel = fmodel
        self._track_higher_grads = track_higher_grads

    def _update(self, grouped_grads: List[List[Optional[Tensor]]], **kwargs: Any) -> None:
        rule = type(self).rule
        for g, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            for j, (p, grad) in enumerate(zip(group["params"], grads)):
                if grad is not None:
                    group["params"][j] = rule(group, p, grad, self.state[g][j])


#: Our differentiable optimizers, by ``torch.optim`` class. Not registered with ``higher``: other users of
#: ``higher.optim.get_diff_optim`` in the same process keep ``higher``'s own.
_DIFFERENTIABLE = {
    optim_type: type(f"Differentiable{optim_type.__name__}", (_RuleOptimizer,),
                     {"rule": staticmethod(rule), "__module__": __name__})
    for optim_type, rule in rules.RULES.items()
}


def patch(module: nn.Module) -> "higher.patch._MonkeyPatchBase":
    """``higher.monkeypatch(module)``, or a ``TypeError`` that says why it cannot and names the fix."""
    try:
        return higher.patch.monkeypatch(module, copy_initial_weights=True, track_higher_grads=False)
    except TypeError as exc:
        raise TypeError(
            f"backend='higher' cannot patch {type(module).__name__}: higher subclasses every submodule's class, and "
            f"this fails here ({' '.join(str(exc).split())}). Use backend='func' (the default), which works with any module."
        ) from None


class HigherBackend:
    """Unroll with ``higher.monkeypatch`` (the module) and ``higher``'s differentiable optimizer base class with
    this package's rules as the update (``_DIFFERENTIABLE``; ``higher``'s own optimizers are not used)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 grad_reduce: Optional[GradReduce] = None):
        rules.rule_for(optimizer)  # the same clear errors as the func backend
        # track_higher_grads=False on the *module* only keeps one list of fast weights
        # instead of appending one per rebinding; the optimizer still builds the graph.
        self.fmodel = patch(module)
        self._trainable = [p.requires_grad for p in module.parameters()]
        self.diffopt = _DIFFERENTIABLE[type(optimizer)](
            optimizer, list(module.parameters()), fmodel=self.fmodel, track_higher_grads=True,
            grad_callback=grad_reduce,
        )
        # higher keeps the fast weights of a call in a list captured by closures of the
        # patched *class*; classes live in reference cycles, so whatever is left in that
        # box outlives the call until a full garbage collection. We fill it for each call
        # and empty it afterwards, as higher's own root forward does.
        prop = type(self.fmodel).__dict__["direct_submodule_call"]
        self._box = next(c.cell_contents for c in prop.fget.__closure__ if isinstance(c.cell_contents, list))

    @property
    def params(self) -> List[Tensor]:
        return list(self.fmodel.fast_params)

    def within(self, path: str, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn(patched submodule at path)`` with every patched submodule bound to ``theta_t``."""
        fmodel = self.fmodel
        fmodel.update_params(fmodel.fast_params)  # every patched submodule's attributes <- theta_t
        self._box[0] = fmodel._expand_params(fmodel.fast_params)  # submodules called directly read theta_t
        try:
            return fn(fmodel.get_submodule(path))
        finally:
            self._box[0] = None

    def step(self, loss: Tensor, create_graph: bool = True) -> None:
        """One update; ``create_graph=False`` takes a constant step (no hypergradient)."""
        self.diffopt._track_higher_grads = create_graph
        self.diffopt.step(loss)
        if not create_graph:  # higher re-enables grad on every detached parameter: keep frozen ones frozen
            for p, trainable in zip(self.fmodel.fast_params, self._trainable):
                p.requires_grad_(trainable)


