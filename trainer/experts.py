"""Experts and gates, the parts MMoE, CGC and PLE are built from."""
from __future__ import annotations

from typing import List, Sequence

import tensorflow as tf

from mtrank.trainer.mlp import last_kernel, mlp
from mtrank.trainer.seeds import layer_seed


class ExpertGroup(tf.keras.layers.Layer):
    """`num_experts` MLPs of the same shape on the same input; the output
    stacks them as [batch, num_experts, units[-1]]."""

    def __init__(self, num_experts: int, units: Sequence[int], seed: int, dropout: float = 0.0,
                 normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.experts = [mlp(units, f"{self.name}_{i}", seed, dropout, normalization)
                        for i in range(num_experts)]

    def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
        return tf.stack([expert(x, training=training) for expert in self.experts], axis=1)

    @property
    def last_kernels(self) -> List[tf.Variable]:
        return [last_kernel(expert) for expert in self.experts]


class Gate(tf.keras.layers.Layer):
    """A softmax over experts computed from the gate's input; returns the
    experts' outputs mixed by it, [batch, units]."""

    def __init__(self, num_experts: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.logits = tf.keras.layers.Dense(
            num_experts, name=f"{self.name}_logits",
            kernel_initializer=tf.keras.initializers.GlorotUniform(
                seed=layer_seed(seed, self.name)))

    def mix(self, gate_input: tf.Tensor, experts: tf.Tensor) -> tf.Tensor:
        return tf.einsum("be,beu->bu", self.probabilities(gate_input), experts)

    def probabilities(self, gate_input: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(self.logits(gate_input), axis=-1)

    def call(self, gate_input: tf.Tensor, experts: tf.Tensor) -> tf.Tensor:
        return self.mix(gate_input, experts)
