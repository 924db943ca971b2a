"""A binary task's loss and averages, derived from TFMA's calibration histogram.

The Evaluator's cost is Python per example, slice and metric combiner
(docs/benchmarks.md). Every binary task already has the histogram: AUC,
AUC-PR and both plots share one (10,000 buckets of the prediction, each
with its summed weighted labels, predictions and examples). These metrics
are computed from that same combiner instead of combiners of their own:

- `HistogramBinaryCrossentropy` (`binary_crossentropy`): each bucket's
  examples scored at the bucket's mean prediction. A bucket is 0.0001 wide,
  so this is the mean of the examples' losses to within 0.16% (the 200k
  benchmark's eval split, every task and slice against Keras' metric; the
  largest difference on a small slice of purchase, a rare task whose
  predictions fill the lowest buckets). Keras' metric, run through
  TensorFlow on every slice, was 26% of the Evaluator's time there.
- `HistogramCalibration`, `HistogramMeanLabel`, `HistogramMeanPrediction`
  (`calibration`, `mean_label`, `mean_prediction`): the histogram's totals,
  the same sums TFMA's own metrics keep in a combiner of their own.

Weights and fractional labels count as in the histogram: an example of
label l and weight w adds w*l to its bucket's labels and w to its examples.
Configured with `module=` this module (components/eval_config.py), so the
Evaluator's workers import it by name.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
from tensorflow_model_analysis.metrics import calibration_histogram, metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

# Predictions are clipped to [EPSILON, 1 - EPSILON], as Keras' metric clips
# them, so that a prediction of exactly 0 or 1 gives a finite loss.
EPSILON = 1e-7

# The buckets' weighted labels, predictions and examples -> a metric value.
Summary = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _binary_crossentropy(labels: np.ndarray, predictions: np.ndarray,
                         examples: np.ndarray) -> float:
    used = examples > 0
    if not used.any():
        return float("nan")
    mean_prediction = np.clip(predictions[used] / examples[used], EPSILON, 1 - EPSILON)
    positives = labels[used]
    loss = -(positives * np.log(mean_prediction)
             + (examples[used] - positives) * np.log(1 - mean_prediction))
    return float(loss.sum() / examples[used].sum())


def _ratio(numerator: float, denominator: float) -> float:
    return float("nan") if np.isclose(denominator, 0.0) else float(numerator / denominator)


def _calibration(labels, predictions, examples) -> float:
    return _ratio(predictions.sum(), labels.sum())


def _mean_label(labels, predictions, examples) -> float:
    return _ratio(labels.sum(), examples.sum())


def _mean_prediction(labels, predictions, examples) -> float:
    return _ratio(predictions.sum(), examples.sum())


def _from_histogram(summary: Summary) -> Callable[..., metric_types.MetricComputations]:
    """A computations function for `summary` over the default histogram of
    one output, which TFMA shares with AUC's (same name and arguments)."""

    def computations(
            name: str, eval_config: Optional[config_pb2.EvalConfig] = None,
            model_name: str = "", output_name: str = "",
            sub_key: Optional[metric_types.SubKey] = None,
            aggregation_type: Optional[metric_types.AggregationType] = None,
            class_weights: Optional[Dict[int, float]] = None,
            example_weighted: bool = False) -> metric_types.MetricComputations:
        key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                     sub_key=sub_key, example_weighted=example_weighted)
        histogram = calibration_histogram.calibration_histogram(
            eval_config=eval_config, model_name=model_name, output_name=output_name,
            sub_key=sub_key, aggregation_type=aggregation_type, class_weights=class_weights,
            example_weighted=example_weighted)
        histogram_key = histogram[-1].keys[-1]

        def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, Any]:
            buckets = metrics[histogram_key]
            labels = np.array([b.weighted_labels for b in buckets], dtype=np.float64)
            predictions = np.array([b.weighted_predictions for b in buckets], dtype=np.float64)
            examples = np.array([b.weighted_examples for b in buckets], dtype=np.float64)
            return {key: summary(labels, predictions, examples)}

        return histogram + [metric_types.DerivedMetricComputation(keys=[key], result=result)]

    return computations


class HistogramBinaryCrossentropy(metric_types.Metric):
    """Binary cross-entropy from the calibration histogram."""

    def __init__(self, name: str = "binary_crossentropy"):
        super().__init__(metric_util.merge_per_key_computations(
            _from_histogram(_binary_crossentropy)), name=name)


class HistogramCalibration(metric_types.Metric):
    """Weighted predictions / weighted labels, from the calibration histogram."""

    def __init__(self, name: str = "calibration"):
        super().__init__(metric_util.merge_per_key_computations(
            _from_histogram(_calibration)), name=name)


class HistogramMeanLabel(metric_types.Metric):
    """Weighted labels / weighted examples, from the calibration histogram."""

    def __init__(self, name: str = "mean_label"):
        super().__init__(metric_util.merge_per_key_computations(
            _from_histogram(_mean_label)), name=name)


class HistogramMeanPrediction(metric_types.Metric):
    """Weighted predictions / weighted examples, from the calibration histogram."""

    def __init__(self, name: str = "mean_prediction"):
        super().__init__(metric_util.merge_per_key_computations(
            _from_histogram(_mean_prediction)), name=name)
