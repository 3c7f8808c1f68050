"""The two ways of running K differentiable optimizer steps of a module.

A backend owns the unrolled parameters ``theta_t`` (and copies of the module's
buffers), takes differentiable steps on a loss, and calls any method of the
module, or of one of its submodules, with ``theta_t`` in place of the module's
own parameters. Both backends use the same update rules (:mod:`.rules`), so
they compute the same numbers; they differ in how the module is made functional.

- ``FuncBackend`` (the default, ``"func"``) puts ``theta_t`` into the module's own
  parameter slots for the duration of a call, as ``torch.func.functional_call`` does,
  and takes steps with plain autograd. Any module works, whatever its class hierarchy.
- ``HigherBackend`` (``"higher"``, in :mod:`.higher_backend`, imported only when used) uses ``higher.monkeypatch`` and ``higher``'s
  differentiable optimizer machinery, with our rules as the optimizers (used for
  this package's unrolls only; ``higher``'s own registry is left alone). ``higher``
  rebinds fast weights only inside ``forward``; a direct call of another method
  (``log_prob``) or of a submodule silently reads stale weights, so
  :meth:`HigherBackend.within` rebinds all fast weights before every call. It cannot
  patch modules whose classes cannot be subclassed together with its patch class
  (abstract bases, as in ``zuko``); it then says so and names ``"func"``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from . import rules

#: Applied to the list of inner gradients of each unrolled step (e.g. a differentiable all-reduce).
GradReduce = Callable[[List[Optional[Tensor]]], List[Optional[Tensor]]]


def optimizer_index(module: nn.Module, optimizer: torch.optim.Optimizer,
                    params: Optional[List[Tensor]] = None) -> List[List[int]]:
    """For each param group, the positions of its parameters in ``module.parameters()`` (or ``params``, that list).

    Raises ``ValueError`` when the optimizer holds a tensor that is not one of the
    module's parameters (a common mistake: an optimizer built for another model).
    """
    position = {id(p): i for i, p in enumerate(module.parameters() if params is None else params)}
    index: List[List[int]] = []
    for g, group in enumerate(optimizer.param_groups):
        ids = []
        for p in group["params"]:
            if id(p) not in position:
                raise ValueError(
                    f"the optimizer's param group {g} holds a tensor of shape {tuple(p.shape)} that is not a "
                    f"parameter of {type(module).__name__}; build the optimizer over this module's parameters()."
                )
            ids.append(position[id(p)])
        index.append(ids)
    return index


class FuncBackend:
    """Unroll with the module's own code, ``theta_t`` placed in its parameter slots, and ``torch.autograd.grad``.

    Updates can be multi-tensor: the parameters of one param group that share dtype, device, step count and
    state layout and are contiguous are updated as one flat tensor, so that each operation of the rule runs
    once per bucket instead of once per parameter (:class:`_Buckets`). The rules are elementwise, so every
    entry goes through the same arithmetic as in a per-parameter call: theta_K, the state and the
    hypergradient are bit-identical (tests/test_flat_updates.py).
    """

    #: ``True``: one rule call per bucket of parameters; ``False``: one per parameter; ``None`` (default): per
    #: bucket on accelerators, where every operation is a kernel launch, and on CPU for the rules of many
    #: operations (Adam, AdamW, RMSprop), where the concatenations cost less than the calls they save; SGD on CPU
    #: (one to three operations per parameter) is faster per parameter (docs/performance.md).
    flat: Optional[bool] = None

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 grad_reduce: Optional[GradReduce] = None):
        self.module = module
        self.grad_reduce = grad_reduce
        self.groups = [rules.on_host(g) for g in optimizer.param_groups]  # read at every step: kept on the host
        self.rule = rules.rule_for(optimizer, self.groups)
        params, buffers, self._param_slots, self._buffer_slots = _walk(module)  # one walk over the module
        self.index = index = optimizer_index(module, optimizer, params)
        self.params: List[Tensor] = [p.detach().clone().requires_grad_(p.requires_grad) for p in params]
        self._trainable = [i for i, p in enumerate(params) if p.requires_grad]
        self.buffers: List[Tensor] = [b.detach().clone() for b in buffers]
        held = [(i, p) for group, ids in zip(optimizer.param_groups, index) for i, p in zip(ids, group["params"])]
        self.state = dict(zip((i for i, _ in held), rules.copy_states(optimizer, [p for _, p in held])))
        self._buckets = _Buckets()

    def within(self, path: str, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn(module.get_submodule(path))`` with ``theta_t`` and the buffer copies in the module's slots; the
        module's own tensors are back in place when it returns or raises."""
        slots = self._param_slots + self._buffer_slots
        saved = [d[key] for d, key, _ in slots]
        try:
            for d, key, i in self._param_slots:
                d[key] = self.params[i]
            for d, key, i in self._buffer_slots:
                d[key] = self.buffers[i]
            return fn(self.module.get_submodule(path))
        finally:
            for (d, key, _), original in zip(slots, saved):
                d[key] = original

    def step(self, loss: Tensor, create_graph: bool = True) -> None:
        """One update from ``loss``; ``create_graph=False`` takes a constant step (no hypergradient)."""
        trainable = self._trainable
        try:
            grads = torch.autograd.grad(
                loss, [self.params[i] for i in trainable], create_graph=create_graph, allow_unused=True
            )
        except RuntimeError as exc:
            if isinstance(exc, torch.OutOfMemoryError) or not create_graph:
                raise
            raise RuntimeError(
                f"the gradient of {type(self.module).__name__}'s loss cannot be differentiated again ({exc}). The "
                "unroll needs log_prob to be twice differentiable; a module whose backward is a custom "
                "autograd.Function computed without a graph cannot be unrolled: adjoint ODE solvers (zuko's CNF, "
                "torchdiffeq's odeint_adjoint) and anything marked @once_differentiable. Use a discrete flow (zuko's "
                "MAF or NSF, normflows, lbt_plugin.estimators.RealNVP) or an ODE solved without the adjoint."
            ) from exc
        if self.grad_reduce is not None:
            grads = self.grad_reduce(list(grads))
        grad_of = dict(zip(trainable, grads))
        for group, ids in zip(self.groups, self.index):
            used = [i for i in ids if grad_of.get(i) is not None]
            for members in self._buckets.partition(used, self.params, self.state):
                if len(members) > 1 and self._flat_pays(self.params[members[0]].device):
                    self._buckets.update(self.rule, group, members, self.params, grad_of, self.state)
                    continue
                for i in members:
                    self.params[i] = self.rule(group, self.params[i], grad_of[i], self.state[i])
        if not create_graph:
            self.params = [p.detach().requires_grad_(p.requires_grad) for p in self.params]
            self.state = {i: {k: v.detach() if isinstance(v, Tensor) else v for k, v in s.items()}
                          for i, s in self.state.items()}

    def _flat_pays(self, device: torch.device) -> bool:
        """Whether to update a bucket of parameters on ``device`` in one rule call (see :attr:`flat`)."""
        if self.flat is not None:
            return self.flat
        return device.type != "cpu" or self.rule is not rules.sgd

    def checkpointed_step(self, loss_fn: Callable[[], Tensor]) -> Tensor:
        """One differentiable update whose graph is recomputed during backward, not stored.

        ``theta_t`` and the optimizer state go in and ``theta_{t+1}`` and the new state come
        out of ``torch.utils.checkpoint``, so only they are kept between steps; the
        activations of ``loss_fn`` and of its gradient are rebuilt when the backward pass
        reaches this step. The random number generator is replayed, so a stochastic loss
        sees the same noise. Returns the loss.
        """
        n = len(self.params)
        keys = [(i, k) for i, s in self.state.items() for k, v in s.items() if isinstance(v, Tensor)]
        static = {i: {k: v for k, v in s.items() if not isinstance(v, Tensor)} for i, s in self.state.items()}
        out_layout: Dict[str, Any] = {}

        def pure(*flat: Tensor) -> Tuple[Tensor, ...]:
            # Runs once now and again when backward recomputes this step: it uses the backend's
            # params/state to evaluate loss_fn, then puts back what was there (theta_K by then).
            before = self.params, self.state
            self.params = list(flat[:n])
            self.state = {i: dict(static[i]) for i in static}
            for (i, k), v in zip(keys, flat[n:]):
                self.state[i][k] = v
            try:
                with torch.enable_grad():
                    loss = loss_fn()
                    self.step(loss, create_graph=True)
                new_keys = [(i, k) for i, s in self.state.items() for k, v in s.items() if isinstance(v, Tensor)]
                out_layout["keys"] = new_keys
                out_layout["static"] = {i: {k: v for k, v in s.items() if not isinstance(v, Tensor)}
                                        for i, s in self.state.items()}
                return (loss, *self.params, *(self.state[i][k] for i, k in new_keys))
            finally:
                self.params, self.state = before

        flat_in = [*self.params, *(self.state[i][k] for i, k in keys)]
        out = torch.utils.checkpoint.checkpoint(pure, *flat_in, use_reentrant=False)
        self.params = list(out[1: 1 + n])
        self.state = {i: dict(out_layout["static"][i]) for i in out_layout["static"]}
        for (i, k), v in zip(out_layout["keys"], out[1 + n:]):
            self.state[i][k] = v
        return out[0]


class _Buckets:
    """Multi-tensor updates through the per-parameter rules, differentiable by autograd.

    ``torch._foreach_*`` kernels would launch once per bucket but are not differentiable; instead the members of
    a bucket are concatenated into one flat tensor (parameters, gradients and each state tensor), the rule runs
    once on the flat tensors, and the results are split back into views of the original shapes. For ``P``
    parameters and a rule of ``r`` operations a step then costs ``r + 2`` kernels instead of ``r P``
    (the splits and reshapes are views, no kernels). Since the rules are elementwise, entry ``j`` of the flat
    result is ``rule(p_j, g_j, s_j)`` exactly as in a per-parameter call.

    The flat state tensors of the last update of each bucket are kept; while the backend's state tensors are
    still the views of them (the next step of the same unroll), their concatenation is skipped.
    """

    def __init__(self) -> None:
        #: bucket members -> (flat state tensors, the views of them handed out)
        self._last: Dict[Tuple[int, ...], Tuple[Dict[str, Tensor], List[Tensor]]] = {}

    @staticmethod
    def partition(used: List[int], params: List[Tensor], state: Dict[int, rules.State]) -> List[List[int]]:
        """``used`` (the parameters of one group with a gradient) in buckets that one rule call can update:
        the same dtype, device and non-tensor state (Adam's step count), the same state tensors, and
        contiguous (a flat result is contiguous; a channels-last weight keeps its own call and layout)."""
        buckets: Dict[Any, List[int]] = {}
        for i in used:
            p, s = params[i], state[i]
            tensors = [v for v in s.values() if isinstance(v, Tensor)]
            if not p.is_contiguous() or any(v.dtype != p.dtype or v.device != p.device or v.shape != p.shape
                                            for v in tensors):
                key: Any = ("own", i)
            else:
                key = (p.dtype, p.device, tuple(sorted((k, v if not isinstance(v, Tensor) else None)
                                                       for k, v in s.items())))
            buckets.setdefault(key, []).append(i)
        return list(buckets.values())

    def update(self, rule: rules.Rule, group: Dict[str, Any], members: List[int], params: List[Tensor],
               grad_of: Dict[int, Optional[Tensor]], state: Dict[int, rules.State]) -> None:
        """``params[i]`` and ``state[i]`` for ``i`` in ``members`` after one ``rule`` step, in one call."""
        tensor_keys = [k for k, v in state[members[0]].items() if isinstance(v, Tensor)]
        views = [state[i][k] for k in tensor_keys for i in members]
        last = self._last.get(tuple(members))
        if last is not None and len(last[1]) == len(views) and all(a is b for a, b in zip(last[1], views)) \
                and set(last[0]) == set(tensor_keys):
            flat_state = dict(last[0])
        else:
            flat_state = {k: torch.cat([state[i][k].reshape(-1) for i in members]) for k in tensor_keys}
        # The parameters are concatenated at every step, though the last step's flat tensor holds the same values:
        # theta_t is used by the loss, by its gradient's graph and by the update, and autograd then sums the three
        # contributions to its gradient at the view, in the order of a per-parameter update: the hypergradient
        # stays bit-identical. (Reusing the flat tensor adds the update's contribution after the other two.)
        flat_p = torch.cat([params[i].reshape(-1) for i in members])
        flat_g = torch.cat([grad_of[i].reshape(-1) for i in members])  # type: ignore[union-attr]
        s: rules.State = {k: v for k, v in state[members[0]].items() if not isinstance(v, Tensor)}
        s.update(flat_state)
        new_p = rule(group, flat_p, flat_g, s)
        shapes = [params[i].shape for i in members]
        sizes = [params[i].numel() for i in members]
        for i, piece, shape in zip(members, new_p.split(sizes), shapes):
            params[i] = piece.view(shape)
        new_tensors = {k: v for k, v in s.items() if isinstance(v, Tensor)}
        for k, flat in new_tensors.items():
            for i, piece, shape in zip(members, flat.split(sizes), shapes):
                state[i][k] = piece.view(shape)
        for i in members:
            for k, v in s.items():
                if not isinstance(v, Tensor):
                    state[i][k] = v
        handed = [state[i][k] for k in [k for k, v in state[members[0]].items() if isinstance(v, Tensor)]
                  for i in members]
        self._last[tuple(members)] = (new_tensors, handed)


Slot = Tuple[Dict[str, Any], str, int]


def _gather(store: Dict[str, Optional[Tensor]], index: Dict[int, int], found: List[Tensor],
            slots: List[Slot]) -> None:
    """Append ``store``'s tensors not seen before to ``found`` and one slot per entry to ``slots``."""
    for key, t in store.items():
        if t is not None:
            if id(t) not in index:
                index[id(t)] = len(found)
                found.append(t)
            slots.append((store, key, index[id(t)]))


def _walk(module: nn.Module) -> Tuple[List[Tensor], List[Tensor], List[Slot], List[Slot]]:
    """``module.parameters()``, ``module.buffers()``, and every place each of them lives, as ``(owner's dict,
    name, index)``: a tensor shared by two submodules has two slots and one index. One pass over the modules;
    first appearances come in ``parameters()``'s and ``buffers()``' order."""
    params: List[Tensor] = []
    buffers: List[Tensor] = []
    param_slots: List[Slot] = []
    buffer_slots: List[Slot] = []
    param_index: Dict[int, int] = {}
    buffer_index: Dict[int, int] = {}
    for _, owner in module.named_modules(remove_duplicate=False):
        _gather(owner._parameters, param_index, params, param_slots)
        _gather(owner._buffers, buffer_index, buffers, buffer_slots)
    return params, buffers, param_slots, buffer_slots


#: The backends' names; ``"higher"`` is imported only when asked for (the default does not need it).
BACKENDS = ("func", "higher")


def backend_class(name: str, module: nn.Module) -> type:
    """The backend class for ``name``; for ``"higher"``, after checking that ``higher`` can patch ``module`` (a
    ``TypeError`` naming ``"func"`` otherwise)."""
    if name == "func":
        return FuncBackend
    from .higher_backend import HigherBackend, patch

    patch(module)
    return HigherBackend
