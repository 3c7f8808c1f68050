"""benchmarks/_common.py: the helpers every benchmark relies on for its tables."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402


def test_mean_and_standard_error():
    assert _common.mean_se([1.0, 2.0, 3.0]) == "2.00 ± 0.58"  # s = 1, s / sqrt(3) = 0.577
    assert _common.mean_se([4.0, 4.0], 1) == "4.0 ± 0.0"
    assert _common.mean_se([7.0]) == "7.00"  # one run: no spread to report


def test_tables_go_between_their_own_markers(tmp_path):
    md = tmp_path / "results.md"
    _common.write_between_markers(md, "first", "a")
    assert md.read_text() == "# Results\n\n<!-- a:start -->\nfirst\n<!-- a:end -->\n"
    _common.write_between_markers(md, "second", "b")
    _common.write_between_markers(md, "first, again", "a")
    assert md.read_text() == ("# Results\n\n<!-- a:start -->\nfirst, again\n<!-- a:end -->\n"
                              "\n<!-- b:start -->\nsecond\n<!-- b:end -->\n")
    _common.publish("not written", Path("-"), "a")
    assert "not written" not in md.read_text()


def test_require_positive_names_each_bad_flag():
    import argparse

    p = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        _common.require_positive(p, argparse.Namespace(seeds=0, eval_every=-1, jobs=2), ("seeds", "eval_every", "jobs"))
    _common.require_positive(p, argparse.Namespace(seeds=1), ("seeds",))


def test_the_inline_pool_runs_in_this_process():
    with _common.pool(1) as workers:
        assert workers.submit(lambda x, y=1: x + y, 2, y=3).result() == 5
