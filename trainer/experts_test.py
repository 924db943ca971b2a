"""Tests of trainer/experts.py."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.experts import ExpertGroup, Gate


def test_expert_group_stacks_distinct_experts():
    group = ExpertGroup(3, [8, 5], seed=0, name="experts")
    out = group(tf.random.stateless_normal([4, 6], seed=[0, 1])).numpy()
    assert out.shape == (4, 3, 5)
    assert not np.allclose(out[:, 0], out[:, 1])
    assert [k.shape for k in group.last_kernels] == [(8, 5)] * 3


def test_gate_mixes_experts_by_its_softmax():
    gate = Gate(3, seed=0, name="gate")
    x = tf.random.stateless_normal([4, 6], seed=[2, 3])
    experts = tf.random.stateless_normal([4, 3, 5], seed=[4, 5])
    mixed = gate(x, experts).numpy()
    weights = gate.probabilities(x).numpy()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    expected = np.einsum("be,beu->bu", weights, experts.numpy())
    np.testing.assert_allclose(mixed, expected, rtol=1e-5)
    # Weights depend on the example: the gate routes per input.
    assert not np.allclose(weights[0], weights[1])
