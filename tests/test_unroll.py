"""The unrolled view: every method and submodule sees theta_K; nothing else changes."""
import copy

import higher
import pytest
import torch
from torch import nn

from lbt_plugin import Unroller
from lbt_plugin._impl.toy import TinyCoupling

BACKENDS = ["higher", "func"]


class TwoPaths(nn.Module):
    """log_prob goes through a submodule and a parameter of its own, not through forward."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(2, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.log_prob(x)

    def log_prob(self, x):
        return -(self.enc(x) * self.scale).pow(2).sum(-1)

    def energy(self, x):
        return -self.log_prob(x)


def _unrolled(module, backend, x, k=3):
    opt = torch.optim.SGD(module.parameters(), lr=0.3)
    return Unroller(module, opt, k, backend=backend)(lambda m: -m.log_prob(x).mean())


def test_plain_higher_reads_stale_weights_in_other_methods():
    """The trap our higher backend works around: higher rebinds fast weights in forward only."""
    m, x = TwoPaths(), torch.randn(6, 2)
    with higher.innerloop_ctx(m, torch.optim.SGD(m.parameters(), lr=0.3)) as (f, d):
        for _ in range(3):
            d.step(-f.log_prob(x).mean())
        assert not torch.allclose(f.log_prob(x), f(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_method_and_submodule_sees_theta_k(backend):
    m, x = TwoPaths(), torch.randn(6, 2)
    view = _unrolled(m, backend, x)
    theta = dict(view.named_parameters())
    expected = torch.func.functional_call(m, theta, (x,))
    torch.testing.assert_close(view.log_prob(x), expected)
    torch.testing.assert_close(view(x), expected)
    torch.testing.assert_close(view.energy(x), -expected)
    # a submodule, called and read
    enc = torch.func.functional_call(m.enc, {"weight": theta["enc.weight"], "bias": theta["enc.bias"]}, (x,))
    torch.testing.assert_close(view.enc(x), enc)
    assert view.enc.weight is theta["enc.weight"]
    assert dict(view.enc.named_parameters()).keys() == {"weight", "bias"}
    assert view.scale is theta["scale"]
    # the view moved: theta_K differs from theta_0
    assert not torch.equal(theta["enc.weight"], m.enc.weight)
    # an interleaved forward does not disturb the next method call
    view(x)
    torch.testing.assert_close(view.enc(x), enc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_buffers_and_parameters_are_untouched(backend):
    m = TinyCoupling(2, 8)
    m.train()
    before = copy.deepcopy(m.state_dict())
    params = list(m.parameters())
    x = torch.randn(16, 2) * 3 + 1
    view = _unrolled(m, backend, x)
    view.log_prob(x).sum().backward()
    for key, value in m.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(type(p) is nn.Parameter for p in m.parameters())
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.grad is None for p in m.parameters())  # theta_0 is a copy: no gradient to the estimator


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrolled_discriminator_gradient_reaches_generator(backend):
    """Unrolled GAN in a few lines: D unrolled on G's samples, G's loss through D_K."""
    G = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    bce = nn.BCEWithLogitsLoss()
    real, fake = torch.randn(16, 2), G(torch.randn(16, 3))
    unroll = Unroller(D, torch.optim.Adam(D.parameters(), lr=1e-2), k=5, backend=backend)
    D_K = unroll(lambda d: bce(d(real), torch.ones(16, 1)) + bce(d(fake), torch.zeros(16, 1)))
    g_loss = bce(D_K(fake), torch.ones(16, 1))
    grads = torch.autograd.grad(g_loss, list(G.parameters()), retain_graph=True)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # the unrolled (second-order) part matters: it differs from the gradient through D alone
    plain = torch.autograd.grad(bce(D(fake), torch.ones(16, 1)), list(G.parameters()))
    assert not torch.allclose(grads[0], plain[0])


def test_bad_arguments():
    m = TwoPaths()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            Unroller(m, opt, k)
    with pytest.raises(ValueError, match="backend must be one of"):
        Unroller(m, opt, 1, backend="jax")
    with pytest.raises(ValueError, match="has no parameters"):
        Unroller(nn.Tanh(), opt, 1)
    with pytest.raises(ValueError, match="not a parameter of TwoPaths"):
        Unroller(m, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        Unroller(m, "adam", 1)
    with pytest.raises(ValueError, match="scalar"):
        Unroller(m, opt, 1)(lambda v: v.log_prob(torch.randn(3, 2)))
    with pytest.raises(AttributeError, match="read-only"):
        Unroller(m, opt, 1)(lambda v: v.log_prob(torch.randn(3, 2)).sum()).scale = 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_inner_loss_names_the_step(backend):
    m = TwoPaths()
    x = torch.randn(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=100.0)  # diverges
    with pytest.raises(FloatingPointError, match=r"at unrolled step \d+ of 30"):
        Unroller(m, opt, 30, backend=backend)(lambda v: -v.log_prob(x).mean())


def test_the_step_index_is_passed_to_loss_functions_that_take_it():
    from functools import partial

    from lbt_plugin.unroll import _takes_step_index

    class Loss:
        def one(self, view):
            return view

        def two(self, view, t):
            return view

    assert not _takes_step_index(lambda v: 0) and _takes_step_index(lambda v, t: 0)
    assert _takes_step_index(lambda *a: 0)
    assert not _takes_step_index(Loss().one) and _takes_step_index(Loss().two)
    assert _takes_step_index(partial(lambda a, v, t: 0, 1)) and not _takes_step_index(partial(lambda a, v: 0, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_view_reads_none_tied_and_parametrized_parameters_at_theta_k(backend):
    from torch.nn.utils import parametrize

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight  # tied
            self.c = nn.Linear(2, 2)
            parametrize.register_parametrization(self.c, "weight", _Symmetric())

        def log_prob(self, x):
            return -(self.b(self.a(x)) + self.c(x)).pow(2).sum(-1)

    m, x = Odd(), torch.randn(6, 2)
    if backend == "higher":
        pytest.skip("higher does not patch parametrized modules")  # the func backend is the default
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    view = Unroller(m, opt, 2, backend=backend)(lambda e: -e.log_prob(x).mean())
    params = dict(view.named_parameters())
    assert view.a.bias is None
    assert view.b.weight is params["a.weight"] and not torch.equal(view.b.weight, m.a.weight)
    original = params["c.parametrizations.weight.original"]
    torch.testing.assert_close(view.c.weight, (original + original.T) / 2)
    assert not torch.equal(view.c.weight, m.c.weight)


class _Symmetric(nn.Module):
    def forward(self, w):
        return (w + w.T) / 2


def test_a_checkpointed_view_is_theta_k_before_and_after_backward():
    est, x = TinyCoupling(2, 8), torch.randn(8, 2, requires_grad=True)
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    view = Unroller(est, opt, 3, checkpoint=True)(lambda e: -e.log_prob(x).mean())
    before = [p.detach().clone() for p in view.parameters()]
    view.log_prob(x).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, view.parameters()))
