"""Smoke test of benchmarks/ingest.py: the whole script at a tiny size.

It checks that the script works (both pipelines run, read every line, and
land in the table and the JSON), not how fast anything is.
"""
import importlib.util
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ingest.py")


def test_benchmark_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--events", "5000", "--work", str(tmp_path / "work"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| events |") and "ours/bare" in table[0]
    rows = [line.split("|")[1:-1] for line in table[2:]]
    assert "code: " in result.stdout
    assert sorted(r[2].strip() for r in rows) == ["bare", "ours"]
    for row in rows:
        assert float(row[4].replace(",", "")) > 0  # events/s

    report = json.loads(out.read_text())
    assert report["code"]["commit"]
    events = report["logs"][0]["events"]
    assert 4000 < events < 6000
    assert {r["pipeline"] for r in report["runs"]} == {"bare", "ours"}
    for run in report["runs"]:
        assert run["lines_read"] == events
        assert run["events_per_s"] > 0 and run["max_rss_mb"] > 0
    ours = next(r for r in report["rows"] if r["pipeline"] == "ours")
    assert ours["ours_over_bare"] > 0
    assert ours["events"] == events

    # Later runs reuse the simulated logs.
    spec = importlib.util.spec_from_file_location("ingest_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    logs = bench.ensure_logs(str(tmp_path / "work"), 5000, bench.DEFAULT_DAYS, 0)
    assert logs["reused"] and logs["events"] == events
