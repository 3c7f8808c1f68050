"""eriklindernoren/PyTorch-GAN's ``implementations/wgan_gp/wgan_gp.py`` loop (MLP generator and critic on 1x28x28,
gradient penalty 10, five critic steps per generator step, Adam 2e-4), written out here in its shape for
Fashion-MNIST, plus the README's lines.

``train(lbt, steps, seed, record)`` as in ``pytorch_dcgan.py``; ``steps`` counts generator steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.autograd as autograd
import torch.nn as nn

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.data import load_idx_dataset
from lbt_plugin.estimators import ConvVAE  # LBT

latent_dim, img_shape, batch_size, lr, b1, b2, n_critic, lambda_gp = 100, (1, 28, 28), 64, 0.0002, 0.5, 0.999, 5, 10


class Generator(nn.Module):
    def __init__(self):
        super().__init__()

        def block(in_feat, out_feat, normalize=True):
            layers = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(latent_dim, 128, normalize=False), *block(128, 256), *block(256, 512),
                                   *block(512, 1024), nn.Linear(1024, int(np.prod(img_shape))), nn.Tanh())

    def forward(self, z):
        img = self.model(z)
        return img.view(img.shape[0], *img_shape)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(int(np.prod(img_shape)), 512), nn.LeakyReLU(0.2, inplace=True),
                                   nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1))

    def forward(self, img):
        return self.model(img.view(img.shape[0], -1))


def compute_gradient_penalty(D, real_samples, fake_samples):
    alpha = torch.rand(real_samples.size(0), 1, 1, 1)
    interpolates = (alpha * real_samples + ((1 - alpha) * fake_samples)).requires_grad_(True)
    d_interpolates = D(interpolates)
    fake = torch.ones(real_samples.shape[0], 1)
    gradients = autograd.grad(outputs=d_interpolates, inputs=interpolates, grad_outputs=fake, create_graph=True,
                              retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean()


def train(lbt: str = "balanced", steps: int = 100, seed: int = 0, record: Optional[Callable] = None,
          root: Optional[str] = None) -> None:
    torch.manual_seed(seed)
    data = load_idx_dataset("fashion-mnist", root)[0][:10000].float().div(255).unsqueeze(1) * 2 - 1
    generator, discriminator = Generator(), Discriminator()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=lr, betas=(b1, b2))
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(b1, b2))
    if lbt != "none":
        lbt_loss = LBTLoss(ConvVAE(1, 28), k=5)  # LBT
    g_step = 0
    i = 0
    while g_step < steps:
        real_imgs = data[torch.randint(len(data), (batch_size,))]
        # ---------------------
        #  Train Discriminator
        # ---------------------
        optimizer_D.zero_grad()
        z = torch.randn(batch_size, latent_dim)
        fake_imgs = generator(z)
        real_validity = discriminator(real_imgs)
        fake_validity = discriminator(fake_imgs)
        gradient_penalty = compute_gradient_penalty(discriminator, real_imgs.data, fake_imgs.data)
        d_loss = -torch.mean(real_validity) + torch.mean(fake_validity) + lambda_gp * gradient_penalty
        d_loss.backward()
        optimizer_D.step()
        optimizer_G.zero_grad()
        # Train the generator every n_critic steps
        if i % n_critic == 0:
            # -----------------
            #  Train Generator
            # -----------------
            fake_imgs = generator(z)
            fake_validity = discriminator(fake_imgs)
            g_loss = -torch.mean(fake_validity)
            if lbt == "none":
                g_loss.backward()
            else:
                lbt_term = lbt_loss(fake_imgs, real_imgs, gan_loss=g_loss if lbt == "balanced" else None)  # LBT
                if record is not None:  # panel
                    record(g_step, generator, g_loss, lbt_term)  # panel
                (g_loss + lbt_term).backward()  # LBT
            optimizer_G.step()
            g_step += 1
        i += 1
