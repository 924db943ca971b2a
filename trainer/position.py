"""PAL-style position bias (Guo et al. 2019): a shallow tower that models
how much an impression's position shows it, in training only.

Trained output: P(task) = P(seen | position) x P(task | seen) (form
"product", PAL) or sigmoid(task logit + position logit) ("additive", the
shallow-tower form). Served scores use the task logit alone, position-free.
"""
from __future__ import annotations

import tensorflow as tf

from mtrank.trainer.funnel import product_logit

# How Transform writes a missing position (the log contract allows none).
MISSING_POSITION = -1


class PositionTower(tf.keras.layers.Layer):
    """A learned logit per position bucket: positions 0 .. max_position - 2
    each have their own, positions >= max_position - 1 share one, and a
    missing position has its own."""

    def __init__(self, max_position: int, form: str, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self._max_position = max_position
        self._form = form
        self.logits = tf.keras.layers.Embedding(
            max_position + 1, 1, embeddings_initializer="zeros", dtype="float32",
            name=f"{self.name}_logits")

    def buckets(self, position: tf.Tensor) -> tf.Tensor:
        position = tf.reshape(tf.cast(position, tf.int64), [-1])
        return tf.where(position < 0, tf.constant(self._max_position, tf.int64),
                        tf.minimum(position, self._max_position - 1))

    def call(self, position: tf.Tensor) -> tf.Tensor:
        """The position logit, [batch]."""
        return tf.reshape(self.logits(self.buckets(position)), [-1])

    def combine(self, task_logit: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
        """The trained logit of a task whose position-free logit is `task_logit`."""
        position_logit = self(position)
        if self._form == "product":
            return product_logit(position_logit, task_logit)
        return task_logit + position_logit


def transformed_position(position: tf.Tensor) -> tf.Tensor:
    """Transform's `position` output, [batch] int64, from the raw [batch]
    values with MISSING_POSITION where an impression had none. Serving
    parses no position, so this output is pruned from the serving graph."""
    return tf.cast(tf.reshape(position, [-1]), tf.int64)
