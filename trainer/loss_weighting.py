"""How the task losses add up to the trained loss (`model.loss_weighting`).

Each strategy is a small layer: called with {task: loss} (each loss this
replica's share of the task's mean over the global batch) it returns the
loss to minimise, and `task_weights()` gives the factor each task's loss
gets, which the model logs as `<task>_weight`. tasks[].loss_weight scales a
task's loss first under every strategy.

- fixed: the config's loss weights.
- uncertainty (Kendall, Gal & Cipolla 2018): a learned log-variance s per
  task; loss exp(-s) L + s/2 for binary tasks, exp(-s) L / 2 + s/2 for
  regression; at the optimum exp(-s) follows 1/L, so noisier tasks count less.
- gradnorm (Chen et al. 2018): weights w (summing to the number of tasks)
  trained so that each task's gradient norm at the last shared layer, G = w
  |grad L|, approaches mean(G) r^alpha, r its loss relative to its first
  loss, over the mean of that: tasks that train slower get more weight.
- dwa (Liu, Johns & Davison 2019): after each epoch, w = T softmax(r / temp)
  with r each task's mean loss over the last two epochs' ratio; 1 before.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.replicas import replicas_in_sync, sum_over_replicas


class LossWeighting(tf.keras.layers.Layer):
    """Fixed weights: sum over tasks of loss_weight x loss."""

    # Whether train_step must call `weight_gradient` with per-task gradients.
    needs_task_gradients = False

    def __init__(self, tasks: Sequence[config_lib.TaskConfig], **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.task_names = [t.name for t in tasks]
        self._scale = tf.constant([float(t.loss_weight) for t in tasks])

    def learned_weights(self) -> tf.Tensor:
        """[tasks] factors on top of loss_weight."""
        return tf.ones([len(self.task_names)])

    def task_weights(self) -> Dict[str, tf.Tensor]:
        weights = self._scale * self.learned_weights()
        return {name: weights[i] for i, name in enumerate(self.task_names)}

    def _stacked(self, task_losses: Dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.stack([tf.cast(task_losses[name], tf.float32) for name in self.task_names])

    def call(self, task_losses: Dict[str, tf.Tensor]) -> tf.Tensor:
        weights = tf.stop_gradient(self._scale * self.learned_weights())
        return tf.reduce_sum(weights * self._stacked(task_losses))

    def callbacks(self) -> List[tf.keras.callbacks.Callback]:
        return []


class UncertaintyWeighting(LossWeighting):
    def __init__(self, tasks: Sequence[config_lib.TaskConfig], **kwargs):
        super().__init__(tasks, **kwargs)
        # 1/sigma^2 for a likelihood of class probabilities, 1/(2 sigma^2) for a Gaussian.
        self._precision_factor = tf.constant(
            [1.0 if t.type == "binary" else 0.5 for t in tasks])
        self.log_variances = self.add_weight(
            name="log_variances", shape=[len(tasks)], initializer="zeros", trainable=True)

    def learned_weights(self) -> tf.Tensor:
        return self._precision_factor * tf.exp(-self.log_variances)

    def call(self, task_losses: Dict[str, tf.Tensor]) -> tf.Tensor:
        weighted = tf.reduce_sum(
            self._scale * self.learned_weights() * self._stacked(task_losses))
        # The log-variance term is not a per-example loss: each replica adds
        # its share so that the sum over replicas counts it once.
        return weighted + 0.5 * tf.reduce_sum(self.log_variances) / replicas_in_sync()


class GradNormWeighting(LossWeighting):
    needs_task_gradients = True

    def __init__(self, tasks: Sequence[config_lib.TaskConfig], alpha: float, **kwargs):
        super().__init__(tasks, **kwargs)
        self._alpha = float(alpha)
        # Same value on every replica: each replica computes it from globally
        # reduced losses and gradient norms.
        self.weights_var = self.add_weight(
            name="gradnorm_weights", shape=[len(tasks)], initializer="ones", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.initial_losses = self.add_weight(
            name="initial_losses", shape=[len(tasks)], initializer="zeros", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def learned_weights(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.weights_var)

    def weight_gradient(self, task_losses: Dict[str, tf.Tensor],
                        task_gradient_norm: Callable[[str], tf.Tensor]) -> tf.Tensor:
        """The gradient of sum |G_t - target_t| w.r.t. the weights, targets
        held constant (this replica's share of it). `task_gradient_norm(t)`
        is the norm of the global-batch gradient of loss_weight x task t's
        loss at the shared layer."""
        losses = self._scale * sum_over_replicas(tf.stop_gradient(self._stacked(task_losses)))
        initial = tf.where(self.initial_losses > 0, self.initial_losses, losses)
        self.initial_losses.assign(initial)
        relative = losses / tf.maximum(initial, 1e-12)
        inverse_rate = relative / tf.reduce_mean(relative)
        norms = tf.stack([task_gradient_norm(name) for name in self.task_names])
        weighted_norms = self.learned_weights() * norms
        target = tf.reduce_mean(weighted_norms) * inverse_rate ** self._alpha
        # The optimizer sums gradients over replicas.
        return tf.sign(weighted_norms - target) * norms / replicas_in_sync()

    def renormalise(self) -> None:
        """Weights stay positive and sum to the number of tasks."""
        weights = tf.maximum(self.weights_var, 1e-3)
        self.weights_var.assign(weights * len(self.task_names) / tf.reduce_sum(weights))


class DWAWeighting(LossWeighting):
    def __init__(self, tasks: Sequence[config_lib.TaskConfig], temperature: float, **kwargs):
        super().__init__(tasks, **kwargs)
        self.temperature = float(temperature)
        self.weights_var = self.add_weight(
            name="dwa_weights", shape=[len(tasks)], initializer="ones", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # The last epoch's losses (0 before the first) are variables, not
        # callback state, so that a training resumed from its checkpoint
        # goes on weighting from where it stopped.
        self.previous_losses = self.add_weight(
            name="dwa_previous_losses", shape=[len(tasks)], initializer="zeros",
            trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def learned_weights(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.weights_var)

    def callbacks(self) -> List[tf.keras.callbacks.Callback]:
        return [DWACallback(self)]


class DWACallback(tf.keras.callbacks.Callback):
    """Sets the DWA weights at the end of each epoch from the epoch's mean
    training loss per task (the `<task>_loss` the model logs)."""

    def __init__(self, weighting: DWAWeighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        missing = [f"{n}_loss" for n in self.weighting.task_names if f"{n}_loss" not in logs]
        if missing:
            raise KeyError(f"DWA needs the per-task losses {missing} in the epoch logs")
        losses = tf.constant([float(logs[f"{n}_loss"]) for n in self.weighting.task_names])
        previous = tf.convert_to_tensor(self.weighting.previous_losses)
        self.weighting.previous_losses.assign(losses)
        if not bool(tf.reduce_any(previous > 0)):  # the first epoch: nothing to compare
            return
        ratios = losses / tf.maximum(previous, 1e-12)
        weights = len(ratios) * tf.nn.softmax(ratios / self.weighting.temperature)
        self.weighting.weights_var.assign(weights)


LOSS_WEIGHTINGS: Dict[str, Callable[[config_lib.Config], LossWeighting]] = {
    "fixed": lambda config: LossWeighting(config.tasks, name="fixed_weighting"),
    "uncertainty": lambda config: UncertaintyWeighting(config.tasks, name="uncertainty_weighting"),
    "gradnorm": lambda config: GradNormWeighting(
        config.tasks, config.model.gradnorm_alpha, name="gradnorm_weighting"),
    "dwa": lambda config: DWAWeighting(
        config.tasks, config.model.dwa_temperature, name="dwa_weighting"),
}


def build_loss_weighting(config: config_lib.Config) -> LossWeighting:
    return LOSS_WEIGHTINGS[config.model.loss_weighting](config)
