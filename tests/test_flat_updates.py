"""Multi-tensor (flat) updates of the default backend: bit-identical to one rule call per parameter, fewer ops."""
import collections
import copy

import pytest
import torch
from test_rules import CONFIGS
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin._impl.backends import FuncBackend, _Buckets
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator


@pytest.fixture
def per_parameter(monkeypatch):
    """Flat updates for every rule (on CPU the default keeps SGD per parameter), and a context in which
    FuncBackend calls the rule once per parameter (the reference)."""
    monkeypatch.setattr(FuncBackend, "flat", True)

    class Switch:
        def __enter__(self):
            monkeypatch.setattr(FuncBackend, "flat", False)

        def __exit__(self, *exc):
            monkeypatch.setattr(FuncBackend, "flat", True)

    return Switch()


def _step(module, opt, x):
    opt.zero_grad(set_to_none=True)
    (-module.log_prob(x).mean()).backward()
    opt.step()


def _unroll_and_hypergradient(est, opt, x, k, **options):
    """theta_K, the unrolled optimizer state, and the gradient of a loss at theta_K w.r.t. the inner batch."""
    xin = x.clone().requires_grad_()
    unroller = Unroller(est, opt, k, **options)
    view, _ = unroller._unroll(lambda e: -e.log_prob(xin).mean())
    theta = [p.detach() for p in view.parameters()]
    state = [{key: v.detach() if torch.is_tensor(v) else v for key, v in s.items()}
             for _, s in sorted(view._backend.state.items())]
    (grad,) = torch.autograd.grad(-view.log_prob(x * 0.5).mean(), xin)
    return theta, state, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("warm", [0, 2], ids=["fresh-state", "warm-state"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_flat_updates_are_bit_identical_to_per_parameter_rules(name, warm, dtype, per_parameter):
    """Every configuration of test_rules.py: theta_K, the optimizer state and the hypergradient, to the bit."""
    torch.manual_seed(0)
    est = TinyCoupling(2, 8).to(dtype)
    x = torch.randn(32, 2, dtype=dtype)
    opt = CONFIGS[name](est.parameters())
    for _ in range(warm):
        _step(est, opt, x)
    flat = _unroll_and_hypergradient(est, opt, x, 4)
    with per_parameter:
        reference = _unroll_and_hypergradient(est, opt, x, 4)
    assert all(torch.equal(a, b) for a, b in zip(flat[0], reference[0]))
    assert [sorted(s) for s in flat[1]] == [sorted(s) for s in reference[1]]
    for a, b in zip(flat[1], reference[1]):
        assert all(torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key] for key in a)
    assert torch.equal(flat[2], reference[2])


class Groups(nn.Module):
    """Two param groups, a frozen parameter, a parameter no loss uses, a 0-d parameter and a channels-last conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(3, 1)
        self.conv = nn.Conv2d(1, 2, 1)
        self.conv.weight.data = self.conv.weight.data.contiguous(memory_format=torch.channels_last)
        self.temperature = nn.Parameter(torch.tensor(0.7))
        self.unused = nn.Parameter(torch.ones(3))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def log_prob(self, x):
        h = torch.tanh(self.a(x) * self.frozen) * self.temperature
        c = self.conv(x[:, None, :, None]).sum((1, 2, 3))
        return self.b(h).squeeze(-1) + c


@pytest.mark.parametrize("make", [
    lambda m: torch.optim.Adam([{"params": [*m.a.parameters(), m.temperature], "lr": 0.1},
                                {"params": [m.unused, *m.b.parameters(), *m.conv.parameters()], "weight_decay": 0.1}],
                               lr=0.01),
    lambda m: torch.optim.SGD([{"params": m.a.parameters(), "lr": torch.tensor(0.1)},
                               {"params": [m.unused, m.temperature, *m.b.parameters(), *m.conv.parameters()]}],
                              lr=0.05, momentum=0.9, nesterov=True),
], ids=["adam", "sgd-tensor-lr"])
@pytest.mark.parametrize("options", [{}, {"checkpoint": True}, {"truncate": 2}],
                         ids=["full", "checkpoint", "truncate"])
def test_groups_frozen_unused_and_channels_last_parameters(make, options, per_parameter):
    torch.manual_seed(0)
    m = Groups().double()
    x = torch.randn(8, 2, dtype=torch.float64)
    opt = make(m)
    _step(m, opt, x)  # a warm state for some parameters; the unused one has none
    flat = _unroll_and_hypergradient(m, opt, x, 3, **options)
    with per_parameter:
        reference = _unroll_and_hypergradient(m, opt, x, 3, **options)
    assert all(torch.equal(a, b) for a, b in zip(flat[0], reference[0]))
    assert torch.equal(flat[2], reference[2])
    theta = dict(zip((n for n, _ in m.named_parameters()), flat[0]))
    assert torch.equal(theta["unused"], m.unused) and torch.equal(theta["frozen"], m.frozen)


def test_buckets_split_by_group_state_and_layout():
    torch.manual_seed(0)
    params = [torch.zeros(3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.float64), torch.zeros(4),
              torch.zeros(1, 2, 3, 3).contiguous(memory_format=torch.channels_last), torch.zeros(5)]
    state = {0: {"step": 2.0}, 1: {"step": 2.0}, 2: {"step": 2.0}, 3: {"step": 3.0}, 4: {"step": 2.0},
             5: {"step": 2.0, "exp_avg": torch.zeros(5)}}
    assert _Buckets.partition(list(range(6)), params, state) == [[0, 1], [2], [3], [4], [5]]


class Ops(TorchDispatchMode):
    """Counts the aten operations that are not views (each one kernel, or more, on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_flat_updates_take_fewer_operations(per_parameter):
    """One LBT step (K=5, Adam, a coupling of 7 parameters in one bucket): the update's operations run once per
    bucket. Adam's rule is 10 non-view operations per call, so the forward pass alone saves at least
    (7 - 1) * 10 * 5 - 2 * 5 = 290 (two concatenations per step). Measured: 1251 flat against 2394."""
    torch.manual_seed(0)
    est, gen, data = TinyCoupling(2, 16), TinyGenerator(4, 2, 16), torch.randn(64, 2)

    def ops():
        lbt = LBTLoss(copy.deepcopy(est), k=5, teach_steps=0, check_finite=False)
        lbt(gen, data).backward()  # the first call probes log_prob once
        with Ops() as counter:
            lbt(gen, data).backward()
        return sum(counter.count.values())

    flat = ops()
    with per_parameter:
        reference = ops()
    assert reference - flat >= (7 - 1) * 10 * 5 - 2 * 5, (flat, reference)


def test_the_default_is_flat_where_it_pays(monkeypatch):
    monkeypatch.setattr(FuncBackend, "flat", None)
    m = TinyCoupling(2, 4)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert FuncBackend(m, torch.optim.Adam(m.parameters()))._flat_pays(cpu)
    assert not FuncBackend(m, torch.optim.SGD(m.parameters(), lr=0.1))._flat_pays(cpu)
    assert FuncBackend(m, torch.optim.SGD(m.parameters(), lr=0.1))._flat_pays(cuda)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["adam", "adamw-amsgrad-maximize", "rmsprop-centered-momentum-wd", "sgd-nesterov-wd"])
def test_cuda_flat_updates_are_bit_identical_to_per_parameter_rules(name, dtype, per_parameter):
    """The same on the device: its elementwise kernels compute each entry alike wherever it lies in a tensor."""
    torch.manual_seed(0)
    est = TinyCoupling(2, 8).to("cuda", dtype)
    x = torch.randn(32, 2, dtype=dtype, device="cuda")
    opt = CONFIGS[name](est.parameters())
    _step(est, opt, x)
    flat = _unroll_and_hypergradient(est, opt, x, 4)
    with per_parameter:
        reference = _unroll_and_hypergradient(est, opt, x, 4)
    assert all(torch.equal(a, b) for a, b in zip(flat[0], reference[0]))
    assert torch.equal(flat[2], reference[2])
