"""Lightning's GAN template (``examples/pytorch/domain_templates/generative_adversarial_net.py``: MLP generator and
discriminator on 1x28x28, BCE, manual optimisation with ``toggle_optimizer``), written out here in its shape for
Fashion-MNIST, plus the README's lines.

``train(lbt, steps, seed, record)`` as in ``pytorch_dcgan.py``. The estimator lives inside the ``LBTLoss``, not as
a submodule, so ``toggle_optimizer`` (which freezes every parameter outside the toggled optimizer) leaves it alone.
"""
from __future__ import annotations

from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.data import load_idx_dataset
from lbt_plugin.estimators import ConvVAE  # LBT


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 100, img_shape: tuple = (1, 28, 28)):
        super().__init__()
        self.img_shape = img_shape

        def block(in_feat, out_feat, normalize=True):
            layers = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.01, inplace=True))
            return layers

        self.model = nn.Sequential(*block(latent_dim, 128, normalize=False), *block(128, 256), *block(256, 512),
                                   *block(512, 1024), nn.Linear(1024, int(np.prod(img_shape))), nn.Tanh())

    def forward(self, z):
        img = self.model(z)
        return img.view(img.size(0), *self.img_shape)


class Discriminator(nn.Module):
    def __init__(self, img_shape: tuple = (1, 28, 28)):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(int(np.prod(img_shape)), 512), nn.LeakyReLU(0.2, inplace=True),
                                   nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1),
                                   nn.Sigmoid())

    def forward(self, img):
        return self.model(img.view(img.size(0), -1))


class GAN(L.LightningModule):
    def __init__(self, latent_dim: int = 100, lr: float = 0.0002, b1: float = 0.5, b2: float = 0.999,
                 lbt: str = "balanced", record: Optional[Callable] = None):
        super().__init__()
        self.save_hyperparameters(ignore=["record"])
        self.automatic_optimization = False
        self.generator = Generator(latent_dim)
        self.discriminator = Discriminator()
        self.record = record
        if lbt != "none":
            self.lbt_loss = LBTLoss(ConvVAE(1, 28), k=5)  # LBT

    def forward(self, z):
        return self.generator(z)

    def adversarial_loss(self, y_hat, y):
        return F.binary_cross_entropy(y_hat, y)

    def training_step(self, batch):
        imgs = batch[0]
        optimizer_g, optimizer_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)
        # train generator
        self.toggle_optimizer(optimizer_g)
        self.generated_imgs = self(z)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        g_loss = self.adversarial_loss(self.discriminator(self.generated_imgs), valid)
        if self.hparams.lbt != "none":
            lbt_term = self.lbt_loss(self.generated_imgs, imgs,  # LBT
                                     gan_loss=g_loss if self.hparams.lbt == "balanced" else None)  # LBT
            if self.record is not None:  # panel
                self.record(self.global_step // 2, self.generator, g_loss, lbt_term)  # panel
            g_loss = g_loss + lbt_term  # LBT
        self.manual_backward(g_loss)
        optimizer_g.step()
        optimizer_g.zero_grad()
        self.untoggle_optimizer(optimizer_g)
        # train discriminator
        self.toggle_optimizer(optimizer_d)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
        fake_loss = self.adversarial_loss(self.discriminator(self(z).detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        self.manual_backward(d_loss)
        optimizer_d.step()
        optimizer_d.zero_grad()
        self.untoggle_optimizer(optimizer_d)

    def configure_optimizers(self):
        lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
        return [opt_g, opt_d]


def train(lbt: str = "balanced", steps: int = 100, seed: int = 0, record: Optional[Callable] = None,
          root: Optional[str] = None) -> None:
    L.seed_everything(seed, verbose=False)
    data = load_idx_dataset("fashion-mnist", root)[0][:10000].float().div(255).unsqueeze(1) * 2 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=64, shuffle=True,
                                         drop_last=True)
    trainer = L.Trainer(max_steps=2 * steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(GAN(lbt=lbt, record=record), loader)
