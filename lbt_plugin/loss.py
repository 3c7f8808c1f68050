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

and the generator minimises

.. math::

    \\mathcal{L}_{LBT}(G) = -\\frac1N \\sum_{n=1}^N \\log p_E(x_n; \\theta_K(G)),
    \\qquad x_n \\sim p_{data},

back-propagating through all K steps. Before the unroll, ``teach_steps`` ordinary
steps fit :math:`\\theta` to detached samples (the paper's estimator updates).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._impl import dist as _dist
from .unroll import Unroller, UnrolledModule

__all__ = ["LBTLoss"]

Latent = Union[int, Sequence[int], Callable[[int, torch.device], Tensor], None]
Generator = Union[nn.Module, Callable[[Tensor], Tensor], Tensor]


class LBTLoss:
    """The LBT generator loss :math:`-\\frac1N\\sum_n \\log p_E(x_n;\\theta_K(G))`, times ``weight``.

    Args:
        estimator: an ``nn.Module`` with ``log_prob(x) -> Tensor[B]`` (a VAE returns
            its ELBO there). ``forward`` need not be ``log_prob``.
        k: unrolled differentiable steps, ``k >= 1`` (the paper uses 5).
        optimizer: the estimator's ``torch.optim`` optimizer (SGD, Adam, AdamW or
            RMSprop). It performs the teaching steps, and its class,
            hyper-parameters and current state define the K unrolled steps.
            Default: ``Adam(lr=lr, betas=(0.5, 0.999))``, the authors' choice.
        lr: learning rate of the default optimizer (ignored when ``optimizer`` is given).
        teach_steps: ordinary steps of the estimator per call, on detached
            generator samples, before unrolling. ``0`` leaves the estimator's
            parameters, buffers and optimizer state exactly as they were.
        weight: multiplies the returned loss (``lambda`` of LBT-GAN).
        backend: ``"higher"`` (default) or ``"func"``; same numbers.
        truncate: back-propagate through the last ``truncate`` of the K steps only
            (less memory and time, biased); see :class:`~lbt_plugin.Unroller`.
        checkpoint: recompute unrolled steps in the backward pass instead of storing
            them (exact, memory flat in K; ``backend="func"``).
        latent: how to draw the generator's input when it is called without
            ``z``: an int ``d`` (``z ~ N(0, I)`` of shape ``[B, d]``), a shape tuple
            (``[B, *shape]``, e.g. ``(100, 1, 1)`` for DCGAN), or a callable
            ``(batch_size, device) -> z``. When ``None``, the generator's
            ``latent_shape`` or ``latent_dim`` attribute is used.
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
        check_finite: raise ``FloatingPointError`` naming the step when a
            log-likelihood is NaN or infinite.

    Call ``lbt(generator, data, z=None)``, where ``generator`` is a module or
    callable ``z -> samples``, or a tensor of already generated, differentiable
    samples (a loop that computed ``fake = G(z)`` passes ``fake``; under
    DistributedDataParallel this keeps one generator forward per step).
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
        backend: str = "higher",
        truncate: Optional[int] = None,
        checkpoint: bool = False,
        latent: Latent = None,
        batch_size: Optional[int] = None,
        resample: bool = False,
        distributed: Optional[bool] = None,
        check_finite: bool = True,
    ):
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
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if optimizer is None:
            optimizer = torch.optim.Adam(estimator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.estimator = estimator
        self.optimizer = optimizer
        self.distributed = _dist.active() if distributed is None else distributed
        if self.distributed:
            _dist.broadcast_module_(estimator)  # every rank starts from rank 0's estimator
        self.unroller = Unroller(estimator, optimizer, k, backend=backend, truncate=truncate, checkpoint=checkpoint,
                                 grad_reduce=_dist.mean_grads_differentiable if self.distributed else None,
                                 check_finite=check_finite)
        self.k, self.teach_steps, self.weight, self.backend = k, teach_steps, weight, backend
        self.latent, self.batch_size, self.resample = latent, batch_size, resample
        self.check_finite = check_finite

    # -- the call -----------------------------------------------------------------
    def __call__(self, generator: Generator, data: Tensor, z: Optional[Tensor] = None) -> Tensor:
        """Teach the estimator, unroll K steps, return ``weight * -mean log p_E(data; theta_K)``."""
        if not isinstance(data, Tensor) or data.dim() < 1:
            raise TypeError(f"data must be a tensor [N, ...] of real samples, got {type(data).__name__}")
        if isinstance(generator, Tensor):
            if z is not None:
                raise ValueError("z is only used with a generator module or callable, not with samples")
            if self.resample:
                raise ValueError("resample=True needs a generator module or callable, not a tensor of samples")
            draw: Callable[[], Tensor] = lambda: generator  # noqa: E731
        elif callable(generator):
            if z is not None and self.resample:
                raise ValueError("resample=True draws its own latents; do not pass z")
            draw = lambda: generator(z if z is not None else self._latent(generator, data))  # noqa: E731
        else:
            raise TypeError(
                f"generator must be a module, a callable z -> samples, or a tensor of samples; "
                f"got {type(generator).__name__}"
            )

        fake = draw()
        self._check_samples(fake, data)
        if torch.is_grad_enabled() and not fake.requires_grad:
            raise ValueError(
                "the generator's samples do not require grad, so the LBT loss cannot reach the generator: "
                "do not .detach() them or create them under torch.no_grad()."
            )
        # Mixed precision: the generator may run under autocast, the LBT term does not. The estimator's
        # summed log-likelihood and its second derivatives need more than bf16's 8-bit mantissa (measured:
        # the bf16 hypergradient points the wrong way), so samples are cast up and autocast is off here.
        dtype = next(self.estimator.parameters()).dtype
        with torch.autocast(data.device.type, enabled=False):
            return self._teach_unroll_score(
                lambda: draw().to(dtype), fake.to(dtype), data.to(dtype) if data.is_floating_point() else data
            )

    def _teach_unroll_score(self, draw: Callable[[], Tensor], fake: Tensor, data: Tensor) -> Tensor:
        """Steps (1)-(3) of the module docstring, in the estimator's dtype."""
        # (1) teaching: ordinary maximum-likelihood steps on detached samples
        for _ in range(self.teach_steps):
            x = fake.detach() if not self.resample else self._draw_detached(draw)
            self.optimizer.zero_grad(set_to_none=True)
            nll = -self._log_prob(self.estimator, x, "a teaching step").mean()
            nll.backward()
            if self.distributed:
                _dist.mean_grads_(self.estimator.parameters())
            self.optimizer.step()
        if self.teach_steps:
            self.optimizer.zero_grad(set_to_none=True)

        # (2) K differentiable steps: theta_K(G)
        batches = [fake] + [draw() for _ in range(self.k - 1)] if self.resample else [fake] * self.k
        view = self.unroller(lambda e, t: -self._log_prob(e, batches[t], "an unrolled step").mean())

        # (3) the teacher's reward: likelihood of real data under theta_K
        log_p = self._log_prob(view, data, "the data")
        if self.check_finite and not bool(torch.isfinite(log_p).all()):
            raise FloatingPointError(
                f"log p_E(data; theta_K) is not finite for {int((~torch.isfinite(log_p)).sum())} of "
                f"{log_p.numel()} data points after {self.k} unrolled steps"
            )
        return self.weight * -log_p.mean()

    # -- helpers ------------------------------------------------------------------
    def _draw_detached(self, draw: Callable[[], Tensor]) -> Tensor:
        with torch.no_grad():
            return draw()

    def _latent(self, generator: Callable[[Tensor], Tensor], data: Tensor) -> Tensor:
        n = self.batch_size or data.shape[0]
        spec: Latent = self.latent
        if spec is None:
            spec = getattr(generator, "latent_shape", None) or getattr(generator, "latent_dim", None)
        if spec is None:
            raise ValueError(
                f"cannot tell the latent shape of {type(generator).__name__}: pass z=..., "
                "LBTLoss(latent=dim or shape or callable), or give the generator a latent_dim / latent_shape attribute."
            )
        if callable(spec):
            return spec(n, data.device)
        shape: Tuple[int, ...] = (spec,) if isinstance(spec, int) else tuple(spec)
        dtype = data.dtype if data.is_floating_point() else torch.get_default_dtype()
        return torch.randn((n, *shape), device=data.device, dtype=dtype)

    @staticmethod
    def _check_samples(fake: Tensor, data: Tensor) -> None:
        if not isinstance(fake, Tensor):
            raise TypeError(f"the generator returned {type(fake).__name__}, expected a tensor of samples")
        if fake.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"generator samples have shape {tuple(fake.shape)} but data has {tuple(data.shape)}: "
                "everything after the batch dimension must match."
            )

    @staticmethod
    def _log_prob(estimator: Union[nn.Module, UnrolledModule], x: Tensor, where: str) -> Tensor:
        out = estimator.log_prob(x)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            raise ValueError(
                f"log_prob must return a tensor of shape [B] = [{x.shape[0]}] (one log-likelihood per sample); "
                f"got {tuple(getattr(out, 'shape', ()))} in {where}. Sum over event dimensions inside log_prob."
            )
        return out

    # -- checkpointing --------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The estimator's and its optimizer's state, for checkpoints."""
        return {"estimator": self.estimator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load :meth:`state_dict` output. The optimizer state is copied:
        ``Optimizer.load_state_dict`` alone would share tensors with ``state``."""
        self.estimator.load_state_dict(state["estimator"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def __repr__(self) -> str:
        return (f"LBTLoss({type(self.estimator).__name__}, k={self.k}, optimizer={type(self.optimizer).__name__}, "
                f"teach_steps={self.teach_steps}, weight={self.weight}, backend={self.backend!r})")
