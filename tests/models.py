"""Small models for the tests, and deliberately broken ones for ``lbt-plugin check``."""
import math

import torch
from torch import nn

from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator


class Gaussian(nn.Module):
    """A diagonal Gaussian whose log_prob uses its own parameters and an MLP-free path."""

    def __init__(self, dim=2):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x):
        u = (x - self.loc) * torch.exp(-self.log_scale)
        return (-0.5 * u**2 - self.log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def estimator():
    return TinyCoupling(2, 16)


def generator():
    return TinyGenerator(4, 2, 16)


class _Detached(TinyGenerator):
    def forward(self, z):
        return super().forward(z).detach()


def detached_generator():
    return _Detached(4, 2, 16)


class _NoLogProb(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return self.lin(x).squeeze(-1)


def estimator_without_log_prob():
    return _NoLogProb()


class _WrongShape(Gaussian):
    def log_prob(self, x):
        return super().log_prob(x)[:, None].expand(-1, 2)  # [B, D], not [B]


def estimator_wrong_shape():
    return _WrongShape()


def foreign_optimizer(estimator):
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


def returns_int():
    return 42


class ZukoFlow(nn.Module):
    """A zuko neural spline flow as an estimator (zuko's modules have abstract bases: higher cannot patch them)."""

    def __init__(self):
        super().__init__()
        import zuko

        self.flow = zuko.flows.NSF(2, transforms=2, hidden_features=[16, 16])

    def log_prob(self, x):
        return self.flow().log_prob(x)


class NormflowsRealNVP(nn.Module):
    """A normflows RealNVP (affine couplings) as an estimator."""

    def __init__(self):
        super().__init__()
        import normflows as nf

        flows = []
        for _ in range(2):
            flows += [nf.flows.AffineCouplingBlock(nf.nets.MLP([1, 16, 2], init_zeros=False)),
                      nf.flows.Permute(2, mode="swap")]
        self.model = nf.NormalizingFlow(nf.distributions.base.DiagGaussian(2), flows)

    def log_prob(self, x):
        return self.model.log_prob(x)


def zuko_flow():
    return ZukoFlow()


def normflows_realnvp():
    return NormflowsRealNVP()
