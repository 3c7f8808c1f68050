"""What ``LBTLoss`` checks on its inputs and on the estimator, each failure an error that names the cause and the
fix, raised before the estimator changes (or, for what can only be seen after the teaching steps, with them
undone by :func:`.safety.restored_on_error`)."""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

NO_GRAD = ("LBTLoss was called with gradients disabled (torch.no_grad() or inference_mode()): the unrolled steps "
           "need autograd, and the loss exists to be back-propagated. Call it in the generator step, outside "
           "no_grad; to log it, log the value that step returns.")


def check_data(data: Any, device: torch.device) -> None:
    """``data`` is a non-empty floating-point tensor ``[N, ...]`` on the estimator's ``device``."""
    if not isinstance(data, Tensor) or data.dim() < 1:
        raise TypeError(f"data must be a tensor [N, ...] of real samples, got {type(data).__name__}")
    if data.is_complex() or not data.is_floating_point():
        hint = " (images: data.float() / 127.5 - 1 for [-1, 1])" if data.dtype == torch.uint8 else ""
        raise TypeError(
            f"data has dtype {data.dtype}; LBTLoss scores real-valued data in the generator's range, as floating "
            f"point{hint}."
        )
    if data.shape[0] == 0 or data[0].numel() == 0:
        raise ValueError(f"data is empty (shape {tuple(data.shape)}): pass a batch of at least one sample")
    if data.device != device:
        raise ValueError(f"data is on {data.device} and the estimator on {device}: move one of them")


def check_samples(fake: Any, data: Tensor) -> None:
    """The generator's samples fit the data and can carry a gradient back to the generator."""
    if not isinstance(fake, Tensor):
        raise TypeError(f"the generator returned {type(fake).__name__}, expected a tensor of samples")
    if fake.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"generator samples have shape {tuple(fake.shape)} but data has {tuple(data.shape)}: "
            "everything after the batch dimension must match."
        )
    if fake.shape[0] == 0:
        raise ValueError("the generator returned an empty batch of samples")
    if not fake.is_floating_point():
        raise TypeError(f"generator samples have dtype {fake.dtype}; they must be floating point")
    if fake.device != data.device:
        raise ValueError(f"generator samples are on {fake.device} and data on {data.device}: move one of them")
    if not fake.requires_grad:
        raise ValueError(
            "the generator's samples do not require grad, so the LBT loss cannot reach the generator: "
            "do not .detach() them or create them under torch.no_grad()."
        )


def log_prob(estimator: Union[nn.Module, Any], x: Tensor, where: str) -> Tensor:
    """``estimator.log_prob(x)``, checked: one real, parameter-dependent log-likelihood per sample."""
    out = estimator.log_prob(x)
    if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
        raise ValueError(
            f"log_prob must return a tensor of shape [B] = [{x.shape[0]}] (one log-likelihood per sample); "
            f"got {tuple(getattr(out, 'shape', ()))} in {where}. Sum over event dimensions inside log_prob."
        )
    if out.is_complex() or not out.is_floating_point():
        raise TypeError(f"log_prob returned dtype {out.dtype} in {where}; it must be a real floating-point "
                        "log-likelihood")
    if not out.requires_grad:
        raise ValueError(f"log_prob's output does not depend on the estimator's parameters in {where} (a "
                         "constant, or computed under no_grad): there is nothing to teach or unroll.")
    return out


def check_reaches_samples(estimator: nn.Module, fake: Tensor) -> None:
    """``log_prob`` must be differentiable in its input, or no gradient can reach the generator. Probed on two
    detached samples with the random state and the buffers put back (a log_prob that fails here is left to fail
    in the call, with its own message)."""
    probe = fake[:2].detach().clone().requires_grad_()
    buffers = [(b, b.detach().clone()) for b in estimator.buffers()]
    devices = [fake.device] if fake.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            out = estimator.log_prob(probe)
            if not isinstance(out, Tensor) or not out.requires_grad:
                return  # reported with its cause by log_prob() in the call
            (grad,) = torch.autograd.grad(out.sum(), probe, allow_unused=True)
    except Exception:  # noqa: BLE001
        return
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if grad is None:
        raise ValueError(
            f"{type(estimator).__name__}.log_prob is not differentiable in its input (it detaches it, or computes "
            "under no_grad): the LBT loss could not reach the generator. Remove the .detach(), .item() or no_grad "
            "on the input path of log_prob."
        )


def changed_input(estimator: nn.Module, undone: bool) -> RuntimeError:
    """The error for a ``log_prob`` that modified the samples or data in place."""
    return RuntimeError(
        f"{type(estimator).__name__}.log_prob changed its input in place: the estimator must not modify the samples "
        "or data it scores (use out-of-place operations, x = x * 0.5 instead of x.mul_(0.5)). The caller's tensors "
        "are unchanged" + ("; the teaching steps were undone." if undone else ".")
    )


def not_finite(what: str, value: Tensor, k: int, teach_steps: int) -> BaseException:
    """The error for the first non-finite value of a call (see :class:`.safety.FiniteChecks`)."""
    bad = int((~torch.isfinite(value)).sum())
    if what == "data":
        return ValueError(f"data contains {bad} NaN or infinite values; nothing was changed")
    if what == "samples":
        rows = int((~torch.isfinite(value)).flatten(1).any(1).sum())
        return FloatingPointError(
            f"{rows} of {value.shape[0]} generator samples contain NaN or inf; the estimator was not taught on "
            "them and nothing was changed. The generator has diverged: lower its learning rate, or clip its "
            "gradients."
        )
    if what.startswith("resampled"):
        return FloatingPointError("a resampled batch of generator samples contains NaN or inf; nothing was changed")
    if what.startswith("teaching"):
        return FloatingPointError(
            f"the estimator's loss on the generator's samples is {value.item()} at {what} of {teach_steps}; "
            "the teaching steps were undone. Lower the estimator's learning rate or check its log_prob on these "
            "samples."
        )
    if what.startswith("unrolled"):
        return FloatingPointError(
            f"the inner loss is {value.item()} at {what} of {k}; lower the optimizer's learning rate or "
            "check the module's outputs."
        )
    return FloatingPointError(
        f"log p_E(data; theta_K) is not finite for {bad} of {value.numel()} data points after {k} unrolled steps"
    )
