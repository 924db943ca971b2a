"""Smoke test of benchmarks/simulator.py on 3,000 simulated impressions: a
model with and one without the position tower, and the truth rows, land in
the table and the JSON. It checks that the script works, not how good the
models are."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoke import run_script  # noqa: E402


def test_simulator_benchmark_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    stdout = run_script("simulator.py", "--impressions", "3000", "--days", "3", "--models",
                        "shared_bottom,shared_bottom+position", "--work", str(tmp_path),
                        "--out", str(out))
    aucs = json.loads(out.read_text())
    assert list(aucs) == ["shared_bottom", "shared_bottom+position", "truth",
                          "truth (no position)"]
    assert "click" in aucs["truth"] and "click" in aucs["truth (no position)"]
    for model in ("shared_bottom", "shared_bottom+position"):
        assert "click" in aucs[model]
        assert set(aucs[model]) <= set(aucs["truth"])
        assert all(0.0 <= auc <= 1.0 for auc in aucs[model].values())
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | click AUC |")
    assert [row.split("|")[1].strip() for row in table[2:]] == list(aucs)
    assert "3,000 simulated impressions" in stdout
