"""FeatureEmbedding: transformed features -> one dense vector per example."""
from __future__ import annotations

import math
from typing import Dict

import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer import features as features_lib
from mtrank.trainer.seeds import layer_seed


class PeriodicEmbedding(tf.keras.layers.Layer):
    """The "PLR" numeric embedding of Gorishniy et al. 2022 ("On Embeddings
    for Numerical Features in Tabular Deep Learning"): a [batch] number x
    becomes [sin(2 pi c_i x), cos(2 pi c_i x)] for `num_frequencies` learned
    frequencies c_i, drawn at first from N(0, `frequency_scale`), then a ReLU
    layer of `units`. Unlike piecewise-linear bins, it can represent a
    function of x that varies at any scale the frequencies learn."""

    def __init__(self, num_frequencies: int, frequency_scale: float, units: int, seed: int,
                 **kwargs):
        super().__init__(**kwargs)
        self.frequencies = self.add_weight(
            name="frequencies", shape=[num_frequencies], dtype="float32",
            initializer=tf.keras.initializers.RandomNormal(
                stddev=frequency_scale, seed=layer_seed(seed, f"{self.name}_frequencies")))
        self.dense = tf.keras.layers.Dense(
            units, activation="relu", name=f"{self.name}_dense",
            kernel_initializer=tf.keras.initializers.GlorotUniform(
                seed=layer_seed(seed, self.name)))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        angles = 2.0 * math.pi * tf.cast(tf.reshape(x, [-1, 1]), tf.float32) * self.frequencies
        return self.dense(tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1))


class FeatureEmbedding(tf.keras.layers.Layer):
    """Embeds ids (mean-pooling list features over their non-padding values),
    piecewise-linear and periodic numbers, and concatenates them with the
    normalised numeric features.

    High-cardinality ids are hashed by Transform into `hash_buckets` (or
    looked up in a `vocab_size` vocabulary); each gets a table of
    embedding_input_dim x `embedding_dim` from the config.

    The id embeddings (categorical and multivalent features, not bucketed
    numbers) can be regularised so that training may run past one pass
    without memorising ids: `dropout` on the looked-up vectors in training,
    `learning_rate_multiplier` (see `_ScaledEmbedding`), and `squared_norms` for
    an L2 penalty (trainer/model.py adds it to the loss)."""

    def __init__(self, features: list[config_lib.FeatureConfig], seed: int = 0,
                 dropout: float = 0.0, learning_rate_multiplier: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self._features = list(features)
        self._embeddings: Dict[str, tf.keras.layers.Layer] = {}
        for feature in self._features:
            if features_lib.is_piecewise_linear(feature):
                # The "PLE-LR" numeric embedding of Gorishniy et al. 2022:
                # a ReLU layer per feature over its piecewise-linear encoding.
                self._embeddings[feature.name] = tf.keras.layers.Dense(
                    feature.embedding_dim, activation="relu",
                    kernel_initializer=tf.keras.initializers.GlorotUniform(
                        seed=layer_seed(seed, feature.name)),
                    name=f"{feature.name}_piecewise_linear")
            elif features_lib.is_periodic(feature):
                self._embeddings[feature.name] = PeriodicEmbedding(
                    feature.num_frequencies, feature.frequency_scale, feature.embedding_dim,
                    seed, name=f"{feature.name}_periodic")
            elif features_lib.is_embedded(feature):
                self._embeddings[feature.name] = _ScaledEmbedding(
                    features_lib.embedding_input_dim(feature), feature.embedding_dim,
                    seed=layer_seed(seed, feature.name),
                    learning_rate_multiplier=(learning_rate_multiplier if _is_id(feature)
                                              else 1.0),
                    name=f"{feature.name}_embedding")
        self._id_dropout = tf.keras.layers.Dropout(dropout, name="id_dropout") if dropout else None

    def call(self, inputs: Dict[str, tf.Tensor], training=None, per_feature: bool = False):
        """[batch, total width]: the features' vectors concatenated; with
        `per_feature`, {feature name: its vector, [batch, width]} in the
        config's order (the interactions take features one by one). A
        number that enters as it is has width 1."""
        # The compute dtype: float16 under a mixed_float16 policy.
        dtype = self.compute_dtype
        parts = {}
        for feature in self._features:
            x = inputs[feature.name]
            if feature.name not in self._embeddings:
                parts[feature.name] = tf.reshape(tf.cast(x, dtype), [-1, 1])
                continue
            if features_lib.is_piecewise_linear(feature) or features_lib.is_periodic(feature):
                x = tf.cast(x, dtype)
            vectors = tf.cast(self._embeddings[feature.name](x), dtype)
            if feature.kind == "multivalent":
                mask = tf.cast(tf.not_equal(x, features_lib.PADDING_ID), dtype)[..., None]
                vectors = tf.reduce_sum(vectors * mask, axis=1) / tf.maximum(
                    tf.reduce_sum(mask, axis=1), 1.0)
            vectors = tf.reshape(vectors, [-1, feature.embedding_dim])
            if self._id_dropout is not None and _is_id(feature):
                vectors = self._id_dropout(vectors, training=training)
            parts[feature.name] = vectors
        return parts if per_feature else tf.concat(list(parts.values()), axis=-1)

    def squared_norms(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
        """[batch], float32: each example's sum of the squared id embedding
        rows it looks up (every non-padding value of a list). An L2 penalty
        on these, averaged over the examples, penalises a row once per use:
        frequent ids are held back more than rare ones."""
        total = 0.0
        for feature in self._features:
            if not _is_id(feature):
                continue
            x = inputs[feature.name]
            squares = tf.reduce_sum(tf.square(tf.cast(self._embeddings[feature.name](x),
                                                      tf.float32)), axis=-1)
            if feature.kind == "multivalent":
                squares = tf.reduce_sum(
                    squares * tf.cast(tf.not_equal(x, features_lib.PADDING_ID), tf.float32),
                    axis=-1)
            total += tf.reshape(squares, [-1])
        return total


def _is_id(feature: config_lib.FeatureConfig) -> bool:
    """Ids that get a table (memorisation is what the id regularisers are
    for); not bucketed numbers, whose few rows every example shares."""
    return feature.kind != "numeric"


class _ScaledEmbedding(tf.keras.layers.Embedding):
    """An embedding table whose rows are `learning_rate_multiplier` x the
    stored variable. Adam's (and AdamW's) step is invariant to the scale of
    the gradient, so the stored variable moves by the optimizer's step and
    the rows by the multiplier times it: a per-table learning rate, without
    a second optimizer (one optimizer keeps run_fn's checkpoints, mixed
    precision loss scaling and MirroredStrategy as they are). AdamW's
    decoupled weight decay is relative, so it is unchanged. Rows start from
    U(-0.05, 0.05) whatever the multiplier."""

    def __init__(self, input_dim: int, output_dim: int, seed: int,
                 learning_rate_multiplier: float = 1.0, **kwargs):
        bound = 0.05 / learning_rate_multiplier
        super().__init__(
            input_dim, output_dim,
            embeddings_initializer=tf.keras.initializers.RandomUniform(-bound, bound, seed=seed),
            **kwargs)
        self._multiplier = learning_rate_multiplier

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        rows = super().call(ids)
        return rows if self._multiplier == 1.0 else rows * self._multiplier
