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
  real ``torch.optim`` steps on the same batch;
- finite differences: the hypergradient :math:`d\\mathcal{L}_{LBT}/d\\phi_G` agrees with
  Richardson-extrapolated central differences along two directions;
- backend agreement: ``"higher"`` and ``"func"`` give the same hypergradient;
- reach: every trainable generator parameter receives a gradient;
- finite: loss and gradients are finite;
- no side effects: with ``teach_steps=0`` a call changes neither the estimator
  nor its optimizer.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._impl.latent import as_shape
from ._impl.latent import latent_shape as latent_shape_of
from .loss import LBTLoss
from .unroll import Unroller

__all__ = ["Result", "run_checks", "forward_exactness", "hypergradient_error", "backend_agreement"]

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


def forward_exactness(
    estimator: nn.Module, optimizer_factory: OptimizerFactory, x: Tensor, k: int, backend: str, warmup: int = 2
) -> float:
    """Largest relative difference between unrolled :math:`\\theta_K` and K real optimizer steps.

    Runs in float64 on copies. ``warmup`` real steps first give the optimizer a
    non-trivial state (moments, momentum buffers) to start the unroll from.
    """
    est = copy.deepcopy(estimator).double()
    x = x.double()
    opt = optimizer_factory(est)

    def real_step(m: nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad(set_to_none=True)
        (-m.log_prob(x).mean()).backward()
        o.step()

    for _ in range(warmup):
        real_step(est, opt)
    ref = copy.deepcopy(est)
    ref_opt = optimizer_factory(ref)
    ref_opt.load_state_dict(opt.state_dict())
    view = _seeded(lambda: Unroller(est, opt, k, backend=backend)(lambda e: -e.log_prob(x).mean()), 0, x.device)
    _seeded(lambda: [real_step(ref, ref_opt) for _ in range(k)], 0, x.device)
    err = 0.0
    for a, b in zip(view.parameters(), ref.parameters()):
        err = max(err, ((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1.0)).item())
    return err


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
        for k in ks:
            setting = f"{name}, K={k}"
            for backend in backends:
                err = forward_exactness(estimator, make_opt, data, k, backend)
                rows.append(Result("theta_K == torch.optim steps", f"{setting}, {backend}", err, exact_tol,
                                   "PASS" if err <= exact_tol else "FAIL"))
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
             "" if r.threshold is None else f"{r.threshold:.0e}", r.status, r.detail) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    widths[-1] = 0
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths[:-1]) + ("------",)), *map(line, body)])
