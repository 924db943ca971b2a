"""Tests of trainer/embedding.py's piecewise-linear and periodic numeric embeddings
(the id embeddings are tested with the model in model_test.py)."""
import numpy as np
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.embedding import FeatureEmbedding


def _features():
    return [
        config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                 transform="piecewise_linear", num_buckets=4, embedding_dim=3),
        config_lib.FeatureConfig(name="age", kind="numeric", dtype="int64"),
    ]


def test_piecewise_linear_feature_is_a_relu_layer_of_embedding_dim():
    layer = FeatureEmbedding(_features(), seed=1)
    encoded = tf.constant([[0, 0, 0, 0], [1, 0.5, 0, 0], [1, 1, 1, 1]], tf.float32)
    age = tf.constant([0.5, -1.0, 2.0])
    out = layer({"price": encoded, "age": age}).numpy()
    assert out.shape == (3, 4)
    dense = layer._embeddings["price"]
    expected = np.maximum(encoded.numpy() @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    np.testing.assert_allclose(out[:, :3], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[:, 3], age.numpy())
    assert not np.allclose(out[1, :3], out[2, :3])


def test_piecewise_linear_layer_is_trained():
    layer = FeatureEmbedding(_features(), seed=1)
    encoded = tf.constant([[1, 0.5, 0, 0], [1, 1, 1, 0.2]], tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer({"price": encoded, "age": tf.constant([0.0, 1.0])}))
    kernel = layer._embeddings["price"].kernel
    assert kernel in layer.trainable_variables
    assert np.any(tape.gradient(loss, kernel).numpy() != 0)


def test_periodic_feature_is_a_relu_layer_over_sin_and_cos_of_learned_frequencies():
    features = [config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                         transform="periodic", num_frequencies=5,
                                         frequency_scale=0.5, embedding_dim=3)]
    layer = FeatureEmbedding(features, seed=1)
    x = tf.constant([0.0, 0.3, -2.0, 7.0])
    with tf.GradientTape() as tape:
        out = layer({"price": x})
        loss = tf.reduce_sum(out)
    periodic = layer._embeddings["price"]
    frequencies = periodic.frequencies.numpy()
    assert frequencies.shape == (5,) and np.all(frequencies != 0)
    angles = 2 * np.pi * x.numpy()[:, None] * frequencies[None, :]
    encoded = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    dense = periodic.dense
    expected = np.maximum(encoded @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The frequencies are trained with the rest of the model.
    assert periodic.frequencies in layer.trainable_variables
    assert np.any(tape.gradient(loss, periodic.frequencies).numpy() != 0)


def test_periodic_frequencies_start_at_the_configured_scale_and_seed():
    def frequencies(scale, seed):
        feature = config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                           transform="periodic", num_frequencies=400,
                                           frequency_scale=scale)
        return FeatureEmbedding([feature], seed=seed)._embeddings["price"].frequencies.numpy()
    assert abs(np.std(frequencies(0.1, 0)) - 0.1) < 0.02
    assert abs(np.std(frequencies(3.0, 0)) - 3.0) < 0.6
    np.testing.assert_array_equal(frequencies(0.1, 0), frequencies(0.1, 0))
    assert not np.allclose(frequencies(0.1, 0), frequencies(0.1, 1))
