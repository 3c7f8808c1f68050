"""lbt-plugin: the Learning-by-Teaching term for any GAN training loop.

    from lbt_plugin import LBTLoss
    lbt = LBTLoss(estimator, k=5)
    loss = lbt(generator, data)

See ``LBTLoss`` (the loss) and ``Unroller`` (K differentiable optimizer steps).
"""
from .loss import LBTLoss
from .unroll import UnrolledView, Unroller

__version__ = "0.1.0"
__all__ = ["LBTLoss", "Unroller", "UnrolledView", "__version__"]
