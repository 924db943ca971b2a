"""The report over a real TFMA evaluation (predictions, sliced, gated),
rendered in headless Chromium. Baselines (a second model) need served models
in TFMA: tests/e2e_test.py reports on a real second run."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma

from mtrank.components import eval_config
from mtrank.reporting import report
from mtrank_testing import browser as chromium
from mtrank_testing import trainer_util as tu

TASKS = [{"name": "click", "feedback": "click", "eval": {"min_auc": 0.6, "max_auc_drop": None}},
         {"name": "dwell", "feedback": "dwell", "type": "regression", "eval": {"max_mse": 1.0}}]


def _frame() -> pd.DataFrame:
    """Category a: click predicted well. b: no signal. tiny: 10 examples,
    predicted wrong."""
    rng = np.random.default_rng(1)
    category = np.array(["a"] * 200 + ["b"] * 190 + ["tiny"] * 10)
    label = (rng.random(len(category)) < 0.4).astype(float)
    noise = 0.2 * rng.random(len(category))
    candidate = np.select([category == "a", category == "b"], [0.8, 0.0], -1.0)
    dwell = rng.random(len(category)) * 3
    return pd.DataFrame({
        "category": category, "click_label": label, "dwell_label": dwell,
        "click": np.clip(0.5 + candidate * (label - 0.5) + noise, 0, 1),
        "dwell": dwell + 0.1})


def _write_examples(frame: pd.DataFrame, path: str) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for row in frame.to_dict("records"):
            feature = {"category": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[row.pop("category").encode()]))}
            feature.update({k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                            for k, v in row.items()})
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A TFMA output as the SlicedEvaluator writes it, with a statistics
    artifact beside it."""
    root = tmp_path_factory.mktemp("report")
    frame = _frame()
    data = str(root / "examples.tfrecord")
    _write_examples(frame, data)
    config = eval_config.make_eval_config(tu.small_config(
        tasks=TASKS, validation={"slices": [["category"]], "min_slice_size": 50}))
    # Predictions are columns here, not served models' outputs.
    model_spec = config.model_specs[0]
    model_spec.ClearField("signature_name")
    model_spec.prediction_keys.update({"click": "click", "dwell": "dwell"})
    sizes = {(("category", v),): int((frame.category == v).sum()) for v in ("a", "b", "tiny")}
    gated, gating = eval_config.gate_slices(config, sizes, 50)
    output = str(root / "evaluation")
    tfma.run_model_analysis(eval_config=gated, data_location=data, output_path=output)
    with open(os.path.join(output, "slice_gating.json"), "w") as f:
        json.dump({**gating, "min_slice_size": 50}, f)
    statistics = root / "statistics" / "Split-eval"
    statistics.mkdir(parents=True)
    stats = tfdv.generate_statistics_from_dataframe(frame[["category", "click_label"]])
    with open(statistics / report.STATISTICS_FILE, "wb") as f:
        f.write(stats.SerializeToString())
    run = report.RunArtifacts(
        evaluation_uri=output, statistics_uri=str(root / "statistics"),
        anomalies={"eval": ["category: Unexpected string values (toaster)"]},
        lineage=[("candidate model", "Model", 7, "/pipeline_root/Trainer/model/7")],
        blessed=False)
    return {"root": root, "evaluation": report.load_evaluation(output), "run": run}


def _check(evaluation, task, slice_name, kind):
    found = [c for c in evaluation.checks
             if (c.task, c.slice, c.kind) == (task, slice_name, kind)]
    assert len(found) == 1, (task, slice_name, kind, evaluation.checks)
    return found[0]


def test_bounds_per_task_and_slice(evaluated):
    evaluation = evaluated["evaluation"]
    # Slice b fell below click's floor; a and overall did not.
    b_abs = _check(evaluation, "click", "category=b", "absolute")
    assert not b_abs.passed and b_abs.candidate < 0.6 and b_abs.baseline is None
    assert _check(evaluation, "click", "category=a", "absolute").passed
    assert _check(evaluation, "click", "overall", "absolute").passed
    assert not [c for c in evaluation.checks if c.kind == "change"]
    assert _check(evaluation, "dwell", "overall", "absolute").passed
    # The tiny slice is evaluated but carries no bound.
    assert ("click", "category=tiny") in evaluation.metrics
    assert not [c for c in evaluation.checks if c.slice == "category=tiny"]
    assert evaluation.gating["too_small"] == ["category=tiny"]


def test_plot_data_comes_from_tfma_plots(evaluated):
    evaluation = evaluated["evaluation"]
    plot = evaluation.plots[("click", "overall", "")]
    points = report.reliability_points(plot)
    assert sum(n for _, _, n in points) == pytest.approx(400)
    assert all(0 <= p <= 1 and 0 <= y <= 1 for p, y, _ in points)
    recall_precision = report.pr_points(plot)
    assert max(r for r, _ in recall_precision) == pytest.approx(1.0)
    assert ("click", "overall", report.BASELINE) not in evaluation.plots


def test_text_table_names_failures(evaluated):
    text = report.text_table(evaluated["evaluation"], evaluated["run"], {})
    lines = [line for line in text.splitlines() if "category=b" in line and line.startswith("click")]
    assert len(lines) == 1 and lines[0].endswith("FAIL")
    assert "not gated (under 50 examples): category=tiny" in text
    assert "anomaly [eval] category: Unexpected string values (toaster)" in text


def test_report_renders_in_headless_chromium(evaluated):
    page = evaluated["root"] / "report.html"
    page.write_text(report.render_html(evaluated["evaluation"], evaluated["run"], {},
                                       "mtrank report: test"))
    dom, screenshot = chromium.render(str(page), str(evaluated["root"]))
    assert "NOT blessed" in dom
    for task in ("click", "dwell"):
        assert f"<h3>{task} (candidate / last blessed)</h3>" in dom
    assert dom.count('<tr class="fail">') == 1 and '<tr class="pass">' in dom
    assert "toaster" in dom and "/pipeline_root/Trainer/model/7" in dom
    # Reliability, PR and by-slice plots for click, by-slice for dwell, all decoded.
    assert 'data-images="4"' in dom and 'data-decoded="4"' in dom, dom[-400:]
    for kind in ("reliability", "pr", "by_slice"):
        assert f'alt="click {kind}"' in dom
    assert chromium.distinct_colours(screenshot) > 50
