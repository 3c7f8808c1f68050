"""DCGAN with Learning by Teaching: the PyTorch DCGAN loop, plus the lines marked ``# LBT``.

    python examples/dcgan_lbt.py                      # short LBT-GAN run on Fashion-MNIST (offline)
    python examples/dcgan_lbt.py --lbt-weight 0       # plain DCGAN
    python examples/dcgan_lbt.py --lbt-only           # pure LBT (no discriminator)
    python examples/dcgan_lbt.py --resume out/dcgan_lbt/checkpoint.pt --steps 2000
    torchrun --nproc_per_node 2 examples/dcgan_lbt.py --steps 100   # DDP; --batch-size is the global batch

Data: Fashion-MNIST from ``--data-root``, Debian's path (/usr/share/datasets/fashion-mnist, package
``dataset-fashion-mnist``) or ./data; where they are nowhere, downloaded once into ./data from
torchvision's mirrors or Debian's archive (SHA256 pinned; lbt_plugin.data);
also ``mnist``, ``cifar10``, ``folder`` (an ImageFolder) and ``stacked-`` variants
(three digits as RGB channels: 1000 modes).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torchvision.utils as vutils
from tqdm import tqdm

from lbt_plugin import LBTLoss  # LBT
from lbt_plugin.data import DATASETS, load_idx_dataset, stack_channels
from lbt_plugin.estimators import ConvVAE  # LBT
from lbt_plugin.files import load_tensors, save_atomic

def load_dataset(name: str, root: Optional[Path], image_size: int) -> torch.Tensor:
    """The whole training set as a float tensor ``[N, C, H, W]`` in [-1, 1]."""
    import torch.nn.functional as F

    stacked = name.startswith("stacked-")
    base = name.removeprefix("stacked-")
    if base in DATASETS:
        images, _ = load_idx_dataset(base, root)
        x = images.float().div(255).unsqueeze(1)
    elif base in ("cifar10", "folder"):
        import torchvision.datasets as dsets
        import torchvision.transforms as T

        if base == "folder":
            if root is None or not root.is_dir():
                raise FileNotFoundError(f"--data-root must be a folder of images for --dataset folder, got {root}")
            ds = dsets.ImageFolder(str(root), transform=T.Compose([T.Resize(image_size), T.CenterCrop(image_size),
                                                                    T.ToTensor()]))
        else:
            ds = dsets.CIFAR10(str(root or "data"), train=True, download=root is None, transform=T.ToTensor())
        if len(ds) == 0:
            raise ValueError(f"no images under {root}")
        x = torch.stack([ds[i][0] for i in range(len(ds))])
    else:
        raise ValueError(f"unknown dataset {name!r}")
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x * 2 - 1
    if stacked:
        x = stack_channels(x)  # [N, 3, H, W]: three random images as the RGB channels
    return x


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """The indices of batch ``step``: a fresh permutation each epoch, a pure function of (seed, step)."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch: (i + 1) * batch]


# ----------------------------------------------------------------------------- models
def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class Generator(nn.Module):
    def __init__(self, nz: int, ngf: int, nc: int, image_size: int):
        super().__init__()
        s = image_size // 4
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, s, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf: int, nc: int, image_size: int):
        super().__init__()
        s = image_size // 4
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, s, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: Path) -> Dict:
    """A checkpoint of this script: tensors and plain numbers, read with ``weights_only=True`` and checked."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    state = load_tensors(path, "checkpoint", "it is truncated or not a checkpoint of dcgan_lbt.py. Earlier "
                         "checkpoints are untouched.")
    missing = {"step", "netG", "netD", "optG", "optD", "rng", "args", "generator_kwargs", "fixed_noise"} - set(
        state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}: not a checkpoint of dcgan_lbt.py")
    if isinstance(state["step"], bool) or not isinstance(state["step"], int) or state["step"] < 0:
        raise ValueError(f"checkpoint {path}: step must be an integer >= 0, got {state['step']!r}")
    if not isinstance(state["args"], dict):
        raise ValueError(f"checkpoint {path}: args must be a dict of the flags it was written with")
    if not isinstance(state["fixed_noise"], torch.Tensor) or state["fixed_noise"].dim() != 4:
        raise ValueError(f"checkpoint {path}: fixed_noise must be a tensor [64, nz, 1, 1]")
    _generator_kwargs(state)
    return state


#: Flags that define the models and the data: a checkpoint resumes only with the same values.
ARCHITECTURE = ("dataset", "image_size", "nz", "ngf", "ndf", "lbt_only", "est_latent", "est_width")


def _generator_kwargs(state: Dict) -> Dict[str, int]:
    """The generator's hyper-parameters in a checkpoint, validated: four integers in sane ranges."""
    kwargs = state.get("generator_kwargs")
    ranges = {"nz": (1, 4096), "ngf": (1, 4096), "nc": (1, 4), "image_size": (8, 1024)}
    if not isinstance(kwargs, dict) or set(kwargs) != set(ranges):
        raise ValueError(f"generator_kwargs must hold exactly {sorted(ranges)}, got {kwargs!r}")
    for key, (lo, hi) in ranges.items():
        value = kwargs[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"generator_kwargs[{key!r}] must be an integer in [{lo}, {hi}], got {value!r}")
    if kwargs["image_size"] % 4:
        raise ValueError(f"generator_kwargs['image_size'] must be a multiple of 4, got {kwargs['image_size']}")
    return kwargs


def load_generator(state: Dict) -> Generator:
    """This script's generator from one of its checkpoints (``lbt-plugin fid CKPT ... --generator
    examples/dcgan_lbt.py:load_generator``). The checkpoint gives numbers and tensors; the code is this file's."""
    if not isinstance(state, dict) or not isinstance(state.get("netG"), dict):
        raise ValueError("not a checkpoint of dcgan_lbt.py: it has no netG")
    with torch.device("meta"):  # shapes only: the checkpoint's numbers cannot make us allocate anything
        G = Generator(**_generator_kwargs(state))
    try:
        G.load_state_dict(state["netG"], assign=True)  # the checkpoint's own tensors, shapes checked
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the checkpoint's netG does not fit its generator_kwargs: {exc}") from None
    return G


def check_resume(state: Dict, args: argparse.Namespace, use_lbt: bool, path: Path) -> None:
    """Refuse a checkpoint that this run cannot continue, naming the flags to change."""
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {getattr(args, k)!r})"
              for k in ARCHITECTURE if k in saved and saved[k] != getattr(args, k)]
    if differ:
        raise ValueError(f"--resume {path}: the checkpoint was written with other models or data: "
                         f"{', '.join(differ)}. Resume with the same flags.")
    if use_lbt and "lbt" not in state:
        raise ValueError(f"--resume {path}: the checkpoint has no LBT state (it was written with --lbt-weight 0); "
                         "resume it with --lbt-weight 0, or start a new run with LBT")
    if not use_lbt and "lbt" in state:
        raise ValueError(f"--resume {path}: the checkpoint holds an LBT run; resume it with its --lbt-weight "
                         f"({saved.get('lbt_weight')!r})")
    if args.steps <= state["step"]:
        raise ValueError(f"--resume {path}: the checkpoint is at step {state['step']} and --steps {args.steps} is "
                         f"the total number of steps; pass --steps larger than {state['step']} to train on")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist",
                   choices=["fashion-mnist", "mnist", "cifar10", "folder", "stacked-fashion-mnist", "stacked-mnist"])
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--steps", type=int, default=300, help="generator updates (total, also when resuming)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--lbt-weight", type=float, default=1.0, help="weight of the LBT term; 0 gives plain DCGAN")
    p.add_argument("--lbt-only", action="store_true", help="pure LBT: no discriminator")
    p.add_argument("--k", type=int, default=5, help="unrolled estimator steps")
    p.add_argument("--teach-steps", type=int, default=1, help="ordinary estimator steps per generator step")
    p.add_argument("--backend", choices=["func", "higher"], default="func")
    p.add_argument("--est-lr", type=float, default=3e-4)
    p.add_argument("--est-latent", type=int, default=64, help="ConvVAE latent size")
    p.add_argument("--est-width", type=int, default=32, help="ConvVAE base channels")
    p.add_argument("--warmup", type=int, default=0, help="pure-GAN steps before the LBT term starts")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/dcgan_lbt"))
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", type=Path, default=None)
    p.add_argument("--tensorboard", action="store_true", help="log losses to OUT/tb (needs tensorboard)")
    args = p.parse_args(argv)
    if args.image_size % 4 or args.image_size < 8:
        p.error(f"--image-size must be a multiple of 4 (>= 8) for this architecture, got {args.image_size}")
    if args.lbt_only and args.lbt_weight == 0:
        p.error("--lbt-only with --lbt-weight 0 trains nothing")
    for name in ("steps", "batch_size", "k", "sample_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def setup_distributed(args: argparse.Namespace) -> Tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(args.device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(args.device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) must be divisible by {world} ranks")
    return dist.get_rank(), world, device


def main(argv=None) -> Path:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args)
    random.seed(args.seed)
    torch.manual_seed(args.seed)  # the same on every rank: same init, same global noise, sliced per rank

    data = load_dataset(args.dataset, args.data_root, args.image_size)
    if data.shape[-1] != args.image_size or len(data) < args.batch_size:
        raise ValueError(f"need at least {args.batch_size} images of size {args.image_size}, got {tuple(data.shape)}")
    nc = data.shape[1]

    netG = Generator(args.nz, args.ngf, nc, args.image_size).to(device)
    netG.apply(weights_init)
    netD = Discriminator(args.ndf, nc, args.image_size).to(device)
    netD.apply(weights_init)
    criterion = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, args.nz, 1, 1, device=device)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))

    use_lbt = args.lbt_weight != 0  # LBT
    if use_lbt:  # LBT
        netE = ConvVAE(nc, args.image_size, latent_dim=args.est_latent, base=args.est_width).to(device)  # LBT
        optimizerE = torch.optim.Adam(netE.parameters(), lr=args.est_lr, betas=(0.5, 0.999))  # LBT
        lbt = LBTLoss(netE, k=args.k, optimizer=optimizerE, teach_steps=args.teach_steps,  # LBT
                      weight=args.lbt_weight, backend=args.backend)  # LBT

    G, D = netG, netD  # the modules whose weights are saved
    if world > 1:  # DistributedDataParallel: gradients averaged over ranks; LBTLoss syncs its estimator itself
        from torch.nn.parallel import DistributedDataParallel as DDP

        netG = DDP(netG, device_ids=[device.index] if device.type == "cuda" else None)
        netD = DDP(netD, device_ids=[device.index] if device.type == "cuda" else None)
    part = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)

    start = 0
    if args.resume:
        state = load_checkpoint(args.resume)
        check_resume(state, args, use_lbt, args.resume)
        G.load_state_dict(state["netG"]), D.load_state_dict(state["netD"])
        optimizerG.load_state_dict(state["optG"]), optimizerD.load_state_dict(state["optD"])
        if use_lbt:
            lbt.load_state_dict(state["lbt"])  # LBT
        fixed_noise = state["fixed_noise"].to(device)
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = int(state["step"])

    writer = None
    if args.tensorboard and rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SystemExit("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        writer = SummaryWriter(str(args.out / "tb"))
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.pt"
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="training", disable=rank != 0)
    for step in bar:
        real = data[batch_indices(len(data), args.batch_size, step, args.seed)[part]].to(device)
        b = real.size(0)
        noise = torch.randn(args.batch_size, args.nz, 1, 1, device=device)[part]
        fake = netG(noise)
        errD = torch.zeros(())
        if not args.lbt_only:
            # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            errD = criterion(netD(real), torch.ones(b, device=device)) + \
                criterion(netD(fake.detach()), torch.zeros(b, device=device))
            errD.backward()
            optimizerD.step()
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        errG = criterion(netD(fake), torch.ones(b, device=device)) if not args.lbt_only else torch.zeros(())
        errLBT = torch.zeros(())  # LBT
        if use_lbt and step >= args.warmup:  # LBT
            errLBT = lbt(fake, real)  # LBT: teach E on G's samples, unroll K steps, score real data
        (errG + errLBT).backward()  # LBT: errG.backward() in the plain loop
        optimizerG.step()

        bar.set_postfix(D=f"{errD.item():.3f}", G=f"{errG.item():.3f}", LBT=f"{errLBT.item():.1f}")
        if writer:
            writer.add_scalars("loss", {"D": errD.item(), "G": errG.item(), "LBT": errLBT.item()}, step)
        done = step + 1
        if rank != 0:
            continue
        if done % args.sample_every == 0 or done == args.steps:
            with torch.no_grad():
                G.eval()
                samples = G(fixed_noise)
                G.train()
            vutils.save_image(samples, args.out / f"samples_{done:06d}.png", normalize=True, value_range=(-1, 1))
        if done % args.checkpoint_every == 0 or done == args.steps:
            state = {"step": done, "netG": G.state_dict(), "netD": D.state_dict(),
                     "optG": optimizerG.state_dict(), "optD": optimizerD.state_dict(),
                     "fixed_noise": fixed_noise.cpu(), "rng": torch.get_rng_state(),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     # numbers only: load_generator() rebuilds this file's Generator from them
                     "generator_kwargs": {"nz": args.nz, "ngf": args.ngf, "nc": nc, "image_size": args.image_size}}
            if use_lbt:
                state["lbt"] = lbt.state_dict()  # LBT
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_atomic(state, ckpt)
    if writer:
        writer.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the last checkpoint
        netG = netD = None  # free the DDP wrappers before their process group (else gloo can abort at exit)
        gc.collect()
        dist.destroy_process_group()
    if rank == 0:
        print(f"samples in {args.out}/samples_*.png, checkpoint {ckpt}", file=sys.stderr)
    return ckpt


if __name__ == "__main__":
    main()
