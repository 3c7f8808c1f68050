"""benchmarks/_common.py: the helpers every benchmark relies on for its tables."""
import math
import os
import sys
from pathlib import Path

import pytest
import torch

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


class _Clocked(_common.ResumableRun):
    """A run whose every step takes ``cost`` seconds of a fake clock (``_common.time.perf_counter``)."""

    def __init__(self, clock, cost):
        self.G = self.D = torch.nn.Linear(1, 1)
        self.g_opt = self.d_opt = torch.optim.SGD(self.G.parameters(), lr=0.1)
        self.clock, self.cost, self.history = clock, cost, []

    def step(self):
        self.clock[0] += self.cost
        self.step_count += 1

    def extra_state(self):
        return {"history": self.history}

    def check_state(self, state):
        pass

    def load_extra_state(self, state):
        self.history = list(state["history"])


@pytest.mark.parametrize("cost", [1.0, 3.0])
def test_an_equal_time_budget_stops_runs_of_any_cost_at_the_same_clock(monkeypatch, tmp_path, cost):
    clock = [0.0]
    monkeypatch.setattr(_common.time, "perf_counter", lambda: clock[0])
    run = _Clocked(clock, cost)
    seconds = _common.train_resumable(run, tmp_path / "run.pt", 10 ** 9, 1, lambda s: {"s": s, "step": run.step_count},
                                      "t", progress=False, budget=60.0, evals=4)
    # each evaluation at the first step that reaches 15, 30, 45, 60 s: no later than one step past it
    assert [h["s"] for h in run.history] == [math.ceil(t / cost) * cost for t in (15, 30, 45, 60)]
    assert seconds == run.history[-1]["s"] and run.step_count == math.ceil(60 / cost)
    resumed = _Clocked(clock, cost)  # a finished run is not trained further
    assert _common.train_resumable(resumed, tmp_path / "run.pt", 10 ** 9, 1, lambda s: {}, "t", progress=False,
                                   budget=60.0, evals=4) == seconds and resumed.step_count == run.step_count
    with pytest.raises(ValueError, match="budget must be > 0"):
        _common.train_resumable(run, None, 1, 1, lambda s: {}, "t", progress=False, budget=0.0)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (no such process, or a zombie waiting for whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_the_benchmark_is_killed():
    """``kill`` of a benchmark (SIGKILL: no clean-up at all) ends its workers too, in the middle of a task, instead of
    leaving them to train on and write checkpoints."""
    import signal
    import subprocess
    import time

    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); import _common\n"
              "ex = _common.pool(2); fs = [ex.submit(time.sleep, 600) for _ in range(2)]\n"
              "while len(ex._processes) < 2: time.sleep(0.05)\n"
              "time.sleep(1); print(*ex._processes, flush=True); time.sleep(600)\n")
    workers: list = []
    parent = subprocess.Popen([sys.executable, "-c", script, str(ROOT / "benchmarks")], stdout=subprocess.PIPE,
                              text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and not any(_gone(p) for p in workers)  # both busy in their 600 s task
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(p) for p in workers), "a worker outlived the benchmark's process"
    finally:
        parent.kill()
        for pid in workers:  # where the test failed: no sleeping orphans left behind
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
