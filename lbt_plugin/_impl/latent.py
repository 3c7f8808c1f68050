"""The generator's input: its shape, where it can be known without guessing wrong, and drawing samples."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

Shape = Tuple[int, ...]


def latent_shape(generator: Any) -> Tuple[Optional[Shape], str, bool]:
    """``(shape without the batch dimension, where it came from, whether it is certain)``.

    From the generator's ``latent_shape`` or ``latent_dim`` attribute (certain), else read off its
    first layer (a guess to be confirmed by the output's shape): ``nn.Linear(d, ...)`` takes
    ``[B, d]``, ``nn.ConvTranspose{1,2,3}d(c, ...)`` the DCGAN input ``[B, c, 1, ...]``. ``(None, ...)``
    when neither tells.
    """
    for name in ("latent_shape", "latent_dim"):
        spec = getattr(generator, name, None)
        if spec is not None:
            return as_shape(spec), f"the generator's {name} {spec!r}", True
    if isinstance(generator, nn.Module):
        for m in generator.modules():
            if isinstance(m, nn.Linear):
                shape: Shape = (m.in_features,)
            elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                shape = (m.in_channels,) + (1,) * len(m.kernel_size)
            elif next(m.parameters(recurse=False), None) is not None:
                break  # a first layer of another kind: its input shape is not known
            else:
                continue
            return shape, f"read off its first layer as {shape}", False
    return None, "", False


def as_shape(spec: Union[int, Tuple[int, ...], Any]) -> Shape:
    """An int or a sequence of ints as a shape tuple; ``ValueError`` unless every size is a positive int."""
    shape = (spec,) if isinstance(spec, int) else tuple(spec)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"a latent shape is a positive int or a tuple of positive ints, got {spec!r}")
    return shape


def sampler(generator: Any, data: Tensor, z: Optional[Tensor], latent: Any, batch_size: Optional[int],
            resample: bool) -> Callable[[], Tensor]:
    """A function drawing the generator's samples for one ``LBTLoss`` call (the same tensor every time when
    ``generator`` is a tensor of samples). ``latent`` is ``LBTLoss(latent=...)``: ``None``, a shape tuple or
    a callable ``(batch_size, device) -> z``."""
    if isinstance(generator, Tensor):
        if z is not None:
            raise ValueError("z is only used with a generator module or callable, not with samples")
        if resample:
            raise ValueError("resample=True needs a generator module or callable, not a tensor of samples")
        return lambda: generator
    if not callable(generator):
        raise TypeError(
            f"generator must be a module, a callable z -> samples, or a tensor of samples; "
            f"got {type(generator).__name__}"
        )
    n = batch_size or data.shape[0]
    if z is not None:
        if resample:
            raise ValueError("resample=True draws its own latents; do not pass z")
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a tensor, got {type(z).__name__}")
        return lambda: _call(generator, z, "the z passed to the call", data, check_shape=False)
    if callable(latent):
        source, certain = "LBTLoss(latent=callable)", True
        draw_z: Callable[[], Tensor] = lambda: latent(n, data.device)  # noqa: E731
    else:
        if latent is not None:
            shape, source, certain = latent, f"latent={latent!r}", True
        else:
            shape, source, certain = latent_shape(generator)
            if shape is None:
                raise ValueError(
                    f"cannot tell the latent shape of {type(generator).__name__}: pass z=..., LBTLoss(latent=dim "
                    "or shape or callable), or give the generator a latent_dim / latent_shape attribute; or pass "
                    "the samples themselves, lbt(fake, data)."
                )
        dtype = _input_dtype(generator, data)
        draw_z = lambda: torch.randn((n, *shape), device=data.device, dtype=dtype)  # noqa: E731
    return lambda: _call(generator, draw_z(), source, data, check_shape=not certain)


def _call(generator: Callable[[Tensor], Tensor], z: Any, source: str, data: Tensor, check_shape: bool) -> Tensor:
    """``generator(z)``, with an error that names the latent and the fix when ``z`` does not fit it."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{source} gave a {type(z).__name__}, not a tensor of latents")
    try:
        out = generator(z)
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        if isinstance(exc, TypeError) and "positional argument" in str(exc):
            raise TypeError(
                f"the generator takes more than z ({exc}): LBTLoss calls generator(z) only. Generate the samples "
                "yourself and pass them instead of the generator: fake = netG(noise, ...); lbt(fake, data)."
            ) from exc
        raise ValueError(
            f"the generator failed on z of shape {tuple(z.shape)} ({source}): {type(exc).__name__}: {exc}. If z "
            "has the wrong shape, pass z=..., or LBTLoss(latent=shape), e.g. latent=(100, 1, 1) for a DCGAN "
            "generator; or pass the samples themselves, lbt(fake, data)."
        ) from exc
    if check_shape and isinstance(out, Tensor) and out.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"z of shape {tuple(z.shape)} ({source}) gives samples of shape {tuple(out.shape)}, but data has "
            f"{tuple(data.shape)}: the generator's input shape could not be read off its first layer. Pass z=..., "
            "or LBTLoss(latent=shape)."
        )
    return out


def _input_dtype(generator: Any, data: Tensor) -> torch.dtype:
    """The dtype to draw ``z`` in: the generator's floating parameters', else the data's."""
    if isinstance(generator, nn.Module):
        for p in generator.parameters():
            if p.is_floating_point():
                return p.dtype
    return data.dtype
