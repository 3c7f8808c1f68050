"""eriklindernoren/PyTorch-GAN's ``implementations/dcgan/dcgan.py`` loop (1x32x32, BCELoss on a sigmoid
discriminator with dropout, Adam 2e-4), written out here in its shape for Fashion-MNIST, plus the README's lines.

``train(lbt, steps, seed, record)`` as in ``pytorch_dcgan.py``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.data import load_idx_dataset
from lbt_plugin.estimators import ConvVAE  # LBT

latent_dim, img_size, channels, batch_size, lr, b1, b2 = 100, 32, 1, 64, 0.0002, 0.5, 0.999


def weights_init_normal(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm2d") != -1:
        torch.nn.init.normal_(m.weight.data, 1.0, 0.02)
        torch.nn.init.constant_(m.bias.data, 0.0)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size ** 2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, stride=1, padding=1),
            nn.BatchNorm2d(128, 0.8), nn.LeakyReLU(0.2, inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, channels, 3, stride=1, padding=1), nn.Tanh())

    def forward(self, z):
        out = self.l1(z)
        out = out.view(out.shape[0], 128, self.init_size, self.init_size)
        return self.conv_blocks(out)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()

        def discriminator_block(in_filters, out_filters, bn=True):
            block = [nn.Conv2d(in_filters, out_filters, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(0.25)]
            if bn:
                block.append(nn.BatchNorm2d(out_filters, 0.8))
            return block

        self.model = nn.Sequential(*discriminator_block(channels, 16, bn=False), *discriminator_block(16, 32),
                                   *discriminator_block(32, 64), *discriminator_block(64, 128))
        ds_size = img_size // 2 ** 4
        self.adv_layer = nn.Sequential(nn.Linear(128 * ds_size ** 2, 1), nn.Sigmoid())

    def forward(self, img):
        out = self.model(img)
        out = out.view(out.shape[0], -1)
        return self.adv_layer(out)


def train(lbt: str = "balanced", steps: int = 100, seed: int = 0, record: Optional[Callable] = None,
          root: Optional[str] = None) -> None:
    torch.manual_seed(seed)
    images = load_idx_dataset("fashion-mnist", root)[0][:10000]
    data = F.interpolate(images.float().div(255).unsqueeze(1), size=img_size, mode="bilinear") * 2 - 1
    adversarial_loss = torch.nn.BCELoss()
    generator, discriminator = Generator(), Discriminator()
    generator.apply(weights_init_normal)
    discriminator.apply(weights_init_normal)
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=lr, betas=(b1, b2))
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(b1, b2))
    if lbt != "none":
        lbt_loss = LBTLoss(ConvVAE(channels, img_size), k=5)  # LBT
    for i in range(steps):
        imgs = data[torch.randint(len(data), (batch_size,))]
        valid, fake = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
        real_imgs = imgs
        # -----------------
        #  Train Generator
        # -----------------
        optimizer_G.zero_grad()
        z = torch.randn(batch_size, latent_dim)
        gen_imgs = generator(z)
        g_loss = adversarial_loss(discriminator(gen_imgs), valid)
        if lbt == "none":
            g_loss.backward()
        else:
            lbt_term = lbt_loss(gen_imgs, real_imgs, gan_loss=g_loss if lbt == "balanced" else None)  # LBT
            if record is not None:  # panel
                record(i, generator, g_loss, lbt_term)  # panel
            (g_loss + lbt_term).backward()  # LBT
        optimizer_G.step()
        # ---------------------
        #  Train Discriminator
        # ---------------------
        optimizer_D.zero_grad()
        real_loss = adversarial_loss(discriminator(real_imgs), valid)
        fake_loss = adversarial_loss(discriminator(gen_imgs.detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        d_loss.backward()
        optimizer_D.step()
