"""Smoke tests of benchmarks/scale.py and benchmarks/evaluator.py on 2,000
simulated impressions: every component of the run gets a row with its wall
time and a peak memory sample, and the total covers them; the Evaluator
benchmark then times its variants on that run. They check that the scripts
work, not how fast the pipeline is."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoke import run_script  # noqa: E402

COMPONENTS = ("LogExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher")


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("scale")
    out = work / "result.json"
    stdout = run_script("scale.py", "--impressions", "2000", "--days", "3", "--work",
                        str(work), "--out", str(out))
    return work, stdout, json.loads(out.read_text())


def test_scale_benchmark_end_to_end(scale_run):
    _, stdout, result = scale_run
    rows = dict(result["components"])
    assert set(COMPONENTS) < set(rows)
    total = rows.pop("total (mtrank run)")
    for component in COMPONENTS:
        assert 0 < rows[component]["wall_s"] < total["wall_s"]
        assert 0.1 < rows[component]["peak_rss_gb"] <= total["peak_rss_gb"]
    assert sum(r["wall_s"] for r in rows.values()) <= total["wall_s"]
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| component | wall s | peak RSS GB |"
    assert "2,000 simulated impressions" in stdout


def test_evaluator_benchmark_times_its_variants_on_the_run(scale_run, tmp_path):
    work, _, _ = scale_run
    out = tmp_path / "evaluator.json"
    stdout = run_script("evaluator.py", "--run-dir", str(work / "run"), "--rounds", "1",
                        "--variants", "configured,own_metrics", "--out", str(out))
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| variant | median s | of configured |"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["configured", "own_metrics"]
    assert table[2].split("|")[3].strip() == "1.00x"
    seconds = json.loads(out.read_text())["seconds"]
    assert all(len(s) == 1 and s[0] > 0 for s in seconds.values())
