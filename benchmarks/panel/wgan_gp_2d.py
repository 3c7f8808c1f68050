"""caogang/wgan-gp's ``gan_toy.py`` loop (8 Gaussians, ReLU MLPs of 512, WGAN-GP with five critic iterations and
lambda 0.1, Adam 1e-4 with betas (0.5, 0.9)), written out here in its shape, plus the README's lines.

``train(lbt, steps, seed, record, estimator)`` as in ``pytorch_dcgan.py``; ``estimator`` is ``"mixture"``,
``"flow"`` or ``"vae"`` (the issue's three).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.autograd as autograd
import torch.nn as nn

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.estimators import VAE, GaussianMixture, RealNVP  # LBT

DIM, LAMBDA, CRITIC_ITERS, BATCH_SIZE = 512, 0.1, 5, 256
ESTIMATORS = {"mixture": lambda: GaussianMixture(2, 8), "flow": lambda: RealNVP(2), "vae": lambda: VAE(2)}


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, DIM), nn.ReLU(True), nn.Linear(DIM, DIM), nn.ReLU(True),
                                  nn.Linear(DIM, DIM), nn.ReLU(True), nn.Linear(DIM, 2))

    def forward(self, noise):
        return self.main(noise)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, DIM), nn.ReLU(True), nn.Linear(DIM, DIM), nn.ReLU(True),
                                  nn.Linear(DIM, DIM), nn.ReLU(True), nn.Linear(DIM, 1))

    def forward(self, inputs):
        return self.main(inputs).view(-1)


def inf_train_gen():
    scale = 2.0
    centers = [(1, 0), (-1, 0), (0, 1), (0, -1), (1 / math.sqrt(2), 1 / math.sqrt(2)),
               (1 / math.sqrt(2), -1 / math.sqrt(2)), (-1 / math.sqrt(2), 1 / math.sqrt(2)),
               (-1 / math.sqrt(2), -1 / math.sqrt(2))]
    centers = torch.tensor(centers) * scale
    while True:
        point = torch.randn(BATCH_SIZE, 2) * 0.02
        yield (point + centers[torch.randint(8, (BATCH_SIZE,))]) / 1.414


def calc_gradient_penalty(netD, real_data, fake_data):
    alpha = torch.rand(BATCH_SIZE, 1).expand(real_data.size())
    interpolates = (alpha * real_data + ((1 - alpha) * fake_data)).requires_grad_(True)
    disc_interpolates = netD(interpolates)
    gradients = autograd.grad(outputs=disc_interpolates, inputs=interpolates,
                              grad_outputs=torch.ones(disc_interpolates.size()), create_graph=True,
                              retain_graph=True, only_inputs=True)[0]
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * LAMBDA


def train(lbt: str = "balanced", steps: int = 100, seed: int = 0, record: Optional[Callable] = None,
          estimator: str = "mixture") -> None:
    torch.manual_seed(seed)
    netG, netD = Generator(), Discriminator()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=1e-4, betas=(0.5, 0.9))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.5, 0.9))
    data = inf_train_gen()
    if lbt != "none":
        lbt_loss = LBTLoss(ESTIMATORS[estimator](), k=5)  # LBT
    for iteration in range(steps):
        for p in netD.parameters():
            p.requires_grad = True
        for iter_d in range(CRITIC_ITERS):
            real_data = next(data)
            netD.zero_grad()
            D_real = netD(real_data).mean()
            noise = torch.randn(BATCH_SIZE, 2)
            fake = netG(noise).detach()
            D_fake = netD(fake).mean()
            gradient_penalty = calc_gradient_penalty(netD, real_data, fake)
            (D_fake - D_real + gradient_penalty).backward()
            optimizerD.step()
        for p in netD.parameters():
            p.requires_grad = False
        netG.zero_grad()
        real_data = next(data)
        fake = netG(torch.randn(BATCH_SIZE, 2))
        G = -netD(fake).mean()
        if lbt == "none":
            G.backward()
        else:
            lbt_term = lbt_loss(fake, real_data, gan_loss=G if lbt == "balanced" else None)  # LBT
            if record is not None:  # panel
                record(iteration, netG, G, lbt_term)  # panel
            (G + lbt_term).backward()  # LBT
        optimizerG.step()
