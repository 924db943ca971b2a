"""The TF Transform preprocessing_fn, built from the config.

The same graph runs in the Transform component over the training data and,
through the model's transform layer, inside the serving signature.
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from mtrank.base import layout
from mtrank.base import config as config_lib
from mtrank.trainer import features as features_lib
from mtrank.trainer import position


def _as_vector(x, default) -> tf.Tensor:
    """A scalar feature as a [batch] tensor.

    Raw features are parsed as variable-length (sparse), in Transform and in
    the serving signature alike: a serving request may omit a feature, which
    then takes the default ingestion gave missing values in training; extra
    values beyond the first are ignored.
    """
    if isinstance(x, tf.sparse.SparseTensor):
        batch = x.dense_shape[0]
        first = tf.sparse.reset_shape(
            tf.sparse.slice(x, [0, 0], [batch, 1]), tf.stack([batch, 1]))
        x = tf.sparse.to_dense(first, default_value=tf.cast(default, x.dtype))
    return tf.reshape(x, [-1])


def _ids(values: tf.Tensor, feature: config_lib.FeatureConfig) -> tf.Tensor:
    if feature.encoding == "hashing":
        if values.dtype != tf.string:
            values = tf.strings.as_string(values)
        return tf.strings.to_hash_bucket_fast(values, feature.hash_buckets)
    return tft.compute_and_apply_vocabulary(
        values, top_k=feature.vocab_size, num_oov_buckets=1,
        vocab_filename=f"{feature.name}_vocab")


def _multivalent_ids(x, feature: config_lib.FeatureConfig) -> tf.Tensor:
    """A list feature as [batch, max_len] ids, 0-padded and truncated."""
    if not isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.from_dense(x)
    ids = tf.SparseTensor(x.indices, _ids(x.values, feature) + 1, x.dense_shape)
    ragged = tf.RaggedTensor.from_sparse(ids)
    return ragged.to_tensor(default_value=features_lib.PADDING_ID,
                            shape=[None, feature.max_len])


def piecewise_linear(x: tf.Tensor, edges: tf.Tensor) -> tf.Tensor:
    """The piecewise-linear encoding of [batch] values over bins between
    ascending `edges` (Gorishniy et al. 2022, "On Embeddings for Numerical
    Features in Tabular Deep Learning"): [batch, len(edges) - 1], component t
    is 0 below bin t, 1 above it and the position inside it between. A bin
    of zero width (repeated quantiles, e.g. of a mostly-zero column) becomes
    a step: 1 above its edge."""
    left, right = edges[:-1], edges[1:]
    width = tf.maximum(right - left, 1e-9)
    return tf.clip_by_value((x[:, None] - left[None, :]) / width[None, :], 0.0, 1.0)


def _piecewise_linear(x: tf.Tensor, feature: config_lib.FeatureConfig) -> tf.Tensor:
    """Bins between the training data's minimum, `num_buckets` - 1 quantiles
    and its maximum, computed by Transform; serving values outside [min, max]
    encode as the nearest end.

    The quantiles are those of the non-zero values: in a zero-inflated
    column (amounts, counts: census capital_gains is 96% zeros) the
    quantiles of all values are all 0, which would leave one linear bin for
    every non-zero value. Zeros keep a negligible weight so that an all-zero
    column still has quantiles (all 0)."""
    nonzero = tf.where(tf.not_equal(x, 0.0), 1.0, 1e-6)
    boundaries = tf.reshape(
        tft.quantiles(x, feature.num_buckets, epsilon=0.01, weights=nonzero), [-1])
    edges = tf.concat([tf.reshape(tft.min(x), [1]), boundaries,
                       tf.reshape(tft.max(x), [1])], axis=0)
    return tf.reshape(piecewise_linear(x, edges), [-1, feature.num_buckets])


def _numeric(x: tf.Tensor, feature: config_lib.FeatureConfig) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    if feature.transform == "buckets":
        return tft.bucketize(x, feature.num_buckets)
    if feature.transform == "piecewise_linear":
        return _piecewise_linear(x, feature)
    if feature.transform == "log":
        x = tf.math.log1p(tf.maximum(x, 0.0))
    # zscore, log and periodic (whose sin / cos embedding is in the model).
    return tft.scale_to_z_score(x)


def transform_config(config: config_lib.Config, inputs: Dict[str, Any]) -> Dict[str, Any]:
    outputs = {}
    for feature in config.features:
        x = inputs[feature.name]
        if feature.kind == "multivalent":
            outputs[feature.name] = _multivalent_ids(x, feature)
            continue
        x = _as_vector(x, feature.default_value)
        if feature.kind == "categorical":
            outputs[feature.name] = _ids(x, feature)
        else:
            outputs[feature.name] = _numeric(x, feature)
    for task in config.tasks:
        outputs[task.label_key] = tf.cast(_as_vector(inputs[task.label_key], 0.0), tf.float32)
    if config.model.position_tasks:
        if config_lib.POSITION not in inputs:
            raise ValueError(f"model.position_tasks: the examples have no "
                             f"'{config_lib.POSITION}' (do the logs give impression positions?)")
        outputs[config_lib.POSITION] = position.transformed_position(
            _as_vector(inputs[config_lib.POSITION], position.MISSING_POSITION))
    return outputs


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    """TFX Transform entry point; the config arrives as `custom_config`."""
    return transform_config(layout.config_from_properties(custom_config), inputs)
