"""Tests of trainer/funnel.py."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.funnel import log1mexp, product_logit


def test_product_logit_is_the_logit_of_the_product_of_sigmoids():
    a = tf.constant([-30.0, -3.0, 0.0, 2.0, 8.0, 15.0])
    b = tf.constant([1.0, -2.0, 0.5, 3.0, 9.0, 15.0])
    product = tf.sigmoid(a) * tf.sigmoid(b)
    np.testing.assert_allclose(tf.sigmoid(product_logit(a, b)).numpy(), product.numpy(),
                               rtol=1e-5, atol=1e-12)
    three = product_logit(a, b, tf.zeros_like(a))
    np.testing.assert_allclose(tf.sigmoid(three).numpy(), 0.5 * product.numpy(), rtol=1e-5,
                               atol=1e-12)


def test_gradients_are_finite_at_the_extremes():
    z = tf.Variable([-80.0, -1.0, 0.0, 20.0, 60.0])
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(product_logit(z, z))
    grad = tape.gradient(out, z).numpy()
    assert np.all(np.isfinite(grad)) and np.all(np.isfinite(out.numpy()))


def test_log1mexp_matches_the_direct_formula():
    x = tf.constant([-20.0, -2.0, -0.7, -0.1, -1e-3], tf.float64)
    np.testing.assert_allclose(log1mexp(x).numpy(), np.log(-np.expm1(x.numpy())), rtol=1e-7)
