"""The 2-D benchmark script, reduced to seconds: it runs every method and writes its table and plots."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_end_to_end(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nbefore\n<!-- 2d-table:start -->\nold\n<!-- 2d-table:end -->\nafter\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mode_collapse_2d.py"), "--steps", "3", "--seeds", "2",
         "--out", str(tmp_path / "img"), "--results", str(results), "--jobs", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert "before" in text and "after" in text and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ring") or line.startswith("| grid")]
    assert len(rows) == 8  # 4 methods x 2 datasets
    assert all(" ± " in row for row in rows)  # mean and spread over 2 seeds
    assert (tmp_path / "img" / "mode_collapse_ring.png").stat().st_size > 1000
    assert (tmp_path / "img" / "mode_collapse_grid.png").stat().st_size > 1000


def test_benchmark_script_named_table_and_subset(tmp_path):
    """An ablation writes its own markers and leaves the main table alone; its command line says how to rerun it."""
    results = tmp_path / "results.md"
    results.write_text("<!-- 2d-table:start -->\nmain\n<!-- 2d-table:end -->\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mode_collapse_2d.py"), "--steps", "2", "--seeds", "1",
         "--methods", "lbt", "--datasets", "grid", "--est-optimizer", "adam", "--table", "ablation",
         "--out", str(tmp_path / "img"), "--results", str(results), "--jobs", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert "main" in text and "<!-- ablation:start -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| ring") or line.startswith("| grid")]
    assert rows == [row for row in rows if row.startswith("| grid (25) | LBT |")] and len(rows) == 1
    assert "--est-optimizer adam --methods lbt --datasets grid --table ablation" in text


def test_benchmark_script_rejects_bad_arguments():
    script = str(ROOT / "examples" / "mode_collapse_2d.py")
    out = subprocess.run([sys.executable, script, "--seeds", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "must be >= 1" in out.stderr
    out = subprocess.run([sys.executable, script, "--estimator", "vae"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "--est-optimizer adam" in out.stderr
