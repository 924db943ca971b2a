"""Tests of trainer/mmoe.py."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.mmoe import MMoE


def test_each_task_mixes_the_shared_experts_through_its_own_gate():
    mmoe = MMoE(["a", "b"], num_experts=3, units=[6, 4], seed=0)
    x = tf.random.stateless_normal([5, 7], seed=[3, 4])
    out = mmoe(x)
    assert out["a"].shape == (5, 4)
    assert not np.allclose(out["a"].numpy(), out["b"].numpy())
    # Gradients of either task reach every expert (they are shared).
    for task in ("a", "b"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(mmoe(x)[task])
        grads = tape.gradient(loss, mmoe.shared_variables)
        assert len(grads) == 3 and all(float(tf.norm(g)) > 0 for g in grads)
