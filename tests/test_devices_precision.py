"""Mixed precision (bf16 autocast) through the unrolled double backward, and CUDA (skipped without a GPU)."""
import copy

import pytest
import torch
from torch import nn

from lbt_plugin import LBTLoss
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
from lbt_plugin.estimators import ConvVAE

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _setup():
    torch.manual_seed(0)
    G = nn.Sequential(nn.ConvTranspose2d(16, 8, 7), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 4), nn.Tanh())
    est = ConvVAE(1, 28, latent_dim=8, base=8)
    data, z = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 16, 1, 1)
    return G, est, data, z


def _loss_and_grad(G, est, data, z, device_type="cpu", autocast=False, **options):
    G, est = copy.deepcopy(G), copy.deepcopy(est)
    lbt = LBTLoss(est, k=3, teach_steps=0, **options)
    torch.manual_seed(1)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        loss = lbt(G, data, z=z)
    grad = torch.autograd.grad(loss, list(G.parameters()))
    return loss.detach().float(), torch.cat([g.reshape(-1) for g in grad]).float()


@pytest.mark.parametrize("options", [{"backend": "higher"}, {"backend": "func"},
                                     {"backend": "func", "checkpoint": True}], ids=["higher", "func", "checkpoint"])
def test_inside_autocast_the_lbt_term_is_the_float32_term_of_the_bf16_samples(options):
    """The property of our code under bf16 autocast, exactly: the LBT term (loss and its gradient to the
    samples) is the float32 computation on the bf16 samples cast up; only the user's generator runs in bf16.

    A deterministic construction, not a tolerance: how far the bf16 generator's own rounding moves the
    end-to-end gradient depends on the model and on the machine's bf16 kernels (benchmarks/precision.py
    measures it), not on this package.
    """
    G, est, data, z = _setup()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake16 = G(z)
    assert fake16.dtype == torch.bfloat16
    x16 = fake16.detach().requires_grad_()
    x32 = fake16.detach().float().requires_grad_()
    losses, grads = [], []
    for x, autocast in ((x16, True), (x32, False)):
        lbt = LBTLoss(copy.deepcopy(est), k=3, teach_steps=1, **options)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = lbt(x, data)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, x)[0])
    assert losses[0].dtype == torch.float32 and torch.equal(losses[0], losses[1])
    assert grads[0].dtype == torch.bfloat16 and torch.equal(grads[0], grads[1].to(torch.bfloat16))
    assert grads[1].abs().sum() > 0


def test_the_lbt_term_is_float32_inside_autocast():
    G, est, data, z = _setup()
    seen = []
    log_prob = est.log_prob

    def spy(x):
        out = log_prob(x)
        seen.append((x.dtype, out.dtype))
        return out

    est.log_prob = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(z)
        assert fake.dtype == torch.bfloat16  # the user's generator does run in bf16
        LBTLoss(est, k=2)(fake, data)
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)


def _device_loss_and_grad(device, backend):
    """The LBT loss and its gradient on G's parameters in float64 on ``device``, from the same models and inputs
    (a flow estimator: no sampling noise, so both devices compute the same function)."""
    torch.manual_seed(0)
    G, est = TinyGenerator(4, 2, 16).double().to(device), TinyCoupling(2, 16).double().to(device)
    data = (torch.randn(32, 2, dtype=torch.float64) * 0.5 + 1.0).to(device)
    z = torch.randn(32, 4, dtype=torch.float64).to(device)
    opt = torch.optim.SGD(est.parameters(), lr=0.05, momentum=0.9)
    loss = LBTLoss(est, k=3, optimizer=opt, teach_steps=1, backend=backend)(G, data, z=z)
    grads = torch.autograd.grad(loss, list(G.parameters()))
    assert loss.device.type == torch.device(device).type and all(g.device == loss.device for g in grads)
    return loss.detach().cpu(), torch.cat([g.reshape(-1) for g in grads]).cpu()


@cuda
@pytest.mark.parametrize("backend", ["higher", "func"])
def test_cuda_step_matches_cpu_and_stays_on_the_device(backend):
    """CUDA and CPU compute the same float64 function with other kernels (summation orders), so they differ by
    rounding only: each reduction of n <= 32 terms errs by at most n * 2^-53 ~ 4e-15 of its terms' magnitude,
    and the teaching step, 3 unrolled SGD steps and the double backward of these small, smooth models
    amplify that by far less than the 2.5e5 left to the tolerance (relative 1e-9). A wrong device transfer,
    a lost buffer or a dropped path errs by orders of magnitude more."""
    loss_cpu, g_cpu = _device_loss_and_grad("cpu", backend)
    loss_cuda, g_cuda = _device_loss_and_grad("cuda", backend)
    torch.testing.assert_close(loss_cuda, loss_cpu, rtol=1e-9, atol=0)
    assert ((g_cuda - g_cpu).norm() / g_cpu.norm()).item() < 1e-9


@cuda
def test_cuda_bf16_autocast():
    G, est, data, z = _setup()
    dev = torch.device("cuda")
    loss, g = _loss_and_grad(G.to(dev), est.to(dev), data.to(dev), z.to(dev), device_type="cuda", autocast=True)
    assert torch.isfinite(g).all() and torch.isfinite(loss)
