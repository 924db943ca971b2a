"""Tests of trainer/mlp.py."""
import numpy as np
import pytest
import tensorflow as tf

from mtrank.trainer.mlp import last_kernel, mlp


def test_dropout_acts_in_training_only():
    stack = mlp([32, 16], "m", seed=0, dropout=0.5)
    x = tf.random.stateless_normal([64, 8], seed=[1, 2])
    inference = stack(x, training=False).numpy()
    np.testing.assert_array_equal(inference, stack(x).numpy())
    trained = stack(x, training=True).numpy()
    assert not np.allclose(trained, inference)
    # Dropout zeroes units of the last layer's output that inference keeps.
    assert np.sum((trained == 0) & (inference != 0)) > 0.2 * np.sum(inference != 0)


def test_no_dropout_layers_without_dropout_and_last_kernel():
    stack = mlp([4, 3], "m", seed=0)
    stack(tf.zeros([1, 2]))
    assert [type(layer).__name__ for layer in stack.layers] == ["Dense", "Dense"]
    assert last_kernel(stack).shape == (4, 3)


def test_layers_start_from_seeded_distinct_weights():
    a, b = mlp([4], "a", seed=0), mlp([4], "b", seed=0)
    again = mlp([4], "a", seed=0)
    for stack in (a, b, again):
        stack(tf.zeros([1, 4]))
    assert not np.allclose(a.layers[0].kernel.numpy(), b.layers[0].kernel.numpy())
    np.testing.assert_array_equal(a.layers[0].kernel.numpy(), again.layers[0].kernel.numpy())


def test_layer_normalization_normalises_pre_activations_before_relu():
    stack = mlp([16], "m", seed=0, normalization="layer")
    # Inputs far from zero mean and unit scale: a bare Dense + ReLU would pass
    # the offset on; after layer normalisation each row's pre-activations
    # have mean 0 and variance 1, so about half the units are active.
    x = 100.0 + 50.0 * tf.random.stateless_normal([64, 8], seed=[3, 4])
    out = stack(x).numpy()
    assert [type(layer).__name__ for layer in stack.layers] == [
        "Dense", "LayerNormalization", "ReLU"]
    pre = stack.layers[1](stack.layers[0](x)).numpy()
    np.testing.assert_allclose(pre.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(pre.std(axis=1), 1.0, atol=1e-2)
    np.testing.assert_array_equal(out, np.maximum(pre, 0.0))


def test_batch_normalization_uses_batch_statistics_in_training_only():
    stack = mlp([8], "m", seed=0, normalization="batch")
    x = 10.0 + tf.random.stateless_normal([256, 4], seed=[5, 6])
    trained = stack(x, training=True).numpy()
    # Per unit, over the batch: half the normalised pre-activations are > 0.
    assert np.all(np.abs((trained > 0).mean(axis=0) - 0.5) < 0.15)
    # At inference the moving statistics (still near their start, mean 0 and
    # variance 1) are used instead, so the output differs.
    assert not np.allclose(stack(x, training=False).numpy(), trained)


def test_unknown_normalization_is_rejected_by_name():
    with pytest.raises(ValueError, match="m: normalization must be none, batch or layer"):
        mlp([4], "m", seed=0, normalization="group")
