"""Tests of trainer/network.py: how the interactions reach the logits."""
import numpy as np
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.network import TaskNetwork
from mtrank_testing import trainer_util as tu


def test_without_interactions_the_network_has_no_interaction_layers():
    network = TaskNetwork(tu.small_config(), seed=1)
    network(tu.random_transformed_batch(tu.small_config(), 4))
    assert network.user_item_dot is None and network.fm is None
    assert not network.interaction_weights


def test_the_user_item_dot_reaches_every_task_logit_through_its_own_weight():
    """Raising one task's weight on the dot product by 1 adds exactly the
    dot product to that task's logit and to no other's: a direct path."""
    config = tu.small_config(model={"user_item_dot": True})
    network = TaskNetwork(config, seed=1)
    features = tu.random_transformed_batch(config, 16, seed=2)
    before = {name: logit.numpy() for name, logit in network(features).items()}
    vectors = network.embedding(features, per_feature=True)
    dot = np.sum(vectors[config_lib.USER_ID].numpy() * vectors[config_lib.ITEM_ID].numpy(),
                 axis=1)
    assert np.all(dot != 0)
    for task in config.tasks:
        kernel = network.interaction_weights[task.name].kernel
        np.testing.assert_array_equal(kernel.numpy(), [[1.0]])  # the sum of a plain MF
        kernel.assign_add([[1.0]])
        after = {name: logit.numpy() for name, logit in network(features).items()}
        kernel.assign_sub([[1.0]])
        for name in before:
            expected = before[name] + (dot if name == task.name else 0.0)
            np.testing.assert_allclose(after[name], expected, rtol=1e-5, atol=1e-6)


def test_interactions_also_enter_the_body_beside_the_cross_layers():
    config = tu.small_config(model={"user_item_dot": True, "fm_interaction": True,
                                    "cross_layers": 1})
    network = TaskNetwork(config, seed=1)
    features = tu.random_transformed_batch(config, 4)
    with tf.GradientTape() as tape:
        logits = network(features)
        body_loss = tf.add_n([tf.reduce_sum(logit) for logit in logits.values()])
    width = network.embedding(features).shape[-1]
    bottom_kernel = network.body.trainable_variables[0]
    assert bottom_kernel.shape[0] == width + 2  # the cross output, the dot, the FM term
    for task in config.tasks:
        assert network.interaction_weights[task.name].kernel.shape == (2, 1)
    # The interaction layers are trained: the FM projections get gradients.
    grads = tape.gradient(body_loss, network.fm.trainable_variables)
    assert grads and all(np.any(g.numpy() != 0) for g in grads)
