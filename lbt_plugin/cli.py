"""The ``lbt-plugin`` command line: ``check`` (:mod:`lbt_plugin.check`), ``profile`` (:mod:`lbt_plugin.profile`)
and ``fid`` (:func:`lbt_plugin.metrics.fid`), each a thin layer that parses options and reports errors."""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, Optional, Tuple

import click

from . import __version__
from ._impl.imports import load_object as _load_object


def load_object(spec: str) -> Any:
    """Resolve ``"pkg.module:name"`` or ``"path/to/file.py:name"``; a bad spec is a usage error."""
    try:
        return _load_object(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: The most numbers one data sample or latent vector may hold (64 MiB in float32): a typo such as
#: ``100000,100000`` is a usage error, not an allocation that takes the machine's memory.
MAX_SAMPLE_NUMEL = 2**24


def _shape(text: Optional[str], flag: str = "--data-shape") -> Optional[Tuple[int, ...]]:
    """``"1,28,28"`` (or ``1x28x28``) as a tuple of positive sizes of at most :data:`MAX_SAMPLE_NUMEL` numbers."""
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"a shape is integers separated by commas, like 1,28,28; got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise click.BadParameter(f"a shape needs positive sizes, got {text!r}")
    numel = math.prod(shape)
    if numel > MAX_SAMPLE_NUMEL:
        raise click.BadParameter(f"{flag} {text} is {numel} numbers per sample; at most {MAX_SAMPLE_NUMEL} "
                                 "(e.g. 3,1024,1024) are allowed: check the shape")
    return shape


def _check_batch(batch_size: int, shape: Tuple[int, ...]) -> None:
    """A usage error where one batch of ``shape`` would hold more than 2**28 numbers (1 GiB in float32)."""
    numel = batch_size * math.prod(shape)
    if numel > 2**28:
        raise click.UsageError(f"--batch-size {batch_size} of samples of shape {','.join(map(str, shape))} is "
                               f"{numel} numbers, more than 2**28: lower --batch-size or check --data-shape")


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device``: cpu, cuda or cuda:N, where this machine has it; a usage error naming the fix otherwise."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{value!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{value}: no CUDA device here (torch.cuda.is_available() is False); use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise click.BadParameter(f"{value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return value


def _optimizer_factory(spec: str) -> Callable[[Any], Any]:
    """The optimizer factory named by ``spec``, checked: callable, and what it returns must be a
    ``torch.optim.Optimizer`` (a ``TypeError`` naming the factory otherwise, never a silent default)."""
    factory = load_object(spec)
    if not callable(factory):
        raise click.BadParameter(f"{spec} is a {type(factory).__name__}, not a factory (a function taking the "
                                 "estimator and returning its torch.optim optimizer)")

    def build(estimator: Any) -> Any:
        import torch

        optimizer = factory(estimator)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory {spec} returned {type(optimizer).__name__}; it must take the "
                            "estimator and return a torch.optim optimizer over its parameters")
        return optimizer

    return build


def _module_factory(spec: str, role: str) -> Callable[[], Any]:
    """The factory named by ``spec``, checked: it must be callable and return an ``nn.Module``."""
    factory = load_object(spec)
    if not callable(factory):
        raise click.BadParameter(f"{spec} is a {type(factory).__name__}, not a factory (a function returning the "
                                 f"{role} module)")

    def build() -> Any:
        from torch import nn

        module = factory()
        if not isinstance(module, nn.Module):
            raise TypeError(f"the {role} factory {spec} returned {type(module).__name__}, expected an nn.Module")
        return module

    return build


def _models(estimator_spec: Optional[str], generator_spec: Optional[str], data_shape: Optional[str],
            hidden: int) -> Tuple[Callable, Callable, Tuple[int, ...]]:
    """The user's factories and data shape, or the built-in tiny models (of width ``hidden``) on 2-D data."""
    from ._impl.toy import TinyCoupling, TinyGenerator

    estimator_factory = _module_factory(estimator_spec, "estimator") if estimator_spec else (
        lambda: TinyCoupling(2, hidden))
    generator_factory = _module_factory(generator_spec, "generator") if generator_spec else (
        lambda: TinyGenerator(4, 2, hidden))
    shape = _shape(data_shape)
    if shape is None:
        if generator_spec or estimator_spec:
            raise click.UsageError("--data-shape is required with your own models (e.g. --data-shape 1,28,28)")
        shape = (2,)
    return estimator_factory, generator_factory, shape


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lbt-plugin")
def main() -> None:
    """Learning by Teaching for GAN loops: tools around lbt_plugin.LBTLoss."""


@main.command()
@click.option("--estimator", "estimator_spec", metavar="MODULE:FACTORY",
              help="Zero-argument factory returning the estimator (an nn.Module with log_prob). "
                   "Default: a tiny coupling flow with BatchNorm.")
@click.option("--generator", "generator_spec", metavar="MODULE:FACTORY",
              help="Zero-argument factory returning the generator module. Default: a tiny MLP.")
@click.option("--optimizer", "optimizer_spec", metavar="MODULE:FACTORY",
              help="Factory taking the estimator and returning its torch.optim optimizer. "
                   "Default: both SGD(momentum) and Adam.")
@click.option("--data-shape", default=None, metavar="D1,D2,...",
              help="Shape of one data sample, e.g. 2 or 1,28,28. Required with --generator.")
@click.option("--latent-shape", default=None, metavar="D1,D2,...",
              help="Shape of one latent vector, e.g. 100,1,1; default: the generator's latent_dim/latent_shape.")
@click.option("-k", "--k", "ks", multiple=True, type=click.IntRange(min=1), default=(1, 5), show_default=True,
              help="Unrolled steps to check (repeatable).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["func", "higher"]),
              default=("func", "higher"), show_default=True,
              help="Backends to check (repeatable); higher is skipped, with a warning, where it cannot patch the "
                   "estimator.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=2))
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", default=0, show_default=True, type=int)
def check(estimator_spec, generator_spec, optimizer_spec, data_shape, latent_shape, ks, backends,
          batch_size, device, seed) -> None:
    """Validate the unrolled LBT gradients on built-in tiny models or on yours.

    Checks that one LBT step runs and that teach_steps=0 changes nothing; then,
    in float64 on copies: theta_K against real torch.optim steps, the
    hypergradient against finite differences, higher against torch.func; last,
    at the models' own dtype, that every generator parameter gets a finite
    gradient. Exits with status 1 when a check fails.
    """
    from .check import format_table, run_checks

    estimator_factory, generator_factory, shape = _models(estimator_spec, generator_spec, data_shape, hidden=16)
    _check_batch(batch_size, shape)
    optimizers = None
    if optimizer_spec:
        optimizers = {optimizer_spec.rpartition(":")[2]: _optimizer_factory(optimizer_spec)}
    rows = run_checks(estimator_factory, generator_factory, shape, _shape(latent_shape, "--latent-shape"),
                      ks=tuple(sorted(set(ks))),
                      optimizers=optimizers, backends=tuple(dict.fromkeys(backends)), batch_size=batch_size,
                      seed=seed, device=device)
    click.echo(format_table(rows))
    failed = [r for r in rows if r.failed]
    if failed:
        click.echo(f"\n{len(failed)} check(s) failed: " + "; ".join(
            f"{r.check} ({r.setting}) {r.detail}".strip() for r in failed), err=True)
        sys.exit(1)
    click.echo(f"\nall {len(rows)} checks passed")


@main.command()
@click.option("--estimator", "estimator_spec", metavar="MODULE:FACTORY",
              help="Zero-argument factory returning the estimator. Default: a tiny coupling flow.")
@click.option("--generator", "generator_spec", metavar="MODULE:FACTORY",
              help="Zero-argument factory returning the generator. Default: a tiny MLP.")
@click.option("--optimizer", "optimizer_spec", metavar="MODULE:FACTORY",
              help="Factory taking the estimator and returning its optimizer. Default: LBTLoss's Adam.")
@click.option("--data-shape", default=None, metavar="D1,D2,...", help="Shape of one data sample.")
@click.option("--latent-shape", default=None, metavar="D1,D2,...", help="Shape of one latent vector.")
@click.option("-k", "--k", "ks", multiple=True, type=click.IntRange(min=1), default=(1, 5, 15), show_default=True,
              help="Unrolled steps to profile (repeatable).")
@click.option("--backend", type=click.Choice(["func", "higher"]), default="func", show_default=True)
@click.option("--truncate", type=click.IntRange(min=1), default=None,
              help="Back-propagate through the last T steps only (capped at K).")
@click.option("--checkpoint", is_flag=True, help="Recompute unrolled steps in backward (backend func).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", default=0, show_default=True, type=int)
def profile(estimator_spec, generator_spec, optimizer_spec, data_shape, latent_shape, ks, backend, truncate,
            checkpoint, batch_size, repeats, device, seed) -> None:
    """Time and memory of one LBT generator step for each K, on your models.

    Prints milliseconds per step (LBTLoss call and backward, median of --repeats),
    the memory autograd keeps for the backward pass, and on CUDA the peak allocated
    memory, so you can pick K (and --truncate/--checkpoint) before a long run.
    """
    import torch

    from ._impl.latent import latent_shape as latent_shape_of
    from .profile import format_profile, profile_steps

    if checkpoint and backend != "func":
        raise click.UsageError("--checkpoint needs --backend func")
    estimator_factory, generator_factory, shape = _models(estimator_spec, generator_spec, data_shape, hidden=64)
    _check_batch(batch_size, shape)
    try:
        generator = generator_factory()
    except Exception as exc:
        raise click.ClickException(f"building the generator failed: {type(exc).__name__}: {exc}") from None
    lat = _shape(latent_shape, "--latent-shape") or latent_shape_of(generator)[0]
    if lat is None:
        raise click.UsageError("give --latent-shape, or a latent_dim / latent_shape attribute on the generator")
    _check_batch(batch_size, tuple(lat))
    torch.manual_seed(seed)
    dev = torch.device(device)
    generator = generator.to(dev)
    data = torch.randn(batch_size, *shape, device=dev)
    z = torch.randn(batch_size, *lat, device=dev)
    optimizer_factory = _optimizer_factory(optimizer_spec) if optimizer_spec else None
    try:
        rows = profile_steps(estimator_factory, generator, data, z, tuple(dict.fromkeys(ks)), backend=backend,
                             truncate=truncate, checkpoint=checkpoint, repeats=repeats,
                             optimizer_factory=optimizer_factory,
                             progress=lambda s: click.echo(f"profiling {s}", err=True))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    click.echo(f"{name}; batch {batch_size}; torch {torch.__version__}")
    click.echo(format_profile(rows))


@main.command()
@click.argument("source_a")
@click.argument("source_b")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="FID Inception weights file (pt_inception-2015-12-05-6726825d.pth); default: torch hub cache.")
@click.option("--num-samples", default=10000, show_default=True, type=click.IntRange(min=2),
              help="Images drawn from a generator checkpoint or taken from a dataset.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where a dataset source's idx files are (default: Debian's path, ./data).")
@click.option("--dims", type=click.Choice(["64", "192", "768", "2048"]), default="2048", show_default=True)
@click.option("--batch-size", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda, cuda:1, ...")
@click.option("--generator", "generator_spec", metavar="MODULE:FUNCTION", default=None,
              help="For a checkpoint source: your function that rebuilds the generator from the loaded checkpoint "
                   "(state -> nn.Module), e.g. my_gan.py:load_generator.")
@click.option("--latent-shape", default=None, metavar="D1,D2,...",
              help="Shape of one latent vector of that generator, e.g. 100,1,1; default: its latent_dim / "
                   "latent_shape attribute, else its first layer's input.")
def fid(source_a, source_b, weights, num_samples, data_root, dims, batch_size, device, generator_spec,
        latent_shape) -> None:
    """FID between two sources, computed by pytorch-fid.

    A source is a folder of images, a .npz of statistics, a dataset name
    (fashion-mnist or mnist: its first --num-samples training images), or a
    generator checkpoint with --generator naming the function that rebuilds the
    generator from it (it draws --num-samples images from z ~ N(0, I) of
    --latent-shape). Checkpoints are read with torch.load(weights_only=True);
    nothing in them is imported or called.
    """
    from .metrics import fid as fid_value

    loader = load_object(generator_spec) if generator_spec else None
    if loader is not None and not callable(loader):
        raise click.BadParameter(f"{generator_spec} is a {type(loader).__name__}, not a function (state -> generator)")
    try:
        value = fid_value(source_a, source_b, weights=weights, dims=int(dims), batch_size=batch_size, device=device,
                          num_samples=num_samples, data_root=data_root, generator_loader=loader,
                          latent_shape=_shape(latent_shape, "--latent-shape"))
    except (RuntimeError, FileNotFoundError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"FID: {value}")


if __name__ == "__main__":  # pragma: no cover
    main()
