"""The panel of user loops (benchmarks/panel/), seconds-long: every loop runs with the README's lines, and with the
balance the LBT term's share of G's gradient is within a decade of ``weight`` = 1 in each, where the fixed form
is not in several (benchmarks/gradient_share.py measures it over training)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gradient_share as share  # noqa: E402


#: The 64x64 DCGAN with its ConvVAE(1, 64) takes a minute on 2 cores: with the long runs (-m slow).
_SLOW = {"pytorch_dcgan"}


@pytest.mark.parametrize("label, loop, kwargs", [
    pytest.param(label, loop, kwargs, marks=[pytest.mark.slow] if loop in _SLOW else [],
                 id=label.split(",")[0] + f" {i}") for i, (label, loop, kwargs, _) in enumerate(share.LOOPS)])
def test_every_panel_loop_runs_and_the_balance_holds_at_its_first_steps(label, loop, kwargs, digits):
    balanced = share.ratios(loop, kwargs, "balanced", 2, 0, str(digits))
    assert set(balanced) == {0, 1} and all(0.1 < r < 10 for r in balanced.values()), (label, balanced)


def test_the_fixed_form_is_out_of_balance_in_the_image_loops(digits):
    """The control: without gan_loss, the README's lines give ratios far outside the band (issue 17: 94 to 5e5)."""
    for loop in ("pytorchgan_wgan_gp", "lightning_gan"):
        fixed = share.ratios(loop, {}, "fixed", 2, 0, str(digits))
        assert all(r > 10 for r in fixed.values()), (loop, fixed)
