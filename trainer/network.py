"""TaskNetwork: one full set of the model's trainable layers, features ->
FeatureEmbedding -> [DCN-v2 cross layers] -> body -> one tower per task.

The model holds `model.ensemble_size` of them, each seeded apart, each
trained on its own loss and averaged when served (trainer/model.py).
"""
from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.architectures import build_body
from mtrank.trainer.cross import CrossStack
from mtrank.trainer.embedding import FeatureEmbedding
from mtrank.trainer.towers import task_tower


class TaskNetwork(tf.keras.layers.Layer):
    """Maps transformed features to each task tower's own output, [batch]:
    a logit for binary tasks (of P(task | parent) for an ESMM task), the
    value for regression tasks."""

    def __init__(self, config: config_lib.Config, seed: int, **kwargs):
        super().__init__(**kwargs)
        model = config.model
        self.embedding = FeatureEmbedding(config.features, seed=seed, name="features")
        self.cross = (CrossStack(model.cross_layers, model.cross_projection_dim, seed, name="cross")
                      if model.cross_layers else None)
        self.body = build_body(config, seed)
        self.towers = {t.name: task_tower(t.name, config.training.tower_units, seed, model.dropout,
                                          model.normalization)
                       for t in config.tasks}

    def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
        x = self.embedding(features)
        if self.cross is not None:
            x = self.cross(x)
        tower_inputs = self.body(x, training=training)
        return {name: tf.squeeze(tower(tower_inputs[name], training=training), axis=-1)
                for name, tower in self.towers.items()}

    @property
    def shared_variables(self) -> List[tf.Variable]:
        """The body's last layer that every task shares (for GradNorm)."""
        return self.body.shared_variables
