"""The balanced LBT-GAN (``gan_loss=`` in the call): the LBT gradient at the samples is ``weight`` times the GAN
loss's in norm, exactly; its share of G's update stays in a band where the fixed form drifts; the GAN gradient
survives bf16 autocast; errors name the fix."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from lbt_plugin import LBTLoss
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
from lbt_plugin.estimators import ConvVAE, GaussianMixture


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("weight", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("options", [{}, {"backend": "higher"}, {"checkpoint": True}, {"truncate": 1}],
                         ids=["func", "higher", "checkpoint", "truncate"])
def test_the_lbt_gradient_at_the_samples_is_weight_times_the_gans_and_points_the_same_way(weight, options):
    torch.manual_seed(0)
    G, D, est = TinyGenerator(4, 2, 16), nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)), \
        TinyCoupling(2, 16)
    data, z = torch.randn(32, 2) + 1, torch.randn(32, 4)
    fake = G(z)
    gan = nn.functional.softplus(-D(fake)).mean()  # non-saturating
    g_gan, = torch.autograd.grad(gan, fake, retain_graph=True)
    fixed = LBTLoss(copy.deepcopy(est), k=3, **options)
    balanced = LBTLoss(copy.deepcopy(est), k=3, weight=weight, **options)
    torch.manual_seed(1)
    g_fixed, = torch.autograd.grad(fixed(fake, data), fake, retain_graph=True)
    torch.manual_seed(1)
    loss = balanced(fake, data, gan_loss=gan)
    g_bal, = torch.autograd.grad(loss, fake, retain_graph=True)
    assert g_bal.norm().item() == pytest.approx(weight * g_gan.norm().item(), rel=1e-5)  # float32 norms
    cosine = (g_bal.flatten() @ g_fixed.flatten()) / (g_bal.norm() * g_fixed.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)  # a positive rescaling of the same gradient
    torch.manual_seed(1)
    assert loss.item() == pytest.approx(LBTLoss(copy.deepcopy(est), k=3, **options)(fake, data).item(), rel=1e-6)


def _ring(n):
    angle = torch.randint(8, (n,)) * 2 * math.pi / 8
    return torch.stack([angle.cos(), angle.sin()], 1) * 2 + 0.02 * torch.randn(n, 2)


def _wgan_gp_parameter_ratios(balanced, steps=20, smoothing=0.0):
    """caogang/wgan-gp's toy loop in miniature (MLP G and critic, 5 critic steps with gradient penalty per G
    step, Adam(1e-4, (0.5, 0.9))), with the README's lines: |grad_G LBT| / |grad_G GAN| (L2) at every G step."""
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    D = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    g_opt = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(D.parameters(), 1e-4, betas=(0.5, 0.9))
    lbt = LBTLoss(GaussianMixture(2, 8), k=5, smoothing=smoothing)
    ratios = []
    for _ in range(steps):
        for _ in range(5):
            real, fake = _ring(64), G(torch.randn(64, 2)).detach()
            eps = torch.rand(64, 1)
            mix = (eps * real + (1 - eps) * fake).requires_grad_()
            slope, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
            d_loss = D(fake).mean() - D(real).mean() + 10 * ((slope.norm(dim=1) - 1) ** 2).mean()
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
        real, fake = _ring(64), G(torch.randn(64, 2))
        g_loss = -D(fake).mean()
        loss = lbt(fake, real, gan_loss=g_loss if balanced else None)
        params = list(G.parameters())
        g_gan = _flat(torch.autograd.grad(g_loss, params, retain_graph=True))
        g_lbt = _flat(torch.autograd.grad(loss, params, retain_graph=True))
        ratios.append((g_lbt.norm() / g_gan.norm()).item())
        g_opt.zero_grad()
        (g_loss + loss).backward()
        g_opt.step()
    return ratios


@pytest.mark.parametrize("smoothing", [0.0, 0.99])
def test_in_a_wgan_gp_loop_the_share_stays_in_a_band_where_the_fixed_form_leaves_it(smoothing):
    """At the samples the ratio is exact (test above); on G's parameters both gradients pass through the same
    Jacobian, which can weigh the two directions differently: within a decade of ``weight`` is the band
    (measured 0.63 to 1.0 here per step, 0.34 to 1.5 with ``smoothing=0.99``, whose ratio holds on average). The
    fixed form with a Gaussian mixture sits at 0.01-0.08 (the issue's table: 0.085, then 6e-4 as the critic
    grows)."""
    balanced = _wgan_gp_parameter_ratios(True, smoothing=smoothing)
    assert all(0.1 < r < 10 for r in balanced), balanced
    fixed = _wgan_gp_parameter_ratios(False)
    assert sum(not 0.1 < r < 10 for r in fixed) >= len(fixed) // 2, fixed  # the control leaves the band


class _GenPyTorchGAN(nn.Module):
    """The generator of eriklindernoren/PyTorch-GAN's dcgan.py (Linear to 128x8x8, two upsampling conv
    blocks), 1x32x32."""

    def __init__(self, latent_dim=100):
        super().__init__()
        self.l1 = nn.Linear(latent_dim, 128 * 8 * 8)
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, 1, 1),
            nn.BatchNorm2d(128, 0.8), nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 1, 3, 1, 1), nn.Tanh())

    def forward(self, z):
        return self.conv_blocks(self.l1(z).view(z.shape[0], 128, 8, 8))


def _disc_pytorch_gan():
    """PyTorch-GAN dcgan.py's discriminator: four strided conv blocks (LeakyReLU, Dropout2d, BatchNorm with
    eps 0.8 after the first), a Linear and a Sigmoid."""
    layers, widths = [], [1, 16, 32, 64, 128]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Conv2d(a, b, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(0.25)]
        layers += [nn.BatchNorm2d(b, 0.8)] if i else []
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 2 * 2, 1), nn.Sigmoid())


def _init_normal(m):  # PyTorch-GAN's weights_init_normal
    if "Conv" in type(m).__name__:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm2d" in type(m).__name__:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _bf16_gan_share(balanced):
    """cos((total - LBT-only) gradient, GAN-only gradient) on G under bf16 autocast, PyTorch-GAN's dcgan.py
    generator step (BCE) with the README's lines and a ConvVAE."""
    torch.manual_seed(0)
    G, D = _GenPyTorchGAN(), _disc_pytorch_gan()
    G.apply(_init_normal), D.apply(_init_normal)
    est = ConvVAE(1, 32, latent_dim=16, base=8)
    real, z = torch.rand(16, 1, 32, 32) * 2 - 1, torch.randn(16, 100)
    params = list(G.parameters())
    grads = {}
    for part in ("gan", "lbt", "total"):
        lbt = LBTLoss(copy.deepcopy(est), k=2)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = G(z)
            g_loss = nn.functional.binary_cross_entropy(D(fake).float(), torch.ones(16, 1))
            if part != "gan":
                loss = lbt(fake, real, gan_loss=g_loss if balanced else None)
        out = {"gan": g_loss, "lbt": loss if part == "lbt" else None, "total": g_loss + loss if part == "total"
               else None}[part]
        grads[part] = _flat(torch.autograd.grad(out, params)).float()
    rest = grads["total"] - grads["lbt"]
    return (rest @ grads["gan"] / (rest.norm() * grads["gan"].norm())).item()


def test_under_bf16_autocast_the_gan_gradient_reaches_the_generator():
    """Balanced at weight 1, the GAN part is half the sum at the samples: bf16's 2^-8 relative rounding of the
    total leaves (total - LBT-only) within a few percent of the GAN gradient (cosine >= 0.99). The fixed form
    here puts an LBT gradient orders of magnitude larger on the samples, and the GAN part is lost in its
    rounding."""
    assert _bf16_gan_share(True) >= 0.99
    assert _bf16_gan_share(False) < 0.9  # the control: the issue measured -0.01 in PyTorch-GAN's own dcgan.py


def test_a_gan_loss_function_balances_a_generator_argument_and_a_tensor_is_refused_there():
    torch.manual_seed(0)
    G, D, est = TinyGenerator(4, 2, 16), nn.Linear(2, 1), TinyCoupling(2, 16)
    data = torch.randn(16, 2)
    lbt = LBTLoss(est, k=2, teach_steps=0)
    gan_fn = lambda x: nn.functional.softplus(-D(x)).mean()  # noqa: E731
    loss = lbt(G, data, gan_loss=gan_fn)
    loss.backward()
    assert all(p.grad is not None for p in G.parameters())
    fake = G(torch.randn(16, 4))
    with pytest.raises(ValueError, match="does not depend on the samples passed"):
        lbt(G, data, gan_loss=gan_fn(fake))
    with pytest.raises(ValueError, match="does not require grad"):
        lbt(fake, data, gan_loss=gan_fn(fake).detach())
    with pytest.raises(TypeError, match="scalar floating-point tensor"):
        lbt(fake, data, gan_loss=nn.functional.softplus(-D(fake)))


def test_a_zero_gan_gradient_gives_a_zero_lbt_gradient_and_no_nan():
    torch.manual_seed(0)
    G, est = TinyGenerator(4, 2, 16), TinyCoupling(2, 16)
    fake = G(torch.randn(16, 4))
    loss = LBTLoss(est, k=2)(fake, torch.randn(16, 2), gan_loss=0.0 * fake.sum())
    g, = torch.autograd.grad(loss, fake)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("smoothing", [0.0, 0.9])
def test_smoothing_holds_the_ratio_of_running_averages_of_the_two_norms(smoothing):
    """The estimator does not change between calls (``teach_steps=0``; the unroll is functional), so the LBT
    gradient's own norm ``l`` is the same at every call while the GAN loss's is scaled by ``s_t``. Per step
    (``smoothing=0``) the LBT part's norm is ``weight * s_t * g``; with smoothing it is ``weight * l *
    mean_beta(s g) / mean_beta(l)``, the weighted mean ``sum_i beta^(t-i) s_i g / sum_i beta^(t-i)`` (the
    zero-started averages' bias cancels in their ratio, so the first call is the per-step one)."""
    torch.manual_seed(0)
    fake, data = torch.randn(32, 2, requires_grad=True), torch.randn(32, 2) + 1
    lbt = LBTLoss(TinyCoupling(2, 16), k=2, teach_steps=0, weight=0.5, smoothing=smoothing)
    scales = [1.0, 10.0, 100.0, 0.1, 3.0]
    g = None
    for t, s in enumerate(scales):
        gan = s * (fake**2).sum()
        g_gan, = torch.autograd.grad(gan, fake, retain_graph=True)
        g = g_gan.norm().item() / s if g is None else g
        g_lbt, = torch.autograd.grad(lbt(fake, data, gan_loss=gan), fake)
        w = [smoothing ** (t - i) for i in range(t + 1)]
        expected = 0.5 * g * sum(wi * si for wi, si in zip(w, scales)) / sum(w)
        assert g_lbt.norm().item() == pytest.approx(expected, rel=1e-5), (t, s)
    averages = lbt.state_dict()["balance"]
    assert (averages.abs().sum() > 0) == (smoothing > 0)  # per step, the averages stay unused


def test_the_running_averages_resume_from_a_checkpoint_and_a_bad_one_is_refused():
    torch.manual_seed(0)
    fake, data = torch.randn(16, 2, requires_grad=True), torch.randn(16, 2)
    est = TinyCoupling(2, 8)

    def norm_at(lbt, s):
        gan = s * (fake**2).sum()
        g, = torch.autograd.grad(lbt(fake, data, gan_loss=gan), fake)
        return g.norm().item()

    whole = LBTLoss(copy.deepcopy(est), k=2, smoothing=0.9)
    for s in (1.0, 50.0):
        norm_at(whole, s)
    state = whole.state_dict()
    resumed = LBTLoss(copy.deepcopy(est), k=2, smoothing=0.9)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))
    expected = norm_at(whole, 0.2)
    assert norm_at(resumed, 0.2) == pytest.approx(expected, rel=1e-6)
    assert norm_at(LBTLoss(copy.deepcopy(est), k=2, smoothing=0.9), 0.2) < expected / 10  # without the history
    old = {key: value for key, value in state.items() if key != "balance"}  # a checkpoint from before smoothing
    fresh = LBTLoss(copy.deepcopy(est), k=2, smoothing=0.9)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.state_dict()["balance"], torch.zeros(2))
    before = copy.deepcopy(fresh.estimator.state_dict())
    for bad in (torch.tensor([1.0, float("nan")]), torch.ones(3), torch.tensor([-1.0, 1.0]), [1.0, 1.0]):
        with pytest.raises(ValueError, match="'balance' must be a float tensor of 2 finite norms"):
            fresh.load_state_dict({**state, "balance": bad})
    assert all(torch.equal(a, b) for a, b in zip(before.values(), fresh.estimator.state_dict().values()))


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), True, "0.9"])
def test_smoothing_outside_0_1_is_refused_naming_the_range(bad):
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
        LBTLoss(TinyCoupling(2, 8), k=2, smoothing=bad)


def test_the_ratio_set_between_calls_is_the_one_held_and_a_bad_one_is_refused_leaving_it():
    """``lbt.weight = w`` between calls (a schedule, as the 2-D benchmark's ``defaults_weight_decay``): the next
    balanced call holds ``|g_LBT| = w |g_GAN|`` at the samples; a non-finite or non-number is refused, the old kept."""
    torch.manual_seed(0)
    G, D = TinyGenerator(4, 2, 16), nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    lbt = LBTLoss(TinyCoupling(2, 16), k=2)
    data = torch.randn(32, 2) + 1
    for weight in (0.25, 3):  # neither the default
        lbt.weight = weight
        fake = G(torch.randn(32, 4))
        gan = nn.functional.softplus(-D(fake)).mean()
        g_gan, = torch.autograd.grad(gan, fake, retain_graph=True)
        g_lbt, = torch.autograd.grad(lbt(fake, data, gan_loss=gan), fake)
        assert g_lbt.norm().item() == pytest.approx(weight * g_gan.norm().item(), rel=1e-5)
    for bad in (float("inf"), "2", True, None):
        with pytest.raises(ValueError, match="weight must be a finite number"):
            lbt.weight = bad
        assert lbt.weight == 3
    old = lbt.__getstate__()  # as pickled before ``weight`` was a property: a plain attribute
    old["weight"] = old.pop("_weight")
    restored = LBTLoss.__new__(LBTLoss)
    restored.__setstate__(old)
    assert restored.weight == 3 and "weight" not in vars(restored)
