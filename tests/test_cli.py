"""``lbt-plugin check``: passes on its defaults, fails with a named cause on common mistakes."""
import pytest
from click.testing import CliRunner

from lbt_plugin import __version__
from lbt_plugin.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_and_version():
    assert _run("--help").exit_code == 0
    result = _run("--version")
    assert result.exit_code == 0 and __version__ in result.output
    assert "--estimator" in _run("check", "--help").output


def test_check_passes_on_defaults_with_a_table():
    result = _run("check")
    assert result.exit_code == 0, result.output
    for row in ("theta_K == torch.optim steps", "hypergradient vs finite diff.", "higher == func",
                "generator params reached", "teach_steps=0 changes nothing"):
        assert row in result.output
    # one row per check and setting: contract and side effects per optimizer, then per optimizer and K the
    # forward and FD rows per backend and one agreement row, then reach and finiteness
    rows = [line for line in result.output.splitlines()[2:] if line.strip() and not line.startswith("all ")]
    settings = [f"{opt}, K={k}" for opt in ("sgd", "adam") for k in (1, 5)]
    for setting in settings:
        for backend in ("func", "higher"):
            for check in ("theta_K == torch.optim steps", "hypergradient vs finite diff."):
                assert sum(check in r and f"{setting}, {backend}" in r and "PASS" in r for r in rows) == 1, \
                    (check, setting, backend)
        assert sum("higher == func" in r and setting in r and "PASS" in r for r in rows) == 1, setting
    assert "FAIL" not in result.output and all(" PASS" in r for r in rows)
    assert len(rows) == 2 * 2 + len(settings) * 5 + 2
    assert f"all {len(rows)} checks passed" in result.output


def test_check_on_user_models_by_module_path():
    result = _run("check", "--estimator", "models:estimator", "--generator", "models:generator",
                  "--data-shape", "2", "-k", "2", "--backend", "func")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, cause", [
    (["--generator", "models:detached_generator"], "do not require grad"),
    (["--estimator", "models:estimator_without_log_prob"], "no log_prob method"),
    (["--estimator", "models:estimator_wrong_shape"], "shape [B]"),
    (["--optimizer", "models:foreign_optimizer"], "not a parameter of"),
])
def test_check_fails_naming_the_cause(args, cause):
    base = {"--estimator": "models:estimator", "--generator": "models:generator"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["check", "--data-shape", "2"] + [x for kv in base.items() for x in kv]
    result = _run(*argv)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and cause in result.output


def test_check_usage_errors():
    assert _run("check", "--estimator", "models:estimator").exit_code == 2  # no --data-shape
    result = _run("check", "--estimator", "models:nope", "--data-shape", "2")
    assert result.exit_code == 2 and "has no attribute 'nope'" in result.output
    assert _run("check", "--data-shape", "0,3").exit_code == 2


def test_check_and_profile_on_broken_user_code_say_what_is_wrong(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def make_E(:\n    pass\n")
    result = _run("check", "--estimator", f"{broken}:make_E", "--data-shape", "2")
    assert result.exit_code == 2 and "SyntaxError" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) < 8
    result = _run("check", "--generator", "models:returns_int", "--data-shape", "2")
    assert result.exit_code == 1 and "the generator factory models:returns_int returned int" in result.output
    result = _run("profile", "--generator", "models:returns_int", "--data-shape", "2", "-k", "1")
    assert result.exit_code == 1 and "returned int, expected an nn.Module" in result.output
    result = _run("check", "--data-shape", "1,,28", "--estimator", "models:estimator")
    assert result.exit_code == 2 and "integers separated by commas" in result.output


def test_devices_shapes_and_factories_are_checked_before_anything_runs(tmp_path):
    """A device this machine lacks, a shape too large to allocate, an optimizer factory that returns no optimizer:
    each an error naming the cause, not a traceback or a silently different run."""
    import torch

    for command in (["check"], ["profile"], ["fid", "a", "b"]):
        result = _run(*command, "--device", "gpu")
        assert result.exit_code == 2 and "use cpu, cuda or cuda:N" in result.output, result.output
        if not torch.cuda.is_available():
            result = _run(*command, "--device", "cuda")
            assert result.exit_code == 2 and "no CUDA device here" in result.output, result.output
    for shape in ("100000,100000", "0,3", "-1"):
        result = _run("profile", "--data-shape", shape, "--estimator", "models:estimator")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "at most 16777216" in _run("check", "--data-shape", "100000,100000").output
    result = _run("profile", "--data-shape", "4096,4096", "--batch-size", "64", "--estimator", "models:estimator",
                  "--generator", "models:generator")
    assert result.exit_code == 2 and "lower --batch-size" in result.output, result.output
    for flag in (["-k", "0"], ["--repeats", "0"], ["--truncate", "0"], ["--batch-size", "0"]):
        result = _run("profile", *flag)
        assert result.exit_code == 2 and "is not in the range" in result.output, (flag, result.output)
    factories = tmp_path / "factories.py"
    factories.write_text("def returns_none(estimator):\n    return None\n\nnot_callable = 3\n")
    result = _run("profile", "--optimizer", f"{factories}:returns_none", "-k", "1", "--repeats", "1")
    assert result.exit_code == 1 and "returned NoneType; it must take the estimator and return a torch.optim" \
        in result.output, result.output
    result = _run("check", "--optimizer", f"{factories}:returns_none", "-k", "1", "--backend", "func")
    assert result.exit_code == 1 and "returned NoneType" in result.output, result.output
    result = _run("profile", "--optimizer", f"{factories}:not_callable", "-k", "1")
    assert result.exit_code == 2 and "not a factory" in result.output, result.output
