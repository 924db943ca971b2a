"""Tests of trainer/ple.py: CGC keeps tasks' own experts apart; PLE's shared
gate lets them meet at the next level."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.ple import PLE, SHARED, ExtractionLayer

X = tf.random.stateless_normal([6, 5], seed=[0, 1])


def _zero_experts(group):
    for variable in group.trainable_variables:
        variable.assign(tf.zeros_like(variable))


def test_extraction_layer_outputs_and_last_level_has_no_shared_gate():
    inputs = {"a": X, "b": X, SHARED: X}
    last = ExtractionLayer(["a", "b"], 2, 1, [4], seed=0, name="l0")
    assert set(last(inputs)) == {"a", "b"} and last.shared_gate is None
    inner = ExtractionLayer(["a", "b"], 2, 1, [4], seed=0, last=False, name="l1")
    out = inner(inputs)
    assert set(out) == {"a", "b", SHARED} and out[SHARED].shape == (6, 4)


def test_cgc_task_output_ignores_other_tasks_experts():
    cgc = PLE(["a", "b"], extraction_layers=1, shared_experts=2, task_experts=1, units=[4],
              seed=0)
    before = cgc(X)
    _zero_experts(cgc.levels[0].task_experts["b"])
    after = cgc(X)
    np.testing.assert_array_equal(before["a"].numpy(), after["a"].numpy())
    assert not np.allclose(before["b"].numpy(), after["b"].numpy())


def test_ple_second_level_sees_other_tasks_experts_through_the_shared_gate():
    ple = PLE(["a", "b"], extraction_layers=2, shared_experts=2, task_experts=1, units=[4],
              seed=0)
    before = ple(X)
    _zero_experts(ple.levels[0].task_experts["b"])
    assert not np.allclose(before["a"].numpy(), ple(X)["a"].numpy())
    assert len(ple.shared_variables) == 2  # the last level's shared experts
