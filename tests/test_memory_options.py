"""Memory-bounded unrolls: checkpoint is exact, truncate equals its definition, both cut memory."""
import copy

import pytest
import torch

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
from lbt_plugin.estimators import VAE
from lbt_plugin.profile import GraphMemory


def _grad(est, opt_factory, gen, data, z, k, seed=0, **options):
    est, gen = copy.deepcopy(est), copy.deepcopy(gen)
    lbt = LBTLoss(est, k=k, optimizer=opt_factory(est), teach_steps=0, backend="func", **options)
    torch.manual_seed(seed)
    loss = lbt(gen, data, z=z)
    grads = torch.autograd.grad(loss, list(gen.parameters()))
    return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


OPTS = {"sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2)}


@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("estimator", ["batchnorm", "vae"])
def test_checkpoint_gives_the_full_hypergradient(opt, estimator):
    torch.set_default_dtype(torch.float64)
    try:
        est = TinyCoupling(2, 16) if estimator == "batchnorm" else VAE(2, latent_dim=3, hidden=16, decoder_std=None)
        gen, data, z = TinyGenerator(4, 2, 16), torch.randn(16, 2), torch.randn(16, 4)
        loss_full, g_full = _grad(est, OPTS[opt], gen, data, z, 5)
        loss_ck, g_ck = _grad(est, OPTS[opt], gen, data, z, 5, checkpoint=True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert loss_ck == loss_full  # the stochastic VAE replays its noise in the recomputation
    torch.testing.assert_close(g_ck, g_full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_truncate_is_constant_early_steps_then_a_short_unroll(backend):
    """truncate=T == (K-T ordinary optimizer steps on the detached samples) + a T-step unroll."""
    torch.set_default_dtype(torch.float64)
    try:
        est, gen = TinyCoupling(2, 16), TinyGenerator(4, 2, 16)
        data, z = torch.randn(16, 2), torch.randn(16, 4)
        make = OPTS["adam"]
        e1 = copy.deepcopy(est)
        loss_t = LBTLoss(e1, k=5, optimizer=make(e1), teach_steps=0, backend=backend, truncate=2)(gen, data, z=z)
        g_t = torch.autograd.grad(loss_t, list(gen.parameters()))
        e2 = copy.deepcopy(est)
        opt2 = make(e2)
        fake = gen(z)
        for _ in range(3):
            opt2.zero_grad()
            (-e2.log_prob(fake.detach()).mean()).backward()
            opt2.step()
        loss_r = LBTLoss(e2, k=2, optimizer=opt2, teach_steps=0, backend=backend)(fake, data)
        g_r = torch.autograd.grad(loss_r, list(gen.parameters()))
        torch.testing.assert_close(loss_t, loss_r, rtol=1e-13, atol=1e-13)
        for a, b in zip(g_t, g_r):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        # truncate=K is the full unroll
        e3, e4 = copy.deepcopy(est), copy.deepcopy(est)
        full = LBTLoss(e3, k=5, optimizer=make(e3), teach_steps=0, backend=backend)(gen, data, z=z)
        same = LBTLoss(e4, k=5, optimizer=make(e4), teach_steps=0, backend=backend, truncate=5)(gen, data, z=z)
        ga = torch.autograd.grad(full, list(gen.parameters()))
        gb = torch.autograd.grad(same, list(gen.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
        assert not torch.allclose(ga[0], g_t[0])  # truncation is biased
    finally:
        torch.set_default_dtype(torch.float32)


def _graph_bytes(**options):
    torch.manual_seed(0)
    est = TinyCoupling(2, 256)
    gen = TinyGenerator(4, 2, 16)
    lbt = LBTLoss(est, k=20, teach_steps=0, backend="func", **options)
    with GraphMemory() as mem:
        loss = lbt(gen, torch.randn(256, 2))
    loss.backward()
    return mem.bytes


def test_memory_options_halve_the_graph_at_k20():
    full = _graph_bytes()
    assert _graph_bytes(checkpoint=True) <= full / 2
    assert _graph_bytes(truncate=2) <= full / 2


def test_memory_option_errors():
    est = TinyCoupling(2, 8)
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="checkpoint=True needs backend='func'"):
        Unroller(est, opt, 3, checkpoint=True, backend="higher")
    Unroller(est, opt, 3, checkpoint=True)  # the default backend checkpoints
    for t in (0, 4, 1.5):
        with pytest.raises(ValueError, match=r"truncate must be an integer in \[1, k=3\]"):
            Unroller(est, opt, 3, truncate=t)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_truncate_keeps_frozen_parameters_frozen(backend):
    est = TinyCoupling(2, 8)
    est.loc.requires_grad_(False)
    x = torch.randn(16, 2)
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    view = Unroller(est, opt, 3, truncate=1, backend=backend)(lambda e: -e.log_prob(x).mean())
    assert torch.equal(dict(view.named_parameters())["loc"], est.loc)
