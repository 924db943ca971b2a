"""Smoke test of benchmarks/simulator.py on 3,000 simulated impressions: a
model, a variant with the position tower, each task alone and the in-memory
reference land in the table and the JSON beside the truth rows. It checks
that the script works, not how good the models are."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoke import run_script  # noqa: E402


def test_simulator_benchmark_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    stdout = run_script("simulator.py", "--impressions", "3000", "--days", "3", "--models",
                        # alone first: the Transform its rows share with the
                        # others must still carry every task's label
                        "shared_bottom+alone,shared_bottom,shared_bottom+position+epochs=1,"
                        "reference", "--work", str(tmp_path), "--out", str(out))
    aucs = json.loads(out.read_text())
    alone = [row for row in aucs if row.startswith("shared_bottom+alone (")]
    assert list(aucs) == (alone + ["shared_bottom", "shared_bottom+position+epochs=1",
                                   "reference", "truth", "truth (no position)",
                                   "truth, users fitted", "truth, users fitted (no position)"])
    tasks = set(aucs["truth"])
    assert {"click", "purchase"} <= tasks and set(aucs["truth (no position)"]) == tasks
    for row in ("truth, users fitted", "truth, users fitted (no position)"):
        assert set(aucs[row]) == tasks and all(0.5 < auc < 1.0 for auc in aucs[row].values())
    assert sorted(alone) == sorted(f"shared_bottom+alone ({task})" for task in aucs["shared_bottom"])
    for row in alone:
        assert len(aucs[row]) == 1  # one task per model
    for model in ("shared_bottom", "shared_bottom+position+epochs=1", "reference"):
        assert set(aucs[model]) == set(aucs["shared_bottom"]) <= tasks
        assert all(0.0 <= auc <= 1.0 for auc in aucs[model].values())
    details = json.loads((tmp_path / "result.details.json").read_text())
    assert details["configs"]["shared_bottom+position+epochs=1"]["training"]["epochs"] == 1
    assert details["configs"]["shared_bottom+position+epochs=1"]["model"]["position_tasks"] == ["click"]
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | click AUC |")
    assert [row.split("|")[1].strip() for row in table[2:]] == list(aucs)
    click = aucs["shared_bottom"]["click"]
    gap = click - aucs["truth (no position)"]["click"]
    against_reference = click - aucs["reference"]["click"]
    assert f"{click:.4f} ({gap:+.3f}) [{against_reference:+.3f}]" in table[2 + len(alone)]
    assert "3,000 simulated impressions" in stdout


def test_variants_set_model_training_and_feature_fields_and_split_tasks(tmp_path):
    import importlib.util

    import pytest

    # By path: the name `simulator` may already be the repository's package.
    spec = importlib.util.spec_from_file_location(
        "simulator_benchmark", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "simulator.py"))
    simulator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(simulator)
    from mtrank.base import config as config_lib
    from mtrank.pipeline import config_inference

    config = config_inference.infer_config(simulator.ensure_logs(str(tmp_path), 3000, 3, 0))
    [(name, variant)] = simulator.model_configs(
        config, "mmoe+independent+user_item_dot=true+batch_size=1024"
                "+user_id.embedding_dim=48").items()
    assert name == "mmoe+independent+user_item_dot=true+batch_size=1024+user_id.embedding_dim=48"
    assert variant.model.architecture == "mmoe" and variant.model.user_item_dot
    assert variant.training.batch_size == 1024
    assert [f.embedding_dim for f in variant.features if f.name == config_lib.USER_ID] == [48]
    assert any(t.depends_on for t in config.tasks)
    assert not any(t.depends_on for t in variant.tasks)
    alone = simulator.model_configs(config, "ple+alone")
    binary = [t.name for t in config.tasks if t.type == "binary"]
    assert list(alone) == [f"ple+alone ({task})" for task in binary]
    assert [[t.name for t in c.tasks] for c in alone.values()] == [[task] for task in binary]
    for bad in ("ple+no_such_field=1", "ple+no_feature.embedding_dim=8", "nope", "ple+shiny"):
        with pytest.raises(ValueError, match="--models"):
            simulator.model_configs(config, bad)
