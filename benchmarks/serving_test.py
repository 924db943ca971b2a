"""Smoke test of benchmarks/serving.py: the whole script on the tiny serving
test model, with few requests. It checks that every mode runs and lands in
the table, the goals and the JSON, not how fast anything is.

"""
import json
import os
import subprocess
import sys

import pytest

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
    modes = ("in-process", "echo", "server", "server+batch", "rest echo", "rest server",
             "rest server+batch")
    cells = {tuple(cell.strip() for cell in line.split("|")[1:4]) for line in table[2:]}
    assert cells == {(mode, c, n) for mode in modes for c in ("1", "2") for n in ("1", "4")}
    for line in ("goal 1 (gRPC): 2 clients, 1 candidate: ", "goal 1 (REST): 2 clients, 1 candidate: ",
                 "goal 2 (gRPC): 1 client, 1 candidate: ", "goal 2 (REST): 1 client, 1 candidate: ",
                 "goal 3 (gRPC): 2 clients, 4 candidates: ",
                 "goal 3 (REST): 2 clients, 4 candidates: "):
        goal = next(g for g in result.stdout.splitlines() if g.startswith(line))
        assert goal.endswith(": PASS") or goal.endswith(": FAIL"), goal
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 28
    for row in report["rows"]:
        assert row["qps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    goals = report["goals"]
    for api, echo_mode in (("gRPC", "echo"), ("REST", "rest echo")):
        throughput = goals[f"throughput_vs_echo_{api}"]
        assert throughput["ratio"] > 0 and throughput["pass"] == (throughput["ratio"] >= 0.5)
        p50 = goals[f"p50_{api}"]
        row = {(r["mode"], r["clients"], r["candidates"]): r for r in report["rows"]}
        assert p50["bound_ms"] == pytest.approx(row[(echo_mode, 1, 1)]["p50_ms"]
                                                + row[("in-process", 1, 1)]["p50_ms"] + 0.3)
        assert goals[f"candidates_vs_in_process_{api}"]["ratio"] > 0
    # The servers ran with `mtrank serve`'s defaults, several worker processes.
    assert "worker processes" in report["servers"]["server"]
