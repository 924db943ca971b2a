"""Smoke test of benchmarks/serving.py: the whole script on the tiny serving
test model, with few requests. It checks that every mode runs and lands in
the table, the goals and the JSON, not how fast anything is.

"""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving.py")
ROOT = os.path.dirname(os.path.dirname(SCRIPT))

from mtrank_testing import serving_util as testing_util  # noqa: E402


def test_benchmark_end_to_end(tmp_path):
    base = tmp_path / "mtrank"
    testing_util.write_test_model(str(base), 3)
    out = tmp_path / "result.json"

    result = subprocess.run(
        [sys.executable, SCRIPT, "--model-dir", str(base / "3"), "--work", str(tmp_path / "work"),
         "--clients", "1,2", "--candidates", "1,4", "--requests", "10", "--rounds", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| mode | clients | candidates | p50 ms")
    cells = {tuple(cell.strip() for cell in line.split("|")[1:4]) for line in table[2:]}
    assert cells == {(mode, c, n) for mode in ("in-process", "server", "server+batch")
                     for c in ("1", "2") for n in ("1", "4")}
    assert "p50 overhead of the server over in-process, 1 client, 1 candidate" in result.stdout
    assert "QPS with batching / without, 2 clients, 4 candidates" in result.stdout
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 12
    for row in report["rows"]:
        assert row["qps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert set(report["goals"]["batching_gain"]) == {"1", "4"}
