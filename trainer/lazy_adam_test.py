"""LazyAdam against Keras' Adam on hand-built gradients."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.lazy_adam import LazyAdam


def _train(optimizer, batches, rows=5):
    table = tf.Variable(np.arange(rows * 2, dtype=np.float32).reshape(rows, 2))
    dense = tf.Variable(np.ones(3, np.float32))
    for ids in batches:
        with tf.GradientTape() as tape:
            looked_up = tf.gather(table, ids)
            loss = tf.reduce_sum(looked_up * looked_up) + tf.reduce_sum(dense * [1.0, 2.0, 3.0])
        optimizer.apply_gradients(zip(tape.gradient(loss, [table, dense]), [table, dense]))
    return table.numpy(), dense.numpy()


def test_rows_outside_the_batch_stay_where_they_are():
    table, _ = _train(LazyAdam(0.1), [[1, 1, 3], [3]])
    start = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(table[[0, 2, 4]], start[[0, 2, 4]])
    # Row 1 took one step (the first batch), row 3 two; Adam's first step
    # is the learning rate against the gradient's sign.
    np.testing.assert_allclose(table[1], start[1] - 0.1, rtol=1e-5)
    assert np.all(table[3] < start[3] - 0.1)
    adam_table, _ = _train(tf.keras.optimizers.Adam(0.1), [[1, 1, 3], [3]])
    assert np.all(adam_table[1] < table[1])  # Adam moved row 1 again in step 2


def test_is_adam_when_every_row_is_in_every_batch_and_for_dense_variables():
    batches = [[0, 1, 2, 3, 4, 4], [4, 3, 2, 1, 0]] * 3
    lazy_table, lazy_dense = _train(LazyAdam(0.05), batches)
    adam_table, adam_dense = _train(tf.keras.optimizers.Adam(0.05), batches)
    np.testing.assert_allclose(lazy_table, adam_table, rtol=1e-5)
    np.testing.assert_allclose(lazy_dense, adam_dense, rtol=1e-6)
