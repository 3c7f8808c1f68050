"""No host synchronisation in the hot path of an LBT step, except the documented finiteness check."""
import copy
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin._impl import rules
from lbt_plugin._impl.backends import FuncBackend
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OPTIMIZERS = {
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.5, 0.999)),
    "adamw-amsgrad": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, amsgrad=True),
    "rmsprop-centered-momentum": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, centered=True, momentum=0.5),
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
}


class Reads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense``: what ``.item()``, ``bool(t)``, ``float(t)`` and ``int(t)`` of a tensor
    call, each a host synchronisation when the tensor is on an accelerator."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _warm(make, device="cpu"):
    torch.manual_seed(0)
    est, gen = TinyCoupling(2, 16).to(device), TinyGenerator(4, 2, 16).to(device)
    data = torch.randn(32, 2, device=device)
    opt = make(est)
    LBTLoss(est, k=1, optimizer=opt, teach_steps=2)(gen, data).backward()  # a warm state: tensor step counters
    return est, gen, data, opt


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-parameter"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_lbt_step_reads_no_tensor_on_the_host_but_the_finiteness_check(name, flat, monkeypatch):
    """Unroll (backend construction with the optimizer's state, K steps) and backward: no ``.item()``-like read;
    with ``check_finite`` exactly one, the fused check of docs/performance.md."""
    monkeypatch.setattr(FuncBackend, "flat", flat)
    est, gen, data, opt = _warm(OPTIMIZERS[name])
    for check_finite, expected in ((False, 0), (True, 1)):
        lbt = LBTLoss(est, k=5, optimizer=opt, teach_steps=0, check_finite=check_finite)
        lbt(gen, data).backward()  # the first call probes log_prob's input gradient once
        with Reads() as reads:
            lbt(gen, data).backward()
        assert reads.count == expected, (check_finite, reads.count)
    with Reads() as reads:
        Unroller(est, opt, 5, check_finite=False)(lambda e: -e.log_prob(data).mean()).log_prob(data).sum().backward()
    assert reads.count == 0


def test_tensor_step_counters_are_read_in_one_transfer():
    """``copy_states`` stacks the step counters and reads them at once (one transfer per device, not one
    synchronisation per parameter) and gives the same floats as ``float(step)``."""
    est, _, _, opt = _warm(OPTIMIZERS["adam"])
    params = list(est.parameters())
    with Reads() as reads:
        states = rules.copy_states(opt, params)
    assert reads.count == 0
    for p, s in zip(params, states):
        assert s["step"] == float(opt.state[p]["step"]) and list(s) == list(opt.state[p])
        assert all(torch.equal(s[k], opt.state[p][k]) for k in s if k != "step")


def test_hyper_parameters_are_read_from_host_copies():
    m = TinyCoupling(2, 4)
    lr = torch.tensor(0.01)
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    group = rules.on_host(torch.optim.Adam(m.parameters(), lr=lr, betas=betas).param_groups[0])
    assert "params" not in group and group["lr"] is lr and group["betas"][1] is betas[1]  # on the CPU: kept
    assert all(v.device.type == "cpu" for v in (group["lr"], *group["betas"]))
    meta = {"lr": torch.tensor(0.01, device="meta"), "betas": (torch.tensor(0.9, device="meta"), 0.999), "eps": 1e-8}
    with pytest.raises(NotImplementedError):  # a tensor elsewhere is copied (the meta device cannot be read)
        rules.on_host(meta)


@cuda
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-parameter"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_lbt_step_synchronises_only_for_the_finiteness_check(name, flat, monkeypatch):
    """On the device itself: torch.cuda.set_sync_debug_mode warns at every synchronising call."""
    monkeypatch.setattr(FuncBackend, "flat", flat)
    est, gen, data, opt = _warm(OPTIMIZERS[name], "cuda")
    for check_finite, expected in ((False, 0), (True, 1)):
        lbt = LBTLoss(est, k=5, optimizer=opt, teach_steps=0, check_finite=check_finite)
        lbt(gen, data).backward()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                lbt(gen, data).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == expected, (check_finite, syncs)
