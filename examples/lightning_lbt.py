"""LBT-GAN as a LightningModule (manual optimisation, in the style of Lightning's GAN example).

    pip install -e ".[examples,lightning]"
    python examples/lightning_lbt.py --max-steps 200          # Fashion-MNIST, offline (see dcgan_lbt.py)

The lines that LBT adds end in ``# LBT`` (or ``# LBT: why``); the lines it changes end in
``# LBT, plain: what they were`` (docs/dcgan.md). Lightning's DDP strategy works as is:
``LBTLoss`` sees the initialised process group and keeps its estimator identical on
every rank (docs/distributed.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcgan_lbt import Discriminator, Generator  # the DCGAN example's networks (this folder is on the path)
from dcgan_support import load_dataset
from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.estimators import ConvVAE  # LBT


class LBTGAN(L.LightningModule):
    def __init__(self, channels: int = 1, image_size: int = 28, latent_dim: int = 100, width: int = 64,
                 lr: float = 2e-4,
                 lbt_weight: float = 1.0, k: int = 2, teach_steps: int = 1, est_latent: int = 16,  # LBT
                 est_width: int = 8,  # LBT: the DCGAN example's estimator and K (docs/estimators.md)
                 ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, width, channels, image_size)
        self.discriminator = Discriminator(width, channels, image_size)
        self.estimator = ConvVAE(channels, image_size, latent_dim=est_latent, base=est_width)  # LBT
        self.lbt = None  # LBT: built in on_fit_start, once Lightning has set up the optimizers

    def configure_optimizers(self):
        h = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=h.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=h.lr, betas=(0.5, 0.999))
        opt_e = torch.optim.Adam(self.estimator.parameters(), lr=3e-4, betas=(0.5, 0.999))  # LBT
        return [opt_g, opt_d, opt_e]  # LBT, plain: return [opt_g, opt_d]

    def on_fit_start(self) -> None:  # LBT
        opt_e = self.optimizers()[2].optimizer  # LBT: the torch optimizer inside Lightning's wrapper
        self.lbt = LBTLoss(self.estimator, k=self.hparams.k, optimizer=opt_e,  # LBT
                           teach_steps=self.hparams.teach_steps, weight=self.hparams.lbt_weight)  # LBT

    def training_step(self, batch, batch_idx):
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        opt_g, opt_d, _ = self.optimizers()  # LBT, plain: opt_g, opt_d = self.optimizers()
        z = torch.randn(real.size(0), self.hparams.latent_dim, 1, 1, device=self.device)
        fake = self.generator(z)
        ones, zeros = torch.ones(real.size(0), device=self.device), torch.zeros(real.size(0), device=self.device)

        # discriminator
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones) + \
            F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

        # generator
        # (no toggle_optimizer: it would freeze the estimator, which LBT trains inside the call)  # LBT
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        lbt_loss = self.lbt(fake, real, gan_loss=g_loss)  # LBT: its gradient as large as the GAN loss's
        opt_g.zero_grad()
        self.manual_backward(g_loss + lbt_loss)  # LBT, plain: self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)
        self.log("lbt_loss", lbt_loss, prog_bar=True)  # LBT

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--out", type=Path, default=Path("out/lightning_lbt"))
    args = p.parse_args()
    data = load_dataset(args.dataset, args.data_root, 28)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True)
    model = LBTGAN(channels=data.shape[1])
    trainer = L.Trainer(max_steps=args.max_steps, accelerator=args.accelerator, devices=args.devices,
                        default_root_dir=str(args.out))
    trainer.fit(model, loader)


if __name__ == "__main__":
    main()
