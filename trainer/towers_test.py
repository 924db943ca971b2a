"""Tests of trainer/towers.py."""
import tensorflow as tf

from mtrank.trainer.towers import task_tower


def test_tower_outputs_one_float32_value_even_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tower = task_tower("click", [8], seed=0, dropout=0.1)
        out = tower(tf.ones([5, 4], tf.float16))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert out.shape == (5, 1) and out.dtype == tf.float32
    assert tower.layers[0].layers[0].compute_dtype == "float16"
