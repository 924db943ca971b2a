"""Shared-bottom: one MLP whose output every task tower reads."""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mtrank.trainer.mlp import last_kernel, mlp


class SharedBottom(tf.keras.layers.Layer):
    def __init__(self, task_names: Sequence[str], units: Sequence[int], seed: int,
                 dropout: float = 0.0, normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        self._task_names = list(task_names)
        self.bottom = mlp(units, "shared_bottom", seed, dropout, normalization)

    def call(self, x: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
        shared = self.bottom(x, training=training)
        return {name: shared for name in self._task_names}

    @property
    def shared_variables(self) -> List[tf.Variable]:
        """The last layer every task's gradient flows through (for GradNorm)."""
        return [last_kernel(self.bottom)]
