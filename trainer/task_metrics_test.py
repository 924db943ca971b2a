"""Tests of trainer/task_metrics.py."""
import pytest
import tensorflow as tf

from mtrank.trainer.task_metrics import CurrentValue, WeightedTaskLoss


def test_weighted_task_loss_averages_each_task_over_its_own_examples():
    metric = WeightedTaskLoss([1.0, 2.0])
    metric.update_state(0, tf.constant([1.0, 3.0]), tf.constant([1.0, 1.0]))
    metric.update_state(1, tf.constant([5.0, 7.0, 100.0]), tf.constant([1.0, 1.0, 0.0]))
    metric.update_state(0, tf.constant([5.0]), tf.constant([1.0]))
    assert float(metric.result()) == pytest.approx(1.0 * 3.0 + 2.0 * 6.0)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_current_value_keeps_the_last_update():
    metric = CurrentValue("click_weight")
    metric.update_state(2.0)
    metric.update_state(0.5)
    assert float(metric.result()) == 0.5
