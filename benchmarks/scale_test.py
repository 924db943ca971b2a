"""Smoke test of benchmarks/scale.py on 2,000 simulated impressions: every
component of the run gets a row with its wall time and a peak memory
sample, and the total covers them. It checks that the script works, not
how fast the pipeline is."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoke import run_script  # noqa: E402

COMPONENTS = ("LogExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher")


def test_scale_benchmark_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    stdout = run_script("scale.py", "--impressions", "2000", "--days", "3", "--work",
                        str(tmp_path), "--out", str(out))
    rows = json.loads(out.read_text())["components"]
    assert set(COMPONENTS) < set(rows)
    total = rows.pop("total (mtrank run)")
    for component in COMPONENTS:
        assert 0 < rows[component]["wall_s"] < total["wall_s"]
        assert 0.1 < rows[component]["peak_rss_gb"] <= total["peak_rss_gb"]
    assert sum(r["wall_s"] for r in rows.values()) <= total["wall_s"]
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| component | wall s | peak RSS GB |"
    assert "2,000 simulated impressions" in stdout
