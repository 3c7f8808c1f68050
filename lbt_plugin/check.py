"""Validation of unrolled hypergradients: the functions behind ``lbt-plugin check``.

:func:`forward_exactness`, :func:`hypergradient_error` and :func:`backend_agreement` each
return a relative error (``hypergradient_error`` the gradient too); :func:`run_checks` builds the models from their
factories, runs every check below for each optimizer factory, K and backend it is given,
and returns the table's :class:`Result` rows. The numerical checks run on float64
*copies* of the user's models, with the random number generator forked and re-seeded for
every evaluation, so that a stochastic ``log_prob`` (a VAE's ELBO) is the same function
at every point; the reach and finiteness checks run at the models' own dtype, as trained.

- contract: one LBT step runs (what ``LBTLoss`` validates, with its own message);
- forward exactness: :math:`\\theta_K` from the unroll equals the parameters after K
  real ``torch.optim`` steps on the same batch: bit for bit where ``torch.optim`` runs the
  unroll's arithmetic (CPU), within :func:`rounding_bound` where its kernels differ (CUDA, fused);
- finite differences: the hypergradient :math:`d\\mathcal{L}_{LBT}/d\\phi_G` agrees with
  Richardson-extrapolated central differences along two directions;
- backend agreement: ``"higher"`` and ``"func"`` give the same hypergradient;
- reach: every trainable generator parameter receives a gradient;
- finite: loss and gradients are finite;
- no side effects: with ``teach_steps=0`` a call changes neither the estimator
  nor its optimizer.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._impl import rules
from ._impl.latent import as_shape
from ._impl.latent import latent_shape as latent_shape_of
from .loss import LBTLoss
from .unroll import Unroller

__all__ = ["Result", "run_checks", "forward_exactness", "rounding_bound", "same_kernels", "hypergradient_error",
           "backend_agreement"]

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]

#: Optimizer factories the check uses when the user gives none.
OPTIMIZERS: Dict[str, OptimizerFactory] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.5, 0.999)),
}


@dataclass
class Result:
    """One row of the check table."""

    check: str
    setting: str
    value: Optional[float]
    threshold: Optional[float]
    status: str  # "PASS", "FAIL" or "WARN"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _seeded(fn: Callable[[], Any], seed: int, device: torch.device) -> Any:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _flat(ts: Iterable[Optional[Tensor]], like: Sequence[Tensor]) -> Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(ts, like)])


def _shift(params: Sequence[Tensor], direction: Tensor, step: float) -> None:
    """``params += step * direction`` in place, ``direction`` being flat over all of them."""
    with torch.no_grad():
        offset = 0
        for p in params:
            p.add_(direction[offset: offset + p.numel()].view_as(p), alpha=step)
            offset += p.numel()


def _warm(estimator: nn.Module, optimizer_factory: OptimizerFactory, x: Tensor,
          warmup: int) -> Tuple[nn.Module, torch.optim.Optimizer, Tensor]:
    """A float64 copy of the estimator, its optimizer after ``warmup`` seeded real steps on ``x``, and ``x``."""
    est = copy.deepcopy(estimator).double()
    x = x.double()
    opt = optimizer_factory(est)
    _seeded(lambda: [_real_step(est, opt, x) for _ in range(warmup)], 1, x.device)
    return est, opt, x


def _real_step(m: nn.Module, o: torch.optim.Optimizer, x: Tensor) -> None:
    o.zero_grad(set_to_none=True)
    (-m.log_prob(x).mean()).backward()
    o.step()


def _relative(diffs: Iterable[Tensor], reference: Iterable[Tensor]) -> float:
    """``max`` over tensors of ``max|d| / max(max|ref|, 1)``: the check's measure of a difference in theta."""
    return max((d.abs().max() / r.detach().abs().max().clamp_min(1.0)).item() for d, r in zip(diffs, reference))


def forward_exactness(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, x: Tensor, k: int, backend: str, warmup: int = 2
) -> float:
    """Largest relative difference between unrolled :math:`\\theta_K` and K real optimizer steps.

    Runs in float64 on copies. ``warmup`` real steps first give the optimizer a
    non-trivial state (moments, momentum buffers) to start the unroll from.
    """
    est, opt, x = _warm(estimator, optimizer_factory, x, warmup)
    ref = copy.deepcopy(est)
    ref_opt = optimizer_factory(ref)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy: load_state_dict may share the step tensors
    view = _seeded(lambda: Unroller(est, opt, k, backend=backend)(lambda e: -e.log_prob(x).mean()), 0, x.device)
    _seeded(lambda: [_real_step(ref, ref_opt, x) for _ in range(k)], 0, x.device)
    return _relative((a.detach() - b.detach() for a, b in zip(view.parameters(), ref.parameters())),
                     list(ref.parameters()))


#: float64's unit roundoff: a rounded operation errs by at most this fraction of its exact result.
UNIT_ROUNDOFF = 2.0 ** -53


def same_kernels(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Whether ``optimizer.step()`` does the unroll's arithmetic operation for operation, so that theta_K is
    bit-identical: on CPU, single-tensor and ``foreach`` steps do (tested), ``fused`` ones need not. On CUDA,
    ``foreach`` (the default there) divides by ``sqrt(1 - beta2^t)`` exactly where the single-tensor kernel
    multiplies by its reciprocal (docs/check.md)."""
    return device.type == "cpu" and not any(g.get("fused") for g in optimizer.param_groups)


def rounding_bound(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, x: Tensor, k: int, warmup: int = 2,
    draws: int = 8, seed: int = 0,
) -> float:
    """How far theta_K of K real optimizer steps may lie from the unroll's when both compute the same maths
    with other kernels (other summation orders, multi-tensor or fused updates), in :func:`forward_exactness`'s
    measure. First order in float64's unit roundoff ``u``; an error in the unroll's maths is not of this kind
    and exceeds the bound by orders of magnitude (docs/check.md).

    *Gradient.* Two computations of the gradient at the same point, or at points a rounding apart, differ by
    their rounding errors. An a-priori bound from the gradient's per-sample terms misses the largest of them:
    the bias of a layer before BatchNorm has an exact gradient of 0 and per-sample terms of 0, and a computed
    gradient of order ``n u sum_k |dL/da_k|`` (the batch reductions inside BatchNorm's backward). So the noise
    is measured where it arises, on the device: at each step ``t`` the gradient is recomputed ``draws`` times
    with every rounding error drawn again, and ``delta_t,j = safety * max_r |g_j^(r) - g_j|``. A draw
    permutes the batch (another summation order of every batch reduction) and moves theta by one unit in the
    last place, ``theta (1 + u s)`` with random signs ``s``. With Gaussian rounding noise a further
    difference exceeds 8 times the largest of 8 draws with probability 7e-7 per entry: ``safety = 8``.
    Where ``log_prob`` is not a deterministic, permutation-equivariant function of the batch (a VAE draws its
    noise by position), only theta moves; that redraws only the roundings whose operands change: on the
    BatchNorm bias of the check's model its median difference was up to 14.5x below that of reorderings (10
    seeds, 200 draws each; docs/check.md), so there ``safety = 8 * 16 = 128``.

    *Update.* Every rule is an elementwise map ``(theta_j, g_j, s_j) -> (theta_j', s_j')`` of the parameter,
    its gradient and its optimizer state. Along the reference trajectory the per-entry Jacobian ``J_t`` is
    computed by autograd through the rule, and worst-case bounds propagate as
    ``B_{t+1} = |J_t| (B_t^theta, delta_t, B_t^state)``. Adam's ``d theta'/d g = -lr (1 - beta1) /
    ((1 - beta1^t)(sqrt(v_hat) + eps)) + ...`` is where ``lr`` and ``eps`` enter: an entry whose gradient is
    all rounding noise has ``sqrt(v_hat) << eps`` and moves by about ``lr delta / eps`` per step, accumulated
    over the K steps through the moments. Returns ``max_j B_K,j / max(|theta_K|, 1)`` over the tensors. The
    roundings of the update's own operations (``u |theta|`` each) are below the exact tolerance it is used with.
    """
    est, opt, x = _warm(estimator, optimizer_factory, x, warmup)
    rule = rules.rule_for(opt)
    params = list(est.parameters())
    group_of = {id(p): {key: v for key, v in g.items() if key != "params"}
                for g in opt.param_groups for p in g["params"]}
    trained = [i for i, p in enumerate(params) if p.requires_grad and id(p) in group_of]
    states = {i: rules.copy_state(opt, params[i]) for i in trained}
    bounds: Dict[int, Dict[str, Tensor]] = {i: {"p": torch.zeros_like(params[i])} for i in trained}
    rand = torch.Generator(device="cpu").manual_seed(seed)
    device = x.device

    def gradients(batch: Tensor) -> List[Optional[Tensor]]:
        loss = -est.log_prob(batch).mean()
        return list(torch.autograd.grad(loss, [params[i] for i in trained], allow_unused=True))

    def kept(fn: Callable[[], Any]) -> Any:
        """``fn()`` with the random state, the parameters and the buffers put back afterwards."""
        saved = [t.detach().clone() for t in (*params, *est.buffers())]
        rng = _rng_state(device)
        try:
            return fn()
        finally:
            _set_rng_state(device, rng)
            with torch.no_grad():
                for t, value in zip((*params, *est.buffers()), saved):
                    t.copy_(value)

    with _forked(device):
        torch.manual_seed(0)  # as the unroll and the reference: step t draws the same random numbers in all three
        reorder = kept(lambda: _equivariant(est, x, rand))
        safety = 8.0 if reorder else 128.0
        for _ in range(k):
            noise = [torch.zeros_like(params[i]) for i in trained]

            def draw() -> None:
                with torch.no_grad():
                    for i in trained:
                        sign = torch.randint(0, 2, params[i].shape, generator=rand).to(params[i]) * 2 - 1
                        params[i].mul_(1 + UNIT_ROUNDOFF * sign)
                order = torch.randperm(x.shape[0], generator=rand).to(x.device) if reorder else None
                for n, g, g0 in zip(noise, gradients(x if order is None else x[order]), reference):
                    if g is not None and g0 is not None:
                        torch.maximum(n, (g - g0).abs(), out=n)

            reference = kept(lambda: gradients(x))
            for _ in range(draws):
                kept(draw)
            grads = gradients(x)  # advances the random state and the buffers as a real step does
            for i, g, n in zip(trained, grads, noise):
                if g is None:
                    continue
                new, states[i], jac = _rule_jacobian(rule, group_of[id(params[i])], params[i], g, states[i])
                given = {**bounds[i], "g": safety * n}
                bounds[i] = {out: sum((d * given[name] for name, d in row.items() if name in given),
                                      torch.zeros_like(new)) for out, row in jac.items()}
                with torch.no_grad():
                    params[i].copy_(new)
    return _relative((bounds[i]["p"] for i in trained), [params[i] for i in trained]) if trained else 0.0


def _equivariant(est: nn.Module, x: Tensor, rand: torch.Generator) -> bool:
    """Whether ``log_prob`` is a deterministic, permutation-equivariant function of the batch: the same random
    state gives ``log_prob(x[pi]) == log_prob(x)[pi]`` up to rounding (1e-8 relative separates rounding,
    ~1e-15, from a different function, ~1)."""
    order = torch.randperm(x.shape[0], generator=rand).to(x.device)
    rng = _rng_state(x.device)
    with torch.no_grad():
        a = est.log_prob(x)[order]
        _set_rng_state(x.device, rng)
        b = est.log_prob(x[order])
    return bool(((a - b).abs().max() <= 1e-8 * a.abs().max().clamp_min(1.0)).item())


def _rule_jacobian(rule: rules.Rule, group: Dict[str, Any], p: Tensor, g: Tensor, state: rules.State,
                   ) -> Tuple[Tensor, rules.State, Dict[str, Dict[str, Tensor]]]:
    """One step of ``rule`` and, per entry, ``|d out / d in|`` for ``out`` in the new parameter (``"p"``) and
    the new state tensors and ``in`` in the parameter, the gradient (``"g"``) and the state tensors. The rules
    are elementwise, so the gradient of ``out.sum()`` is the Jacobian's diagonal."""
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    inputs = {"p": leaf(p), "g": leaf(g)}
    state = dict(state)
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            state[key] = inputs[key] = leaf(value)
    with torch.enable_grad():
        new_p = rule(group, inputs["p"], inputs["g"], state)
        outputs = {"p": new_p, **{key: v for key, v in state.items() if isinstance(v, Tensor) and key in
                                  {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                                   "grad_avg"}}}
        jac: Dict[str, Dict[str, Tensor]] = {}
        for out, value in outputs.items():
            ds = (torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True, retain_graph=True)
                  if value.requires_grad else [None] * len(inputs))
            jac[out] = {name: d.abs() for name, d in zip(inputs, ds) if d is not None}
    new_state = {key: v.detach() if isinstance(v, Tensor) else v for key, v in state.items()}
    return new_p.detach(), new_state, jac


@contextlib.contextmanager
def _forked(device: torch.device) -> Iterator[None]:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def _rng_state(device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: Tuple[Tensor, Optional[Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _float64_problem(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, generator: nn.Module, data: Tensor, z: Tensor,
    k: int, backend: str, seed: int, warmup: int, **options: Any,
) -> Tuple[Callable[[], Tensor], List[Tensor], Tensor]:
    """On float64 copies: the seeded LBT loss as a function of the generator's parameters, those
    parameters, and its flat gradient. ``warmup`` teaching steps first give the optimizer a state;
    ``options`` go to ``LBTLoss`` (``truncate=``, ``checkpoint=``)."""
    est, gen = copy.deepcopy(estimator).double(), copy.deepcopy(generator).double()
    data, z = data.double(), z.double()
    opt = optimizer_factory(est)
    if warmup:
        _seeded(lambda: LBTLoss(est, k=1, optimizer=opt, teach_steps=warmup)(gen, data, z=z), seed, data.device)
    lbt = LBTLoss(est, k=k, optimizer=opt, teach_steps=0, backend=backend, **options)
    f = lambda: _seeded(lambda: lbt(gen, data, z=z), seed, data.device)  # noqa: E731
    params = [p for p in gen.parameters() if p.requires_grad]
    return f, params, _flat(torch.autograd.grad(f(), params, allow_unused=True), params)


def hypergradient_error(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, generator: nn.Module, data: Tensor, z: Tensor,
    k: int, backend: str, steps: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5), seed: int = 0, warmup: int = 2,
    **options: Any,
) -> Tuple[float, Tensor]:
    """Relative error of the LBT hypergradient against finite differences (float64).

    The directional derivative along ``d`` is estimated by Richardson extrapolation
    of central differences, ``(4 D(h/2) - D(h)) / 3`` (error O(h^4)), for two unit
    directions: the gradient's own and a random tilt of it. Truncation error grows
    with the curvature of the unrolled map and round-off error as h shrinks, so the
    error is taken at the best h of ``steps``; a wrong gradient agrees at none.
    ``warmup`` teaching steps first give the optimizer a state, as in training
    (from a fresh state Adam's first step is nearly ``lr * sign(g)`` and the
    hypergradient nearly zero). ``options`` go to ``LBTLoss``: the loss's value does not depend on
    ``truncate`` or ``checkpoint``, so its differences measure the exact gradient whatever the backward
    pass does. Returns the larger relative error and the gradient.
    """
    f, params, g = _float64_problem(estimator, optimizer_factory, generator, data, z, k, backend, seed, warmup,
                                    **options)
    if not torch.isfinite(g).all() or g.norm() == 0:
        return math.inf, g
    gen_r = torch.Generator(device="cpu").manual_seed(seed)
    r = torch.randn(g.shape, generator=gen_r, dtype=g.dtype).to(g.device)
    d1 = g / g.norm()
    d2 = d1 + r / r.norm()
    worst = 0.0
    for d in (d1, d2 / d2.norm()):
        def at(step: float) -> float:
            _shift(params, d, step)
            try:
                return f().item()
            finally:
                _shift(params, d, -step)

        central = lambda s: (at(s) - at(-s)) / (2 * s)  # noqa: E731
        exact = (g @ d).item()
        best = min(abs((4 * central(h / 2) - central(h)) / 3 - exact) for h in steps)
        worst = max(worst, best / max(abs(exact), 1e-300))
    return worst, g


def backend_agreement(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, generator: nn.Module, data: Tensor, z: Tensor,
    k: int, seed: int = 0,
) -> float:
    """Relative difference ``|g_higher - g_func| / |g_func|`` of the hypergradients (float64)."""
    gs = [_float64_problem(estimator, optimizer_factory, generator, data, z, k, backend, seed, warmup=2)[2]
          for backend in ("higher", "func")]
    return ((gs[0] - gs[1]).norm() / gs[1].norm().clamp_min(1e-300)).item()


def _state_snapshot(estimator: nn.Module, optimizer: torch.optim.Optimizer) -> List[Tensor]:
    out = [t.detach().clone() for t in estimator.state_dict().values()]
    for state in optimizer.state.values():
        out += [v.detach().clone() for v in state.values() if isinstance(v, Tensor)]
    return out


def run_checks(
    estimator_factory: Callable[[], nn.Module],
    generator_factory: Callable[[], nn.Module],
    data_shape: Sequence[int],
    latent_shape: Optional[Sequence[int]] = None,
    *,
    ks: Sequence[int] = (1, 5),
    optimizers: Optional[Dict[str, OptimizerFactory]] = None,
    backends: Sequence[str] = ("func", "higher"),
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    fd_tol: float = 1e-6,
    backend_tol: float = 1e-10,
    exact_tol: float = 1e-10,
) -> List[Result]:
    """Run every check and return the table's rows; a row with status FAIL means a failed check."""
    optimizers = optimizers or OPTIMIZERS
    torch.manual_seed(seed)
    dev = torch.device(device)
    rows: List[Result] = []
    try:
        estimator, generator = estimator_factory().to(dev), generator_factory().to(dev)
    except Exception as exc:  # a user factory that fails is a failed check, with its message
        return [Result("build models", "", None, None, "FAIL", f"{type(exc).__name__}: {exc}")]
    data = torch.randn(batch_size, *data_shape, device=dev)
    if latent_shape is None:
        latent_shape, _, _ = latent_shape_of(generator)
        if latent_shape is None:
            return [Result("latent shape", "", None, None, "FAIL",
                           "give --latent-shape, or a latent_dim / latent_shape attribute on the generator")]
    latent_shape = as_shape(latent_shape)
    z = torch.randn(batch_size, *latent_shape, device=dev)

    # Contract: everything LBTLoss validates, surfaced with its own message.
    for name, make_opt in optimizers.items():
        try:
            est = copy.deepcopy(estimator)
            opt = make_opt(est)
            LBTLoss(est, k=1, optimizer=opt, teach_steps=1)(copy.deepcopy(generator), data, z=z).backward()
            rows.append(Result("contract", name, None, None, "PASS", "log_prob shape, samples, optimizer"))
            snap = _state_snapshot(est, opt)  # the teaching step above gave the optimizer a state
            LBTLoss(est, k=2, optimizer=opt, teach_steps=0)(copy.deepcopy(generator), data, z=z).backward()
            same = all(torch.equal(a, b) for a, b in zip(snap, _state_snapshot(est, opt)))
            plain = all(type(p) is nn.Parameter for p in est.parameters())
            rows.append(Result("teach_steps=0 changes nothing", name, None, None,
                               "PASS" if same and plain else "FAIL",
                               "" if same and plain else "estimator or optimizer state changed"))
        except Exception as exc:
            rows.append(Result("contract", name, None, None, "FAIL", f"{type(exc).__name__}: {exc}"))
    if any(r.failed for r in rows):
        return rows

    if "higher" in backends:
        try:
            Unroller(estimator, torch.optim.SGD(estimator.parameters(), lr=0.0), 1, backend="higher")
        except TypeError as exc:
            rows.append(Result("higher can patch the estimator", "", None, None, "WARN", str(exc).split(":")[0]
                               + "; checked on the other backend(s)"))
            backends = tuple(b for b in backends if b != "higher")
    for name, make_opt in optimizers.items():
        exact = same_kernels(make_opt(copy.deepcopy(estimator)), dev)
        for k in ks:
            setting = f"{name}, K={k}"
            tol, status_if_close, how = exact_tol, "PASS", f"exact: torch.optim's kernels are the unroll's ({dev.type})"
            if not exact:
                bound = rounding_bound(estimator, make_opt, data, k, seed=seed)
                tol = max(exact_tol, bound)
                how = f"rounding bound: torch.optim's kernels differ from the unroll's ({dev.type})"
                if tol > fd_tol:
                    status_if_close, how = "WARN", f"rounding bound {bound:.1e} too loose to test exactness"
            for backend in backends:
                err = forward_exactness(estimator, make_opt, data, k, backend)
                rows.append(Result("theta_K == torch.optim steps", f"{setting}, {backend}", err, tol,
                                   status_if_close if err <= tol else "FAIL", how))
                err, g = hypergradient_error(estimator, make_opt, generator, data, z, k, backend, seed=seed)
                finite = bool(torch.isfinite(g).all())
                rows.append(Result("hypergradient vs finite diff.", f"{setting}, {backend}", err, fd_tol,
                                   "PASS" if err <= fd_tol else "FAIL",
                                   "" if finite else "gradient has NaN/inf"))
            if len(backends) == 2:
                err = backend_agreement(estimator, make_opt, generator, data, z, k, seed=seed)
                rows.append(Result("higher == func", setting, err, backend_tol,
                                   "PASS" if err <= backend_tol else "FAIL"))

    # Reach: which generator parameters get a gradient (at the default dtype, as trained).
    gen = copy.deepcopy(generator)
    est = copy.deepcopy(estimator)
    first = next(iter(optimizers.values()))
    loss = LBTLoss(est, k=max(ks), optimizer=first(est), teach_steps=0)(gen, data, z=z)
    loss.backward()
    named = [(n, p) for n, p in gen.named_parameters() if p.requires_grad]
    missing = [n for n, p in named if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    nonfinite = [n for n, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    reached = len(named) - len(missing)
    status = "FAIL" if reached == 0 else ("WARN" if missing else "PASS")
    rows.append(Result("generator params reached", f"{reached}/{len(named)}", float(reached), None, status,
                       ("no gradient: " + ", ".join(missing[:5])) if missing else ""))
    ok = bool(torch.isfinite(loss)) and not nonfinite
    rows.append(Result("loss and gradients finite", "", None, None, "PASS" if ok else "FAIL",
                       ", ".join(nonfinite[:5])))
    return rows


def format_table(rows: Sequence[Result]) -> str:
    """A plain-text table of check results."""
    header = ("check", "setting", "value", "threshold", "status", "detail")
    body = [(r.check, r.setting, "" if r.value is None else f"{r.value:.2e}",
             "" if r.threshold is None else f"{r.threshold:.1e}", r.status, r.detail) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    widths[-1] = 0
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths[:-1]) + ("------",)), *map(line, body)])
