"""The evaluator's config (components/eval_config.py) in a real TFMA run over
predictions, its validation failures read back as the run summary reports
them (reporting/run_summary.py)."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from mtrank.components import eval_config
from mtrank.reporting import run_summary
from mtrank_testing import trainer_util as tu


def test_tfma_blocks_on_a_large_failing_slice_and_ignores_a_tiny_one(tmp_path):
    """A real TFMA run over predictions: category b (large) misses click's
    AUC floor and blocks; category tiny is worse but below the minimum size."""
    rng = np.random.default_rng(0)
    category = np.array(["a"] * 200 + ["b"] * 190 + ["tiny"] * 10)
    click_label = (rng.random(len(category)) < 0.4).astype(float)
    strength = np.select([category == "a", category == "b"], [0.8, -0.1], -1.0)
    click = np.clip(0.5 + strength * (click_label - 0.5) + 0.2 * rng.random(len(category)), 0, 1)
    dwell_label = rng.random(len(category)) * 3
    frame = pd.DataFrame({"category": category, "click_label": click_label, "click": click,
                          "dwell_label": dwell_label, "dwell": dwell_label + 0.1})
    tasks = [{"name": "click", "feedback": "click",
              "eval": {"min_auc": 0.6, "max_auc_drop": None}},
             {"name": "dwell", "feedback": "dwell", "type": "regression",
              "eval": {"max_mse": 1.0}}]
    made = eval_config.make_eval_config(tu.small_config(
        tasks=tasks, validation={"slices": [["category"]], "min_slice_size": 50}))
    # Predictions are columns here, not a served model's outputs.
    model_spec = made.model_specs[0]
    model_spec.ClearField("signature_name")
    model_spec.prediction_keys.update({"click": "click", "dwell": "dwell"})
    sizes = {(("category", value),): int((category == value).sum()) for value in ("a", "b", "tiny")}
    gated, _ = eval_config.gate_slices(made, sizes, 50)
    data = str(tmp_path / "predictions.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for row in frame.itertuples(index=False):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "category": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[row.category.encode()])),
                **{name: tf.train.Feature(float_list=tf.train.FloatList(
                    value=[getattr(row, name)])) for name in frame.columns[1:]}}))
                .SerializeToString())
    output = str(tmp_path / "evaluation")
    tfma.run_model_analysis(eval_config=gated, data_location=data, output_path=output)

    failures = run_summary.validation_failures(output)
    assert [(f["task"], f["slice"], f["metric"], f["kind"]) for f in failures] == [
        ("click", "category=b", "auc", "absolute")]
    failure = failures[0]
    assert failure["bound"] == ">= 0.6"
    assert failure["value"] < 0.6 and failure["by"] == pytest.approx(0.6 - failure["value"])
    assert "task click, slice category=b: auc" in run_summary.describe_failure(failure)
    # The tiny slice is still evaluated (for the report), only not gated.
    slices = {run_summary._slice_name(m.slice_key): m for m in tfma.load_metrics(output)}
    assert {"overall", "category=a", "category=b", "category=tiny"} <= set(slices)


def test_conditional_task_is_evaluated_on_its_parents_positives(tmp_path):
    """purchase (condition: click) ranks well among clicked impressions and
    badly elsewhere, where it was never trained: only the first counts."""
    rng = np.random.default_rng(0)
    size = 400
    click_label = (rng.random(size) < 0.5).astype(float)
    purchase_label = click_label * (rng.random(size) < 0.4)
    # Among clicks, a purchase scores higher; unclicked rows score high anyway.
    purchase = np.where(click_label == 1, 0.3 + 0.4 * purchase_label, 0.9) + 0.05 * rng.random(size)
    tasks = [{"name": "click", "feedback": "click",
              "eval": {"min_auc": None, "max_auc_drop": None}},
             {"name": "purchase", "feedback": "purchase", "condition": "click",
              "eval": {"min_auc": 0.9, "max_auc_drop": None}}]
    made = eval_config.make_eval_config(tu.small_config(tasks=tasks))
    assert dict(made.model_specs[0].example_weight_keys) == {"purchase": "click_label"}
    model_spec = made.model_specs[0]
    model_spec.ClearField("signature_name")
    model_spec.prediction_keys.update({"click": "click", "purchase": "purchase"})
    data = str(tmp_path / "predictions.tfrecord")
    columns = {"click_label": click_label, "click": rng.random(size),
               "purchase_label": purchase_label, "purchase": purchase}
    with tf.io.TFRecordWriter(data) as writer:
        for i in range(size):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                name: tf.train.Feature(float_list=tf.train.FloatList(value=[values[i]]))
                for name, values in columns.items()})).SerializeToString())
    output = str(tmp_path / "evaluation")
    tfma.run_model_analysis(eval_config=made, data_location=data, output_path=output)

    assert run_summary.validation_failures(output) == []
    (overall,) = [m for m in tfma.load_metrics(output) if not m.slice_key.single_slice_keys]
    purchase_auc = [kv.value.double_value.value for kv in overall.metric_keys_and_values
                    if kv.key.name == "auc" and kv.key.output_name == "purchase"]
    assert purchase_auc and purchase_auc[0] > 0.99
