"""The histogram-derived metrics against TFMA's own (Keras' binary
cross-entropy, Calibration, MeanLabel, MeanPrediction), computed by
tfma.run_model_analysis in one run on the same examples: with example
weights, overall and per slice."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from mtrank.components import histogram_metrics

# Ours (named h_*, so both sets can run together) -> TFMA's own metric.
PAIRS = {"h_bce": ("HistogramBinaryCrossentropy", "BinaryCrossentropy", "binary_crossentropy"),
         "h_calibration": ("HistogramCalibration", "Calibration", "calibration"),
         "h_mean_label": ("HistogramMeanLabel", "MeanLabel", "mean_label"),
         "h_mean_prediction": ("HistogramMeanPrediction", "MeanPrediction", "mean_prediction")}


def _write_examples(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    predictions = np.clip(rng.beta(0.6, 6.0, n), 0.002, 0.998)  # skewed, as rare events are
    labels = (rng.random(n) < predictions * 1.3).astype(np.int64)
    weights = rng.choice([0.0, 1.0, 2.5], n)
    groups = rng.choice([b"a", b"b", b"c"], n)
    with tf.io.TFRecordWriter(path) as writer:
        for p, y, w, g in zip(predictions, labels, weights, groups):
            example = tf.train.Example()
            feature = example.features.feature
            feature["prediction"].float_list.value.append(p)
            feature["label"].int64_list.value.append(y)
            feature["weight"].float_list.value.append(w)
            feature["group"].bytes_list.value.append(g)
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("histogram_metrics")
    data = str(work / "examples.tfrecord")
    _write_examples(data)
    metrics = [tfma.MetricConfig(class_name="AUC")]
    for ours, (class_name, theirs, _) in PAIRS.items():
        metrics.append(tfma.MetricConfig(class_name=class_name, module=histogram_metrics.__name__,
                                         config=f'"name": "{ours}"'))
        metrics.append(tfma.MetricConfig(class_name=theirs))
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="prediction",
                                    example_weight_key="weight")],
        metrics_specs=[tfma.MetricsSpec(
            metrics=metrics, example_weights=tfma.ExampleWeightOptions(weighted=True,
                                                                       unweighted=True))],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["group"])])
    output = str(work / "output")
    tfma.run_model_analysis(eval_config=eval_config, data_location=data, output_path=output)
    return tfma.load_metrics(output)


def _values(metrics_for_slice):
    return {(key.name, key.example_weighted.value): value.double_value.value
            for key, value in ((kv.key, kv.value) for kv in metrics_for_slice.metric_keys_and_values)}


def test_histogram_metrics_match_tfma_own_weighted_and_unweighted_on_every_slice(results):
    slices = list(results)
    assert len(slices) == 4  # overall and three groups
    for metrics_for_slice in slices:
        values = _values(metrics_for_slice)
        for weighted in (False, True):
            for ours, (_, _, theirs) in PAIRS.items():
                expected = values[(theirs, weighted)]
                assert np.isfinite(expected)
                # The loss scores a bucket's examples at its mean prediction;
                # the averages are the same sums in another order.
                tolerance = 1e-4 if ours == "h_bce" else 1e-6
                assert values[(ours, weighted)] == pytest.approx(expected, rel=tolerance), (
                    ours, weighted, metrics_for_slice.slice_key)


def test_binary_crossentropy_of_a_bucket_is_its_examples_loss_at_the_mean_prediction():
    # Two buckets: 3 examples at mean prediction 0.2 (1 positive) and
    # 1 example at 0.9 (positive); an empty bucket is skipped.
    labels = np.array([1.0, 0.0, 1.0])
    predictions = np.array([0.6, 0.0, 0.9])
    examples = np.array([3.0, 0.0, 1.0])
    expected = -(np.log(0.2) + 2 * np.log(0.8) + np.log(0.9)) / 4
    assert histogram_metrics._binary_crossentropy(labels, predictions, examples) == (
        pytest.approx(expected))
    # A prediction of exactly 1 for a negative stays finite, as in Keras.
    assert np.isfinite(histogram_metrics._binary_crossentropy(
        np.array([0.0]), np.array([1.0]), np.array([1.0])))
    assert np.isnan(histogram_metrics._binary_crossentropy(
        np.zeros(2), np.zeros(2), np.zeros(2)))
