"""The README's two commands, pasted as they are, in a fresh virtual environment on a clean clone.

Opt-in and slow (a venv with torch, the whole suite, a short training run, a 30 MB dataset download
where Fashion-MNIST is not installed): ``python -m pytest -m readme tests/test_readme.py``.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    """The shell lines of the README's Quick start block, comments included, as a user would paste them."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_quick_start_block_has_the_two_commands():
    lines = readme_commands()
    assert len(lines) == 2
    assert "python -m pytest -q" in lines[0] and "python examples/dcgan_lbt.py" in lines[1]


@pytest.mark.readme
def test_readme_commands_on_a_clean_clone_in_a_fresh_venv(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout:
        pytest.skip("uncommitted changes: the clone would not test them")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    for line in readme_commands():
        out = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True, timeout=5400)
        assert out.returncode == 0, f"{line}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert list((clone / "out" / "dcgan_lbt").glob("samples_*.png"))
    assert (clone / "out" / "dcgan_lbt" / "checkpoint.pt").is_file()
