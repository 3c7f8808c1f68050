"""DCGAN against LBT-GAN on Stacked Fashion-MNIST (1000 modes), same budget, on CPU.

    python benchmarks/stacked_fashion.py                 # both runs in parallel, then mode counts
    python benchmarks/stacked_fashion.py --steps 200     # a quick look

1. Trains (or loads from OUT/classifier.pt) the package's digit classifier on
   Fashion-MNIST's training labels and prints its held-out accuracy.
2. Trains examples/dcgan_lbt.py twice with the same generator, discriminator,
   optimizers and number of generator updates: --lbt-weight 0 (DCGAN) and LBT-GAN.
   The two runs go in parallel, one process and one thread each.
3. Draws --samples generated images from each final generator, classifies each
   channel, and writes modes covered (of 1000) and KL(modes || uniform) into
   docs/results.md between its stacked-table markers.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import dcgan_lbt  # noqa: E402

from lbt_plugin.data import load_digits  # noqa: E402
from lbt_plugin.metrics import stacked_mode_stats, train_digit_classifier  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2500, help="generator updates for each method")
    p.add_argument("--lbt-weight", type=float, default=1e-3)
    p.add_argument("--teach-steps", type=int, default=3)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--samples", type=int, default=26000)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("out/stacked_fashion"))
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="'-' to only print")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    images, labels = load_digits("fashion-mnist", args.data_root)
    classifier, accuracy = train_digit_classifier(images, labels, epochs=2, cache=str(args.out / "classifier.pt"))
    print(f"classifier: held-out accuracy {100 * accuracy:.1f}%", flush=True)

    runs = {"DCGAN": ["--lbt-weight", "0"],
            "LBT-GAN": ["--lbt-weight", str(args.lbt_weight), "--teach-steps", str(args.teach_steps),
                        "--k", str(args.k)]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name, extra in runs.items():
        cmd = [sys.executable, str(ROOT / "examples" / "dcgan_lbt.py"), "--dataset", "stacked-fashion-mnist",
               "--steps", str(args.steps), "--device", "cpu", "--out", str(args.out / name.lower()),
               "--sample-every", str(max(args.steps // 5, 1)), "--checkpoint-every", str(max(args.steps // 5, 1)),
               *extra] + (["--data-root", str(args.data_root)] if args.data_root else [])
        print("running:", " ".join(cmd[1:]), flush=True)
        log = open(args.out / f"{name.lower()}.log", "w")
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed; see {log.name}")
        log.close()
    train_minutes = (time.time() - t0) / 60

    rows = []
    for name in runs:
        state = torch.load(args.out / name.lower() / "checkpoint.pt", map_location="cpu", weights_only=True)
        a = state["args"]
        G = dcgan_lbt.Generator(a["nz"], a["ngf"], 3, a["image_size"])
        G.load_state_dict(state["netG"])
        G.eval()
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            samples = torch.cat([G(torch.randn(1000, a["nz"], 1, 1, generator=g))
                                 for _ in range((args.samples + 999) // 1000)])[: args.samples]
        stats = stacked_mode_stats(samples, classifier)
        rows.append((name, stats))
        print(f"{name}: {stats.modes} modes of 1000, KL {stats.kl:.2f}", flush=True)
    minutes = (time.time() - t0) / 60

    table = ["| method | modes (of 1000) | KL(modes ‖ uniform) |", "|---|---|---|"]
    table += [f"| {name} | {s.modes} | {s.kl:.2f} |" for name, s in rows]
    cmd = (f"python benchmarks/stacked_fashion.py --steps {args.steps} --lbt-weight {args.lbt_weight} "
           f"--teach-steps {args.teach_steps} --k {args.k} --samples {args.samples}")
    body = ("\n".join(table) + f"\n\nOne run each, {args.steps} generator updates, batch 64, {args.samples} samples; "
            f"Fashion-MNIST classifier held-out accuracy {100 * accuracy:.1f}%. {minutes:.0f} min wall clock "
            f"({train_minutes:.0f} min to train both, in parallel, one CPU thread each). Command: `{cmd}`")
    print("\n" + body)
    if str(args.results) != "-":
        start, end = "<!-- stacked-table:start -->", "<!-- stacked-table:end -->"
        text = args.results.read_text() if args.results.exists() else "# Results\n"
        if start not in text:
            text += f"\n{start}\n{end}\n"
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
        args.results.write_text(text)
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
