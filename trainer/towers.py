"""A task's tower: its own MLP and one output unit, a logit for binary tasks
or the value for regression tasks."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mtrank.trainer.mlp import mlp
from mtrank.trainer.seeds import layer_seed


def task_tower(task_name: str, units: Sequence[int], seed: int,
               dropout: float = 0.0, normalization: str = "none") -> tf.keras.Sequential:
    """[batch, d] -> [batch, 1]. The output layer computes in float32 even
    under a mixed_float16 policy: served scores and losses stay float32."""
    return tf.keras.Sequential(
        [mlp(units, f"{task_name}_tower", seed, dropout, normalization),
         tf.keras.layers.Dense(
             1, name=f"{task_name}_output", dtype="float32",
             kernel_initializer=tf.keras.initializers.GlorotUniform(
                 seed=layer_seed(seed, f"{task_name}_output")))],
        name=f"{task_name}_head")
