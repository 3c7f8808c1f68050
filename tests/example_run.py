"""examples/dcgan_lbt.py at test sizes: the flags of a tiny run and one call that runs it on a data folder."""
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import dcgan_lbt  # noqa: E402

#: A run of 8x8 images with networks of a few channels: seconds per step count, every code path of the example.
TINY = ["--image-size", "8", "--ngf", "4", "--ndf", "4", "--est-width", "4", "--est-latent", "4", "--nz", "8",
        "--batch-size", "16", "--k", "2", "--device", "cpu"]
#: The smallest run the example takes (the hardening tests run many, and only need it to start and stop).
SMALLEST = ["--image-size", "8", "--ngf", "4", "--ndf", "4", "--est-width", "4", "--est-latent", "2", "--nz", "4",
            "--batch-size", "8", "--k", "1", "--device", "cpu"]


def run_example(digits: Path, out: Path, *extra: str, flags: Sequence[str] = TINY) -> Any:
    """``dcgan_lbt.main`` on the digit folder ``digits`` writing to ``out``, at ``flags`` and then ``extra``."""
    return dcgan_lbt.main(["--data-root", str(digits), "--out", str(out), *flags, *extra])
