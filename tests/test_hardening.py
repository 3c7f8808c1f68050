"""Bad input and misuse of LBTLoss: a clear error that names cause and fix, and nothing changed by a failed call."""
import copy
import re
import warnings

import pytest
import torch
from torch import nn

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator
from lbt_plugin.estimators import VAE


def _state(lbt):
    """Everything a failed call must leave alone: estimator parameters and buffers, optimizer state."""
    out = {f"est.{k}": v.clone() for k, v in lbt.estimator.state_dict().items()}
    for i, s in enumerate(lbt.optimizer.state.values()):
        out.update({f"opt{i}.{k}": v.clone() if torch.is_tensor(v) else v for k, v in s.items()})
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


@pytest.fixture
def warm():
    """An LBTLoss with a warm Adam state and 3 teaching steps per call, its generator and data."""
    torch.manual_seed(0)
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    lbt = LBTLoss(est, k=2, teach_steps=3)
    data = torch.randn(16, 2)
    lbt(gen, data).backward()
    return lbt, gen, data


def _fails_and_changes_nothing(lbt, exc, match, *args, **kwargs):
    before = _state(lbt)
    with pytest.raises(exc, match=match):
        lbt(*args, **kwargs)
    assert _same(before, _state(lbt))
    assert all(p.grad is None for p in lbt.estimator.parameters())


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_nan_samples_are_refused_before_teaching(warm, backend):
    lbt, gen, data = warm
    lbt = LBTLoss(lbt.estimator, k=2, optimizer=lbt.optimizer, teach_steps=3, backend=backend)
    fake = gen(torch.randn(16, 4))
    fake = fake * torch.tensor([1.0, float("nan")])  # every sample has a NaN coordinate
    _fails_and_changes_nothing(lbt, FloatingPointError, "16 of 16 generator samples contain NaN", fake, data)
    nan_gen = lambda z: gen(z) * float("nan")  # noqa: E731
    _fails_and_changes_nothing(lbt, FloatingPointError, "generator samples contain NaN", nan_gen, data,
                               z=torch.randn(16, 4))
    calls = []

    def nan_later(z):  # finite at the first draw, NaN when resampled for a teaching step
        calls.append(1)
        return gen(z) * (1.0 if len(calls) == 1 else float("nan"))

    lbt_r = LBTLoss(lbt.estimator, k=2, optimizer=lbt.optimizer, teach_steps=3, resample=True, backend=backend,
                    latent=4)
    _fails_and_changes_nothing(lbt_r, FloatingPointError, "resampled batch of generator samples contains NaN",
                               nan_later, data)


def test_a_diverging_unroll_after_teaching_restores_the_estimator():
    """The teaching steps succeed, the unroll fails: the estimator and optimizer are put back."""
    torch.manual_seed(0)
    est, gen = TinyCoupling(2, 8), TinyGenerator(4, 2, 8)
    opt = torch.optim.SGD(est.parameters(), lr=1e-3)
    lbt = LBTLoss(est, k=3, optimizer=opt, teach_steps=2)
    data = torch.randn(16, 2)
    lbt(gen, data)
    calls = []
    log_prob = est.log_prob

    def spy(x):  # finite while teaching (2 calls), infinite inside the unroll
        calls.append(1)
        out = log_prob(x)
        return out if len(calls) <= 2 else out * float("inf")

    est.log_prob = spy
    _fails_and_changes_nothing(lbt, FloatingPointError, "unrolled step 1 of 3", gen, data)
    assert len(calls) > 2  # the teaching steps did run before the failure


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adagrad(p), lambda p: torch.optim.NAdam(p), lambda p: torch.optim.LBFGS(p),
    lambda p: type("MyAdam", (torch.optim.Adam,), {})(p),
], ids=["Adagrad", "NAdam", "LBFGS", "Adam-subclass"])
def test_optimizers_that_cannot_be_unrolled_are_refused_at_construction(make):
    est = TinyCoupling(2, 8)
    before = copy.deepcopy(est.state_dict())
    with pytest.raises(TypeError, match=r"cannot unroll .*differentiable steps exist for torch.optim.SGD"):
        LBTLoss(est, k=2, optimizer=make(est.parameters()))
    with pytest.raises(TypeError, match="cannot unroll"):
        Unroller(est, make(est.parameters()), k=2)
    assert all(torch.equal(v, before[k]) for k, v in est.state_dict().items())


def test_integer_and_complex_data_are_refused(warm):
    lbt, gen, data = warm
    _fails_and_changes_nothing(lbt, TypeError, r"dtype torch.uint8.*data.float\(\) / 127.5 - 1", gen,
                               torch.randint(0, 256, (16, 2), dtype=torch.uint8))
    _fails_and_changes_nothing(lbt, TypeError, "dtype torch.complex64", gen, torch.randn(16, 2, dtype=torch.cfloat))
    _fails_and_changes_nothing(lbt, TypeError, "dtype torch.int64", gen, torch.ones(16, 2, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_data_of_another_float_dtype_works(warm, dtype):
    """float32 models, data in another float dtype: z is drawn in the generator's dtype, data is cast."""
    lbt, gen, data = warm
    loss = lbt(gen, data.to(dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gen.parameters())
    G64 = copy.deepcopy(gen).double()  # a float64 generator with float32 data: z in float64
    LBTLoss(copy.deepcopy(lbt.estimator), k=1)(G64, data).backward()


def test_gradients_disabled_empty_batches_and_bad_weights(warm):
    lbt, gen, data = warm
    with torch.no_grad():
        _fails_and_changes_nothing(lbt, RuntimeError, r"gradients disabled \(torch.no_grad\(\)", gen, data)
    with torch.inference_mode():
        _fails_and_changes_nothing(lbt, RuntimeError, "gradients disabled", gen, data)
    _fails_and_changes_nothing(lbt, ValueError, "data is empty", gen, data[:0])
    _fails_and_changes_nothing(lbt, ValueError, "empty batch of samples", gen(torch.randn(0, 4)), data)
    for bad in (float("nan"), "1", True):
        with pytest.raises(ValueError, match="weight must be a finite number"):
            LBTLoss(lbt.estimator, weight=bad)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        LBTLoss(lbt.estimator, batch_size=0)


def test_a_failing_generator_on_a_drawn_latent_names_the_fix(warm):
    lbt, gen, data = warm
    bad = LBTLoss(lbt.estimator, k=2, optimizer=lbt.optimizer, teach_steps=3, latent=7)
    _fails_and_changes_nothing(bad, ValueError, r"failed on z of shape \(16, 7\) \(latent=\(7,\)\)", gen, data)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_a_compiled_estimator_is_unrolled_through_its_original_module(backend):
    est = VAE(2, latent_dim=2, hidden=8)
    compiled = torch.compile(est)
    with pytest.warns(UserWarning, match="original module of a torch.compile'd estimator"):
        lbt = LBTLoss(compiled, k=2, backend=backend)
    assert lbt.estimator is est
    gen = TinyGenerator(4, 2, 8)
    lbt(gen, torch.randn(8, 2)).backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_load_state_dict_that_does_not_fit_changes_nothing(warm):
    lbt, gen, data = warm
    before = _state(lbt)
    other = LBTLoss(TinyCoupling(2, 16), k=2)
    other(TinyGenerator(4, 2, 8), data)
    with pytest.raises(ValueError, match="does not fit this estimator"):
        lbt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="must be a dict with 'estimator' and 'optimizer'"):
        lbt.load_state_dict({"estimator": {}})
    assert _same(before, _state(lbt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lbt(gen, data)  # still usable


def test_load_state_dict_refuses_a_half_fitting_or_foreign_state(warm):
    lbt, gen, data = warm
    before, groups = _state(lbt), lbt.optimizer.param_groups
    bad = {"estimator": lbt.estimator.state_dict(), "optimizer": {"state": 5, "param_groups": []}}
    with pytest.raises(ValueError, match="does not fit"):
        lbt.load_state_dict(bad)
    sgd_est = copy.deepcopy(lbt.estimator)
    sgd = LBTLoss(sgd_est, k=2, optimizer=torch.optim.SGD(sgd_est.parameters(), lr=0.1, momentum=0.9))
    sgd_before = _state(sgd)
    with pytest.raises(ValueError, match="param groups are not those of SGD"):
        sgd.load_state_dict(lbt.state_dict())  # an Adam state into an SGD-backed loss
    assert _same(before, _state(lbt)) and _same(sgd_before, _state(sgd))
    assert lbt.optimizer.param_groups is groups
    sgd(gen, data).backward()  # still usable


def test_a_failed_call_restores_non_persistent_buffers_and_keeps_param_groups(warm):
    lbt, gen, data = warm

    class Counting(TinyCoupling):
        def __init__(self):
            super().__init__(2, 8)
            self.register_buffer("calls", torch.zeros(()), persistent=False)

        def log_prob(self, x):
            self.calls += 1
            if self.calls > 2:  # the two teaching steps pass, the unroll fails
                raise RuntimeError("boom")
            return super().log_prob(x)

    est = Counting()
    opt = torch.optim.Adam(est.parameters(), lr=1e-3)
    group = opt.param_groups[0]
    lbt = LBTLoss(est, k=2, optimizer=opt, teach_steps=2)
    weights = [p.detach().clone() for p in est.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        lbt(gen, data)
    assert est.calls.item() == 0 and not opt.state and opt.param_groups[0] is group
    assert all(torch.equal(a, b) for a, b in zip(weights, est.parameters()))


def test_clear_errors_for_latents_z_and_devices(warm):
    lbt, gen, data = warm
    with pytest.raises(ValueError, match="latent shape is a positive int or a tuple"):
        LBTLoss(lbt.estimator, latent="ab")
    with pytest.raises(ValueError, match="latent shape is a positive int"):
        LBTLoss(lbt.estimator, latent=(100, 0))
    _fails_and_changes_nothing(lbt, ValueError, r"failed on z of shape \(16, 5\) \(the z passed to the call\)",
                               gen, data, z=torch.randn(16, 5))
    odd = LBTLoss(lbt.estimator, k=2, optimizer=lbt.optimizer, teach_steps=3, latent=lambda n, d: "z")
    _fails_and_changes_nothing(odd, TypeError, "gave a str, not a tensor", gen, data)
    _fails_and_changes_nothing(lbt, ValueError, "data is on meta and the estimator on cpu", gen,
                               torch.empty(16, 2, device="meta"))


class _Mutating(TinyCoupling):
    def log_prob(self, x):
        x.mul_(0.5)  # changes its input in place
        return super().log_prob(x)


class _Detaching(TinyCoupling):
    def log_prob(self, x):
        return super().log_prob(x.detach())


def test_an_estimator_that_changes_or_detaches_its_input_is_caught_and_the_callers_tensors_are_intact(warm):
    _, gen, data = warm
    torch.manual_seed(0)
    fake, data0 = gen(torch.randn(16, 4)), data.clone()
    fake0 = fake.detach().clone()
    lbt = LBTLoss(_Mutating(2, 8), k=2, teach_steps=2)
    _fails_and_changes_nothing(lbt, RuntimeError, r"changed its input in place.*x = x \* 0.5", fake, data)
    assert torch.equal(fake.detach(), fake0) and torch.equal(data, data0)
    detaching = LBTLoss(_Detaching(2, 8), k=2)
    with pytest.raises(ValueError, match="not differentiable in its input"):
        detaching(fake, data)


class _LogProbOf(TinyCoupling):
    def __init__(self, kind):
        super().__init__(2, 8)
        self.kind = kind

    def log_prob(self, x):
        out = super().log_prob(x)
        return out.long() if self.kind == "int" else torch.zeros(x.shape[0]) + x.sum(1) * 0


@pytest.mark.parametrize("kind, match", [("int", "returned dtype torch.int64"),
                                         ("constant", "does not depend on the estimator's parameters")])
def test_a_log_prob_of_integers_or_a_constant_is_named(kind, match):
    gen, data = TinyGenerator(4, 2, 8), torch.randn(16, 2)
    with pytest.raises((TypeError, ValueError), match=match):
        LBTLoss(_LogProbOf(kind), k=2)(gen, data)


def test_one_lbtloss_called_from_two_threads_is_refused_not_crashed():
    import threading

    torch.manual_seed(0)
    gen, data = TinyGenerator(4, 2, 8), torch.randn(16, 2)
    lbt = LBTLoss(TinyCoupling(2, 8), k=2)
    inside, release, errors = threading.Event(), threading.Event(), []
    log_prob = lbt.estimator.log_prob

    def slow(x):  # holds the first call inside the estimator until the second has been tried
        inside.set()
        release.wait(10)
        return log_prob(x)

    lbt.estimator.log_prob = slow
    first = threading.Thread(target=lambda: lbt(gen, data))
    first.start()
    assert inside.wait(10)
    try:
        lbt(gen, data)
    except RuntimeError as exc:
        errors.append(str(exc))
    release.set()
    first.join(10)
    assert errors and "in a call in another thread" in errors[0]
    lbt.estimator.log_prob = log_prob
    lbt(gen, data).backward()  # free again once the first call returned
    copy.deepcopy(lbt)  # the lock does not stop copies


def test_an_estimator_of_mixed_dtypes_gets_inputs_in_its_main_dtype():
    """normflows with a float64 base distribution: float32 layers and a small float64 parameter; the inputs
    follow the float32 bulk of the parameters, and the float64 one promotes inside log_prob as in the
    library's own use."""
    class Mixed(TinyCoupling):
        def __init__(self):
            super().__init__(2, 8)
            self.base_loc = nn.Parameter(torch.zeros(2, dtype=torch.float64))

        def log_prob(self, x):
            return super().log_prob(x) - ((x - self.base_loc) ** 2).sum(1).float()

    LBTLoss(Mixed(), k=2)(TinyGenerator(4, 2, 8), torch.randn(16, 2)).backward()


def test_a_generator_that_needs_more_than_z_gets_a_hint_to_pass_samples():
    class Conditional(TinyGenerator):
        def forward(self, z, real):  # noqa: ARG002
            return super().forward(z)

    with pytest.raises(TypeError, match=r"takes more than z.*lbt\(fake, data\)"):
        LBTLoss(TinyCoupling(2, 8), k=2)(Conditional(4, 2, 8), torch.randn(16, 2))


def test_optimizer_settings_out_of_their_domain_are_refused_at_load_and_construction(warm):
    lbt, gen, data = warm
    for key, value, match in [("lr", float("nan"), "lr=nan"), ("lr", -1.0, "lr=-1.0"),
                              ("betas", (0.5, 1.5), "betas=1.5"), ("eps", float("inf"), "eps=inf")]:
        state = copy.deepcopy(lbt.state_dict())
        state["optimizer"]["param_groups"][0][key] = value
        before = _state(lbt)
        with pytest.raises(ValueError, match=re.escape(match)):
            lbt.load_state_dict(state)
        assert _same(before, _state(lbt))
    est = TinyCoupling(2, 8)
    with pytest.raises(ValueError, match="differentiable=True"):
        LBTLoss(est, optimizer=torch.optim.Adam(est.parameters(), differentiable=True))
    sgd = torch.optim.SGD(est.parameters(), lr=0.1, momentum=0.9)
    torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.1, total_steps=10)  # adds max_lr and friends to the groups
    LBTLoss(est, k=2, optimizer=sgd)(gen, data).backward()


def test_a_vae_of_vectors_takes_flattened_images_and_says_so_otherwise():
    torch.manual_seed(0)
    vae, x = VAE(784), torch.rand(4, 1, 28, 28)
    torch.manual_seed(1)
    a = vae.log_prob(x)
    torch.manual_seed(1)
    assert torch.equal(a, vae.log_prob(x.flatten(1)))
    with pytest.raises(ValueError, match="ConvVAE keeps their structure"):
        vae.log_prob(torch.rand(4, 3, 28, 28))


def test_load_state_dict_refuses_a_switch_that_is_not_a_bool():
    from lbt_plugin.estimators import RealNVP

    lbt = LBTLoss(RealNVP(2), k=1)
    state = lbt.state_dict()
    before = copy.deepcopy(state)
    state["optimizer"]["param_groups"][0]["amsgrad"] = "yes"
    with pytest.raises(ValueError, match="amsgrad='yes'; it must be True or False"):
        lbt.load_state_dict(state)
    assert lbt.optimizer.param_groups[0]["amsgrad"] is before["optimizer"]["param_groups"][0]["amsgrad"]
