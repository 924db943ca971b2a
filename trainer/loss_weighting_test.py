"""Tests of trainer/loss_weighting.py: each strategy does what its paper
says, on toy problems, and inside the model's train step."""
import numpy as np
import pytest
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer import loss_weighting as lw
from mtrank_testing import trainer_util as tu
from mtrank.trainer.model import MultiTaskRankingModel


def _tasks(*specs):
    return [config_lib.TaskConfig(name=name, type=kind, loss_weight=weight)
            for name, kind, weight in specs]


def test_registry_names_are_the_configs():
    assert set(lw.LOSS_WEIGHTINGS) == set(config_lib.LOSS_WEIGHTINGS)


def test_fixed_weights_are_the_config_loss_weights():
    weighting = lw.LossWeighting(_tasks(("a", "binary", 1.0), ("b", "regression", 0.5)))
    losses = {"a": tf.constant(2.0), "b": tf.constant(4.0)}
    assert float(weighting(losses)) == pytest.approx(2.0 + 0.5 * 4.0)
    assert {k: float(v) for k, v in weighting.task_weights().items()} == {"a": 1.0, "b": 0.5}
    assert not weighting.trainable_variables


def test_uncertainty_down_weights_the_noisier_task():
    # Two regression tasks on one shared linear model; b's labels are noisier.
    rng = np.random.RandomState(0)
    x = rng.randn(256, 3).astype(np.float32)
    truth = x @ np.array([1.0, -2.0, 0.5], np.float32)
    y = {"a": truth + 0.1 * rng.randn(256).astype(np.float32),
         "b": truth + 1.0 * rng.randn(256).astype(np.float32)}
    weighting = lw.UncertaintyWeighting(_tasks(("a", "regression", 1.0),
                                               ("b", "regression", 1.0)))
    w = tf.Variable(tf.zeros([3]))
    variables = [w] + weighting.trainable_variables
    optimizer = tf.keras.optimizers.Adam(0.05)

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            prediction = tf.linalg.matvec(x, w)
            losses = {k: tf.reduce_mean(tf.square(v - prediction)) for k, v in y.items()}
            loss = weighting(losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return losses

    for _ in range(400):
        losses = step()
    weights = {k: float(v) for k, v in weighting.task_weights().items()}
    assert weights["b"] < 0.1 * weights["a"]
    # At the optimum the regression weight 1 / (2 sigma^2) is 1 / (2 L).
    for task in ("a", "b"):
        assert weights[task] == pytest.approx(0.5 / float(losses[task]), rel=0.3)


def _gradnorm_config(alpha):
    tasks = [{"name": "big", "feedback": "dwell", "type": "regression",
              "eval": {"min_auc": None, "max_auc_drop": None, "max_mse": 10.0}},
             {"name": "small", "feedback": "click", "type": "binary"}]
    return tu.small_config(tasks=tasks, model={"loss_weighting": "gradnorm",
                                                "gradnorm_alpha": alpha})


def test_gradnorm_balances_gradient_norms_at_the_shared_layer():
    tf.keras.utils.set_random_seed(0)
    config = _gradnorm_config(alpha=0.0)  # alpha 0: equal gradient norms
    model = MultiTaskRankingModel(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    features, labels = tu.random_batch_with_labels(config, 32)
    labels["big_label"] = 10.0 * labels["big_label"]  # ten times the gradient scale

    def weighted_norms():
        with tf.GradientTape(persistent=True) as tape:
            losses = model.task_losses((features, labels))
        weights = model.loss_weighting.task_weights()
        shared = model.members[0].shared_variables
        return {name: float(weights[name]) * float(tf.linalg.global_norm(
            tape.gradient(loss, shared))) for name, loss in losses.items()}

    model(features)
    first = weighted_norms()
    for _ in range(40):
        logs = model.train_step((features, labels))
    last = weighted_norms()
    weights = model.loss_weighting.task_weights()
    assert float(weights["big"]) < 0.5 < 1.5 < float(weights["small"])
    assert float(weights["big"]) + float(weights["small"]) == pytest.approx(2.0, rel=1e-5)
    assert first["big"] / first["small"] > 5
    assert last["big"] / last["small"] < 0.5 * first["big"] / first["small"]
    assert float(logs["big_weight"]) == pytest.approx(float(weights["big"]), rel=1e-6)


def test_gradnorm_gives_the_slower_task_more_weight():
    weighting = lw.GradNormWeighting(_tasks(("a", "binary", 1.0), ("b", "binary", 1.0)),
                                     alpha=1.5)
    # First step records the initial losses; equal gradient norms, so only
    # the relative training rates differ afterwards.
    weighting.weight_gradient({"a": tf.constant(1.0), "b": tf.constant(1.0)},
                              lambda name: tf.constant(1.0))
    grad = weighting.weight_gradient({"a": tf.constant(0.2), "b": tf.constant(0.9)},
                                     lambda name: tf.constant(1.0)).numpy()
    # b's loss fell less (slower): its target norm is higher, so gradient
    # descent raises its weight and lowers a's.
    assert grad[1] < 0 < grad[0]


def test_dwa_weights_follow_the_loss_ratios():
    weighting = lw.DWAWeighting(_tasks(("a", "binary", 1.0), ("b", "binary", 1.0)),
                                temperature=2.0)
    callback, = weighting.callbacks()
    callback.on_epoch_end(0, {"a_loss": 1.0, "b_loss": 1.0})
    np.testing.assert_allclose(weighting.learned_weights().numpy(), [1.0, 1.0])
    callback.on_epoch_end(1, {"a_loss": 0.5, "b_loss": 0.9})
    ratios = np.array([0.5, 0.9])
    expected = 2 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose(weighting.learned_weights().numpy(), expected, rtol=1e-6)
    assert expected[1] > expected[0]  # the task whose loss fell less gets more
    with pytest.raises(KeyError, match="b_loss"):
        callback.on_epoch_end(2, {"a_loss": 0.4})


def test_dwa_resumed_from_a_checkpoint_weights_from_the_epoch_before(tmp_path):
    tasks = _tasks(("a", "binary", 1.0), ("b", "binary", 1.0))
    weighting = lw.DWAWeighting(tasks, temperature=2.0)
    weighting.callbacks()[0].on_epoch_end(0, {"a_loss": 1.0, "b_loss": 1.0})
    checkpoint = tf.train.Checkpoint(weighting=weighting).write(str(tmp_path / "ckpt"))

    resumed = lw.DWAWeighting(tasks, temperature=2.0)
    tf.train.Checkpoint(weighting=resumed).read(checkpoint).assert_consumed()
    resumed.callbacks()[0].on_epoch_end(1, {"a_loss": 0.5, "b_loss": 0.9})

    ratios = np.array([0.5, 0.9])
    np.testing.assert_allclose(resumed.learned_weights().numpy(),
                               2 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum(), rtol=1e-6)


def test_dwa_through_fit_logs_losses_and_weights_per_epoch():
    tf.keras.utils.set_random_seed(0)
    config = tu.small_config(model={"loss_weighting": "dwa", "dwa_temperature": 1.0})
    model = MultiTaskRankingModel(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.run_eagerly = True
    features, labels = tu.random_batch_with_labels(config, 16)
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat(2)
    history = model.fit(dataset, epochs=3, verbose=0,
                        callbacks=model.training_callbacks()).history
    names = [t.name for t in config.tasks]
    for name in names:
        assert len(history[f"{name}_loss"]) == 3 and len(history[f"{name}_weight"]) == 3
        assert history[f"{name}_weight"][:2] == [pytest.approx(1.0 * t.loss_weight) for t in
                                                 config.tasks if t.name == name] * 2
    losses = np.array([history[f"{n}_loss"] for n in names])
    ratios = losses[:, 1] / losses[:, 0]
    expected = 3 * np.exp(ratios) / np.exp(ratios).sum()
    scale = np.array([t.loss_weight for t in config.tasks])
    np.testing.assert_allclose([history[f"{n}_weight"][2] for n in names], scale * expected,
                               rtol=1e-5)


def test_uncertainty_log_variances_train_with_the_model():
    config = tu.small_config(model={"loss_weighting": "uncertainty"})
    model = MultiTaskRankingModel(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    features, labels = tu.random_batch_with_labels(config, 16)
    model(features)
    assert any("log_variances" in v.name for v in model.trainable_variables)
    before = model.loss_weighting.log_variances.numpy().copy()
    logs = model.train_step((features, labels))
    assert not np.allclose(before, model.loss_weighting.log_variances.numpy())
    assert {"click_weight", "click_loss", "loss"} <= set(logs)
