"""LBTLoss: hypergradient against finite differences and across backends, no leaks, clear errors."""
import copy
import gc
import warnings

import pytest
import torch
from torch import nn

from lbt_plugin import LBTLoss
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
from lbt_plugin.check import OPTIMIZERS, backend_agreement, hypergradient_error
from models import Gaussian, estimator_wrong_shape


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("batchnorm", [True, False], ids=["batchnorm", "no-buffers"])
def test_hypergradient_matches_finite_differences_and_backends(k, opt, batchnorm):
    est, gen = TinyCoupling(2, 16, batchnorm=batchnorm), TinyGenerator(4, 2, 16)
    data, z = torch.randn(8, 2) * 0.5 + 1.0, torch.randn(8, 4)
    for backend in ("higher", "func"):
        err, g = hypergradient_error(est, OPTIMIZERS[opt], gen, data, z, k, backend)
        assert g.norm() > 0
        assert err < 1e-6, (backend, err)
    assert backend_agreement(est, OPTIMIZERS[opt], gen, data, z, k) < 1e-10


def test_finite_difference_check_catches_a_wrong_gradient():
    """The FD reference is not vacuous: a gradient without the second-order path through the early unrolled
    steps (``truncate=1`` at K=3: the same loss, a backward pass through the last step only) is caught."""
    est, gen = TinyCoupling(2, 16), TinyGenerator(4, 2, 16)
    data, z = torch.randn(8, 2), torch.randn(8, 4)
    make = OPTIMIZERS["sgd"]
    err, g_full = hypergradient_error(est, make, gen, data, z, 3, "func")
    assert err < 1e-6
    err_bad, g_truncated = hypergradient_error(est, make, gen, data, z, 3, "func", truncate=1)
    assert not torch.allclose(g_full, g_truncated)  # the control does drop a path
    assert err_bad > 0.1  # measured 1.28; an error of 1e-6 is the pass threshold


def _snapshot(est, opt):
    out = {k: v.clone() for k, v in est.state_dict().items()}
    for i, s in enumerate(opt.state.values()):
        out.update({f"opt{i}.{k}": v.clone() for k, v in s.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_teach_steps_zero_changes_nothing_and_teaching_does(backend):
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    data = torch.randn(16, 2)
    lbt = LBTLoss(est, k=3, teach_steps=2, backend=backend)
    lbt(gen, data).backward()
    before = _snapshot(est, lbt.optimizer)
    assert before  # Adam state exists after teaching
    frozen = LBTLoss(est, k=3, optimizer=lbt.optimizer, teach_steps=0, backend=backend)
    frozen(gen, data).backward()
    after = _snapshot(est, lbt.optimizer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(p) is nn.Parameter and p.grad is None for p in est.parameters())
    lbt(gen, data)
    assert not all(torch.equal(before[k], v) for k, v in _snapshot(est, lbt.optimizer).items())


def _live_tensors():
    with warnings.catch_warnings():  # isinstance on deprecated torch objects in gc's list warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_no_growth_over_100_calls(backend):
    """With the cyclic GC off, nothing (graphs, fast weights) may pile up across calls."""
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    lbt = LBTLoss(est, k=3, backend=backend)
    data = torch.randn(16, 2)
    gc.collect()
    gc.disable()
    try:
        counts = []
        for i in range(100):
            g_opt.zero_grad()
            lbt(gen, data).backward()
            g_opt.step()
            if i in (9, 99):
                counts.append(_live_tensors())
    finally:
        gc.enable()
    assert counts[1] <= counts[0], counts


def test_samples_tensor_z_and_callable_give_the_same_loss():
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    data, z = torch.randn(16, 2), torch.randn(16, 4)
    a = LBTLoss(copy.deepcopy(est), k=2)(gen, data, z=z)
    b = LBTLoss(copy.deepcopy(est), k=2)(gen(z), data)
    c = LBTLoss(copy.deepcopy(est), k=2)(lambda z_: gen(z_), data, z=z)
    assert torch.equal(a, b) and torch.equal(a, c)
    w = LBTLoss(copy.deepcopy(est), k=2, weight=0.25)(gen, data, z=z)
    torch.testing.assert_close(w, 0.25 * a)


def test_latent_resolution_and_resample():
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    data = torch.randn(16, 2)
    seen = []

    def draw(n, device):
        seen.append(n)
        return torch.randn(n, 4, device=device)

    LBTLoss(est, k=2, latent=draw, batch_size=7)(gen, data)
    assert seen == [7]
    seen.clear()
    LBTLoss(est, k=3, teach_steps=2, latent=draw, resample=True)(gen, data)
    assert seen == [16] * 5  # one batch for the first unrolled step, 2 teaching, 2 more unrolled
    LBTLoss(est, k=2, latent=4)(nn.Sequential(gen), data)
    LBTLoss(est, k=2, latent=(4,))(lambda z: gen(z), data)
    with pytest.raises(ValueError, match="cannot tell the latent shape"):
        LBTLoss(est, k=2)(lambda z: gen(z), data)


def test_bad_input_gets_clear_errors():
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    data = torch.randn(16, 2)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        LBTLoss(est, k=0)
    with pytest.raises(TypeError, match="no log_prob method"):
        LBTLoss(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="has no parameters"):
        LBTLoss(type("Empty", (nn.Module,), {"log_prob": lambda self, x: x.sum(-1)})())
    with pytest.raises(ValueError, match="teach_steps must be"):
        LBTLoss(est, teach_steps=-1)
    with pytest.raises(ValueError, match=r"shape \(16, 3\) but data has \(16, 2\)"):
        LBTLoss(est)(torch.randn(16, 3, requires_grad=True), data)
    with pytest.raises(ValueError, match="do not require grad"):
        LBTLoss(est)(gen(torch.randn(16, 4)).detach(), data)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[16\].*got \(16, 2\)"):
        LBTLoss(estimator_wrong_shape())(gen, data)
    with pytest.raises(ValueError, match="not a parameter of"):
        LBTLoss(est, optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(TypeError, match="generator must be"):
        LBTLoss(est)(42, data)
    with pytest.raises(ValueError, match="resample=True needs"):
        LBTLoss(est, resample=True)(gen(torch.randn(16, 4)), data)


def test_non_finite_log_likelihood_on_data_is_reported():
    est, gen = Gaussian(2), TinyGenerator(4, 2, 8)
    data = torch.randn(16, 2)
    data[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"data contains 1 NaN or infinite values"):
        LBTLoss(est, k=2)(gen, data)

    class Support(Gaussian):  # log p = -inf outside the positive quadrant
        def log_prob(self, x):
            return super().log_prob(x).masked_fill((x < 0).any(-1), float("-inf"))

    with pytest.raises(FloatingPointError, match=r"not finite for \d+ of 16 data points after 2 unrolled steps"):
        LBTLoss(Support(2), k=2, teach_steps=0)(lambda z: gen(z).abs(), torch.randn(16, 2), z=torch.randn(16, 4))
    with pytest.raises(FloatingPointError, match=r"inner loss is inf at unrolled step 1 of 2"):
        LBTLoss(Support(2), k=2, teach_steps=0)(gen, torch.randn(16, 2).abs())


def test_state_dict_round_trip():
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    data = torch.randn(16, 2)
    lbt = LBTLoss(est, k=2)
    lbt(gen, data)
    other = LBTLoss(TinyCoupling(2, 8), k=2)
    other.load_state_dict(lbt.state_dict())
    z = torch.randn(16, 4)
    torch.manual_seed(1)
    a = lbt(gen, data, z=z)
    torch.manual_seed(1)
    b = other(gen, data, z=z)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_mean_reduction_is_the_summed_loss_per_data_dimension(backend):
    """reduction="mean" (default) = -sum_n log p(x_n) / (N * D); "batchmean" = -sum_n log p(x_n) / N."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Unflatten(1, (3, 2, 2)))
    est = _Flat(Gaussian(12))
    data, z = torch.randn(16, 3, 2, 2), torch.randn(16, 4)
    per_dim = LBTLoss(copy.deepcopy(est), k=2, backend=backend)(gen, data, z=z)
    summed = LBTLoss(copy.deepcopy(est), k=2, backend=backend, reduction="batchmean")(gen, data, z=z)
    assert per_dim.item() == pytest.approx(summed.item() / 12, rel=1e-6)
    view = copy.deepcopy(est)  # the definition, written out: K=2 Adam steps, then the data's mean NLL
    opt = torch.optim.Adam(view.parameters(), lr=3e-4, betas=(0.5, 0.999))
    opt.zero_grad()
    (-view.log_prob(gen(z).detach()).mean()).backward()
    opt.step()  # the teaching step
    for _ in range(2):
        opt.zero_grad()
        (-view.log_prob(gen(z).detach()).mean()).backward()
        opt.step()
    with torch.no_grad():
        reference = -view.log_prob(data).mean()
    assert summed.item() == pytest.approx(reference.item(), rel=1e-5)
    g1 = torch.autograd.grad(per_dim, list(gen.parameters()))
    g2 = torch.autograd.grad(summed, list(gen.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a * 12, b)
    w = LBTLoss(copy.deepcopy(est), k=2, backend=backend, weight=12.0)(gen, data, z=z)
    torch.testing.assert_close(w, summed)
    with pytest.raises(ValueError, match="reduction must be one of"):
        LBTLoss(est, reduction="sum")


class _Flat(nn.Module):
    """An estimator of images [B, C, H, W] that flattens them for a vector density."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def log_prob(self, x):
        return self.inner.log_prob(x.flatten(1))


class _DCGANGenerator(nn.Module):
    """pytorch/examples' DCGAN generator shape, at 8x8: no latent attribute, input [B, nz, 1, 1]."""

    def __init__(self, nz=6):
        super().__init__()
        self.main = nn.Sequential(nn.ConvTranspose2d(nz, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
                                  nn.ConvTranspose2d(8, 1, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class _MLPGenerator(nn.Module):
    """Lightning's GAN example shape: first layer Linear(latent_dim, ...), no latent attribute."""

    def __init__(self, latent_dim=5):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(latent_dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 2))

    def forward(self, z):
        return self.model(z)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_the_verbatim_line_works_on_generators_without_latent_attributes(backend):
    from lbt_plugin.estimators import ConvVAE

    data = torch.rand(4, 1, 8, 8) * 2 - 1
    G = _DCGANGenerator()
    loss = LBTLoss(ConvVAE(1, 8, latent_dim=2, base=2), k=2, backend=backend)(G, data)
    loss.backward()
    assert all(p.grad is not None for p in G.parameters())
    G2 = _MLPGenerator()
    LBTLoss(TinyCoupling(2, 8), k=2, backend=backend)(G2, torch.randn(8, 2)).backward()
    assert all(p.grad is not None for p in G2.parameters())


def test_a_latent_shape_that_cannot_be_read_off_fails_clearly():
    est = TinyCoupling(2, 8)

    class ConvFirst(nn.Module):  # a Conv2d first layer: its input's spatial size is unknown
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 2, 3), nn.Linear(2, 2)

        def forward(self, z):
            return self.out(self.conv(z).mean((2, 3)))

    with pytest.raises(ValueError, match="cannot tell the latent shape of ConvFirst"):
        LBTLoss(est, k=1)(ConvFirst(), torch.randn(8, 2))

    class Spatial(nn.Module):  # ConvTranspose2d first, but it expects [B, 4, 2, 2], not [B, 4, 1, 1]
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 1, 1)

        def forward(self, z):
            return self.up(z).flatten(1)

    with pytest.raises(ValueError, match=r"read off its first layer as \(4, 1, 1\).*gives samples of shape \(8, 1\)"):
        LBTLoss(est, k=1)(Spatial(), torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"latent=\(100, 1, 1\)"):  # latent=100 for a DCGAN generator
        LBTLoss(ConvVAE_8(), k=1, latent=6)(_DCGANGenerator(), torch.rand(4, 1, 8, 8))


def ConvVAE_8():
    from lbt_plugin.estimators import ConvVAE

    return ConvVAE(1, 8, latent_dim=2, base=2)
