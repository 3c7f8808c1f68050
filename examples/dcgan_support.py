"""What examples/dcgan_lbt.py needs beside its training loop: datasets, batches that make --resume exact,
torchrun (DDP) setup, samples, checkpoints and resume.

Checkpoints hold tensors, plain numbers and the flags as strings, no names of code: they are written
atomically (:func:`lbt_plugin.files.save_atomic`) and read with ``torch.load(weights_only=True)``
(:func:`lbt_plugin.files.load_tensors`), onto the CPU whatever device wrote them, and validated.
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import gc
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from lbt_plugin.data import DATASETS as IDX_DATASETS
from lbt_plugin.data import load_idx_dataset, stack_channels
from lbt_plugin.files import load_tensors, save_atomic

#: The example's --dataset choices: the idx sets, CIFAR-10, an ImageFolder, and the stacked variants.
DATASETS = (*IDX_DATASETS, "cifar10", "folder", *(f"stacked-{name}" for name in IDX_DATASETS))

#: Flags that define the models and the data: a checkpoint resumes only with the same values.
ARCHITECTURE = ("dataset", "image_size", "nz", "ngf", "ndf", "lbt_only", "est_latent", "est_width")

#: Flags a resumed run may change: how long, where and on what it runs, not what it trains. Every other flag
#: must be the checkpoint's (a changed --lr would be ignored by the restored optimizers yet recorded as used).
RESUMABLE = ("steps", "out", "resume", "overwrite", "sample_every", "checkpoint_every", "device", "tensorboard",
             "data_root")

#: The lock file in --out that keeps a second run from writing there at the same time.
LOCK_NAME = ".dcgan_lbt.lock"


# ----------------------------------------------------------------------------- flags and devices
def check_device(name: str) -> torch.device:
    """The device ``--device`` names, where this machine has it; a ``ValueError`` naming the fix otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: this example runs on cpu or cuda (cuda:N), not {device.type}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def check_ranges(parser: argparse.ArgumentParser, opt: argparse.Namespace,
                 limits: Dict[str, Tuple[float, Optional[float]]]) -> None:
    """``parser.error`` (exit status 2) for a flag of ``limits`` that is not finite or outside ``[lo, hi]``
    (``hi`` None: no upper bound)."""
    for name, (lo, hi) in limits.items():
        value = getattr(opt, name)
        if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            parser.error(f"--{name.replace('_', '-')} must be {bound}, got {value}")


# ----------------------------------------------------------------------------- data
def load_dataset(name: str, root: Optional[Path], image_size: int) -> Tensor:
    """The whole training set as a float tensor ``[N, C, image_size, image_size]`` in [-1, 1]. The images must be
    square and at least 8 pixels wide; they are resized (bilinear) to ``image_size``."""
    stacked = name.startswith("stacked-")
    base = name.removeprefix("stacked-")
    if base not in (*IDX_DATASETS, "cifar10", "folder"):
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    _check_data_root(base, root)
    if base in IDX_DATASETS:
        images, _ = load_idx_dataset(base, root)
        x = images.float().div(255).unsqueeze(1)
    else:
        x = _load_torchvision(base, root)
    _check_images(x, name)
    if x.shape[-1] != image_size:
        x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x * 2 - 1
    if stacked:
        x = stack_channels(x)  # [N, 3, H, W]: three random images as the RGB channels
    return x


def _check_data_root(base: str, root: Optional[Path]) -> None:
    """``--data-root``, where given, must be an existing folder (``folder`` needs one)."""
    if root is None:
        if base == "folder":
            raise FileNotFoundError("--dataset folder needs --data-root, a folder with one subfolder of images per "
                                    "class (torchvision's ImageFolder)")
        return
    if not root.exists():
        raise FileNotFoundError(f"--data-root {root} does not exist: give the folder that holds the --dataset "
                                f"{base} files" + ("" if base == "folder" else ", or leave --data-root out to use "
                                                   "the default places (and download there)"))
    if not root.is_dir():
        raise NotADirectoryError(f"--data-root {root} is a file: give the folder that holds the --dataset {base} "
                                 "files")


def _load_torchvision(base: str, root: Optional[Path]) -> Tensor:
    """CIFAR-10 or an ImageFolder as a float tensor ``[N, C, H, W]`` in [0, 1], at the images' own size."""
    import torchvision.datasets as dsets
    import torchvision.transforms as T

    if base == "folder":
        ds = dsets.ImageFolder(str(root), transform=T.ToTensor())
    else:
        try:
            ds = dsets.CIFAR10(str(root or "data"), train=True, download=root is None, transform=T.ToTensor())
        except RuntimeError as exc:
            raise FileNotFoundError(f"--dataset cifar10: no CIFAR-10 under --data-root {root} ({exc}); give the "
                                    "folder that holds cifar-10-batches-py, or leave --data-root out to download "
                                    "it into ./data") from None
    if len(ds) == 0:
        raise ValueError(f"no images under --data-root {root}")
    images = [ds[i][0] for i in range(len(ds))]
    sizes = sorted({tuple(x.shape) for x in images})
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, s[1:])) + f" ({s[0]} channels)" for s in sizes[:3])
        raise ValueError(f"the images under --data-root {root} are of {len(sizes)} sizes ({shown}, ...): give "
                         "images of one size and one mode")
    return torch.stack(images)


def _check_images(x: Tensor, name: str) -> None:
    """The images ``[N, C, H, W]`` must be square and at least 8 pixels wide: nothing is cropped or blown up."""
    height, width = x.shape[-2:]
    if height != width:
        raise ValueError(f"--dataset {name}: the images are {height}x{width} (height x width); this example trains "
                         "on square images: crop them to squares first")
    if width < 8:
        raise ValueError(f"--dataset {name}: the images are {height}x{width}, smaller than the 8x8 this example "
                         "needs at least")


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


# ----------------------------------------------------------------------------- the output folder
@contextlib.contextmanager
def claimed_output(out: Path, resume: Optional[Path], overwrite: bool) -> Iterator[Path]:
    """``with claimed_output(opt.out, opt.resume, opt.overwrite) as checkpoint:`` checks, before anything trains,
    that no work can be lost to ``out``: that it can be created and written (a probe file is written and
    removed), that no other run writes into it (a lock file holding this process's id, removed when the block
    ends, also on an error; one left by a process that is gone is taken over) and that a checkpoint in it is
    not replaced, unless it is the one resumed (or a copy of it) or ``overwrite`` is set. Yields the checkpoint's
    path. Under torchrun only rank 0 writes, so the other ranks check nothing here."""
    checkpoint = out / "checkpoint.pt"
    if int(os.environ.get("RANK", "0")) != 0:
        yield checkpoint
        return
    check_writable(out)
    lock = out / LOCK_NAME
    _take_lock(lock)
    try:
        resumed = resume is not None and resume.is_file() and checkpoint.is_file() and (
            resume.resolve() == checkpoint.resolve() or filecmp.cmp(resume, checkpoint, shallow=False))
        if checkpoint.exists() and not resumed and not overwrite:
            raise FileExistsError(f"--out {out} holds the checkpoint of an earlier run ({checkpoint}), which this "
                                  f"run would replace: continue it with --resume {checkpoint} and a larger --steps, "
                                  "or pass --overwrite to replace it (or choose another --out)")
        yield checkpoint
    finally:
        if _lock_owner(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def check_writable(out: Path) -> None:
    """Create ``out`` and write and remove a probe file in it; an ``OSError`` naming ``--out`` and the fix."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe", suffix=".tmp")
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"--out {out} cannot hold this run's samples and checkpoint ({exc.strerror or exc}; "
                      "nothing was trained): choose another --out, or make it a writable folder") from None


def _take_lock(lock: Path) -> None:
    """Create ``lock`` (``O_CREAT | O_EXCL``) holding this process's id; take over one whose process is gone."""
    for attempt in (1, 2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:
                raise FileExistsError(f"--out {lock.parent} is locked by {lock}, which names no process (a run "
                                      f"starting there?): if no run writes into {lock.parent}, remove {lock}") from None
            if _alive(owner) or attempt == 2:
                raise FileExistsError(f"--out {lock.parent} is in use by another run (process {owner}, lock file "
                                      f"{lock}): wait for it to end or stop it, or choose another --out; if process "
                                      f"{owner} is not a dcgan_lbt.py run, remove {lock}") from None
            lock.unlink(missing_ok=True)  # left by a run that is gone (killed): take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return


def _lock_owner(lock: Path) -> Optional[int]:
    """The process id in ``lock``; None where it is missing, empty or not a process id."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def stop_unless_finite(losses: Dict[str, float], step: int, opt: argparse.Namespace) -> None:
    """A ``FloatingPointError`` naming the step, the loss and the fix where a loss is NaN or infinite: a run that
    has diverged stops before it writes anything, so its checkpoint keeps the last good step."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        which = ", ".join(f"Loss_{name} = {value}" for name, value in bad.items())
        raise FloatingPointError(f"step {step}: {which}: the training diverged; nothing of it was saved, and "
                                 f"{opt.out / 'checkpoint.pt'} (if written) holds the last good step. Start again "
                                 f"with a lower --lr (now {opt.lr}) and --overwrite, or from another checkpoint")


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
    bad = _first_nonfinite({name: state[name] for name in parts}, "")
    if bad:
        raise FloatingPointError(f"not writing the checkpoint of step {step}: {bad} holds NaN or inf (the training "
                                 f"diverged); {path} keeps the last good step. Start again with a lower --lr "
                                 f"(now {opt.lr}) and --overwrite")
    save_atomic(state, path)


def _first_nonfinite(obj: Any, where: str) -> Optional[str]:
    """Where in nested dicts, lists and tuples the first floating-point tensor with NaN or inf is; else None."""
    if isinstance(obj, Tensor):
        return where if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{where}[{key!r}]")
        if found:
            return found
    return None


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint of dcgan_lbt.py: tensors and plain numbers, read with ``weights_only=True`` and checked."""
    if not os.path.lexists(path):  # a folder, a FIFO or a device is named as such by load_tensors, unread
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
    change, one that this run cannot continue, and checking every field against this run's models and
    optimizers: nothing is loaded unless all of it fits. Returns the checkpoint's step and its fixed noise on
    ``device``."""
    state = load_checkpoint(path)
    _check_resume(state, opt, parts, path)
    try:
        _check_fields(state, opt, parts, device)
    except ValueError as exc:
        raise ValueError(f"--resume {path}: {exc}; it is damaged or not a checkpoint of this run. Nothing was "
                         "loaded or written") from None
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
    now = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()}
    differ = [f"--{k.replace('_', '-')} {saved[k]!r} (now {now[k]!r})"
              for k in now if k not in RESUMABLE and k in saved and saved[k] != now[k]]
    if differ:
        raise ValueError(f"--resume {path}: the checkpoint's run was trained with other flags: {', '.join(differ)}. "
                         "A resumed run continues that run, so only --steps, --out, --data-root, --device, "
                         "--sample-every, --checkpoint-every and --tensorboard may change: resume with the "
                         "checkpoint's values, or start a new run with the new ones (another --out, or --overwrite)")


def _check_fields(state: Dict[str, Any], opt: argparse.Namespace, parts: Dict[str, Any],
                  device: torch.device) -> None:
    """``ValueError`` naming the first field of ``state`` that does not fit this run: each part's tensors (names,
    shapes, dtypes, finite values) and optimizer settings and state, the random number generators' states and
    the fixed noise. Changes nothing."""
    for name, part in parts.items():
        if isinstance(part, torch.optim.Optimizer):
            _check_optimizer(name, part, state[name])
        elif isinstance(part, nn.Module):
            _check_tensors(name, part.state_dict(), state[name])
        elif hasattr(part, "estimator") and hasattr(part, "optimizer"):  # LBTLoss: the estimator and its optimizer
            # 'balance' (the balance's running averages) is absent from checkpoints written before it existed
            if not isinstance(state[name], dict) or not (
                    {"estimator", "optimizer"} <= set(state[name]) <= {"estimator", "optimizer", "balance"}):
                raise ValueError(f"{name} must hold 'estimator' and 'optimizer' (and 'balance'), nothing else")
            _check_tensors(f"{name}['estimator']", part.estimator.state_dict(), state[name]["estimator"])
            _check_optimizer(f"{name}['optimizer']", part.optimizer, state[name]["optimizer"])
            if "balance" in state[name]:
                _check_tensor(f"{name}['balance']", state[name]["balance"], (2,), torch.float32)
        else:
            raise TypeError(f"no check for a part {name} of type {type(part).__name__}")
    _check_tensor("rng", state["rng"], torch.get_rng_state().shape, torch.uint8)
    if "cuda_rng" in state:
        cuda_rng = state["cuda_rng"]
        if not isinstance(cuda_rng, Tensor) or cuda_rng.dtype != torch.uint8 or cuda_rng.dim() != 1:
            raise ValueError("cuda_rng must be a 1-D uint8 tensor (torch.cuda.get_rng_state())")
        if device.type == "cuda":
            _check_tensor("cuda_rng", cuda_rng, torch.cuda.get_rng_state(device).shape, torch.uint8)
    _check_tensor("fixed_noise", state["fixed_noise"], (64, opt.nz, 1, 1), torch.get_default_dtype())


def _check_tensor(where: str, value: Any, shape: Tuple[int, ...], dtype: torch.dtype) -> None:
    """``value`` is a tensor of ``shape`` and ``dtype``, finite where it is floating-point."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} must be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
        raise ValueError(f"{where} is a {value.dtype} tensor of shape {tuple(value.shape)}; this run needs "
                         f"{dtype} of shape {tuple(shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} holds NaN or inf")


def _check_tensors(where: str, expected: Dict[str, Tensor], saved: Any) -> None:
    """``saved`` is a state dict with exactly ``expected``'s names, each tensor of the same shape and dtype."""
    if not isinstance(saved, dict):
        raise ValueError(f"{where} must be a state dict, got {type(saved).__name__}")
    missing, extra = set(expected) - set(saved), set(saved) - set(expected)
    if missing or extra:
        raise ValueError(f"{where} does not fit this run's model: missing {sorted(map(repr, missing))}, "
                         f"unexpected {sorted(map(repr, extra))}")
    for key, ref in expected.items():
        _check_tensor(f"{where}[{key!r}]", saved[key], ref.shape, ref.dtype)


#: Optimizer settings that must be finite and >= 0, and those that must lie in [0, 1).
_NON_NEGATIVE = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha")
_BETAS = ("betas",)
#: Optimizer state that must be >= 0 (the second moments: their square root is taken).
_SQUARES = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_optimizer(where: str, optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """``saved`` is a state dict of ``optimizer``: its groups' settings finite, in their domain and the ones this
    run's flags give, and a state of the parameters' shapes and dtypes, finite."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise ValueError(f"{where} must be an optimizer state dict ('state' and 'param_groups')")
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        raise ValueError(f"{where} has {len(saved['param_groups'])} param groups, this run's optimizer {len(groups)}")
    params: Dict[Any, Tensor] = {}
    for i, (group, ref) in enumerate(zip(saved["param_groups"], groups)):
        if not isinstance(group, dict) or set(group) != set(ref):
            raise ValueError(f"{where} param group {i} does not have the settings of {type(optimizer).__name__}")
        for key in _NON_NEGATIVE:
            if key in group and not (_number(group[key]) and group[key] >= 0):
                raise ValueError(f"{where} param group {i}: {key}={group[key]!r}, must be a finite number >= 0")
        for key in _BETAS:
            value = group.get(key, (0, 0))
            if not (isinstance(value, (tuple, list)) and len(value) == 2
                    and all(_number(b) and 0 <= b < 1 for b in value)):
                raise ValueError(f"{where} param group {i}: {key}={value!r}, must be two numbers in [0, 1)")
        differ = [f"{k}={group[k]!r} (flags give {ref[k]!r})" for k in ref if k != "params" and group[k] != ref[k]]
        if differ:
            raise ValueError(f"{where} param group {i} has {', '.join(differ)}")
        ids = group["params"]
        if not isinstance(ids, list) or len(ids) != len(ref["params"]) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in ids):
            raise ValueError(f"{where} param group {i} must list {len(ref['params'])} parameter ids")
        params.update(zip(ids, ref["params"]))
    for pid, entry in saved["state"].items():
        if pid not in params or not isinstance(entry, dict):
            raise ValueError(f"{where} holds state for parameter {pid!r}, which none of its groups lists")
        for key, value in entry.items():
            at = f"{where} state[{pid!r}][{key!r}]"
            if key == "step":
                step = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
                if not (_number(step) and step >= 0):
                    raise ValueError(f"{at} must be a finite number >= 0, got {value!r}")
                continue
            _check_tensor(at, value, params[pid].shape, params[pid].dtype)
            if key in _SQUARES and bool((value < 0).any()):
                raise ValueError(f"{at} holds negative values (it is a mean of squares)")


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
