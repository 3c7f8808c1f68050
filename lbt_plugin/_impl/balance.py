"""The balanced LBT-GAN: the LBT term's gradient at the generator's samples, scaled to a set ratio of the GAN
loss's gradient there.

With :math:`x = G(z)` the samples, :math:`g_{GAN} = \\partial\\mathcal{L}_{GAN}/\\partial x` and
:math:`g_{LBT} = \\partial\\mathcal{L}_{LBT}/\\partial x` (through the K unrolled steps), the generator receives

.. math::

    J_G^\\top \\big(g_{GAN} + c\\, g_{LBT}\\big), \\qquad
    c = \\lambda \\, \\frac{\\lVert g_{GAN} \\rVert_2}{\\lVert g_{LBT} \\rVert_2}

(norms over the whole batch, :math:`c` treated as a constant), so that the LBT part has exactly
:math:`\\lambda` times the GAN part's norm at the samples, whatever the GAN loss, the estimator, the data's size
or how either drifts during training (the adaptive weight of VQGAN, Esser et al. 2021, taken at the samples
instead of the generator's last layer: both gradients pass through the same :math:`J_G`, and the samples are
where both are at hand without a second backward pass through the generator). :math:`c` is computed in the
backward pass from the LBT gradient as it arrives, in float32, without a host synchronisation; under
``torch.distributed`` the two squared norms are summed over ranks, so every rank applies the same :math:`c`
and W ranks equal one process on the global batch.

With smoothing :math:`\\beta > 0`, the norms in :math:`c` are running averages over the calls,
:math:`\\bar n_t = \\beta\\, \\bar n_{t-1} + (1-\\beta)\\, n_t` from :math:`\\bar n_0 = 0` (both averages carry the
same start-up bias, which cancels in their ratio: the first call's :math:`c` is the per-step one). The ratio
:math:`\\lambda` then holds on average over about :math:`1/(1-\\beta)` calls, and within them the LBT part keeps its
own variation relative to the GAN part: larger where the estimator, fitted to the generator, explains the data
worse. With :math:`\\beta = 0` (per step) the generator can only stop where the two gradients are opposite, whatever
their lengths; with a slowly moving :math:`c` it stops where the weighted sum's gradient vanishes, as in the
paper's fixed form.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

#: Sums a small tensor over ranks, in place (``torch.distributed.all_reduce``); ``None`` in one process.
Reduce = Optional[Callable[[Tensor], Any]]


class _ScaleToRatio(torch.autograd.Function):
    """Identity forward; backward scales the incoming gradient to ``ratio`` times the GAN gradient's norm (or, with
    ``averages``, to ``ratio`` times the ratio of the running averages of the two norms)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gan_sq: Tensor, ratio: float, reduce: Reduce,  # type: ignore[override]
                averages: Optional[Tensor], smoothing: float) -> Tensor:
        ctx.save_for_backward(gan_sq)
        ctx.ratio, ctx.reduce, ctx.averages, ctx.smoothing = ratio, reduce, averages, smoothing
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None, None, None]:  # type: ignore[override]
        (gan_sq,) = ctx.saved_tensors
        squares = torch.stack([gan_sq.float(), grad.detach().float().pow(2).sum()])
        if ctx.reduce is not None:
            ctx.reduce(squares)
        tiny = torch.finfo(torch.float32).tiny
        if ctx.averages is None:  # per step
            gan_sq, lbt_sq = squares.unbind()
            scale = torch.where(lbt_sq > 0, ctx.ratio * (gan_sq / lbt_sq.clamp_min(tiny)).sqrt(),
                                torch.zeros_like(lbt_sq))
        else:  # running averages of [|g_GAN|, |g_LBT|], updated in place: the same on every rank
            ctx.averages.mul_(ctx.smoothing).add_(squares.sqrt(), alpha=1 - ctx.smoothing)
            gan, lbt = ctx.averages.unbind()
            scale = torch.where(lbt > 0, ctx.ratio * gan / lbt.clamp_min(tiny), torch.zeros_like(lbt))
        return grad * scale.to(grad.dtype), None, None, None, None, None


def scale_to_ratio(x: Tensor, gan_sq: Tensor, ratio: float, reduce: Reduce = None,
                   averages: Optional[Tensor] = None, smoothing: float = 0.0) -> Tensor:
    """``x``, whose gradient in the backward pass is rescaled to ``ratio * sqrt(gan_sq)`` in L2 norm.

    ``gan_sq`` is the squared L2 norm of the GAN loss's gradient at the samples (a 0-d tensor, detached).
    ``averages`` (float32 ``[2]``, the running averages of the GAN and LBT gradients' norms, zeros before the
    first call) turns on smoothing: the backward pass updates them in place with decay ``smoothing`` and scales
    by their ratio instead (the module docstring)."""
    return _ScaleToRatio.apply(x, gan_sq.detach(), float(ratio), reduce, averages, float(smoothing))


def gan_gradient_sq(gan_loss: Any, samples: Tensor, where: str) -> Tensor:
    """The squared L2 norm of ``d gan_loss / d samples``: ``gan_loss`` is a scalar tensor computed from
    ``samples`` (its graph is kept for the user's backward pass), or a function of samples, evaluated here on
    a detached copy of them. One backward pass through the discriminator, none through the generator."""
    if callable(gan_loss) and not isinstance(gan_loss, Tensor):
        x = samples.detach().requires_grad_()
        value = gan_loss(x)
        _check_scalar(value, where)
        (g,) = torch.autograd.grad(value, x, allow_unused=True)
    else:
        _check_scalar(gan_loss, where)
        if not gan_loss.requires_grad:
            raise ValueError(f"gan_loss does not require grad ({where}): pass the generator's loss before "
                             ".backward() and outside torch.no_grad(), not its .item() or a detached copy.")
        (g,) = torch.autograd.grad(gan_loss, samples, retain_graph=True, allow_unused=True)
    if g is None:
        raise ValueError(
            f"gan_loss does not depend on the samples passed to the call ({where}): the balance compares the two "
            "gradients at the same samples. Pass the samples the GAN loss was computed from, lbt(fake, data, "
            "gan_loss=errG), or gan_loss as a function of samples, gan_loss=lambda x: criterion(netD(x), real)."
        )
    return g.detach().float().pow(2).sum()


def _check_scalar(value: Any, where: str) -> None:
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise TypeError(f"gan_loss must be a scalar floating-point tensor ({where}), got "
                        f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}")
