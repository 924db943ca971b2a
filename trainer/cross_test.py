"""Tests of trainer/cross.py."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.cross import CrossStack


def test_cross_stack_keeps_width_and_learns_a_product_a_linear_model_cannot():
    # y = x0 * x1: a DCN cross layer represents it exactly; a linear model
    # of x0, x1 explains none of it.
    rng = np.random.RandomState(0)
    x = rng.randn(512, 2).astype(np.float32)
    y = x[:, 0] * x[:, 1]
    stack = CrossStack(1, projection_dim=None, seed=0)
    readout = tf.keras.layers.Dense(1)
    x, y = tf.constant(x), tf.constant(y)
    assert stack(x).shape == (512, 2)
    readout(stack(x))
    variables = stack.trainable_variables + readout.trainable_variables
    optimizer = tf.keras.optimizers.Adam(0.05)

    def mse():
        return tf.reduce_mean(tf.square(tf.squeeze(readout(stack(x)), -1) - y))

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = mse()
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(150):
        step()
    assert float(mse()) < 0.1 * float(np.var(y.numpy()))

def test_low_rank_cross_uses_projection_dim():
    stack = CrossStack(2, projection_dim=3, seed=0)
    out = stack(tf.ones([4, 10]))
    assert out.shape == (4, 10) and len(stack.crosses) == 2
    assert {tuple(v.shape) for v in stack.trainable_variables if "kernel" in v.name} == {
        (10, 3), (3, 10)}
