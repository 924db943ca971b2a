"""Tests of components/eval_config.py: the TFMA EvalConfig made from the config."""
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_specs

from mtrank.components import eval_config
from mtrank_testing import trainer_util as tu


@pytest.fixture(scope="module")
def config():
    return tu.small_config()


@pytest.fixture(scope="module")
def made(config):
    return eval_config.make_eval_config(config)


def _spec(made, task):
    specs = [s for s in made.metrics_specs if list(s.output_names) == [task]]
    assert len(specs) == 1, task
    return specs[0]


def _metric(spec, class_name):
    metrics = [m for m in spec.metrics if m.class_name == class_name]
    assert len(metrics) == 1, class_name
    return metrics[0]


def _bounds(metric):
    """The one threshold of a bounded metric, checked to apply to the overall
    slice only (a plain `threshold` would apply to every slice)."""
    assert not metric.HasField("threshold"), metric.class_name
    assert len(metric.per_slice_thresholds) == 1, metric.class_name
    assert list(metric.per_slice_thresholds[0].slicing_specs) == [tfma.SlicingSpec()]
    return metric.per_slice_thresholds[0].threshold


def test_one_metrics_spec_per_task(config, made):
    assert len(made.metrics_specs) == len(config.tasks) == 3
    assert [list(s.output_names) for s in made.metrics_specs] == [["click"], ["purchase"],
                                                                  ["dwell"]]


def test_model_spec_serving_default_and_label_keys(made):
    assert len(made.model_specs) == 1
    spec = made.model_specs[0]
    assert spec.signature_name == "serving_default"
    assert dict(spec.label_keys) == {
        "click": "click_label", "purchase": "purchase_label", "dwell": "dwell_label"}
    assert not spec.label_key


def test_binary_tasks_have_auc_bounds(config, made):
    for name in ("click", "purchase"):
        bounds = config.tasks[[t.name for t in config.tasks].index(name)].eval
        spec = _spec(made, name)
        auc = _bounds(_metric(spec, "AUC"))
        value = auc.value_threshold
        assert value.lower_bound.value == pytest.approx(bounds.min_auc)
        assert not value.HasField("upper_bound")
        change = auc.change_threshold
        assert change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
        assert change.absolute.value == pytest.approx(-bounds.max_auc_drop)
        assert change.absolute.value < 0
        assert not change.HasField("relative")
        names = {m.class_name for m in spec.metrics}
        assert "MeanSquaredError" not in names
        assert {"AUC", "AUCPrecisionRecall", "HistogramCalibration",
                "HistogramBinaryCrossentropy", "HistogramMeanLabel", "HistogramMeanPrediction",
                "ExampleCount", "CalibrationPlot", "ConfusionMatrixPlot"} <= names
        # The histogram's metrics are found by module in the Evaluator's workers.
        assert {m.module for m in spec.metrics if m.class_name.startswith("Histogram")} == {
            "mtrank.components.histogram_metrics"}
    # The per-task bounds are the task's own.
    assert _bounds(_metric(_spec(made, "click"), "AUC")).value_threshold.lower_bound.value == \
        pytest.approx(0.5)
    assert _bounds(_metric(_spec(made, "purchase"), "AUC")).value_threshold.lower_bound.value \
        == pytest.approx(0.6)


def test_regression_task_has_mse_bounds(made):
    spec = _spec(made, "dwell")
    names = {m.class_name for m in spec.metrics}
    assert "AUC" not in names and "MeanAbsoluteError" in names
    mse = _bounds(_metric(spec, "MeanSquaredError"))
    assert mse.value_threshold.upper_bound.value == pytest.approx(4.0)
    assert not mse.value_threshold.HasField("lower_bound")
    change = mse.change_threshold
    assert change.direction == tfma.MetricDirection.LOWER_IS_BETTER
    assert change.absolute.value == pytest.approx(0.1)


def test_unset_bounds_give_no_thresholds():
    tasks = [{"name": "click", "feedback": "click",
              "eval": {"min_auc": None, "max_auc_drop": None}},
             {"name": "dwell", "feedback": "dwell", "type": "regression",
              "eval": {"max_mse": 3.0}}]
    made = eval_config.make_eval_config(tu.small_config(tasks=tasks))
    for metric in _spec(made, "click").metrics:
        assert not metric.HasField("threshold") and not metric.per_slice_thresholds, metric
    mse = _bounds(_metric(_spec(made, "dwell"), "MeanSquaredError"))
    assert mse.value_threshold.upper_bound.value == pytest.approx(3.0)
    assert not mse.HasField("change_threshold")
    # No change thresholds: valid without a baseline even when not rubber stamping.
    updated = tfma.utils.update_eval_config_with_defaults(made, has_baseline=False)
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(
        updated.metrics_specs, eval_config=updated)
    assert {(k.name, k.output_name, k.is_diff) for k in thresholds} == {
        ("mean_squared_error", "dwell", False)}


def test_default_metrics_excluded(made):
    assert made.options.HasField("include_default_metrics")
    assert made.options.include_default_metrics.value is False


def test_overall_slice(made):
    assert len(made.slicing_specs) == 1
    assert made.slicing_specs[0] == tfma.SlicingSpec()


@pytest.mark.parametrize("has_baseline", [True, False])
def test_validates_with_tfma_defaults(made, has_baseline):
    """As the TFX Evaluator does: rubber_stamp=True, with or without a baseline."""
    updated = tfma.utils.update_eval_config_with_defaults(
        made, has_baseline=has_baseline, rubber_stamp=True)
    assert len(updated.model_specs) == (2 if has_baseline else 1)
    # The metrics can be built, and their thresholds are recognised per task.
    assert metric_specs.to_computations(updated.metrics_specs, eval_config=updated)
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(
        updated.metrics_specs, eval_config=updated)
    candidate_name = tfma.CANDIDATE_KEY if has_baseline else ""
    assert updated.model_specs[0].name == candidate_name
    candidate = {(k.name, k.output_name, k.is_diff) for k in thresholds
                 if k.model_name == candidate_name}
    expected = {("auc", "click", False), ("auc", "purchase", False),
                ("mean_squared_error", "dwell", False)}
    if has_baseline:
        expected |= {("auc", "click", True), ("auc", "purchase", True),
                     ("mean_squared_error", "dwell", True)}
    assert candidate == expected


def test_change_thresholds_require_baseline_unless_rubber_stamped(made):
    with pytest.raises(RuntimeError, match="baseline"):
        tfma.utils.update_eval_config_with_defaults(made, has_baseline=False)


def test_slices_from_config_and_bounds_start_overall_only():
    made = eval_config.make_eval_config(tu.small_config(
        validation={"slices": [["category"], ["category", "user_id"]], "min_slice_size": 50}))
    assert list(made.slicing_specs) == [
        tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["category"]),
        tfma.SlicingSpec(feature_keys=["category", "user_id"])]
    assert eval_config.slice_features(made) == [["category"], ["category", "user_id"]]
    # TFMA's own min_slice_size would fail small slices ("Metric not found").
    assert not made.options.HasField("min_slice_size")


def test_gate_slices_bounds_only_large_slices():
    made = eval_config.make_eval_config(tu.small_config(validation={"slices": [["category"]]}))
    sizes = {(("category", "a"),): 300, (("category", "b"),): 49, (("category", "c"),): 50}
    gated, gating = eval_config.gate_slices(made, sizes, 50)
    assert gating == {"gated": ["category=a", "category=c"], "too_small": ["category=b"]}
    auc = _metric(_spec(gated, "click"), "AUC")
    assert list(auc.per_slice_thresholds[0].slicing_specs) == [
        tfma.SlicingSpec(), tfma.SlicingSpec(feature_values={"category": "a"}),
        tfma.SlicingSpec(feature_values={"category": "c"})]
    # The input config is left as it was.
    assert len(_metric(_spec(made, "click"), "AUC").per_slice_thresholds[0].slicing_specs) == 1
