"""TaskNetwork: one full set of the model's trainable layers, features ->
FeatureEmbedding -> [DCN-v2 cross layers] -> body -> one tower per task,
with optional explicit interactions (trainer/interactions.py) beside the
cross layers and in every task's logit.

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
from mtrank.trainer.interactions import FactorizationMachine, UserItemDot
from mtrank.trainer.towers import task_tower


class TaskNetwork(tf.keras.layers.Layer):
    """Maps transformed features to each task tower's own output, [batch]:
    a logit for binary tasks (of P(task | parent) for an ESMM task), the
    value for regression tasks."""

    def __init__(self, config: config_lib.Config, seed: int, **kwargs):
        super().__init__(**kwargs)
        model = config.model
        self.embedding = FeatureEmbedding(
            config.features, seed=seed, dropout=model.embedding_dropout,
            learning_rate_multiplier=model.embedding_learning_rate_multiplier, name="features")
        self.cross = (CrossStack(model.cross_layers, model.cross_projection_dim, seed, name="cross")
                      if model.cross_layers else None)
        self.user_item_dot = (UserItemDot(seed, name="user_item_dot") if model.user_item_dot
                              else None)
        self.fm = FactorizationMachine(seed, name="fm") if model.fm_interaction else None
        self.body = build_body(config, seed)
        self.towers = {t.name: task_tower(t.name, config.training.tower_units, seed, model.dropout,
                                          model.normalization)
                       for t in config.tasks}
        # The interactions reach each logit through the task's own linear
        # weights (starting at 1, the plain sum of matrix factorisation and
        # FM), not only through the body: a dot product among a hundred deep
        # inputs is easily drowned, and tasks differ in how much of the
        # user x item affinity they carry.
        # Float32, as the towers' outputs are.
        self.interaction_weights = (
            {t.name: tf.keras.layers.Dense(
                1, use_bias=False, dtype="float32", kernel_initializer="ones",
                name=f"{t.name}_interaction_weights")
             for t in config.tasks}
            if self.user_item_dot or self.fm else {})

    def _interactions(self, vectors: Dict[str, tf.Tensor]) -> tf.Tensor:
        """[batch, number of interaction terms]."""
        terms = []
        if self.user_item_dot is not None:
            terms.append(self.user_item_dot(
                (vectors[config_lib.USER_ID], vectors[config_lib.ITEM_ID])))
        if self.fm is not None:
            terms.append(self.fm(vectors))
        return tf.concat(terms, axis=-1)

    def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
        vectors = self.embedding(features, training=training, per_feature=True)
        x = tf.concat(list(vectors.values()), axis=-1)
        if self.cross is not None:
            x = self.cross(x)
        interactions = None
        if self.interaction_weights:
            interactions = self._interactions(vectors)
            # Also beside the cross layers' output, for the body to combine
            # with the context (e.g. an affinity that matters on some surfaces).
            x = tf.concat([x, interactions], axis=-1)
        tower_inputs = self.body(x, training=training)
        logits = {}
        for name, tower in self.towers.items():
            logit = tower(tower_inputs[name], training=training)
            if interactions is not None:
                logit += self.interaction_weights[name](tf.cast(interactions, tf.float32))
            logits[name] = tf.squeeze(logit, axis=-1)
        return logits

    def embedding_squared_norms(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        """[batch]: each example's squared id embedding rows, for the L2 penalty."""
        return self.embedding.squared_norms(features)

    @property
    def shared_variables(self) -> List[tf.Variable]:
        """The body's last layer that every task shares (for GradNorm)."""
        return self.body.shared_variables
