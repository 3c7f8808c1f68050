"""benchmarks/gpu_check.py, the one-shot script for a session with a GPU: its steps fit the time it is given."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_the_steps_fit_in_eight_minutes_and_eight_files(tmp_path):
    steps = gpu_check.steps("cuda", tmp_path, higher=False)
    assert [name for name, _, _ in steps] == ["env", "diagnose", "check", "tests", "performance", "profile"]
    assert sum(limit for _, _, limit in steps) <= 8 * 60
    check = next(command for name, command, _ in steps if name == "check")
    assert check[-2:] == ["--backend", "func"]  # without higher, the higher rows are left out, not failed
    assert len(steps) + 2 <= 8  # one log per step, performance.md and summary.txt: what a device run brings back


def test_a_dry_run_on_cpu_writes_the_logs_and_the_summary(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--out",
                          str(tmp_path), "--only", "env", "diagnose", "--slower", "4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "env" in summary and "diagnose" in summary and "timed out" not in summary and "exit" not in summary
    diagnose = (tmp_path / "diagnose.txt").read_text()
    assert "foreach=False" in diagnose and "rounding bound" in diagnose
