"""The multi-task ranking model, composed from the config:

`model.ensemble_size` TaskNetworks (trainer/network.py: features ->
FeatureEmbedding -> [DCN-v2 cross layers, user . item and FM interactions]
-> body, the `model.architecture` -> one tower per task, the interactions
also added to each logit) -> one TFRS ranking task per task, whose losses the
`model.loss_weighting` strategy adds up (trainer/loss_weighting.py).

Tasks may hang off a binary parent task: `condition` masks the task's loss
to the parent's positives; `depends_on` (ESMM) trains the product
P(parent) x P(task | parent) over all impressions. Position towers
(trainer/position.py) join in training only.

An ensemble's members are seeded apart and each trains on its own loss (a
task's loss is the mean of the members' losses, so no member's gradient
depends on another's output); the served outputs and the task metrics are
the mean of the members' outputs, probabilities for binary tasks.

`call` returns the served outputs: each task's prediction (a probability for
binary tasks), and P(task | parent) for ESMM tasks as `<task>_given_<parent>`;
never the position.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from mtrank.base import config as config_lib
from mtrank.trainer.funnel import product_logit
from mtrank.trainer.loss_weighting import build_loss_weighting
from mtrank.trainer.network import TaskNetwork
from mtrank.trainer.position import PositionTower
from mtrank.trainer.replicas import sum_over_replicas
from mtrank.trainer.task_metrics import CurrentValue, WeightedTaskLoss


def _ranking_task(task: config_lib.TaskConfig) -> tfrs.tasks.Ranking:
    # Per-example losses (Reduction.NONE), averaged by task_losses over the
    # global batch: the reduction that is correct under tf.distribute too.
    # Keras averages them over the last axis, the ensemble's members.
    loss = (tf.keras.losses.BinaryCrossentropy(from_logits=True,
                                               reduction=tf.keras.losses.Reduction.NONE)
            if task.type == "binary" else
            tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.NONE))
    return tfrs.tasks.Ranking(loss=loss, name=f"{task.name}_task")


def _task_metric(task: config_lib.TaskConfig) -> tf.keras.metrics.Metric:
    """Of the ensemble's prediction (a probability for binary tasks), so it
    is updated by the model, not by the task, which sees each member."""
    if task.type == "binary":
        return tf.keras.metrics.AUC(name=f"{task.name}_auc")
    return tf.keras.metrics.RootMeanSquaredError(name=f"{task.name}_rmse")


def _predictions(task: config_lib.TaskConfig, logits: tf.Tensor) -> tf.Tensor:
    return tf.sigmoid(logits) if task.type == "binary" else logits


def _mean(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    return tensors[0] if len(tensors) == 1 else tf.add_n(list(tensors)) / len(tensors)


def _parents_first(tasks: Sequence[config_lib.TaskConfig]) -> List[config_lib.TaskConfig]:
    """The tasks ordered so that every parent comes before its children
    (the config is checked for cycles)."""
    ordered: List[config_lib.TaskConfig] = []
    done = set()
    while len(ordered) < len(tasks):
        for task in tasks:
            if task.name not in done and (task.parent is None or task.parent in done):
                ordered.append(task)
                done.add(task.name)
    return ordered


class MultiTaskRankingModel(tfrs.Model):
    """Multi-task ranker: a thin composition of the config's layers."""

    def __init__(self, config: config_lib.Config, **kwargs):
        super().__init__(**kwargs)
        self._config_tasks = list(config.tasks)
        self._tasks_parents_first = _parents_first(config.tasks)
        model = config.model
        # Member i is seeded training.seed + i: member 0 is the network a
        # one-member model of the same seed has.
        self.members = [TaskNetwork(config, config.training.seed + i, name=f"member_{i}")
                        for i in range(model.ensemble_size)]
        self.position_towers = {
            name: PositionTower(model.max_position, model.position_form, name=f"{name}_position")
            for name in model.position_tasks}
        self.ranking_tasks = {t.name: _ranking_task(t) for t in self._config_tasks}
        self.task_metrics = {t.name: _task_metric(t) for t in self._config_tasks}
        self.loss_weighting = build_loss_weighting(config)
        self._embedding_l2 = model.embedding_l2
        # tfrs reports each step's loss; these are each task's mean loss over
        # every example of the epoch (that the task is defined on), which is
        # what logs and early stopping compare.
        self.task_loss_means = {t.name: tf.keras.metrics.Mean(name=f"{t.name}_loss")
                                for t in self._config_tasks}
        self.weighted_loss = WeightedTaskLoss([t.loss_weight for t in self._config_tasks])
        self.task_weights = {t.name: CurrentValue(name=f"{t.name}_weight")
                             for t in self._config_tasks}

    # --- predictions --------------------------------------------------------

    def member_logits(self, features: Dict[str, tf.Tensor], training=None,
                      position: Optional[tf.Tensor] = None) -> List[Dict[str, tf.Tensor]]:
        """Each member's raw output per task, [batch]: a logit for binary
        tasks (of the product for ESMM tasks), the value for regression
        tasks; position-free unless `position` is given."""
        return [self._chained(member(features, training=training), position)
                for member in self.members]

    def _chained(self, own: Dict[str, tf.Tensor],
                 position: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        logits = {}
        for task in self._tasks_parents_first:
            logit = own[task.name]
            if position is not None and task.name in self.position_towers:
                logit = self.position_towers[task.name].combine(logit, position)
            if task.depends_on:
                logit = product_logit(logits[task.depends_on], logit)
            logits[task.name] = logit
        return logits

    def _member_outputs(self, own: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        logits = self._chained(own)
        outputs = {t.name: _predictions(t, logits[t.name]) for t in self._config_tasks}
        for task in self._config_tasks:
            if task.depends_on:
                outputs[task.conditional_output] = tf.sigmoid(own[task.name])
        return outputs

    def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
        members = [self._member_outputs(member(features, training=training))
                   for member in self.members]
        return {name: _mean([outputs[name] for outputs in members]) for name in members[0]}

    # --- losses -------------------------------------------------------------

    def task_losses(self, inputs: Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]],
                    training: bool = False) -> Dict[str, tf.Tensor]:
        """Each task's loss: this replica's share of the task's mean loss over
        the global batch. Updates the task metrics.

        The mean is over the examples the task is defined on: every example,
        or for a `condition` task those whose parent label is 1, counted over
        all replicas (a global batch with none of them contributes 0).
        Position towers join when configured; the features must then hold
        `position` (Transform writes it for training and evaluation data).
        """
        features, labels = inputs
        position = None
        if self.position_towers:
            if config_lib.POSITION not in features:
                raise ValueError(
                    f"model.position_tasks {sorted(self.position_towers)}: the training "
                    f"features have no '{config_lib.POSITION}' (logs without positions?)")
            position = features[config_lib.POSITION]
        each_member = self.member_logits(features, training, position)
        losses = {}
        for index, task in enumerate(self._config_tasks):
            # [batch, members]: Keras losses average over the last axis.
            logits = tf.stack([member[task.name] for member in each_member], axis=1)
            y = tf.reshape(tf.cast(labels[task.label_key], tf.float32), [-1, 1])
            if task.condition:
                parent_label = labels[f"{task.condition}_label"]
                mask = tf.reshape(tf.cast(parent_label > 0.5, tf.float32), [-1, 1])
            else:
                mask = tf.ones_like(y)
            per_example = self.ranking_tasks[task.name](
                labels=tf.broadcast_to(y, tf.shape(logits)), predictions=logits,
                sample_weight=mask, training=training)
            self.task_metrics[task.name].update_state(
                y, tf.reduce_mean(_predictions(task, logits), axis=1, keepdims=True),
                sample_weight=mask)
            self.task_loss_means[task.name].update_state(per_example, sample_weight=mask[:, 0])
            self.weighted_loss.update_state(index, per_example, mask)
            examples = sum_over_replicas(tf.reduce_sum(mask))
            losses[task.name] = tf.reduce_sum(per_example) / tf.maximum(examples, 1.0)
        return losses

    def _loss_and_task_losses(self, inputs: Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]],
                              training: bool) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """compute_loss's loss (the weighted task losses, plus the id
        embedding L2 penalty when configured) and the task losses: the one
        loss path, which `fit`'s steps take as the tests do (train_step keeps
        the task losses, which GradNorm differentiates one by one)."""
        task_losses = self.task_losses(inputs, training=training)
        loss = self.loss_weighting(task_losses)
        if self._embedding_l2:
            loss += self.embedding_penalty(inputs[0])
        return loss, task_losses

    def embedding_penalty(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        """`model.embedding_l2` x the mean over the global batch of each
        example's squared id embedding rows (this replica's share, as each
        task loss is), averaged over the members as the task losses are, so
        each member is penalised as it would be alone. Outside the task
        losses: the loss weighting does not scale it and the logged `loss`
        does not include it, so epochs compare on the task losses."""
        norms = [member.embedding_squared_norms(features) for member in self.members]
        examples = sum_over_replicas(tf.cast(tf.shape(norms[0])[0], tf.float32))
        return self._embedding_l2 * _mean([tf.reduce_sum(n) for n in norms]) / examples

    def compute_loss(self, inputs: Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]],
                     training: bool = False) -> tf.Tensor:
        """The loss `fit` minimises: the task losses added up by the
        `model.loss_weighting` strategy, plus the id embedding L2 penalty
        (this replica's share, as each task loss is). Updates the metrics."""
        return self._loss_and_task_losses(inputs, training)[0]

    def training_callbacks(self) -> List[tf.keras.callbacks.Callback]:
        """Callbacks model.fit must be given (DWA sets its weights per epoch)."""
        return self.loss_weighting.callbacks()

    # --- steps --------------------------------------------------------------

    def _logs(self, with_weights: bool) -> Dict[str, tf.Tensor]:
        """Metrics, each task's epoch-mean loss (`<task>_loss`) and, when
        training, its current weight (`<task>_weight`). `loss`/`total_loss` is
        the sum of the task losses weighted by tasks[].loss_weight under every
        weighting strategy, so that epochs compare on one scale."""
        weight_metrics = {metric.name for metric in self.task_weights.values()}
        logs = {metric.name: metric.result() for metric in self.metrics
                if with_weights or metric.name not in weight_metrics}
        logs["loss"] = logs[self.weighted_loss.name]
        return logs

    # tfrs.Model's steps would call compute_loss too; they are overridden
    # for what they lack. train_step: under mixed precision tfrs applies the
    # gradients of the unscaled loss (float16 gradients underflow; Keras's
    # own step scales through optimizer.minimize), and GradNorm needs each
    # task's gradient. Both steps: tfrs logs this step's loss as `loss` and
    # `total_loss`, which would hide the epoch means of `_logs` that early
    # stopping compares (`val_total_loss`). tfrs also adds Keras's
    # regularisation losses (`self.losses`); the model adds none (weight
    # decay is AdamW's, and `model.embedding_l2` is added by
    # `_loss_and_task_losses`, explicitly rather than through a layer's
    # add_loss, whose list one layer object keeps for all the replicas of a
    # MirroredStrategy step).

    def train_step(self, inputs):
        weighting = self.loss_weighting
        optimizer = self.optimizer
        scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape(persistent=weighting.needs_task_gradients) as tape:
            loss, task_losses = self._loss_and_task_losses(inputs, training=True)
            # Differentiated under mixed precision: scaled, so float16
            # gradients do not underflow.
            loss_to_differentiate = optimizer.get_scaled_loss(loss) if scaled else loss
            if weighting.needs_task_gradients:
                task_losses_to_differentiate = {
                    k: optimizer.get_scaled_loss(v) if scaled else v
                    for k, v in task_losses.items()}

        def gradients(target, variables):
            grads = tape.gradient(target, variables)
            return optimizer.get_unscaled_gradients(grads) if scaled else grads

        variables = self.trainable_variables
        pairs = list(zip(gradients(loss_to_differentiate, variables), variables))
        if weighting.needs_task_gradients:
            shared = [v for member in self.members for v in member.shared_variables]
            loss_weights = {t.name: t.loss_weight for t in self._config_tasks}

            def task_gradient_norm(name):
                """|grad of loss_weight x task loss| over the global batch."""
                grads = gradients(task_losses_to_differentiate[name], shared)
                return loss_weights[name] * tf.linalg.global_norm(
                    [sum_over_replicas(g) for g in grads])

            pairs.append((weighting.weight_gradient(task_losses, task_gradient_norm),
                          weighting.weights_var))
        optimizer.apply_gradients(pairs)
        if weighting.needs_task_gradients:
            weighting.renormalise()
        for name, weight in weighting.task_weights().items():
            self.task_weights[name].update_state(weight)
        return self._logs(with_weights=True)

    def test_step(self, inputs):
        # The loss itself is not returned: the logs are the metrics it updated.
        self.compute_loss(inputs, training=False)
        return self._logs(with_weights=False)
