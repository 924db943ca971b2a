"""Smoke test of benchmarks/census.py on the first 2,000 rows: every model
row, the single-task and tree baselines land in the table and the JSON. It
checks that the script works, not how good the models are (only that they
learn something)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # noqa: E402


def test_census_benchmark_end_to_end(tmp_path_factory):
    census_smoke = smoke.census_smoke(tmp_path_factory)
    aucs = census_smoke["aucs"]
    assert sorted(aucs) == ["gbdt", "shared_bottom", "shared_bottom_single"]
    for model, by_task in aucs.items():
        assert sorted(by_task) == ["income", "marital"], model
        # Never married is easy to learn (age alone); the pipeline path learns it.
        assert by_task["marital"] > 0.8, model
        assert 0.5 < by_task["income"] <= 1.0, model

    table = [line for line in census_smoke["stdout"].splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | income AUC | marital AUC | published income |")
    names = [row.split("|")[1].strip() for row in table[2:]]
    assert names == ["shared_bottom", "shared_bottom_single", "gbdt"]
    assert "0.9560" in table[2]  # the published figure beside ours
    assert "full Census-Income training split" in census_smoke["stdout"]

    details = census_smoke["details"]
    assert details["transform_s"] > 0
    assert details["code"]["commit"]
