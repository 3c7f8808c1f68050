"""pytorch/examples' ``dcgan/main.py`` loop (64x64 DCGAN, BCELoss on a sigmoid discriminator, Adam 2e-4), written
out here in its shape for Fashion-MNIST (``--dataset mnist``-style, one channel), plus the README's lines (``# LBT``).

``train(lbt, steps, seed, record)``: ``lbt`` is ``"none"``, ``"fixed"`` (``errG + lbt(fake, real)``) or
``"balanced"`` (``gan_loss=errG``); ``record`` (``# panel``) only measures.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.data import load_idx_dataset
from lbt_plugin.estimators import ConvVAE  # LBT

nz, ngf, ndf, nc, image_size, batch_size = 100, 64, 64, 1, 64, 64


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def train(lbt: str = "balanced", steps: int = 100, seed: int = 0, record: Optional[Callable] = None,
          root: Optional[str] = None) -> None:
    torch.manual_seed(seed)
    images = load_idx_dataset("fashion-mnist", root)[0][:10000]
    dataset = F.interpolate(images.float().div(255).unsqueeze(1), size=image_size, mode="bilinear") * 2 - 1
    netG, netD = Generator(), Discriminator()
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    real_label, fake_label = 1.0, 0.0
    optimizerD = torch.optim.Adam(netD.parameters(), lr=0.0002, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=0.0002, betas=(0.5, 0.999))
    if lbt != "none":
        lbt_loss = LBTLoss(ConvVAE(nc, image_size), k=5)  # LBT
    for i in range(steps):
        real_cpu = dataset[torch.randint(len(dataset), (batch_size,))]
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        netD.zero_grad()
        label = torch.full((batch_size,), real_label)
        errD_real = criterion(netD(real_cpu), label)
        errD_real.backward()
        noise = torch.randn(batch_size, nz, 1, 1)
        fake = netG(noise)
        label.fill_(fake_label)
        errD_fake = criterion(netD(fake.detach()), label)
        errD_fake.backward()
        optimizerD.step()
        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(real_label)
        errG = criterion(netD(fake), label)
        if lbt == "none":
            errG.backward()
        else:
            errLBT = lbt_loss(fake, real_cpu, gan_loss=errG if lbt == "balanced" else None)  # LBT
            if record is not None:  # panel
                record(i, netG, errG, errLBT)  # panel
            (errG + errLBT).backward()  # LBT
        optimizerG.step()
