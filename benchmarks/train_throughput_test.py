"""Smoke test of benchmarks/train_throughput.py on the census smoke run's
Transform output (reused, not run again): both feeds train the same
examples and land in the table. Not a speed test."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoke import CENSUS_SMOKE_ROWS, census_smoke, run_script  # noqa: E402


def test_throughput_benchmark_end_to_end(tmp_path_factory, tmp_path):
    census = census_smoke(tmp_path_factory)
    out = tmp_path / "throughput.json"
    stdout = run_script("train_throughput.py", "--rows", str(CENSUS_SMOKE_ROWS), "--work",
                        census["work"], "--config", census["config"], "--repeats", "1", "--out", str(out))
    # The pipeline did not run again: no component progress lines.
    assert "Transform ..." not in stdout
    result = json.loads(out.read_text())
    feeds = {row["feed"]: row for row in result["rows"]}
    assert sorted(feeds) == ["in_memory", "input_fn"]
    train_rows = feeds["input_fn"]["examples"]
    assert feeds["in_memory"]["examples"] == train_rows
    assert 0.6 * CENSUS_SMOKE_ROWS < train_rows < 0.8 * CENSUS_SMOKE_ROWS  # the 70% split
    assert all(row["examples_per_s"] > 0 for row in feeds.values())
    assert result["input_fn_over_in_memory"] > 0
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| feed | examples |")
    assert "input_fn / in_memory:" in stdout
