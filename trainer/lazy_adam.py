"""LazyAdam: Adam that touches only the embedding rows a batch looks up."""
from __future__ import annotations

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam, except for sparse gradients (embedding tables): only the rows in
    the batch have their moments updated and take a step.

    Keras' Adam decays every row's moments and moves every row on every
    step, so a row keeps moving on its decaying momentum for tens of steps
    after the batch that looked it up, each step the full normalised
    size: a rare id drifts far on the evidence of one example, and a
    table's every row is rewritten each step. Here a row moves once per
    batch that holds it (the sparse Adam of TensorFlow Addons' LazyAdam and
    of PyTorch's SparseAdam). Dense variables are updated as by Adam."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
                 / (1 - tf.pow(beta_1, step)))
        # A row looked up several times in the batch: one step, on the sum.
        rows, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(rows)[0])
        key = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[key], self._velocities[key]
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(
            alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
