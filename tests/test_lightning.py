"""The Lightning example trains a few steps on CPU, and LBT reaches the generator."""
import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from lightning_lbt import LBTGAN  # noqa: E402
from lbt_lines import lbt_names, strip_lbt  # noqa: E402


def test_without_its_lbt_lines_the_module_is_a_plain_gan():
    plain = strip_lbt((EXAMPLES / "lightning_lbt.py").read_text())
    compile(plain, "lightning_plain.py", "exec")
    assert not lbt_names(plain.split('"""', 2)[2])  # the code after the module docstring
    assert "self.manual_backward(g_loss)" in plain and "return [opt_g, opt_d]" in plain


def test_lightning_module_trains_generator_discriminator_and_estimator(tmp_path):
    torch.manual_seed(0)
    data = torch.rand(32, 1, 8, 8) * 2 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=8)
    model = LBTGAN(channels=1, image_size=8, latent_dim=8, width=4, est_latent=4, est_width=4, k=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    for prefix in ("generator.", "discriminator.", "estimator."):
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(prefix)), prefix
    assert model.lbt is not None and model.lbt.optimizer.state  # the estimator was taught through Lightning's optimizer
