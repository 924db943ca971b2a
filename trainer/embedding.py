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
    embedding_input_dim x `embedding_dim` from the config."""

    def __init__(self, features: list[config_lib.FeatureConfig], seed: int = 0, **kwargs):
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
                self._embeddings[feature.name] = tf.keras.layers.Embedding(
                    features_lib.embedding_input_dim(feature), feature.embedding_dim,
                    embeddings_initializer=tf.keras.initializers.RandomUniform(
                        -0.05, 0.05, seed=layer_seed(seed, feature.name)),
                    name=f"{feature.name}_embedding")

    def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
        # The compute dtype: float16 under a mixed_float16 policy.
        dtype = self.compute_dtype
        parts = []
        for feature in self._features:
            x = inputs[feature.name]
            if feature.name not in self._embeddings:
                parts.append(tf.reshape(tf.cast(x, dtype), [-1, 1]))
                continue
            if features_lib.is_piecewise_linear(feature) or features_lib.is_periodic(feature):
                x = tf.cast(x, dtype)
            vectors = tf.cast(self._embeddings[feature.name](x), dtype)
            if feature.kind == "multivalent":
                mask = tf.cast(tf.not_equal(x, features_lib.PADDING_ID), dtype)[..., None]
                vectors = tf.reduce_sum(vectors * mask, axis=1) / tf.maximum(
                    tf.reduce_sum(mask, axis=1), 1.0)
            parts.append(tf.reshape(vectors, [-1, feature.embedding_dim]))
        return tf.concat(parts, axis=-1)
