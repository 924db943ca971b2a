"""The TFMA EvalConfig, generated from the config's tasks.

Each task is one output of the served model (`output_names`), with its own
label (`label_keys`), metrics and blessing bounds: an absolute bound, and a
change bound against the last blessed model. TFMA blesses the candidate only
if every task passes, so one regressing task blocks the push.
"""
from __future__ import annotations

import tensorflow_model_analysis as tfma

from pipeline import config as config_lib


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


def _task_metrics(task: config_lib.TaskConfig) -> tfma.MetricsSpec:
    bounds = task.eval
    if task.type == "binary":
        metrics = [
            tfma.MetricConfig(class_name="AUC", threshold=_threshold(
                lower=bounds.min_auc, max_drop=bounds.max_auc_drop)),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ]
    else:
        metrics = [
            tfma.MetricConfig(class_name="MeanSquaredError", threshold=_threshold(
                upper=bounds.max_mse, max_increase=bounds.max_mse_increase)),
            tfma.MetricConfig(class_name="MeanAbsoluteError"),
        ]
    metrics.append(tfma.MetricConfig(class_name="ExampleCount"))
    return tfma.MetricsSpec(output_names=[task.name], metrics=metrics)


def make_eval_config(config: config_lib.Config) -> tfma.EvalConfig:
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_keys={task.name: task.label_key for task in config.tasks})],
        metrics_specs=[_task_metrics(task) for task in config.tasks],
        slicing_specs=[tfma.SlicingSpec()],
        # The model's compiled Keras metrics have no output names and are
        # training-time metrics; every evaluated metric is declared above.
        options=tfma.Options(include_default_metrics={"value": False}))
