"""Differentiable update rules that reproduce ``torch.optim`` step for step.

Each rule takes one parameter tensor ``p``, its gradient ``g``, the optimizer's
hyper-parameters for its group and a per-parameter ``state`` dict, and returns
the updated parameter *out of place*, so that autograd records the update and
``theta_K`` stays a differentiable function of everything the gradients came
from. The rules mirror the single-tensor code paths of ``torch.optim`` (PyTorch
2.x) operation for operation (``lerp``, ``addcmul``, ``addcdiv`` in the same
order), so that in float64 the unrolled parameters equal those of real steps.

These functions are the only place where optimizer maths lives; both backends
(``"func"``, the module's own slots holding theta_t, and ``"higher"``) call them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

State = Dict[str, Any]
Rule = Callable[[Dict[str, Any], Tensor, Tensor, State], Tensor]


def _check_fixed(group: Dict[str, Any]) -> None:
    for key, value in group.items():
        values = value if isinstance(value, tuple) else (value,)
        if key != "params" and any(isinstance(v, Tensor) and v.requires_grad for v in values):
            raise ValueError(
                f"optimizer hyper-parameter {key!r} is a tensor that requires grad; "
                "lbt-plugin unrolls with fixed hyper-parameters. Pass a float or a detached tensor."
            )


def _num(x: Any) -> Any:
    """A Python number for ``alpha=``/``value=`` arguments (as torch converts a 0-d tensor).

    Hyper-parameters reach the rules through :func:`on_host`, so a tensor here is a CPU tensor and ``item()``
    reads host memory: no device synchronisation.
    """
    return x.item() if isinstance(x, Tensor) else x


def on_host(group: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a param group's hyper-parameters (without ``params``) whose tensors are on the CPU.

    A tensor learning rate (or beta) may live on the accelerator (``capturable``/``fused`` optimizers); the
    rules read it at every step (``_num``, ``wd != 0``), and each read of a device tensor would wait for the
    device. Copied once here, per unroll, it keeps its dtype and value, and the rules' scalar arithmetic on it
    (``lr / (1 - beta1**t)`` in its dtype) is the CPU's. torch.optim computes such step sizes on the device,
    with other kernels, in its capturable and fused steps, so theta_K is compared with those under the
    rounding bound anyway (docs/check.md). A tensor on the CPU is kept as it is.
    """
    def host(v: Any) -> Any:
        if isinstance(v, Tensor) and v.device.type != "cpu":
            return v.detach().cpu()
        if isinstance(v, tuple):
            return tuple(host(x) for x in v)
        return v

    return {k: host(v) for k, v in group.items() if k != "params"}


def _safe_sqrt(v: Tensor) -> Tensor:
    """``sqrt(v)`` with a zero (not NaN) derivative where ``v == 0``.

    ``torch.optim`` never differentiates its update; we do, and ``d sqrt(v)/dv``
    is infinite at 0, which turns the zero gradient of an untouched entry into
    NaN. Values are bit-identical to ``v.sqrt()``. Four operations (``gt``,
    ``where`` with a scalar, ``sqrt``, ``where`` with a scalar): scalars need no
    ``ones_like``/``zeros_like`` kernels.
    """
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)


def sgd(group: Dict[str, Any], p: Tensor, g: Tensor, state: State) -> Tensor:
    """``torch.optim.SGD`` (momentum, dampening, nesterov, weight decay, maximize)."""
    lr, wd = group["lr"], group["weight_decay"]
    momentum, dampening = group["momentum"], group["dampening"]
    if group.get("maximize", False):
        g = -g
    if wd != 0:
        g = g.add(p, alpha=_num(wd))
    if momentum != 0:
        buf: Optional[Tensor] = state.get("momentum_buffer")
        buf = g if buf is None else buf.mul(momentum).add(g, alpha=_num(1 - dampening))
        state["momentum_buffer"] = buf
        g = g.add(buf, alpha=_num(momentum)) if group["nesterov"] else buf
    return p.add(g, alpha=-_num(lr))


def adam(group: Dict[str, Any], p: Tensor, g: Tensor, state: State) -> Tensor:
    """``torch.optim.Adam`` and ``AdamW`` (amsgrad, maximize, L2 or decoupled weight decay).

    With :math:`m_t, v_t` the moment estimates and bias corrections
    :math:`\\hat m_t = m_t/(1-\\beta_1^t)`, :math:`\\hat v_t = v_t/(1-\\beta_2^t)`:
    :math:`\\theta_t = \\theta_{t-1} - \\alpha\\,\\hat m_t/(\\sqrt{\\hat v_t} + \\epsilon)`,
    with eps added *after* the bias correction of the root, as in ``torch.optim``.
    """
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    amsgrad = group.get("amsgrad", False)
    if group.get("maximize", False):
        g = -g
    if not state:
        state["step"] = 0.0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    step = state["step"] = state["step"] + 1
    if wd != 0:
        if group.get("decoupled_weight_decay", False):
            p = p.mul(1 - lr * wd)
        else:
            g = g.add(p, alpha=_num(wd))
    exp_avg = state["exp_avg"] = state["exp_avg"].lerp(g, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] = state["exp_avg_sq"].mul(beta2).addcmul(g, g, value=_num(1 - beta2))
    step_size = _num(lr / (1 - beta1**step))
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if amsgrad:
        exp_avg_sq = state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
    denom = (_safe_sqrt(exp_avg_sq) / bias_correction2_sqrt).add(eps)
    return p.addcdiv(exp_avg, denom, value=-step_size)


def rmsprop(group: Dict[str, Any], p: Tensor, g: Tensor, state: State) -> Tensor:
    """``torch.optim.RMSprop`` (centered, momentum, weight decay, maximize)."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    alpha, momentum = group["alpha"], group["momentum"]
    centered = group.get("centered", False)
    if group.get("maximize", False):
        g = -g
    if not state:
        state["step"] = 0.0
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if momentum > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if centered:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] = state["step"] + 1
    if wd != 0:
        g = g.add(p, alpha=_num(wd))
    square_avg = state["square_avg"] = state["square_avg"].mul(alpha).addcmul(g, g, value=_num(1 - alpha))
    if centered:
        grad_avg = state["grad_avg"] = state["grad_avg"].lerp(g, 1 - alpha)
        avg = _safe_sqrt(square_avg.addcmul(grad_avg, grad_avg, value=-1))
    else:
        avg = _safe_sqrt(square_avg)
    avg = avg.add(eps)
    if momentum > 0:
        buf = state["momentum_buffer"] = state["momentum_buffer"].mul(momentum).addcdiv(g, avg)
        return p.add(buf, alpha=-_num(lr))
    return p.addcdiv(g, avg, value=-_num(lr))


#: Exact optimizer classes with a differentiable rule. Subclasses are *not*
#: matched: a subclass may change ``step`` and we would silently unroll the wrong maths.
RULES: Dict[type, Rule] = {
    torch.optim.SGD: sgd,
    torch.optim.Adam: adam,
    torch.optim.AdamW: adam,
    torch.optim.RMSprop: rmsprop,
}


#: Group keys that change no maths (or that the rules read themselves), and the bookkeeping that learning-rate
#: schedulers keep in the groups (they change ``lr``, ``betas`` or ``momentum``, which the rules read).
_NEUTRAL_KEYS = {"params", "foreach", "fused", "capturable", "param_names", "name",
                 "initial_lr", "max_lr", "min_lr", "base_lr", "base_momentum", "max_momentum"}
_RULE_KEYS = {
    sgd: {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"},
    adam: {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"},
    rmsprop: {"lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"},
}


def rule_for(optimizer: torch.optim.Optimizer, host_groups: Optional[List[Dict[str, Any]]] = None) -> Rule:
    """The rule for ``optimizer``, or a clear error.

    Raises ``TypeError`` for an optimizer class without a rule and ``ValueError``
    for a param-group setting the rule would not honour (rather than ignoring it).
    ``host_groups``: the groups' :func:`on_host` copies, if the caller made them, whose values are checked
    instead of the originals' (reading a device tensor would synchronise).
    """
    rule = RULES.get(type(optimizer))
    if rule is None:
        names = ", ".join(f"torch.optim.{c.__name__}" for c in RULES)
        raise TypeError(
            f"lbt-plugin cannot unroll {type(optimizer).__module__}.{type(optimizer).__name__}: "
            f"differentiable steps exist for {names} (exact classes, not subclasses)."
        )
    known = _RULE_KEYS[rule] | _NEUTRAL_KEYS
    name = type(optimizer).__name__
    for i, group in enumerate(optimizer.param_groups):
        _check_fixed(group)
        if group.get("differentiable"):
            raise ValueError(
                f"param group {i} of {name} sets differentiable=True: that flag makes torch.optim's own step "
                "differentiable and its in-place teaching steps fail; lbt-plugin's unroll is differentiable by itself. "
                f"Build the {name} without differentiable=True."
            )
        for key, value in group.items():
            if key not in known and key != "differentiable" and value not in (None, False, 0):
                raise ValueError(
                    f"param group {i} of {name} sets {key}={value!r}, which the "
                    "differentiable step does not implement; remove it or unroll with another optimizer."
                )
        _check_values(group if host_groups is None else host_groups[i], i, name)
    return rule


#: The domain of each numeric hyper-parameter: a test and its description.
_DOMAINS: Dict[str, Tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v >= 0, ">= 0"), "weight_decay": (lambda v: v >= 0, ">= 0"), "eps": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"), "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"), "betas": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


#: The switches of the unrolled optimizers: a truthy string from a checkpoint would turn one on.
_FLAGS = ("amsgrad", "nesterov", "maximize", "centered")


def _check_values(group: Dict[str, Any], i: int, name: str) -> None:
    """Hyper-parameters in their domains: a NaN or negative learning rate from a checkpoint (torch.optim checks
    only its constructor's arguments) would otherwise surface steps later as a non-finite loss."""
    betas = group.get("betas", ())
    if not isinstance(betas, (tuple, list)) or len(betas) not in (0, 2):
        raise ValueError(f"param group {i} of {name} has betas={betas!r}; it must be a pair of numbers in [0, 1)")
    values = [(key, group[key]) for key in _DOMAINS if key in group and key != "betas"]
    for key, value in values + [("betas", b) for b in betas]:
        test, domain = _DOMAINS[key]
        v = _num(value)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not test(v):
            raise ValueError(f"param group {i} of {name} has {key}={value!r}; it must be a finite number {domain}")
    for key in _FLAGS:
        if key in group and not isinstance(group[key], bool):
            raise ValueError(f"param group {i} of {name} has {key}={group[key]!r}; it must be True or False")


def copy_state(optimizer: torch.optim.Optimizer, p: Tensor) -> State:
    """A detached copy of ``optimizer.state[p]``; tensor step counters become floats."""
    return copy_states(optimizer, [p])[0]


def copy_states(optimizer: torch.optim.Optimizer, params: List[Tensor]) -> List[State]:
    """Detached copies of ``optimizer.state[p]`` for each of ``params``; tensor step counters become floats.

    Step counters on the accelerator (``capturable``/``fused`` optimizers keep them there) are read in one
    transfer per device and dtype, not one synchronisation per parameter.
    """
    copied: List[State] = [{} for _ in params]
    steps: Dict[Tuple[torch.device, torch.dtype], List[Tuple[State, Tensor]]] = {}
    for out, p in zip(copied, params):
        for key, value in optimizer.state.get(p, {}).items():
            if key == "step" and isinstance(value, Tensor):
                out[key] = 0.0  # filled below; keeps the keys' order
                steps.setdefault((value.device, value.dtype), []).append((out, value))
            elif key == "step":
                out[key] = float(value)
            elif isinstance(value, Tensor):
                out[key] = value.detach().clone()
            else:
                out[key] = value
    for entries in steps.values():
        values = torch.stack([v.detach().reshape(()) for _, v in entries]).tolist()
        for (out, _), value in zip(entries, values):
            out["step"] = float(value)
    return copied
