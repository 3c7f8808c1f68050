"""What examples/dcgan_lbt.py needs beside its training loop: datasets, batches that make --resume exact,
torchrun (DDP) setup, samples, checkpoints and resume.

Checkpoints hold tensors, plain numbers and the flags as strings, no names of code: they are written
atomically (:func:`lbt_plugin.files.save_atomic`) and read with ``torch.load(weights_only=True)``
(:func:`lbt_plugin.files.load_tensors`), onto the CPU whatever device wrote them, and validated.
"""
from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from lbt_plugin.data import DATASETS as IDX_DATASETS
from lbt_plugin.data import load_idx_dataset, stack_channels
from lbt_plugin.files import load_tensors, save_atomic

#: The example's --dataset choices: the idx sets, CIFAR-10, an ImageFolder, and the stacked variants.
DATASETS = (*IDX_DATASETS, "cifar10", "folder", *(f"stacked-{name}" for name in IDX_DATASETS))

#: Flags that define the models and the data: a checkpoint resumes only with the same values.
ARCHITECTURE = ("dataset", "image_size", "nz", "ngf", "ndf", "lbt_only", "est_latent", "est_width")


# ----------------------------------------------------------------------------- data
def load_dataset(name: str, root: Optional[Path], image_size: int) -> Tensor:
    """The whole training set as a float tensor ``[N, C, image_size, image_size]`` in [-1, 1]."""
    stacked = name.startswith("stacked-")
    base = name.removeprefix("stacked-")
    if base in IDX_DATASETS:
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
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if x.shape[-1] != image_size:
        x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x * 2 - 1
    if stacked:
        x = stack_channels(x)  # [N, 3, H, W]: three random images as the RGB channels
    return x


def batch_indices(n: int, batch: int, step: int, seed: int) -> Tensor:
    """The indices of batch ``step``: a fresh permutation each epoch, a pure function of (seed, step)."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch: (i + 1) * batch]


class Batches:
    """``batches[step]``: this rank's part of global batch ``step`` (shuffled every epoch, as a DataLoader with
    ``shuffle=True, drop_last=True``), a pure function of (seed, step): a resumed run sees the batches it would
    have seen. ``part`` is this rank's slice of a global batch."""

    def __init__(self, data: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if len(data) < batch_size:
            raise ValueError(f"need at least --batch-size {batch_size} images, got {len(data)}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.part = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def __getitem__(self, step: int) -> Tensor:
        return self.data[batch_indices(len(self.data), self.batch_size, step, self.seed)[self.part]]


# ----------------------------------------------------------------------------- torchrun (DDP)
def setup_distributed(device: str, batch_size: int) -> Tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; returns (rank, world size, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} (the global batch) must be divisible by {world} ranks")
    return dist.get_rank(), world, dev


def distribute(netG: nn.Module, netD: nn.Module, device: torch.device) -> Tuple[nn.Module, nn.Module]:
    """Under torchrun, the two networks in DistributedDataParallel (gradients averaged over ranks; LBTLoss keeps
    its estimator in step itself); else the networks themselves."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return netG, netD
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(netG, device_ids=ids), DDP(netD, device_ids=ids)


def leave_distributed() -> None:
    """Under torchrun: wait for every rank (rank 0 has written the last checkpoint), free what is left of the DDP
    wrappers (the caller drops its references first: gloo can abort at exit otherwise) and leave the group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- samples and logs
@torch.no_grad()
def generate(netG: nn.Module, noise: Tensor) -> Tensor:
    """``netG(noise)`` in eval mode (BatchNorm's running statistics), without a graph; ``netG`` is left training."""
    netG.eval()
    try:
        return netG(noise)
    finally:
        netG.train()


def tensorboard_writer(folder: Path) -> Any:
    """A ``SummaryWriter`` logging to ``folder``; a clear error where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SystemExit("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(folder))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, step: int, opt: argparse.Namespace, parts: Dict[str, Any], fixed_noise: Tensor,
                    generator_kwargs: Dict[str, int], device: torch.device) -> None:
    """Write the run at ``step``: every part's ``state_dict()`` under its name, the fixed noise, the random number
    generators, the flags (paths as strings) and the generator's integer hyper-parameters; atomically."""
    state = {"step": step, **{name: part.state_dict() for name, part in parts.items()},
             "fixed_noise": fixed_noise.cpu(), "rng": torch.get_rng_state(),
             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()},
             "generator_kwargs": dict(generator_kwargs)}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_atomic(state, path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint of dcgan_lbt.py: tensors and plain numbers, read with ``weights_only=True`` and checked."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    state = load_tensors(path, "checkpoint", "it is truncated or not a checkpoint of dcgan_lbt.py. Earlier "
                         "checkpoints are untouched.")
    missing = {"step", "netG", "netD", "optG", "optD", "rng", "args", "generator_kwargs", "fixed_noise"} - set(
        state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}: not a checkpoint of dcgan_lbt.py")
    if not _int_in(state["step"], 0, None):
        raise ValueError(f"checkpoint {path}: step must be an integer >= 0, got {state['step']!r}")
    if not isinstance(state["args"], dict):
        raise ValueError(f"checkpoint {path}: args must be a dict of the flags it was written with")
    if not isinstance(state["fixed_noise"], Tensor) or state["fixed_noise"].dim() != 4:
        raise ValueError(f"checkpoint {path}: fixed_noise must be a tensor [64, nz, 1, 1]")
    _generator_kwargs(state)
    return state


def resume(path: Path, opt: argparse.Namespace, parts: Dict[str, Any], device: torch.device) -> Tuple[int, Tensor]:
    """Restore ``parts`` (anything with ``load_state_dict``, by the names they were saved under), the random
    number generators and the fixed noise from the checkpoint at ``path``, after refusing, with the flag to
    change, one that this run cannot continue. Returns the checkpoint's step and its fixed noise on ``device``."""
    state = load_checkpoint(path)
    _check_resume(state, opt, parts, path)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return int(state["step"]), state["fixed_noise"].to(device)


def _check_resume(state: Dict[str, Any], opt: argparse.Namespace, parts: Dict[str, Any], path: Path) -> None:
    saved = state["args"]
    differ = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {getattr(opt, k)!r})"
              for k in ARCHITECTURE if k in saved and hasattr(opt, k) and saved[k] != getattr(opt, k)]
    if differ:
        raise ValueError(f"--resume {path}: the checkpoint was written with other models or data: "
                         f"{', '.join(differ)}. Resume with the same flags.")
    if "lbt" in parts and "lbt" not in state:
        raise ValueError(f"--resume {path}: the checkpoint has no LBT state (it was written with --lbt-weight 0); "
                         "resume it with --lbt-weight 0, or start a new run with LBT")
    if "lbt" not in parts and "lbt" in state:
        raise ValueError(f"--resume {path}: the checkpoint holds an LBT run; resume it with its --lbt-weight "
                         f"({saved.get('lbt_weight')!r})")
    if opt.steps <= state["step"]:
        raise ValueError(f"--resume {path}: the checkpoint is at step {state['step']} and --steps {opt.steps} is "
                         f"the total number of steps; pass --steps larger than {state['step']} to train on")


def _int_in(value: Any, lo: int, hi: Optional[int]) -> bool:
    """``value`` is an int (not a bool) in ``[lo, hi]`` (``hi`` None: no upper bound)."""
    return not isinstance(value, bool) and isinstance(value, int) and lo <= value and (hi is None or value <= hi)


def _generator_kwargs(state: Dict[str, Any]) -> Dict[str, int]:
    """The generator's hyper-parameters in a checkpoint, validated: four integers in sane ranges."""
    kwargs = state.get("generator_kwargs")
    ranges = {"nz": (1, 4096), "ngf": (1, 4096), "nc": (1, 4), "image_size": (8, 1024)}
    if not isinstance(kwargs, dict) or set(kwargs) != set(ranges):
        raise ValueError(f"generator_kwargs must hold exactly {sorted(ranges)}, got {kwargs!r}")
    for key, (lo, hi) in ranges.items():
        if not _int_in(kwargs[key], lo, hi):
            raise ValueError(f"generator_kwargs[{key!r}] must be an integer in [{lo}, {hi}], got {kwargs[key]!r}")
    if kwargs["image_size"] % 4:
        raise ValueError(f"generator_kwargs['image_size'] must be a multiple of 4, got {kwargs['image_size']}")
    return kwargs


def generator_from_checkpoint(state: Any, generator_class: Type[nn.Module]) -> nn.Module:
    """``generator_class(**generator_kwargs)`` with the checkpoint's ``netG`` weights. The module is built on the
    meta device first (shapes only: the checkpoint's numbers cannot make it allocate anything), then takes the
    checkpoint's own tensors, whose shapes must fit."""
    if not isinstance(state, dict) or not isinstance(state.get("netG"), dict):
        raise ValueError("not a checkpoint of dcgan_lbt.py: it has no netG")
    with torch.device("meta"):
        G = generator_class(**_generator_kwargs(state))
    try:
        G.load_state_dict(state["netG"], assign=True)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the checkpoint's netG does not fit its generator_kwargs: {exc}") from None
    return G
