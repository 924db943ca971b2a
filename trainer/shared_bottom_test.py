"""Tests of trainer/shared_bottom.py."""
import numpy as np
import tensorflow as tf

from mtrank.trainer.shared_bottom import SharedBottom


def test_every_task_reads_the_same_bottom_and_dropout_follows_training():
    body = SharedBottom(["a", "b"], [8, 4], seed=0, dropout=0.5)
    x = tf.random.stateless_normal([32, 5], seed=[5, 6])
    out = body(x, training=False)
    np.testing.assert_array_equal(out["a"].numpy(), out["b"].numpy())
    assert not np.allclose(body(x, training=True)["a"].numpy(), out["a"].numpy())
    assert [v.shape for v in body.shared_variables] == [(8, 4)]
