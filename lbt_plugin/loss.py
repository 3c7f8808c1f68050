"""``LBTLoss``: the teaching term of Learning by Teaching (Du et al., 2018, arXiv:1807.03870).

Notation of the paper. A generator :math:`G` with samples :math:`x \\sim p_G`, an
explicit density estimator :math:`E` with parameters :math:`\\theta` and density
:math:`p_E(x;\\theta)`. LBT solves the bilevel problem

.. math::

    \\max_G\\; \\mathbb{E}_{x \\sim p_{data}} \\log p_E(x; \\theta^*(G))
    \\quad\\text{s.t.}\\quad
    \\theta^*(G) = \\arg\\max_\\theta\\; \\mathbb{E}_{x \\sim p_G} \\log p_E(x; \\theta),

whose optimum is :math:`p_G = p_{data}`. :math:`\\theta^*(G)` is approximated by K
differentiable optimizer steps from the current :math:`\\theta_0`,

.. math::

    \\theta_{t+1} = U\\big(\\theta_t,\\; -\\nabla_\\theta \\tfrac1M \\textstyle\\sum_m \\log p_E(G(z_m); \\theta_t)\\big),

and the generator minimises, for data of :math:`D` dimensions per sample,

.. math::

    \\mathcal{L}_{LBT}(G) = -\\frac{1}{N D} \\sum_{n=1}^N \\log p_E(x_n; \\theta_K(G)),
    \\qquad x_n \\sim p_{data},

back-propagating through all K steps. The :math:`1/D` (``reduction="mean"``, the
default) gives the loss in nats per data dimension, the density-modelling
convention, so that ``weight=1`` means the same on 2-D points and on 64x64x3
images; ``reduction="batchmean"`` drops it (the paper's summed form). Before the
unroll, ``teach_steps`` ordinary steps fit :math:`\\theta` to detached samples (the
paper's estimator updates).

LBT-GAN adds this term to a GAN generator loss. With ``gan_loss`` passed to the call, the
term's gradient at the samples is scaled to ``weight`` times the GAN loss's gradient there
(:mod:`lbt_plugin._impl.balance`), so that its share of the generator's update is the same in
any loop, at any data size and precision, from the first step to the last; without it, the
term is ``weight`` times the loss above (the paper's fixed-weight form).
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import threading
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._impl import balance as _balance
from ._impl import checks
from ._impl import dist as _dist
from ._impl import rules
from ._impl.latent import as_shape, sampler
from ._impl.safety import FiniteChecks, Snapshot, restored_on_error
from .unroll import Unroller, UnrolledView

__all__ = ["LBTLoss"]

Latent = Union[int, Sequence[int], Callable[[int, torch.device], Tensor], None]
Generator = Union[nn.Module, Callable[[Tensor], Tensor], Tensor]
GanLoss = Union[Tensor, Callable[[Tensor], Tensor], None]

_REDUCTIONS = ("mean", "batchmean")


class LBTLoss:
    """The LBT generator loss :math:`-\\frac{1}{ND}\\sum_n \\log p_E(x_n;\\theta_K(G))`, weighted.

    Args:
        estimator: an ``nn.Module`` with ``log_prob(x) -> Tensor[B]`` (a VAE returns
            its ELBO there). ``forward`` need not be ``log_prob``. A ``torch.compile``'d
            module is unrolled through its original module (double backward through a
            compiled graph is not supported by PyTorch).
        k: unrolled differentiable steps, ``k >= 1`` (the paper uses 5).
        optimizer: the estimator's ``torch.optim`` optimizer (SGD, Adam, AdamW or
            RMSprop). It performs the teaching steps, and its class,
            hyper-parameters and current state define the K unrolled steps.
            Default: ``Adam(lr=lr, betas=(0.5, 0.999))``, the authors' choice.
        lr: learning rate of the default optimizer (ignored when ``optimizer`` is given).
        teach_steps: ordinary steps of the estimator per call, on detached
            generator samples, before unrolling. ``0`` leaves the estimator's
            parameters, buffers and optimizer state exactly as they were.
        weight: with ``gan_loss`` passed to the call (LBT-GAN, balanced): the ratio of the
            LBT term's gradient norm to the GAN loss's at the samples, ``|g_LBT| = weight *
            |g_GAN|``, held at every step (or on average, see ``smoothing``). Without it: the
            factor of the returned loss (``lambda`` of the paper's fixed form; see ``reduction``).
            ``lbt.weight = w`` between calls changes it, e.g. to follow a learning-rate schedule.
        smoothing: with ``gan_loss``: ``0`` (default) holds the ratio ``weight`` at every
            step; ``beta`` in ``(0, 1)`` holds it between running averages of the two norms
            (decay ``beta`` per backward pass, about ``1 / (1 - beta)`` steps), so that within
            them the LBT part keeps its own variation: larger where the estimator explains the
            data worse. The averages are part of :meth:`state_dict`
            (:mod:`lbt_plugin._impl.balance`).
        reduction: ``"mean"`` (default): nats per data dimension,
            ``-sum_n log p_E(x_n) / (N * D)`` with ``D`` the number of elements of one
            data sample, so that ``weight`` means the same at every data size.
            ``"batchmean"``: ``-sum_n log p_E(x_n) / N``, the paper's form (its LBT-GAN
            weights apply to this one; ``weight * D`` with ``"mean"`` is the same loss).
            Only the returned term is scaled: the estimator's own teaching and unrolled
            steps always minimise ``-mean_m log p_E(G(z_m))``, so its optimizer's
            learning rate keeps its meaning.
        backend: ``"func"`` (default) or ``"higher"``; the same numbers (see
            :class:`~lbt_plugin.Unroller`; ``"higher"`` cannot patch every module).
        truncate: back-propagate through the last ``truncate`` of the K steps only
            (less memory and time, biased); see :class:`~lbt_plugin.Unroller`.
        checkpoint: recompute unrolled steps in the backward pass instead of storing
            their graphs (exact; stores theta_t and the optimizer state per step, and
            peak memory grows more slowly in K; the default backend).
        latent: how to draw the generator's input when it is called without
            ``z``: an int ``d`` (``z ~ N(0, I)`` of shape ``[B, d]``), a shape tuple
            (``[B, *shape]``, e.g. ``(100, 1, 1)`` for DCGAN), or a callable
            ``(batch_size, device) -> z``. When ``None``: the generator's
            ``latent_shape`` or ``latent_dim`` attribute, else read off its first layer
            (``nn.Linear(d, ...)`` takes ``[B, d]``, ``nn.ConvTranspose2d(c, ...)`` the
            DCGAN input ``[B, c, 1, 1]``); a read-off shape is confirmed by the
            generator's output having the data's shape.
        batch_size: generator samples per step; default: the data batch size.
        resample: draw a fresh generator batch for every teaching and unrolled
            step (as the authors' code does) instead of one batch per call.
            Needs a callable generator.
        distributed: keep the estimator identical on every rank of an initialised
            ``torch.distributed`` process group: broadcast rank 0's estimator now,
            average the teaching gradients, and average the unrolled inner gradients
            with a differentiable all-reduce, so that a run on W ranks equals one
            process on the global batch. Default: on when a group of more than one
            rank is initialised. Every rank must call the loss at every step.
        check_finite: check that data and generator samples are finite before
            anything changes, and that every log-likelihood of the call is, raising an
            error that names the first non-finite value (one host synchronisation per
            call, two with teaching steps).

    Call ``lbt(generator, data, z=None, gan_loss=None)``, where ``generator`` is a tensor
    of already generated, differentiable samples (a loop that computed ``fake = G(z)``
    passes ``fake``: one generator forward per step), or a module or callable
    ``z -> samples``. ``gan_loss`` is the generator's GAN loss computed from those samples
    (or a function of samples, which works with a generator argument too): the LBT
    gradient is then balanced against it (see ``weight``); add the two and back-propagate,
    ``(gan_loss + loss).backward()``. The returned value is ``weight`` times the LBT loss
    without ``gan_loss`` and the LBT loss itself with it (for logging: its gradient is the
    balanced one). A call that raises leaves the estimator and its optimizer as they were
    before it, and never changes the tensors passed to it.
    """

    def __init__(
        self,
        estimator: nn.Module,
        k: int = 5,
        *,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr: float = 3e-4,
        teach_steps: int = 1,
        weight: float = 1.0,
        smoothing: float = 0.0,
        reduction: str = "mean",
        backend: str = "func",
        truncate: Optional[int] = None,
        checkpoint: bool = False,
        latent: Latent = None,
        batch_size: Optional[int] = None,
        resample: bool = False,
        distributed: Optional[bool] = None,
        check_finite: bool = True,
    ):
        estimator = _uncompiled(estimator)
        if not isinstance(estimator, nn.Module):
            raise TypeError(f"estimator must be an nn.Module, got {type(estimator).__name__}")
        if not callable(getattr(estimator, "log_prob", None)):
            raise TypeError(
                f"{type(estimator).__name__} has no log_prob method; the estimator must define "
                "log_prob(x) -> Tensor[B] (log-density, or an ELBO, of each sample)."
            )
        if not any(True for _ in estimator.parameters()):
            raise ValueError(f"{type(estimator).__name__} has no parameters: there is nothing to teach")
        if isinstance(teach_steps, bool) or not isinstance(teach_steps, int) or teach_steps < 0:
            raise ValueError(f"teach_steps must be an integer >= 0, got {teach_steps!r}")
        _check_weight(weight)
        if (isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real)
                or not 0 <= smoothing < 1):
            raise ValueError(f"smoothing must be a number in [0, 1) (0: the ratio held at every step; 0.99: "
                             f"on average over about 100 steps), got {smoothing!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if latent is not None and not callable(latent):
            latent = as_shape(latent)
        if optimizer is None:
            optimizer = torch.optim.Adam(estimator.parameters(), lr=lr, betas=(0.5, 0.999))
        # Validates k, backend, truncate, checkpoint and that the optimizer can be unrolled, before anything else.
        distributed = _dist.active() if distributed is None else distributed
        self.unroller = Unroller(estimator, optimizer, k, backend=backend, truncate=truncate, checkpoint=checkpoint,
                                 grad_reduce=_dist.mean_grads_differentiable if distributed else None,
                                 check_finite=False)  # checked with everything else, in one synchronisation
        self.estimator, self.optimizer, self.distributed = estimator, optimizer, distributed
        if self.distributed:
            _dist.broadcast_module_(estimator)  # every rank starts from rank 0's estimator
        self.k, self.teach_steps, self.weight, self.backend = k, teach_steps, weight, backend
        self.smoothing = float(smoothing)
        # running averages of |g_GAN| and |g_LBT| at the samples (smoothing > 0); zeros: none seen yet
        self._averages = torch.zeros(2, device=self._first_parameter.device)
        self.reduction = reduction
        self.latent, self.batch_size, self.resample = latent, batch_size, resample
        self.check_finite = check_finite
        self._lock = threading.Lock()
        self._reaches_samples = False  # log_prob is differentiable in its input: checked once, at the first call

    # -- the call -----------------------------------------------------------------
    def __call__(self, generator: Generator, data: Tensor, z: Optional[Tensor] = None, *,
                 gan_loss: GanLoss = None) -> Tensor:
        """Teach the estimator, unroll K steps, return the LBT term (see the class docstring).

        Every check on the inputs runs before the estimator or its optimizer changes.
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                "this LBTLoss is in a call in another thread: one LBTLoss (and its estimator) serves one training "
                "loop at a time. Give each thread its own LBTLoss and estimator."
            )
        try:
            return self._call(generator, data, z, gan_loss)
        finally:
            self._lock.release()

    def _call(self, generator: Generator, data: Tensor, z: Optional[Tensor], gan_loss: GanLoss) -> Tensor:
        checks.check_data(data, self._first_parameter.device)
        if not torch.is_grad_enabled():
            raise RuntimeError(checks.NO_GRAD)
        draw = sampler(generator, data, z, self.latent, self.batch_size, self.resample)
        fake = draw()
        checks.check_samples(fake, data)
        gan_sq = None if gan_loss is None else _balance.gan_gradient_sq(
            gan_loss, fake, "a tensor or a function of samples")
        # Mixed precision: the generator may run under autocast, the LBT term does not. The estimator's
        # summed log-likelihood and its second derivatives need more than bf16's 8-bit mantissa (measured:
        # the bf16 hypergradient points the wrong way), so samples are cast up and autocast is off here.
        # The estimator gets private copies: a log_prob that changes its input cannot reach the caller's tensors.
        dtype = self._input_dtype
        device_type = data.device.type
        float32 = (torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type)
                   else contextlib.nullcontext())
        with float32, restored_on_error(self.estimator, self.optimizer, active=self.teach_steps > 0):
            return self._teach_unroll_score(lambda: draw().to(dtype), fake.to(dtype, copy=True),
                                            data.to(dtype, copy=True), gan_sq)

    def _teach_unroll_score(self, draw: Callable[[], Tensor], fake: Tensor, data: Tensor,
                            gan_sq: Optional[Tensor]) -> Tensor:
        """The algorithm of the module docstring, in the estimator's dtype.

        Finiteness is checked with few host synchronisations: the inputs before the first teaching step (none
        without teaching steps), everything else once at the end, where a failure names its first cause (a
        failed call with teaching steps restores the estimator, see ``_call``)."""
        finite = FiniteChecks(self.check_finite, lambda what, v: checks.not_finite(what, v, self.k, self.teach_steps))
        finite.add("data", data)
        finite.add("samples", fake.detach())
        if self.teach_steps:
            finite.raise_first()  # before anything changes
        if not self._reaches_samples:
            checks.check_reaches_samples(self.estimator, fake)
            self._reaches_samples = True
        versions = [t._version for t in (fake, data)]
        self._teach(fake, draw, finite)
        view = self._unroll(fake, draw, gan_sq, finite)
        # (3) the teacher's reward: the likelihood of real data under theta_K
        log_p = checks.log_prob(view, data, "the data")
        finite.add("data log-likelihood", log_p.detach())
        finite.raise_first()
        if [t._version for t in (fake, data)] != versions:
            raise checks.changed_input(self.estimator, undone=self.teach_steps > 0)
        per = data[0].numel() if self.reduction == "mean" else 1
        scale = 1.0 if gan_sq is not None else self.weight
        return (scale / per) * -log_p.mean()

    def _teach(self, fake: Tensor, draw: Callable[[], Tensor], finite: FiniteChecks) -> None:
        """(1) ``teach_steps`` ordinary maximum-likelihood steps of the estimator on detached samples."""
        for step in range(self.teach_steps):
            if self.resample:
                with torch.no_grad():
                    x = draw()
            else:
                x = fake.detach()
            finite.add(f"resampled samples {step + 1}", x)
            self.optimizer.zero_grad(set_to_none=True)
            nll = -checks.log_prob(self.estimator, x, "a teaching step").mean()
            finite.add(f"teaching step {step + 1}", nll.detach())
            nll.backward()
            if self.distributed:
                _dist.mean_grads_(self.estimator.parameters())
            self.optimizer.step()
        if self.teach_steps:
            self.optimizer.zero_grad(set_to_none=True)

    def _unroll(self, fake: Tensor, draw: Callable[[], Tensor], gan_sq: Optional[Tensor],
                finite: FiniteChecks) -> UnrolledView:
        """(2) K differentiable steps from theta_0 to theta_K(G), on the samples (on a fresh batch each step with
        ``resample``); balanced, the samples' gradient is scaled in the backward pass (:mod:`._impl.balance`)."""
        batches = [fake] + [draw() for _ in range(self.k - 1)] if self.resample else [fake]
        if gan_sq is not None:
            reduce = _dist.sum_ if self.distributed else None
            averages = None
            if self.smoothing:
                if self._averages.device != gan_sq.device:
                    self._averages = self._averages.to(gan_sq.device)
                averages = self._averages
            batches = list(_balance.scale_to_ratio(torch.cat(batches), gan_sq, self.weight, reduce, averages,
                                                   self.smoothing).split(fake.shape[0]))
        view, inner = self.unroller._unroll(
            lambda e, t: -checks.log_prob(e, batches[t if self.resample else 0], "an unrolled step").mean())
        for t, loss in enumerate(inner):
            finite.add(f"unrolled step {t + 1}", loss)
        return view

    @property
    def weight(self) -> float:
        """The balance's ratio (with ``gan_loss``) or the loss's factor (without); may be set between calls."""
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        _check_weight(value)
        self._weight = value

    @property
    def _first_parameter(self) -> Tensor:
        return next(self.estimator.parameters())

    @property
    def _input_dtype(self) -> torch.dtype:
        """The dtype the estimator scores in: that of most of its floating-point parameters (by elements), so
        that a float32 flow with a small float64 base distribution gets float32 inputs, as its own code expects."""
        count: Counter = Counter()
        for p in self.estimator.parameters():
            if p.is_floating_point():
                count[p.dtype] += p.numel()
        return count.most_common(1)[0][0] if count else torch.get_default_dtype()

    # -- checkpointing --------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The estimator's and its optimizer's state, and the balance's running averages, for checkpoints."""
        return {"estimator": self.estimator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "balance": self._averages.detach().clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load :meth:`state_dict` output. The optimizer state is copied:
        ``Optimizer.load_state_dict`` alone would share tensors with ``state``.
        Raises ``ValueError`` naming what does not fit, with nothing loaded."""
        if not isinstance(state, dict) or not {"estimator", "optimizer"} <= set(state):
            raise ValueError("an LBTLoss state must be a dict with 'estimator' and 'optimizer' (LBTLoss.state_dict())")
        averages = state.get("balance", torch.zeros(2))  # absent from checkpoints written before smoothing
        if (not isinstance(averages, Tensor) or averages.shape != (2,) or not averages.is_floating_point()
                or not bool(torch.isfinite(averages).all()) or bool((averages < 0).any())):
            raise ValueError("the LBT state's 'balance' must be a float tensor of 2 finite norms >= 0, got "
                             f"{averages!r}")
        backup = Snapshot(self.estimator, self.optimizer)
        keys = [set(g) for g in self.optimizer.param_groups]
        try:
            self.estimator.load_state_dict(state["estimator"])
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            if [set(g) for g in self.optimizer.param_groups] != keys:
                raise ValueError(f"its param groups are not those of {type(self.optimizer).__name__}")
            rules.rule_for(self.optimizer)
            for p, s in self.optimizer.state.items():
                for key, value in s.items():
                    if isinstance(value, Tensor) and key != "step" and value.shape != p.shape:
                        raise ValueError(f"its optimizer state {key!r} has shape {tuple(value.shape)} for a "
                                         f"parameter of shape {tuple(p.shape)}")
                    if isinstance(value, Tensor) and value.is_floating_point() and not bool(
                            torch.isfinite(value).all()):
                        raise ValueError(f"its optimizer state {key!r} holds NaN or inf")
        except Exception as exc:
            backup.restore()
            raise ValueError(f"the LBT state does not fit this estimator or optimizer: {exc}") from None
        self._averages = averages.detach().to(self._averages.device, torch.float32, copy=True)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if "weight" in state:  # pickled before ``weight`` became a checked property
            state["_weight"] = state.pop("weight")
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"LBTLoss({type(self.estimator).__name__}, k={self.k}, optimizer={type(self.optimizer).__name__}, "
                f"teach_steps={self.teach_steps}, weight={self.weight}, smoothing={self.smoothing}, "
                f"reduction={self.reduction!r}, "
                f"backend={self.backend!r})")


# -- helpers ---------------------------------------------------------------------------
def _check_weight(weight: Any) -> None:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"weight must be a finite number, got {weight!r}")


def _uncompiled(module: Any) -> Any:
    """The original module of a ``torch.compile``'d one (its parameters are the same tensors)."""
    original = getattr(module, "_orig_mod", None)
    if isinstance(module, nn.Module) and isinstance(original, nn.Module):
        warnings.warn(
            "LBTLoss unrolls the original module of a torch.compile'd estimator: PyTorch does not support the "
            "double backward through a compiled graph that the unroll needs. The generator may be compiled.",
            stacklevel=3,
        )
        return original
    return module
