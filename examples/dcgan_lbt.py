"""DCGAN with Learning by Teaching: pytorch/examples' dcgan/main.py, plus the lines that end in ``# LBT``.

    python examples/dcgan_lbt.py                      # short LBT-GAN run on Fashion-MNIST (offline)
    python examples/dcgan_lbt.py --lbt-weight 0 --out out/dcgan   # plain DCGAN
    python examples/dcgan_lbt.py --lbt-only --out out/lbt        # pure LBT (no discriminator)
    python examples/dcgan_lbt.py --resume out/dcgan_lbt/checkpoint.pt --steps 2000
    torchrun --nproc_per_node 2 examples/dcgan_lbt.py --steps 100 --out out/ddp   # DDP; --batch-size: global

Every line that LBT adds ends in ``# LBT``; the one line it changes says what it was (``# LBT, plain: ...``);
the two ``if`` lines marked ``# LBT`` make the discriminator's lines below them optional (--lbt-only).
Take those away and this is the plain DCGAN loop (tests/test_dcgan_example.py checks it). Everything around
the loop (datasets, batches that make --resume exact, torchrun, checkpoints) is in dcgan_support.py.
Where the loop differs from pytorch/examples, and why: docs/dcgan.md.

Data: Fashion-MNIST from ``--data-root``, Debian's path (/usr/share/datasets/fashion-mnist, package
``dataset-fashion-mnist``) or ./data; where they are nowhere, downloaded once into ./data from
torchvision's mirrors or Debian's archive (SHA256 pinned; lbt_plugin.data);
also ``mnist``, ``cifar10``, ``folder`` (an ImageFolder) and ``stacked-`` variants
(three images as RGB channels: 1000 modes).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.utils as vutils

import dcgan_support as support
from dcgan_support import ARCHITECTURE, load_checkpoint, load_dataset  # noqa: F401  (names users know here)
from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.estimators import ConvVAE  # LBT


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default='fashion-mnist', choices=support.DATASETS)
    parser.add_argument('--data-root', type=Path, default=None, help='path to the dataset')
    parser.add_argument('--image-size', type=int, default=28, help='height / width of the images (a multiple of 4)')
    parser.add_argument('--steps', type=int, default=300, help='generator updates (in all, also when resuming)')
    parser.add_argument('--batch-size', type=int, default=64, help='input batch size (all ranks together)')
    parser.add_argument('--nz', type=int, default=100, help='size of the latent z vector')
    parser.add_argument('--ngf', type=int, default=64)
    parser.add_argument('--ndf', type=int, default=64)
    parser.add_argument('--lr', type=float, default=0.0002, help='learning rate')
    parser.add_argument('--beta1', type=float, default=0.5, help='beta1 for adam')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0, help='manual seed')
    parser.add_argument('--out', type=Path, default=Path('out/dcgan_lbt'), help='folder for samples and checkpoint')
    parser.add_argument('--sample-every', type=int, default=100)
    parser.add_argument('--checkpoint-every', type=int, default=100)
    parser.add_argument('--resume', type=Path, default=None, help='checkpoint to continue from (exactly)')
    parser.add_argument('--overwrite', action='store_true', help='replace the checkpoint of an earlier run in --out')
    parser.add_argument('--tensorboard', action='store_true', help='log losses to OUT/tb (needs tensorboard)')
    parser.add_argument('--lbt-weight', type=float, default=1.0,  # LBT
                        help='size of the LBT gradient relative to the GAN loss\'s (--lbt-only: the loss\'s '  # LBT
                             'factor); 0: DCGAN')  # LBT
    parser.add_argument('--lbt-only', action='store_true', help='pure LBT: no discriminator')  # LBT
    parser.add_argument('--k', type=int, default=2, help='unrolled estimator steps (the paper: 5)')  # LBT
    parser.add_argument('--teach-steps', type=int, default=1, help='estimator steps per generator step')  # LBT
    parser.add_argument('--backend', choices=['func', 'higher'], default='func')  # LBT
    parser.add_argument('--est-lr', type=float, default=3e-4)  # LBT
    parser.add_argument('--est-latent', type=int, default=16, help='ConvVAE latent size')  # LBT
    parser.add_argument('--est-width', type=int, default=8, help='ConvVAE base channels')  # LBT
    parser.add_argument('--warmup', type=int, default=0, help='GAN-only steps before the LBT term')  # LBT
    opt = parser.parse_args(argv)
    if opt.image_size % 4 or not 8 <= opt.image_size <= 1024:
        parser.error(f'--image-size must be a multiple of 4 in [8, 1024] for this architecture, got {opt.image_size}')
    support.check_ranges(parser, opt, {'nz': (1, 4096), 'ngf': (1, 4096), 'ndf': (1, 4096), 'lr': (0, None),
                                       'beta1': (0, 0.999), 'seed': (0, 2**32 - 1)})
    support.check_ranges(parser, opt, {'est_latent': (1, 4096), 'est_width': (1, 4096), 'est_lr': (0, None),  # LBT
                                       'lbt_weight': (0, None), 'teach_steps': (0, None), 'warmup': (0, None)})  # LBT
    try:
        support.check_device(opt.device)
    except ValueError as exc:
        parser.error(str(exc))
    for name in ('steps', 'batch_size', 'sample_every', 'checkpoint_every'):
        if getattr(opt, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if opt.k < 1:  # LBT
        parser.error('--k must be >= 1')  # LBT
    if opt.lbt_only and opt.lbt_weight == 0:  # LBT
        parser.error('--lbt-only with --lbt-weight 0 trains nothing')  # LBT
    if opt.lbt_only and opt.warmup:  # LBT
        parser.error('--warmup trains GAN-only steps first; --lbt-only has no GAN: drop one of them')  # LBT
    return opt


# custom weights initialization called on netG and netD
def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class Generator(nn.Module):
    """z ``[B, nz, 1, 1]`` -> images ``[B, nc, image_size, image_size]`` in [-1, 1]."""

    def __init__(self, nz: int, ngf: int, nc: int, image_size: int):
        super().__init__()
        s = image_size // 4
        self.main = nn.Sequential(
            # input is Z, going into a convolution
            nn.ConvTranspose2d(nz, ngf * 4, s, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            # state size. (ngf*4) x s x s
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            # state size. (ngf*2) x 2s x 2s
            nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1, bias=False), nn.Tanh(),
            # state size. (nc) x 4s x 4s
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class Discriminator(nn.Module):
    """Images ``[B, nc, image_size, image_size]`` -> logits ``[B]`` (no Sigmoid: the loss takes logits)."""

    def __init__(self, ndf: int, nc: int, image_size: int):
        super().__init__()
        s = image_size // 4
        self.main = nn.Sequential(
            # input is (nc) x 4s x 4s
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf) x 2s x 2s
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*2) x s x s
            nn.Conv2d(ndf * 2, 1, s, 1, 0, bias=False),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input).view(-1)


def load_generator(state: Dict[str, Any]) -> Generator:
    """This file's generator from one of its checkpoints, for ``lbt-plugin fid CKPT ... --generator
    examples/dcgan_lbt.py:load_generator``. The checkpoint gives numbers and tensors; the code is this file's."""
    return support.generator_from_checkpoint(state, Generator)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Train with the flags ``argv`` (default: the command line); returns the checkpoint's path. Before anything
    trains, --out is checked: writable, not in use by another run (a lock), no earlier checkpoint replaced."""
    opt = parse_args(argv)
    with support.claimed_output(opt.out, opt.resume, opt.overwrite):
        return train(opt)


def train(opt: argparse.Namespace) -> Path:
    """The run itself (pytorch/examples' main.py from the seed on); returns the checkpoint's path."""
    rank, world, device = support.setup_distributed(opt.device, opt.batch_size)
    random.seed(opt.seed)
    torch.manual_seed(opt.seed)  # the same on every rank: the same weights, fixed noise and global batches

    dataset = support.load_dataset(opt.dataset, opt.data_root, opt.image_size)
    dataloader = support.Batches(dataset, opt.batch_size, opt.seed, rank, world)
    nz, ngf, ndf, nc = opt.nz, opt.ngf, opt.ndf, dataset.shape[1]

    netG = Generator(nz, ngf, nc, opt.image_size).to(device)
    netG.apply(weights_init)
    netD = Discriminator(ndf, nc, opt.image_size).to(device)
    netD.apply(weights_init)

    criterion = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, nz, 1, 1, device=device)
    real_label = 1.
    fake_label = 0.

    # setup optimizer
    optimizerD = optim.Adam(netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))

    use_lbt = opt.lbt_weight != 0  # LBT
    if use_lbt:  # LBT
        netE = ConvVAE(nc, opt.image_size, latent_dim=opt.est_latent, base=opt.est_width).to(device)  # LBT
        optimizerE = optim.Adam(netE.parameters(), lr=opt.est_lr, betas=(0.5, 0.999))  # LBT
        lbt = LBTLoss(netE, k=opt.k, optimizer=optimizerE, teach_steps=opt.teach_steps,  # LBT
                      weight=opt.lbt_weight, backend=opt.backend)  # LBT

    # what a checkpoint holds; --resume restores it all and continues exactly
    parts = {'netG': netG, 'netD': netD, 'optG': optimizerG, 'optD': optimizerD}
    if use_lbt:  # LBT
        parts['lbt'] = lbt  # LBT: the estimator and its optimizer
    start = 0
    if opt.resume:
        start, fixed_noise = support.resume(opt.resume, opt, parts, device)
    generator_kwargs = dict(nz=nz, ngf=ngf, nc=nc, image_size=opt.image_size)  # load_generator rebuilds netG
    G = netG  # samples are drawn from the module itself, not from its DDP wrapper
    netG, netD = support.distribute(netG, netD, device)  # under torchrun: DistributedDataParallel
    writer = support.tensorboard_writer(opt.out / 'tb') if opt.tensorboard and rank == 0 else None
    checkpoint = opt.out / 'checkpoint.pt'

    for step in range(start, opt.steps):
        real = dataloader[step].to(device)
        batch_size = real.size(0)
        noise = torch.randn(opt.batch_size, nz, 1, 1, device=device)[dataloader.part]  # this rank's part
        fake = netG(noise)
        errD = errG = errLBT = torch.zeros(())  # LBT: the losses a step without them reports
        D_x = D_G_z1 = D_G_z2 = float('nan')  # LBT
        if not opt.lbt_only:  # LBT: pure LBT (--lbt-only) trains no discriminator
            ############################
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            ###########################
            # train with real
            netD.zero_grad()
            label = torch.full((batch_size,), real_label, dtype=real.dtype, device=device)
            output = netD(real)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.sigmoid().mean().item()

            # train with fake
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.sigmoid().mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()

        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        if not opt.lbt_only:  # LBT
            label.fill_(real_label)  # fake labels are real for generator cost
            output = netD(fake)
            errG = criterion(output, label)
            D_G_z2 = output.sigmoid().mean().item()
        if use_lbt and step >= opt.warmup:  # LBT
            errLBT = lbt(fake, real, gan_loss=None if opt.lbt_only else errG)  # LBT: teach, unroll, score real
        (errG + errLBT).backward()  # LBT, plain: errG.backward()
        optimizerG.step()

        done = step + 1
        losses = {'D': errD.item(), 'G': errG.item()}
        losses['LBT'] = errLBT.item()  # LBT
        support.stop_unless_finite(losses, done, opt)  # a diverged run stops before it writes anything
        msg = '[%d/%d] Loss_D: %.4f Loss_G: %.4f D(x): %.4f D(G(z)): %.4f / %.4f' % (
            done, opt.steps, losses['D'], losses['G'], D_x, D_G_z1, D_G_z2)
        msg += ' Loss_LBT: %.4f' % losses['LBT']  # LBT
        if rank != 0:
            continue
        print(msg)
        if writer:
            writer.add_scalars('loss', losses, step)
        if done % opt.checkpoint_every == 0 or done == opt.steps:
            # do checkpointing (first: a failing sample write then loses no training)
            support.save_checkpoint(checkpoint, done, opt, parts, fixed_noise, generator_kwargs, device)
        if done % opt.sample_every == 0 or done == opt.steps:
            vutils.save_image(support.generate(G, fixed_noise), opt.out / f'samples_{done:06d}.png',
                              normalize=True, value_range=(-1, 1))

    if writer:
        writer.close()
    netG = netD = None  # under torchrun: the DDP wrappers go before their process group
    support.leave_distributed()
    if rank == 0:
        print(f'samples in {opt.out}/samples_*.png, checkpoint {checkpoint}', file=sys.stderr)
    return checkpoint


if __name__ == '__main__':
    main()
