"""MMoE (Ma et al. 2018): experts shared by all tasks, one softmax gate per
task mixing them into that task's tower input."""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mtrank.trainer.experts import ExpertGroup, Gate


class MMoE(tf.keras.layers.Layer):
    def __init__(self, task_names: Sequence[str], num_experts: int, units: Sequence[int],
                 seed: int, dropout: float = 0.0, normalization: str = "none",
                 **kwargs):
        super().__init__(**kwargs)
        self.experts = ExpertGroup(num_experts, units, seed, dropout, normalization,
                                   name="mmoe_expert")
        self.gates = {name: Gate(num_experts, seed, name=f"{name}_gate") for name in task_names}

    def call(self, x: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
        experts = self.experts(x, training=training)
        return {name: gate(x, experts) for name, gate in self.gates.items()}

    @property
    def shared_variables(self) -> List[tf.Variable]:
        return self.experts.last_kernels
