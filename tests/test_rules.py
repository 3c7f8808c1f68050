"""Forward exactness: theta_K of the unroll equals K real torch.optim steps, in float64."""
import copy

import pytest
import torch
from torch import nn

from lbt_plugin import Unroller
from lbt_plugin._impl.toy import TinyCoupling

CONFIGS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd-maximize": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5, maximize=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-betas-eps": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.999), eps=1e-3),
    "adam-amsgrad-wd": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=0.1),
    "adam-maximize": lambda p: torch.optim.Adam(p, lr=1e-2, maximize=True),
    "adam-decoupled": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-2)),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad-maximize": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, maximize=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
    "rmsprop-centered-momentum-wd": lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True, momentum=0.5,
                                                                  weight_decay=0.01),
    "rmsprop-maximize": lambda p: torch.optim.RMSprop(p, lr=1e-3, maximize=True),
}


def _step(module, opt, x):
    opt.zero_grad(set_to_none=True)
    (-module.log_prob(x).mean()).backward()
    opt.step()


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("warm", [0, 2], ids=["fresh-state", "warm-state"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_theta_k_equals_real_steps(name, warm, backend):
    make = CONFIGS[name]
    est = TinyCoupling(2, 8).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    opt = make(est.parameters())
    for _ in range(warm):
        _step(est, opt, x)
    buffers = {n: b.clone() for n, b in est.named_buffers()}
    ref = copy.deepcopy(est)
    ref_opt = make(ref.parameters())
    ref_opt.load_state_dict(opt.state_dict())
    view = Unroller(est, opt, 4, backend=backend)(lambda e: -e.log_prob(x).mean())
    for _ in range(4):
        _step(ref, ref_opt, x)
    for (n, a), b in zip(view.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14, msg=f"{name}: {n}")
    # BatchNorm's running statistics evolve in the unroll as in K real steps (one train-mode forward each), in
    # copies read through the view; the module's own buffers are as they were
    view_bn, ref_bn = getattr(view.conditioner, "1"), ref.conditioner[1]
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(view_bn, buf), getattr(ref_bn, buf), rtol=1e-13, atol=1e-14,
                                   msg=f"{name}: {buf}")
    assert int(view_bn.num_batches_tracked) == warm + 4
    assert all(torch.equal(b, buffers[n]) for n, b in est.named_buffers())


def test_param_groups_and_frozen_and_unused_params():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 1)
            self.unused = nn.Parameter(torch.ones(3))
            self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

        def log_prob(self, x):
            return self.b(torch.tanh(self.a(x) * self.frozen)).squeeze(-1)

    m = M().double()
    x = torch.randn(8, 2, dtype=torch.float64)
    make = lambda m: torch.optim.Adam([{"params": m.a.parameters(), "lr": 0.1},  # noqa: E731
                                       {"params": [m.unused, *m.b.parameters()], "weight_decay": 0.1}], lr=0.01)
    opt = make(m)
    ref = copy.deepcopy(m)
    ref_opt = make(ref)
    for backend in ("higher", "func"):
        view = Unroller(m, opt, 3, backend=backend)(lambda e: -e.log_prob(x).mean())
        if backend == "higher":
            for _ in range(3):
                _step(ref, ref_opt, x)
        for a, b in zip(view.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(dict(view.named_parameters())["unused"], m.unused)


def test_unsupported_optimizer_and_flags_raise_clearly():
    est = TinyCoupling(2, 8)
    with pytest.raises(TypeError, match="cannot unroll torch.optim.adagrad.Adagrad.*SGD"):
        Unroller(est, torch.optim.Adagrad(est.parameters()), 1)(lambda e: -e.log_prob(torch.randn(4, 2)).mean())

    class MyAdam(torch.optim.Adam):
        pass

    with pytest.raises(TypeError, match="exact classes"):
        Unroller(est, MyAdam(est.parameters()), 1)(lambda e: -e.log_prob(torch.randn(4, 2)).mean())
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    opt.param_groups[0]["lookahead"] = 5
    with pytest.raises(ValueError, match="lookahead=5"):
        Unroller(est, opt, 1)(lambda e: -e.log_prob(torch.randn(4, 2)).mean())
    lr = torch.tensor(0.1, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        Unroller(est, torch.optim.SGD(est.parameters(), lr=lr), 1)(lambda e: -e.log_prob(torch.randn(4, 2)).mean())


def test_importing_and_using_the_package_leaves_higher_s_own_optimizers_alone():
    """A user's MAML code in the same process keeps higher's maths: our rules are used by our unrolls only."""
    import subprocess
    import sys

    script = """
import torch, higher.optim
def kinds():
    net = torch.nn.Linear(2, 2)
    return [type(higher.optim.get_diff_optim(cls(net.parameters(), lr=0.1), net.parameters())).__qualname__ + '@'
            + type(higher.optim.get_diff_optim(cls(net.parameters(), lr=0.1), net.parameters())).__module__
            for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop)]
before = kinds()
import lbt_plugin
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
for backend in ("higher", "func"):
    lbt_plugin.LBTLoss(TinyCoupling(2, 8), k=2, backend=backend)(TinyGenerator(4, 2, 8), torch.randn(8, 2)).backward()
after = kinds()
print(before == after, before, after)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True"), out.stdout
    assert "higher.optim" in out.stdout and "lbt_plugin" not in out.stdout
