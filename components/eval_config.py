"""The TFMA EvalConfig, generated from the config's tasks and validation section.

Each task is one output of the served model (`output_names`), with its own
label (`label_keys`), metrics, plots and blessing bounds: an absolute bound,
and a change bound against the last blessed model. TFMA blesses the candidate
only if every task passes, so one regressing task blocks the push.

A task declared under a `condition` is evaluated on its parent's positives
only (the parent's label is its example weight), the population it is
trained on and whose probability it serves.

Slices: metrics and plots are computed overall and for every slice of
`validation.slices`. A bound in `MetricConfig.threshold` would apply to every
slice, however small, and TFMA's own `Options.min_slice_size` turns a small
slice's metrics into "Metric not found" failures. So bounds sit in
`per_slice_thresholds`, restricted to the overall slice here; once the eval
split's slice sizes are known, `gate_slices` adds the slices with at least
`validation.min_slice_size` examples (the SlicedEvaluator does this at run
time). Smaller slices keep their metrics for the report and decide nothing.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import tensorflow_model_analysis as tfma

from mtrank.base import config as config_lib
from mtrank.components import histogram_metrics

# A slice: ((feature, value), ...) in the order of its slicing spec's features.
SliceKey = Tuple[Tuple[str, str], ...]


def _threshold(lower=None, upper=None, max_drop=None, max_increase=None):
    threshold = tfma.MetricThreshold()
    if lower is not None or upper is not None:
        threshold.value_threshold.CopyFrom(tfma.GenericValueThreshold(
            lower_bound={"value": lower} if lower is not None else None,
            upper_bound={"value": upper} if upper is not None else None))
    if max_drop is not None:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_drop}))
    if max_increase is not None:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER, absolute={"value": max_increase}))
    return threshold


def _bounded(class_name: str, threshold: tfma.MetricThreshold) -> tfma.MetricConfig:
    metric = tfma.MetricConfig(class_name=class_name)
    if threshold.ByteSize():
        metric.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
    return metric


def _from_histogram(class_name: str) -> tfma.MetricConfig:
    return tfma.MetricConfig(class_name=class_name, module=histogram_metrics.__name__)


def _task_metrics(task: config_lib.TaskConfig) -> tfma.MetricsSpec:
    bounds = task.eval
    if task.type == "binary":
        metrics = [
            _bounded("AUC", _threshold(lower=bounds.min_auc, max_drop=bounds.max_auc_drop)),
            tfma.MetricConfig(class_name="AUCPrecisionRecall"),
            # From the histogram AUC computes anyway, not combiners of their
            # own (components/histogram_metrics.py). Calibration is mean
            # prediction / mean label: 1 when calibrated on average.
            _from_histogram("HistogramCalibration"),
            _from_histogram("HistogramBinaryCrossentropy"),
            _from_histogram("HistogramMeanLabel"),
            _from_histogram("HistogramMeanPrediction"),
            # The report's reliability diagram and precision-recall curve.
            # Buckets 0.001 wide: the report merges them at the predictions'
            # quantiles, and rare events are predicted within a few hundredths.
            tfma.MetricConfig(class_name="CalibrationPlot", config='"num_buckets": 1000'),
            tfma.MetricConfig(class_name="ConfusionMatrixPlot", config='"num_thresholds": 100'),
        ]
    else:
        metrics = [
            _bounded("MeanSquaredError", _threshold(
                upper=bounds.max_mse, max_increase=bounds.max_mse_increase)),
            tfma.MetricConfig(class_name="MeanAbsoluteError"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ]
    metrics.append(tfma.MetricConfig(class_name="ExampleCount"))
    return tfma.MetricsSpec(output_names=[task.name], metrics=metrics)


def make_eval_config(config: config_lib.Config) -> tfma.EvalConfig:
    by_name = {task.name: task for task in config.tasks}
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_keys={task.name: task.label_key for task in config.tasks},
            # A conditional task's output is P(task | parent), trained on the
            # parent's positives only: it is evaluated (and blessed) there
            # too, by weighting each example with the parent's 0/1 label.
            example_weight_keys={task.name: by_name[task.condition].label_key
                                 for task in config.tasks if task.condition})],
        metrics_specs=[_task_metrics(task) for task in config.tasks],
        slicing_specs=[tfma.SlicingSpec()] + [
            tfma.SlicingSpec(feature_keys=keys) for keys in config.validation.slices],
        # The model's compiled Keras metrics have no output names and are
        # training-time metrics; every evaluated metric is declared above.
        options=tfma.Options(include_default_metrics={"value": False}))


def slice_features(eval_config: tfma.EvalConfig) -> List[List[str]]:
    """The feature lists of the config's slices (the overall slice has none)."""
    return [list(spec.feature_keys) for spec in eval_config.slicing_specs if spec.feature_keys]


def slice_name(key: SliceKey) -> str:
    """`device=mobile,country=US`, or `overall` for the empty key."""
    return ",".join(f"{feature}={value}" for feature, value in key) or "overall"


def gate_slices(eval_config: tfma.EvalConfig, slice_sizes: Dict[SliceKey, int],
                min_slice_size: int) -> Tuple[tfma.EvalConfig, Dict[str, List[str]]]:
    """A copy of `eval_config` whose bounds also apply to each slice of
    `slice_sizes` with at least `min_slice_size` examples, and
    {"gated": [slice names], "too_small": [slice names]}."""
    gated_config = tfma.EvalConfig()
    gated_config.CopyFrom(eval_config)
    large = sorted(key for key, size in slice_sizes.items() if size >= min_slice_size)
    specs = [tfma.SlicingSpec(feature_values=dict(key)) for key in large]
    for metrics_spec in gated_config.metrics_specs:
        for metric in metrics_spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                per_slice.slicing_specs.extend(specs)
    return gated_config, {
        "gated": [slice_name(key) for key in large],
        "too_small": [slice_name(key) for key in sorted(set(slice_sizes) - set(large))]}
