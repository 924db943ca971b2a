"""Tests of trainer/position.py."""
import numpy as np
import pytest
import tensorflow as tf

from mtrank.trainer.position import MISSING_POSITION, PositionTower


def test_buckets_clip_large_positions_and_keep_missing_apart():
    tower = PositionTower(4, "product")
    buckets = tower.buckets(tf.constant([0, 1, 3, 4, 100, MISSING_POSITION])).numpy()
    assert buckets.tolist() == [0, 1, 3, 3, 3, 4]


def test_combine_product_and_additive_forms():
    position = tf.constant([0, 2, MISSING_POSITION])
    task_logit = tf.constant([0.5, -1.0, 2.0])
    for form in ("product", "additive"):
        tower = PositionTower(3, form)
        tower(position)
        tower.logits.embeddings.assign([[2.0], [1.0], [-1.0], [0.0]])
        position_logit = np.array([2.0, -1.0, 0.0], np.float32)
        combined = tower.combine(task_logit, position).numpy()
        if form == "product":
            expected = tf.sigmoid(position_logit) * tf.sigmoid(task_logit)
            np.testing.assert_allclose(tf.sigmoid(combined).numpy(), expected.numpy(), rtol=1e-5)
        else:
            np.testing.assert_allclose(combined, task_logit.numpy() + position_logit, rtol=1e-6)


def test_product_form_recovers_position_free_ranking_from_biased_clicks():
    # Clicks = relevance x examination(position); items at the top are the
    # less relevant ones, so the raw click rate ranks relevance wrongly.
    rng = np.random.RandomState(0)
    n = 4000
    relevance_id = rng.randint(0, 2, n)
    relevance = np.where(relevance_id == 1, 0.6, 0.3)
    # Mostly, not only, at their typical positions: position and item are
    # not confounded, so the tower can tell them apart.
    usual = rng.rand(n) < 0.8
    top, low = rng.randint(0, 2, n), rng.randint(3, 6, n)
    position = np.where((relevance_id == 1) == usual, low, top)
    examined = (1.0 + position) ** -1.5
    clicks = (rng.rand(n) < relevance * examined).astype(np.float32)
    assert clicks[relevance_id == 1].mean() < clicks[relevance_id == 0].mean()

    tower = PositionTower(8, "product")
    item_logit = tf.Variable(tf.zeros([2]))
    tower(tf.constant(position))
    optimizer = tf.keras.optimizers.Adam(0.1)
    ids, pos, y = tf.constant(relevance_id), tf.constant(position), tf.constant(clicks)
    variables = [item_logit] + tower.trainable_variables

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            logit = tower.combine(tf.gather(item_logit, ids), pos)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logit))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(300):
        step()
    served = tf.sigmoid(item_logit).numpy()  # position-free
    assert served[1] > served[0]



def test_transform_writes_position_only_when_towers_use_it():
    """Transform passes `position` to training (missing: MISSING_POSITION).
    Serving parses only the config's features; the Transform graph prunes
    outputs of raw inputs it is not fed (as it does for the labels), so the
    served model neither needs nor sees a position."""
    from mtrank.base import config as config_lib
    from mtrank.trainer import preprocessing

    raw = {"model_name": "m",
           "features": [{"name": "user_id", "kind": "categorical", "dtype": "string"}],
           "tasks": [{"name": "click", "feedback": "click"}]}
    inputs = {
        "user_id": tf.sparse.from_dense(tf.constant([["u1"], ["u2"], ["u3"]])),
        "click_label": tf.sparse.from_dense(tf.constant([[1.0], [0.0], [1.0]])),
        config_lib.POSITION: tf.SparseTensor([[0, 0], [2, 0]], tf.constant([4, 0], tf.int64),
                                             [3, 1]),
    }
    without = preprocessing.transform_config(config_lib.config_from_dict(raw), inputs)
    assert config_lib.POSITION not in without
    with_towers = config_lib.config_from_dict(dict(raw, model={"position_tasks": ["click"]}))
    outputs = preprocessing.transform_config(with_towers, inputs)
    assert outputs[config_lib.POSITION].numpy().tolist() == [4, MISSING_POSITION, 0]
    del inputs[config_lib.POSITION]
    with pytest.raises(ValueError, match="model.position_tasks"):
        preprocessing.transform_config(with_towers, inputs)
