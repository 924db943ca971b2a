"""Metrics the model logs per epoch beside the task metrics: the weighted
sum of the tasks' mean losses, and each task's current loss weight.

They are Keras metrics, not tensors computed in train_step, because values
a step returns are summed over replicas under tf.distribute; metric results
are aggregated across replicas once.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf


class WeightedTaskLoss(tf.keras.metrics.Metric):
    """sum over tasks of weight_t x (mean of task t's per-example losses over
    the examples it is defined on, since the last reset)."""

    def __init__(self, weights: Sequence[float], name: str = "total_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self._weights = tf.constant(list(weights), tf.float32)
        self.totals = self.add_weight("totals", shape=[len(weights)], initializer="zeros")
        self.counts = self.add_weight("counts", shape=[len(weights)], initializer="zeros")

    def update_state(self, task_index: int, per_example: tf.Tensor, sample_weight: tf.Tensor):
        one_hot = tf.one_hot(task_index, self.totals.shape[0], dtype=tf.float32)
        per_example = tf.reshape(tf.cast(per_example, tf.float32), [-1])
        sample_weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        self.totals.assign_add(one_hot * tf.reduce_sum(per_example * sample_weight))
        self.counts.assign_add(one_hot * tf.reduce_sum(sample_weight))

    def reset_state(self):
        for variable in (self.totals, self.counts):
            variable.assign(tf.zeros_like(variable))

    def result(self) -> tf.Tensor:
        return tf.reduce_sum(self._weights * tf.math.divide_no_nan(self.totals, self.counts))


class CurrentValue(tf.keras.metrics.Metric):
    """The last value given (the same on every replica)."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_weight("value", shape=[], initializer="zeros",
                                     aggregation=tf.VariableAggregation.MEAN)

    def update_state(self, value: tf.Tensor):
        self.value.assign(tf.cast(value, tf.float32))

    def result(self) -> tf.Tensor:
        return tf.identity(self.value)
