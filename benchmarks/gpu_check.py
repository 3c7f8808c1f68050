"""Everything that needs a GPU, in one go, into one folder: for a session with a few minutes on a CUDA machine.

    python3 benchmarks/gpu_check.py                      # CUDA; writes into $OUT, else ./gpu_check_out
    python3 benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check   # the same steps on CPU (a dry run)

Run from the repository root. Each step runs in its own process under its own time limit (the limits add up
to 7.5 minutes), its output goes to ``<step>.txt``, a step that fails or times out is recorded and the next one
runs, and ``summary.txt`` lists every step's status and duration: eight files in all, as many as a device run
brings back. The steps:

1. ``env``: torch, CUDA and the device; whether ``higher`` is importable (it is not in the H200 image: carry it,
   see below, or the higher rows and tests are skipped).
2. ``diagnose``: the cause of the CUDA mismatch (docs/check.md). theta_K of the unroll against
   ``torch.optim.Adam`` with ``foreach=True`` (CUDA's default), ``foreach=False`` and ``fused=True`` on the check's
   own models and data, K = 1 and 5, beside the rounding bound. Expected: ``foreach=False`` agrees to the last
   bits (the same division as the unroll), ``foreach=True`` differs by about 3e-9 at K = 5, below the bound.
3. ``check``: ``lbt-plugin check --device DEVICE`` (exit status 1 if a row fails).
4. ``tests``: the suite's CUDA tests (``-k cuda``: devices and precision, flat updates, host synchronisations,
   the rounding bound).
5. ``performance``: ``benchmarks/performance.py`` with short budgets, into ``performance.md`` (time per step
   against the floor, flat against per-parameter updates, aten operations per step, graph memory and CUDA peak).
6. ``profile``: ``lbt-plugin profile --device DEVICE`` for K = 1, 5, 15, default and ``--checkpoint``.

``higher`` on the H200 (pure Python; nothing can be fetched there): here, ``mkdir -p .gpu_deps && cp -r
"$(python -c 'import higher, os; print(os.path.dirname(higher.__file__))')" .gpu_deps/ && echo /.gpu_deps/ >>
.git/info/exclude``; then run with ``carry: [".gpu_deps"]`` and ``PYTHONPATH=.gpu_deps python3
benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent

DIAGNOSE = r"""
import torch
from lbt_plugin import check
from lbt_plugin._impl.toy import TinyCoupling, TinyGenerator

device = torch.device({device!r})
torch.manual_seed(0)  # the check's models and data, built as run_checks builds them
est, _ = TinyCoupling(2, 16).to(device), TinyGenerator(4, 2, 16).to(device)
x = torch.randn(8, 2, device=device)
adam = dict(lr=1e-3, betas=(0.5, 0.999))
variants = {{"default": {{}}, "foreach=True": {{"foreach": True}}, "foreach=False": {{"foreach": False}},
            "fused=True": {{"fused": True}}}}
print(f"torch {{torch.__version__}} on {{device}}; theta_K of the unroll (func) against torch.optim.Adam, float64")
print(f"{{'reference':16s}} {{'K':>2s}} {{'max |diff| / max(|theta|, 1)':>30s}} {{'rounding bound':>16s}}")
for k in (1, 5):
    bound = check.rounding_bound(est, check.OPTIMIZERS["adam"], x, k)
    for name, extra in variants.items():
        make = lambda m, extra=extra: torch.optim.Adam(m.parameters(), **adam, **extra)
        try:
            err = f"{{check.forward_exactness(est, make, x, k, 'func'):.3e}}"
        except Exception as exc:  # fused=True needs a recent torch on some devices
            err = f"{{type(exc).__name__}}: {{exc}}"[:60]
        print(f"{{name:16s}} {{k:2d}} {{err:>30s}} {{bound:16.3e}}")
"""


def steps(device: str, out: Path, higher: bool) -> List[Tuple[str, List[str], int]]:
    """(name, command, time limit in seconds) of each step."""
    py = sys.executable
    cli = [py, "-m", "lbt_plugin.cli"]
    backends = [] if higher else ["--backend", "func"]
    tests = ["tests/test_devices_precision.py", "tests/test_flat_updates.py", "tests/test_host_sync.py",
             "tests/test_rounding_bound.py"]
    select = "cuda" if higher else "cuda and not higher"
    return [
        ("env", [py, "-c", "import torch, platform; print(platform.python_version(), torch.__version__, "
                 "torch.version.cuda); print(torch.cuda.get_device_name() if torch.cuda.is_available() "
                 "else 'no CUDA device'); import importlib.util as u; print('higher:', bool(u.find_spec('higher')))"],
         30),
        ("diagnose", [py, "-c", DIAGNOSE.format(device=device)], 60),
        ("check", cli + ["check", "--device", device] + backends, 120),
        ("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select, *tests], 90),
        ("performance", [py, "benchmarks/performance.py", "--device", device, "--rounds", "5", "--seconds", "4",
                         "--memory-ks", "1", "5", "--no-extra", "--out", str(out / "performance.md")], 120),
        ("profile", ["bash", "-c", "; ".join(" ".join(cli + ["profile", "--device", device, "-k", "1", "-k", "5",
                                                               "-k", "15", "--repeats", "3", *extra])
                                               for extra in ([], ["--checkpoint"]))], 30),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    p.add_argument("--only", nargs="+", default=None, help="run these steps only")
    p.add_argument("--slower", type=float, default=1.0,
                   help="multiply every step's time limit (a dry run on a slow or busy CPU)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    higher = importlib.util.find_spec("higher") is not None
    summary = [f"device {args.device}; higher importable: {higher}"]
    for name, command, limit in steps(args.device, args.out, higher):
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        with open(args.out / f"{name}.txt", "w") as log:
            log.write("$ " + " ".join(command) + "\n\n")
            log.flush()
            try:
                rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=limit * args.slower).returncode
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit * args.slower:g} s"
        line = f"{name:12s} {status:24s} {time.perf_counter() - start:6.1f} s"
        summary.append(line)
        print(line, flush=True)
    (args.out / "summary.txt").write_text("\n".join(summary) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
