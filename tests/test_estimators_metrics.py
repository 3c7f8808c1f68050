"""Estimators honour the contract; metrics are right on known inputs."""
import math

import pytest
import torch

from lbt_plugin import LBTLoss
from lbt_plugin.check import run_checks
from lbt_plugin.estimators import VAE, ConvVAE, GaussianMixture, RealNVP
from lbt_plugin.metrics import DataMixture, grid, mode_stats, ring
from lbt_plugin._impl.toy import TinyGenerator


@pytest.mark.parametrize("make, shape", [
    (lambda: VAE(2, latent_dim=4, hidden=16), (2,)),
    (lambda: VAE(2, latent_dim=4, hidden=16, n_samples=3, decoder_std=None), (2,)),
    (lambda: GaussianMixture(2, 5), (2,)),
    (lambda: RealNVP(2, n_layers=2, hidden=16), (2,)),
    (lambda: ConvVAE(1, 8, latent_dim=4, base=4), (1, 8, 8)),
])
def test_estimators_return_one_log_likelihood_per_sample(make, shape):
    est = make()
    x = torch.randn(6, *shape)
    out = est.log_prob(x)
    assert out.shape == (6,) and torch.isfinite(out).all()


@pytest.mark.parametrize("make", [lambda: GaussianMixture(2, 3), lambda: RealNVP(2, n_layers=2, hidden=8)],
                         ids=["mixture", "realnvp"])
def test_exact_densities_integrate_to_one(make):
    est = make()
    with torch.no_grad():
        for p in est.parameters():
            p.add_(0.3 * torch.randn_like(p))
    axis = torch.linspace(-8, 8, 401)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    with torch.no_grad():
        mass = est.log_prob(pts).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(mass.item() - 1) < 1e-2


def test_iwae_bound_is_at_least_the_elbo_on_average():
    torch.manual_seed(0)
    vae = VAE(2, latent_dim=2, hidden=16, decoder_std=None)
    x = torch.randn(64, 2)
    elbo = torch.stack([vae.log_prob(x) for _ in range(50)]).mean()
    vae.n_samples = 20
    iwae = torch.stack([vae.log_prob(x) for _ in range(50)]).mean()
    assert iwae > elbo


@pytest.mark.parametrize("factory, shape", [
    (lambda: VAE(2, latent_dim=4, hidden=16, decoder_std=None), (2,)),
    (lambda: GaussianMixture(2, 4), (2,)),
    (lambda: RealNVP(2, n_layers=2, hidden=8), (2,)),
])
def test_estimators_pass_lbt_check(factory, shape):
    rows = run_checks(factory, lambda: TinyGenerator(4, 2, 8), shape, ks=(2,), backends=("func", "higher"))
    assert not [r for r in rows if r.failed], [r for r in rows if r.failed]


def test_conv_vae_passes_lbt_check():
    class G(torch.nn.Module):
        latent_dim = 3

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 64)

        def forward(self, z):
            return torch.tanh(self.lin(z)).view(-1, 1, 8, 8)

    rows = run_checks(lambda: ConvVAE(1, 8, latent_dim=4, base=4), G, (1, 8, 8), ks=(2,), backends=("func", "higher"),
                      optimizers={"adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)})
    assert not [r for r in rows if r.failed], [r for r in rows if r.failed]


def test_estimator_input_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE(1, 30)
    with pytest.raises(ValueError, match=r"takes \[B, 1, 8, 8\] images"):
        ConvVAE(1, 8, base=4).log_prob(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"takes \[B, 2\] inputs"):
        GaussianMixture(2).log_prob(torch.randn(3, 3))
    with pytest.raises(ValueError, match="init_loc must have shape"):
        GaussianMixture(2, 3, init_loc=torch.zeros(4, 2))


def test_layouts_follow_the_literature():
    r, g = ring(), grid()
    assert r.n_modes == 8 and r.std == 0.01
    torch.testing.assert_close(r.centers.norm(dim=1), torch.ones(8))
    assert g.n_modes == 25 and g.std == 0.05
    assert sorted(set(g.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_a_sampler_hitting_3_of_8_modes_scores_3():
    r = ring()
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 3, 5]).repeat(834)[:2500]
    samples = r.centers[idx] + r.std * torch.randn(2500, 2, generator=gen)
    stats = mode_stats(samples, r)
    assert stats.modes == 3
    assert stats.high_quality > 0.98
    assert stats.kl == pytest.approx(math.log(8 / 3), abs=0.01)


def test_metrics_on_known_inputs():
    g = grid()
    exact = g.centers.repeat(4, 1)  # every mode, equally, exactly on the centres
    stats = mode_stats(exact, g)
    assert (stats.modes, stats.high_quality, stats.kl) == (25, 1.0, pytest.approx(0.0, abs=1e-12))
    far = g.centers + 4 * g.std  # 4 std away along both axes: none is high quality
    stats = mode_stats(far, g)
    assert stats.modes == 0 and stats.high_quality == 0.0 and stats.kl == math.inf
    one = g.centers[:1].repeat(10, 1)
    assert mode_stats(one, g).kl == pytest.approx(math.log(25))
    data = g.sample(2500, torch.Generator().manual_seed(1))
    s = mode_stats(data, g)
    assert s.modes == 25 and s.kl < 0.02
    assert s.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # P(chi2_2 <= 9)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="at least one mode"):
        ring(0)
    with pytest.raises(ValueError, match="n_modes >= 1"):
        DataMixture(torch.zeros(0, 2), 0.1)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        mode_stats(torch.zeros(10, 3), ring())
    bad = torch.zeros(10, 2)
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="1 samples contain NaN"):
        mode_stats(bad, ring())


def test_lbt_with_each_estimator_runs_a_step():
    gen = TinyGenerator(4, 2, 8)
    data = ring().sample(32)
    for est in (VAE(2, latent_dim=4, hidden=16), GaussianMixture(2, 8), RealNVP(2, n_layers=2, hidden=8)):
        loss = LBTLoss(est, k=2)(gen, data)
        loss.backward()
        assert torch.isfinite(loss)


def test_a_mixture_from_data_sits_on_the_data_and_refuses_what_it_cannot_use():
    torch.manual_seed(0)
    data = torch.randn(500, 2) * 3 + 10
    mix = GaussianMixture.from_data(data, 16)
    assert mix.loc.shape == (16, 2) and all(any(torch.equal(m, row) for row in data) for m in mix.loc)
    std = mix.log_std.detach().exp()  # the constructor's init_std (its soft bound shifts the used one by <1%)
    torch.testing.assert_close(std, torch.full_like(std, float(data.std(0).mean()) / 16 ** 0.5), rtol=1e-6, atol=0)
    assert mix.log_prob(data).mean() > GaussianMixture(2, 16).log_prob(data).mean()  # on the data's scale
    with pytest.raises(ValueError, match="N >= n_components"):
        GaussianMixture.from_data(data[:8], 16)
    with pytest.raises(ValueError, match="no spread"):
        GaussianMixture.from_data(torch.ones(20, 2), 4)
