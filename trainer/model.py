"""The multi-task ranking model: features -> shared bottom -> one tower and
one TFRS ranking task per config task.

The model's `call` returns each task's served prediction (a probability for
binary tasks); `compute_loss` weights each task's loss by the config.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from pipeline import config as config_lib
from trainer.embedding import FeatureEmbedding
from trainer.seeds import layer_seed


def mlp(units: Sequence[int], name: str, seed: int) -> tf.keras.Sequential:
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(
            u, activation="relu", name=f"{name}_{i}",
            kernel_initializer=tf.keras.initializers.GlorotUniform(
                seed=layer_seed(seed, f"{name}_{i}")))
         for i, u in enumerate(units)],
        name=name)


def _global_batch_size(per_example: tf.Tensor) -> tf.Tensor:
    """Examples in this step across all replicas. The last batch of a pass
    splits unevenly (7 as 4 + 3), so it is counted, not inferred from this
    replica's share."""
    context = tf.distribute.get_replica_context()
    size = tf.shape(per_example)[0]
    if context is None or context.num_replicas_in_sync == 1:
        return size
    return context.all_reduce(tf.distribute.ReduceOp.SUM, size)


def _ranking_task(task: config_lib.TaskConfig) -> tfrs.tasks.Ranking:
    # Per-example losses (Reduction.NONE), averaged by compute_loss over the
    # global batch: the reduction that is correct under tf.distribute too.
    if task.type == "binary":
        return tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            metrics=[tf.keras.metrics.AUC(name=f"{task.name}_auc", from_logits=True)],
            name=f"{task.name}_task")
    return tfrs.tasks.Ranking(
        loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.NONE),
        metrics=[tf.keras.metrics.RootMeanSquaredError(name=f"{task.name}_rmse")],
        name=f"{task.name}_task")


class MultiTaskRankingModel(tfrs.Model):
    """Shared-bottom multi-task ranker composed from the config."""

    def __init__(self, config: config_lib.Config, **kwargs):
        super().__init__(**kwargs)
        self._config_tasks = list(config.tasks)
        seed = config.training.seed
        self.embedding = FeatureEmbedding(config.features, seed=seed, name="features")
        self.bottom = mlp(config.training.bottom_units, "shared_bottom", seed)
        self.towers = {
            t.name: tf.keras.Sequential(
                [mlp(config.training.tower_units, f"{t.name}_tower", seed),
                 tf.keras.layers.Dense(1, name=f"{t.name}_output")], name=f"{t.name}_head")
            for t in self._config_tasks}
        self.ranking_tasks = {t.name: _ranking_task(t) for t in self._config_tasks}
        # tfrs reports each step's loss; this is the mean over every example
        # seen in the epoch, which is what early stopping must compare.
        self.loss_tracker = tf.keras.metrics.Mean(name="mean_loss")

    def task_logits(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Each task's raw output, shape [batch]: a logit for binary tasks,
        the value for regression tasks."""
        shared = self.bottom(self.embedding(features))
        return {name: tf.squeeze(tower(shared), axis=-1) for name, tower in self.towers.items()}

    def call(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        logits = self.task_logits(features)
        return {
            t.name: tf.sigmoid(logits[t.name]) if t.type == "binary" else logits[t.name]
            for t in self._config_tasks}

    def compute_loss(self, inputs: Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]],
                     training: bool = False) -> tf.Tensor:
        features, labels = inputs
        logits = self.task_logits(features)
        per_example_total = 0.0
        for task in self._config_tasks:
            # [batch, 1]: Keras losses average over the last axis.
            per_example = self.ranking_tasks[task.name](
                labels=labels[task.label_key][:, None], predictions=logits[task.name][:, None])
            per_example_total += task.loss_weight * per_example
        self.loss_tracker.update_state(per_example_total)
        return tf.nn.compute_average_loss(
            per_example_total, global_batch_size=_global_batch_size(per_example_total))

    def _with_mean_loss(self, logs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        logs = dict(logs)
        logs["loss"] = logs["total_loss"] = self.loss_tracker.result()
        return logs

    def train_step(self, inputs):
        return self._with_mean_loss(super().train_step(inputs))

    def test_step(self, inputs):
        return self._with_mean_loss(super().test_step(inputs))
