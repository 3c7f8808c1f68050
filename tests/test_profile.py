"""``lbt-plugin profile``: time and memory per K on tiny models."""
from click.testing import CliRunner

from lbt_plugin.cli import main


def test_profile_cli_prints_a_row_per_k_and_graph_memory_grows_with_k():
    result = CliRunner().invoke(main, ["profile", "-k", "1", "-k", "4", "--repeats", "1", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "4"]
    graph = [float(r[-1]) for r in rows]  # graph MiB (no peak column on CPU)
    assert graph[1] > 2 * graph[0]


def test_profile_cli_options():
    runner = CliRunner()
    result = runner.invoke(main, ["profile", "-k", "3", "--repeats", "1", "--backend", "func", "--checkpoint",
                                  "--truncate", "2"])
    assert result.exit_code == 0, result.output
    assert "func, truncate=2, checkpoint" in result.output
    assert runner.invoke(main, ["profile", "--checkpoint", "--backend", "higher"]).exit_code == 2
