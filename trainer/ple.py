"""CGC and PLE (Tang et al. 2020, Progressive Layered Extraction).

An extraction layer (CGC) has shared experts and each task's own experts;
each task's gate mixes its own and the shared experts. PLE stacks
extraction layers: every layer but the last also has a shared gate over all
experts, whose mixture is the next layer's shared input. CGC is PLE with
one extraction layer.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mtrank.trainer.experts import ExpertGroup, Gate

# Key of the shared path between extraction layers; task names start with a
# letter, so it cannot clash with one.
SHARED = "_shared"


class ExtractionLayer(tf.keras.layers.Layer):
    """One CGC level: {task: input, SHARED: input} -> {task: mixture} (and the
    shared mixture unless it is the last level)."""

    def __init__(self, task_names: Sequence[str], shared_experts: int, task_experts: int,
                 units: Sequence[int], seed: int, dropout: float = 0.0,
                 normalization: str = "none", last: bool = True, **kwargs):
        super().__init__(**kwargs)
        level = self.name
        self.shared_experts = ExpertGroup(shared_experts, units, seed, dropout, normalization,
                                          name=f"{level}_shared_expert")
        self.task_experts = {t: ExpertGroup(task_experts, units, seed, dropout, normalization,
                                            name=f"{level}_{t}_expert") for t in task_names}
        self.task_gates = {t: Gate(task_experts + shared_experts, seed, name=f"{level}_{t}_gate")
                           for t in task_names}
        self.shared_gate = None if last else Gate(
            shared_experts + len(task_names) * task_experts, seed, name=f"{level}_shared_gate")

    def call(self, inputs: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
        shared = self.shared_experts(inputs[SHARED], training=training)
        own = {t: group(inputs[t], training=training) for t, group in self.task_experts.items()}
        outputs = {t: gate(inputs[t], tf.concat([own[t], shared], axis=1))
                   for t, gate in self.task_gates.items()}
        if self.shared_gate is not None:
            outputs[SHARED] = self.shared_gate(
                inputs[SHARED], tf.concat(list(own.values()) + [shared], axis=1))
        return outputs


class PLE(tf.keras.layers.Layer):
    def __init__(self, task_names: Sequence[str], extraction_layers: int, shared_experts: int,
                 task_experts: int, units: Sequence[int], seed: int, dropout: float = 0.0,
                 normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        self._task_names = list(task_names)
        self.levels = [
            ExtractionLayer(task_names, shared_experts, task_experts, units, seed, dropout,
                            normalization,
                            last=i == extraction_layers - 1, name=f"ple{i}")
            for i in range(extraction_layers)]

    def call(self, x: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
        inputs = {name: x for name in self._task_names + [SHARED]}
        for level in self.levels:
            inputs = level(inputs, training=training)
        return {name: inputs[name] for name in self._task_names}

    @property
    def shared_variables(self) -> List[tf.Variable]:
        """The last level's shared experts: the last layer all tasks share."""
        return self.levels[-1].shared_experts.last_kernels
