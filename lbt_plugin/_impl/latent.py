"""The shape of a generator's input, where it can be known without guessing wrong."""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from torch import nn

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
