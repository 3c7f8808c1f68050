"""Estimators from third-party flow libraries (optional test dependencies, installed by .ci/run): the default
backend unrolls them exactly, and backend="higher" says at construction when it cannot."""
import re

import pytest
import torch
from click.testing import CliRunner

from lbt_plugin import LBTLoss, Unroller
from lbt_plugin.cli import main
from models import generator


@pytest.mark.parametrize("library, factory", [("zuko", "zuko_flow"), ("normflows", "normflows_realnvp")])
def test_flow_libraries_pass_lbt_plugin_check_on_the_default_backend(library, factory):
    pytest.importorskip(library)
    result = CliRunner().invoke(main, ["check", "--estimator", f"models:{factory}", "--generator", "models:generator",
                                       "--data-shape", "2", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"hypergradient vs finite diff\.\s+sgd, K=2, func.*PASS", result.output), result.output
    if library == "zuko":  # higher cannot patch zuko's modules: a warning row, the func rows pass
        assert "WARN" in result.output and "higher can patch the estimator" in result.output
    else:
        assert "higher == func" in result.output


def test_explicit_higher_on_zuko_fails_at_construction_naming_func():
    pytest.importorskip("zuko")
    from models import ZukoFlow

    est = ZukoFlow()
    with pytest.raises(TypeError, match="backend='higher' cannot patch ZukoFlow.*Use backend='func'"):
        LBTLoss(est, k=2, backend="higher")
    with pytest.raises(TypeError, match="cannot patch"):
        Unroller(est, torch.optim.SGD(est.parameters(), lr=0.1), k=2, backend="higher")
    loss = LBTLoss(est, k=2)(generator(), torch.randn(8, 2))  # the default works
    loss.backward()


def test_an_adjoint_ode_flow_cannot_be_unrolled_and_the_error_says_which_modules_cannot():
    zuko = pytest.importorskip("zuko")

    class CNF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = zuko.flows.CNF(2, hidden_features=[8])

        def log_prob(self, x):
            return self.flow().log_prob(x)

    with pytest.raises(RuntimeError, match=r"cannot be differentiated again.*zuko's CNF.*once_differentiable"):
        LBTLoss(CNF(), k=2)(generator(), torch.randn(8, 2))
