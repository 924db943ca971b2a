"""Tests of trainer/mlp.py."""
import numpy as np
import tensorflow as tf

from trainer.mlp import last_kernel, mlp


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
