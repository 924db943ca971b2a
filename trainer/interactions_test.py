"""Tests of trainer/interactions.py on hand-computed examples."""
import itertools

import numpy as np
import tensorflow as tf

from mtrank.trainer.interactions import FactorizationMachine, UserItemDot


def test_user_item_dot_of_equal_widths_is_the_plain_dot_product():
    user = tf.constant([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    item = tf.constant([[4.0, -1.0, 0.5], [2.0, 7.0, 3.0]])
    dot = UserItemDot(seed=0)
    out = dot((user, item)).numpy()
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[:, 0], [1 * 4 - 2 + 1.5, 1.0 - 3.0])
    assert not dot.trainable_variables  # nothing to project


def test_user_item_dot_projects_the_wider_vector_to_the_narrower_width():
    rng = np.random.RandomState(0)
    user = tf.constant(rng.randn(5, 6), tf.float32)
    item = tf.constant(rng.randn(5, 2), tf.float32)
    dot = UserItemDot(seed=0)
    out = dot((user, item)).numpy()
    (kernel,) = dot.trainable_variables
    assert kernel.shape == (6, 2)
    expected = np.sum((user.numpy() @ kernel.numpy()) * item.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_factorization_machine_is_the_sum_of_pairwise_dot_products():
    fields = {"a": np.array([[1.0, 2.0], [0.0, 1.0]]),
              "b": np.array([[3.0, -1.0], [2.0, 2.0]]),
              "c": np.array([[0.5, 0.5], [-1.0, 4.0]])}
    out = FactorizationMachine(seed=0)({k: tf.constant(v, tf.float32)
                                        for k, v in fields.items()}).numpy()
    assert out.shape == (2, 1)
    pairwise = sum(np.sum(fields[i] * fields[j], axis=1)
                   for i, j in itertools.combinations(fields, 2))
    # Row 0: a.b = 1, a.c = 1.5, b.c = 1; row 1: 2 + 4 + 6.
    np.testing.assert_allclose(pairwise, [3.5, 12.0])
    np.testing.assert_allclose(out[:, 0], pairwise, rtol=1e-6)


def test_factorization_machine_gives_a_number_a_vector_it_scales():
    """A width-1 field x meets the others as x * v, v its learned vector."""
    ids = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 2.0]])
    number = np.array([[2.0], [-0.5]])
    fm = FactorizationMachine(seed=0)
    out = fm({"ids": tf.constant(ids, tf.float32),
              "number": tf.constant(number, tf.float32)}).numpy()
    (v,) = fm.trainable_variables
    assert v.shape == (1, 3)
    np.testing.assert_allclose(out[:, 0], number[:, 0] * (ids @ v.numpy()[0]), rtol=1e-5)
