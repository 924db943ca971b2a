"""Tests of trainer/model.py, trainer/embedding.py and trainer/task.py's
build_model on random transformed inputs."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mtrank.trainer import features as features_lib
from mtrank.trainer import task as task_lib
from mtrank_testing import trainer_util as tu
from mtrank.trainer.embedding import FeatureEmbedding
from mtrank.trainer.model import MultiTaskRankingModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 16


@pytest.fixture(scope="module")
def config():
    return tu.small_config()


def _labels(config, features, seed=1):
    """click = (category id == 0): trivially learnable; others random."""
    rng = np.random.RandomState(seed)
    n = int(features["category"].shape[0])
    return {
        "click_label": tf.cast(tf.equal(features["category"], 0), tf.float32),
        "purchase_label": tf.constant(rng.randint(0, 2, n), tf.float32),
        "dwell_label": tf.constant(rng.rand(n) * 3, tf.float32),
    }


def _eager(model):
    """Trains eagerly: tracing train_step runs autograph over all of tf_keras
    (not on autograph's do-not-convert list), ~15 s, too slow for a unit test."""
    model.run_eagerly = True
    return model


def _batch(config, seed=0):
    features = tu.random_transformed_batch(config, BATCH, seed=seed)
    return features, _labels(config, features)


def test_call_returns_one_prediction_per_task(config):
    model = task_lib.build_model(config)
    features, _ = _batch(config)
    outputs = model(features)
    assert set(outputs) == {t.name for t in config.tasks}
    for task in config.tasks:
        out = outputs[task.name].numpy()
        assert out.shape == (BATCH,), task.name
        assert out.dtype == np.float32
        if task.type == "binary":
            assert np.all((out > 0) & (out < 1)), task.name
    # Predictions depend on the input, per example.
    assert np.std(outputs["click"].numpy()) > 0


def test_call_is_sigmoid_of_logits_for_binary_tasks_only(config):
    model = task_lib.build_model(config)
    features, _ = _batch(config)
    logits = model.member_logits(features)[0]
    outputs = model(features)
    np.testing.assert_allclose(outputs["click"], tf.sigmoid(logits["click"]), rtol=1e-6)
    np.testing.assert_allclose(outputs["purchase"], tf.sigmoid(logits["purchase"]), rtol=1e-6)
    np.testing.assert_allclose(outputs["dwell"], logits["dwell"], rtol=1e-6)


def test_build_model_compiles_with_configured_learning_rate(config):
    model = task_lib.build_model(config)
    assert model.optimizer is not None
    assert float(model.optimizer.learning_rate) == pytest.approx(config.training.learning_rate)


def test_one_train_step_decreases_loss(config):
    tf.keras.utils.set_random_seed(0)
    model = task_lib.build_model(config)
    features, labels = _batch(config)
    before = float(model.compute_loss((features, labels)))
    weights = [w.copy() for w in model.get_weights()]
    metrics = model.train_step((features, labels))
    assert float(metrics["loss"]) == pytest.approx(before, rel=1e-5)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert float(model.compute_loss((features, labels))) < before


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "gradnorm"])
def test_a_fit_step_descends_the_gradient_of_compute_loss(weighting):
    """`fit` trains on compute_loss, the loss the other tests check: one
    step of plain SGD moves every weight (the uncertainty log-variances
    too) by -learning rate x compute_loss's gradient on the same batch."""
    config = tu.small_config(model={"loss_weighting": weighting})
    model = _eager(task_lib.build_model(config))
    learning_rate = 0.1
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate))
    features, labels = _batch(config)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    before = [v.numpy().copy() for v in variables]
    history = model.fit(tf.data.Dataset.from_tensors((features, labels)),
                        epochs=1, verbose=0).history
    moved = 0
    for variable, start, gradient in zip(variables, before, gradients):
        gradient = 0.0 if gradient is None else tf.convert_to_tensor(gradient).numpy()
        np.testing.assert_allclose(variable.numpy(), start - learning_rate * gradient,
                                   rtol=1e-5, atol=1e-6, err_msg=variable.name)
        moved += int(np.any(gradient != 0))
    assert moved > len(variables) // 2
    if weighting == "fixed":
        # The logged loss is the loss_weight-weighted sum of the task losses
        # under every strategy: compute_loss itself under fixed weights.
        assert history["loss"][0] == pytest.approx(float(loss), rel=1e-5)


def test_fit_decreases_loss_and_learns_trivial_label(config):
    tf.keras.utils.set_random_seed(0)
    model = _eager(task_lib.build_model(config))
    features, labels = _batch(config)
    click = labels["click_label"].numpy()
    assert 0 < click.sum() < BATCH  # both classes present
    loss_before = float(model.compute_loss((features, labels)))
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
    history = model.fit(dataset, steps_per_epoch=40, epochs=1, verbose=0)
    loss_after = float(model.compute_loss((features, labels)))
    assert loss_after < 0.7 * loss_before
    assert "total_loss" in history.history
    scores = model(features)["click"].numpy()
    assert scores[click == 1].min() > scores[click == 0].max()


def test_evaluate_reports_loss_over_whole_eval_set(config):
    model = _eager(task_lib.build_model(config))
    features = tu.random_transformed_batch(config, 12, seed=4)
    labels = _labels(config, features, seed=4)
    labels["dwell_label"] = tf.range(12, dtype=tf.float32)  # batches differ in loss
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(8)  # 8 + 4
    batch_losses = [float(model.compute_loss(batch)) for batch in dataset]
    assert abs(batch_losses[0] - batch_losses[1]) > 0.1 * batch_losses[0]
    whole = float(model.compute_loss((features, labels)))
    assert whole == pytest.approx((8 * batch_losses[0] + 4 * batch_losses[1]) / 12, rel=1e-5)
    reported = model.evaluate(dataset, return_dict=True, verbose=0)
    assert reported["total_loss"] == pytest.approx(whole, rel=1e-4)


def _per_task_losses(config, logits, labels):
    """Each task's mean loss of one member's logits (model.member_logits)."""
    losses = {}
    for task in config.tasks:
        y, z = labels[task.label_key], logits[task.name]
        if task.type == "binary":
            losses[task.name] = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))
        else:
            losses[task.name] = tf.reduce_mean(tf.square(y - z))
    return losses


def test_compute_loss_is_weighted_sum_of_task_losses(config):
    model = task_lib.build_model(config)
    features, labels = _batch(config)
    weights = {t.name: t.loss_weight for t in config.tasks}
    assert len(set(weights.values())) == len(weights)  # distinct weights in the test config
    losses = _per_task_losses(config, model.member_logits(features)[0], labels)
    expected = sum(weights[name] * float(loss) for name, loss in losses.items())
    assert float(model.compute_loss((features, labels))) == pytest.approx(expected, rel=1e-5)


def test_an_ensemble_serves_the_mean_of_members_that_start_apart():
    config = tu.small_config(model={"ensemble_size": 3})
    model = task_lib.build_model(config)
    features, _ = _batch(config)
    outputs = model(features)
    members = model.member_logits(features)
    assert len(members) == 3
    np.testing.assert_allclose(
        outputs["click"], np.mean([tf.sigmoid(m["click"]) for m in members], axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        outputs["dwell"], np.mean([m["dwell"] for m in members], axis=0), rtol=1e-5)
    assert not np.allclose(members[0]["click"], members[1]["click"])
    assert not np.allclose(members[1]["click"], members[2]["click"])
    # Member 0 is the network a one-member model of the same seed has.
    single = task_lib.build_model(tu.small_config())
    np.testing.assert_allclose(single.member_logits(features)[0]["click"], members[0]["click"],
                               rtol=1e-6)


def test_each_ensemble_member_trains_on_its_own_loss_and_metrics_score_the_mean():
    config = tu.small_config(model={"ensemble_size": 2})
    model = task_lib.build_model(config)
    features, labels = _batch(config)
    members = [_per_task_losses(config, logits, labels)
               for logits in model.member_logits(features)]
    # The mean of the members' own losses, not the loss of their mean: no
    # member's gradient depends on another member's output.
    losses = model.task_losses((features, labels))
    for name, loss in losses.items():
        assert float(loss) == pytest.approx(
            (float(members[0][name]) + float(members[1][name])) / 2, rel=1e-5), name
    served_auc = tf.keras.metrics.AUC()
    served_auc.update_state(labels["click_label"], model(features)["click"])
    assert float(model.task_metrics["click"].result()) == pytest.approx(
        float(served_auc.result()), abs=1e-6)


def test_zero_loss_weight_gives_task_tower_no_gradient():
    tasks = [dict(t) for t in tu.CONFIG_DICT["tasks"]]
    tasks[0]["loss_weight"] = 0.0  # click
    config = tu.small_config(tasks=tasks)
    model = _eager(task_lib.build_model(config))
    features, labels = _batch(config)
    model(features)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    towers = {name: tower.trainable_variables for name, tower in model.members[0].towers.items()}
    grads = tape.gradient(loss, [v for vs in towers.values() for v in vs])
    i = 0
    norms = {}
    for name, variables in towers.items():
        assert variables, name
        norms[name] = sum(0.0 if g is None else float(tf.norm(g))
                          for g in grads[i:i + len(variables)])
        i += len(variables)
    assert norms["click"] == 0.0
    assert norms["purchase"] > 0.0 and norms["dwell"] > 0.0
    # ... and one training step leaves the click tower unchanged.
    before = [v.numpy().copy() for v in towers["click"]]
    others = [v.numpy().copy() for v in towers["purchase"]]
    model.fit(tf.data.Dataset.from_tensors((features, labels)), epochs=1, verbose=0)
    for b, v in zip(before, towers["click"]):
        np.testing.assert_array_equal(b, v.numpy())
    assert any(not np.array_equal(o, v.numpy()) for o, v in zip(others, towers["purchase"]))


def _embedding_layer(config):
    layer = FeatureEmbedding(config.features, seed=3)
    features, _ = _batch(config)
    layer(features)
    return layer, features


def test_feature_embedding_output_width(config):
    layer, features = _embedding_layer(config)
    width = sum(f.embedding_dim if features_lib.is_embedded(f) else 1 for f in config.features)
    assert layer(features).shape == (BATCH, width)


def test_feature_embedding_ignores_padding_embeddings(config):
    layer, features = _embedding_layer(config)
    before = layer(features).numpy()
    changed = 0
    for f in config.features:
        if f.kind == "multivalent":
            table = layer._embeddings[f.name].embeddings
            assert np.any(features[f.name].numpy() == features_lib.PADDING_ID)
            table[features_lib.PADDING_ID].assign(tf.fill([f.embedding_dim], 100.0))
            changed += 1
    assert changed == 2
    np.testing.assert_allclose(layer(features).numpy(), before, rtol=1e-6, atol=1e-7)


def test_feature_embedding_means_over_real_values(config):
    feature = config.feature("tags")
    layer = FeatureEmbedding([feature], seed=3)
    ids = tf.constant([[3, 5, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]], tf.int64)
    out = layer({"tags": ids}).numpy()
    table = layer._embeddings["tags"].embeddings.numpy()
    np.testing.assert_allclose(out[0], (table[3] + table[5]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[1], table[7], rtol=1e-6)
    np.testing.assert_allclose(out[2], np.zeros(feature.embedding_dim), atol=0)
    np.testing.assert_allclose(out[3], table[1:5].mean(axis=0), rtol=1e-6)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import contextlib, json
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    # trainer.model, not trainer.task: importing tfx would add ~5 s.
    from mtrank.trainer.model import MultiTaskRankingModel
    from mtrank_testing import trainer_util as tu

    config = tu.small_config()
    features = tu.random_transformed_batch(config, 8, seed=5)
    rng = np.random.RandomState(2)
    labels = {
        "click_label": tf.constant(rng.randint(0, 2, 8), tf.float32),
        "purchase_label": tf.constant(rng.randint(0, 2, 8), tf.float32),
        "dwell_label": tf.constant(rng.rand(8) * 3, tf.float32),
    }
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = MultiTaskRankingModel(config)
        mirrored(features)
    single = MultiTaskRankingModel(config)
    single(features)
    single.set_weights(mirrored.get_weights())
    mirrored_weights_before = mirrored.get_weights()

    with tf.GradientTape() as tape:
        single_loss = single.compute_loss((features, labels), training=True)
    single_grads = tape.gradient(single_loss, single.trainable_variables)

    dataset = tf.data.Dataset.from_tensors((features, labels))
    dist_inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))

    # autograph=False: converting tf_keras takes longer than the test.
    @tf.function(autograph=False)
    def step(inputs):
        def replica_fn(inputs):
            with tf.GradientTape() as tape:
                loss = mirrored.compute_loss(inputs, training=True)
            grads = tape.gradient(loss, mirrored.trainable_variables)
            return loss, grads
        losses, grads = strategy.run(replica_fn, args=(inputs,))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        return loss, grads, strategy.experimental_local_results(losses)

    loss, grads, replica_losses = step(dist_inputs)
    grad_diff = max(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(a) - b)))
                    for a, b in zip(grads, single_grads))

    # A batch that does not split evenly over the replicas (4 + 3), as the
    # last batch of a one-pass dataset does.
    odd = ({k: v[:7] for k, v in features.items()}, {k: v[:7] for k, v in labels.items()})
    odd_inputs = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(odd))))

    @tf.function(autograph=False)
    def odd_step(inputs):
        losses = strategy.run(mirrored.compute_loss, args=(inputs,))
        sizes = strategy.run(lambda i: tf.shape(i[1]["click_label"])[0], args=(inputs,))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None),
                strategy.experimental_local_results(sizes))

    odd_loss, odd_sizes = odd_step(odd_inputs)
    odd_single = single.compute_loss(odd)

    # One fit step (as run_fn trains) with plain SGD, so that the update is
    # proportional to the gradient: same reported loss, same new weights.
    # Eager: tracing train_step runs autograph over all of tf_keras (slow).
    for m in (mirrored, single):
        with (strategy.scope() if m is mirrored else contextlib.nullcontext()):
            m.compile(optimizer=tf.keras.optimizers.SGD(0.5))
        m.run_eagerly = True
    fit_ds = tf.data.Dataset.from_tensors((features, labels))
    mirrored_fit = mirrored.fit(fit_ds, epochs=1, verbose=0).history["total_loss"][0]
    single_fit = single.fit(fit_ds, epochs=1, verbose=0).history["total_loss"][0]
    weight_change = max(float(np.abs(a - b).max()) for a, b in zip(
        single.get_weights(), mirrored_weights_before))
    weight_diff = max(float(np.abs(a - b).max()) for a, b in zip(
        mirrored.get_weights(), single.get_weights()))
    # A conditional task (purchase only where clicked, clicks spread unevenly
    # over the replicas), MMoE and uncertainty weighting (a per-step term
    # that is not per-example).
    tasks = [dict(t) for t in tu.CONFIG_DICT["tasks"]]
    tasks[1]["condition"] = "click"
    cond_config = tu.small_config(tasks=tasks, model={
        "architecture": "mmoe", "num_experts": 2, "loss_weighting": "uncertainty"})
    cond_labels = dict(odd[1], click_label=tf.constant([1, 1, 1, 0, 0, 0, 1], tf.float32))
    cond_batch = (odd[0], cond_labels)
    with strategy.scope():
        cond_mirrored = MultiTaskRankingModel(cond_config)
        cond_mirrored(features)
    cond_single = MultiTaskRankingModel(cond_config)
    cond_single(features)
    cond_single.set_weights(cond_mirrored.get_weights())
    cond_inputs = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(cond_batch))))

    @tf.function(autograph=False)
    def cond_step(inputs):
        losses = strategy.run(cond_mirrored.compute_loss, args=(inputs,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    cond_mirrored_loss = float(cond_step(cond_inputs))
    cond_single_loss = float(cond_single.compute_loss(cond_batch))

    # GradNorm's train step: per-task gradient norms over the global batch,
    # one weight update however many replicas.
    gn_config = tu.small_config(model={"loss_weighting": "gradnorm"})
    with strategy.scope():
        gn_mirrored = MultiTaskRankingModel(gn_config)
        gn_mirrored(features)
        gn_mirrored.compile(optimizer=tf.keras.optimizers.SGD(0.5))
    gn_single = MultiTaskRankingModel(gn_config)
    gn_single(features)
    gn_single.set_weights(gn_mirrored.get_weights())
    gn_single.compile(optimizer=tf.keras.optimizers.SGD(0.5))
    for m in (gn_mirrored, gn_single):
        m.run_eagerly = True
        m.fit(fit_ds, epochs=1, verbose=0)
    gn_weight_diff = max(float(np.abs(a - b).max()) for a, b in zip(
        gn_mirrored.get_weights(), gn_single.get_weights()))

    # The id embedding L2 penalty on the uneven batch: each replica's share
    # is over the global batch, like the task losses'.
    l2_config = tu.small_config(model={"embedding_l2": 0.5})
    with strategy.scope():
        l2_mirrored = MultiTaskRankingModel(l2_config)
        l2_mirrored(features)
    l2_single = MultiTaskRankingModel(l2_config)
    l2_single(features)
    l2_single.set_weights(l2_mirrored.get_weights())

    @tf.function(autograph=False)
    def l2_step(inputs):
        penalties = strategy.run(lambda i: l2_mirrored.embedding_penalty(i[0]), args=(inputs,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, penalties, axis=None)

    print(json.dumps({
        "l2_mirrored_penalty": float(l2_step(odd_inputs)),
        "l2_single_penalty": float(l2_single.embedding_penalty(odd[0])),
        "gn_weight_diff": gn_weight_diff,
        "gn_task_weights": gn_single.loss_weighting.weights_var.numpy().tolist(),
        "gn_mirrored_task_weights": [
            float(x) for x in gn_mirrored.loss_weighting.weights_var.numpy()],
        "cond_mirrored_loss": cond_mirrored_loss,
        "cond_single_loss": cond_single_loss,
        "odd_sizes": [int(x) for x in odd_sizes],
        "odd_mirrored_loss": float(odd_loss),
        "odd_single_loss": float(odd_single),
        "mirrored_fit_loss": mirrored_fit,
        "single_fit_loss": single_fit,
        "weight_change": weight_change,
        "weight_diff": weight_diff,
        "replicas": strategy.num_replicas_in_sync,
        "single_loss": float(single_loss),
        "mirrored_loss": float(loss),
        "replica_losses": [float(l) for l in replica_losses],
        "grad_diff": grad_diff,
        "max_grad": max(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g))))
                        for g in single_grads),
    }))
""")


@pytest.fixture(scope="module")
def mirrored_result():
    """Two logical CPUs must be configured before TF runs any op, so the
    comparison runs in a fresh interpreter."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_loss_gradients_and_fit_equal_single_device(mirrored_result):
    result = mirrored_result
    assert result["replicas"] == 2
    assert len(result["replica_losses"]) == 2
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    # Each replica's share is not the whole loss: the reduction is over the
    # global batch.
    assert max(result["replica_losses"]) < result["single_loss"]
    assert result["max_grad"] > 0
    assert result["grad_diff"] <= 1e-5 * max(1.0, result["max_grad"])
    # model.fit under the strategy: the loss Keras reports and the update.
    assert result["mirrored_fit_loss"] == pytest.approx(result["single_fit_loss"], rel=1e-5)
    assert result["mirrored_fit_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    assert result["weight_change"] > 1e-3
    assert result["weight_diff"] <= 1e-5


def test_mirrored_loss_equals_single_device_on_uneven_batch(mirrored_result):
    assert mirrored_result["odd_sizes"] == [4, 3]
    assert mirrored_result["odd_mirrored_loss"] == pytest.approx(
        mirrored_result["odd_single_loss"], rel=1e-5)


def test_towers_and_tables_start_from_different_weights(config):
    model = task_lib.build_model(config)
    model(tu.random_transformed_batch(config, 4, seed=6))
    first_hidden = {name: tower.layers[0].layers[0].kernel.numpy()
                    for name, tower in model.members[0].towers.items()}
    assert not np.allclose(first_hidden["click"], first_hidden["purchase"])
    tables = {layer.name: layer.embeddings.numpy()
              for layer in model.members[0].embedding._embeddings.values()}
    user, item = tables["user_id_embedding"], tables["item_id_embedding"]
    rows = min(len(user), len(item))
    assert not np.allclose(user[:rows, :min(user.shape[1], item.shape[1])],
                           item[:rows, :min(user.shape[1], item.shape[1])])
    # ... and the same config seed gives the same start again.
    again = task_lib.build_model(config)
    again(tu.random_transformed_batch(config, 4, seed=6))
    assert np.allclose(again.members[0].towers["click"].layers[0].layers[0].kernel.numpy(),
                       first_hidden["click"])


# --- conditional tasks, ESMM, position towers, dropout, mixed precision -------

_CLICK = {"name": "click", "feedback": "click", "type": "binary"}


def _funnel_config(purchase_link, **overrides):
    purchase = {"name": "purchase", "feedback": "purchase", "type": "binary", **purchase_link}
    return tu.small_config(tasks=[_CLICK, purchase], **overrides)


def _funnel_batch(config, n=32, seed=3):
    features, labels = tu.random_batch_with_labels(config, n, seed=seed)
    click = labels["click_label"].numpy()
    assert 0 < click.sum() < n
    # Purchases only after clicks, as in the logs.
    labels["purchase_label"] = tf.constant(click * (np.arange(n) % 2), tf.float32)
    return features, labels


def _bce(labels, probabilities):
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def test_esmm_serves_click_ctcvr_and_cvr_and_trains_ctcvr_on_all_impressions():
    config = _funnel_config({"depends_on": "click"})
    assert config.output_names == ["click", "purchase", "purchase_given_click"]
    model = MultiTaskRankingModel(config)
    features, labels = _funnel_batch(config)
    outputs = {k: v.numpy() for k, v in model(features).items()}
    assert set(outputs) == set(config.output_names)
    np.testing.assert_allclose(outputs["purchase"],
                               outputs["click"] * outputs["purchase_given_click"], rtol=1e-5)
    losses = {k: float(v) for k, v in model.task_losses((features, labels)).items()}
    expected = _bce(labels["purchase_label"].numpy(), outputs["purchase"]).mean()
    assert losses["purchase"] == pytest.approx(expected, rel=1e-4)


def test_an_esmm_ensemble_serves_the_mean_of_each_members_funnel():
    config = _funnel_config({"depends_on": "click"}, model={"ensemble_size": 2})
    model = MultiTaskRankingModel(config)
    features, _ = _funnel_batch(config)
    outputs = {k: v.numpy() for k, v in model(features).items()}
    own = [member(features) for member in model.members]
    click = [tf.sigmoid(o["click"]).numpy() for o in own]
    given_click = [tf.sigmoid(o["purchase"]).numpy() for o in own]
    np.testing.assert_allclose(outputs["click"], np.mean(click, axis=0), rtol=1e-5)
    np.testing.assert_allclose(outputs["purchase_given_click"], np.mean(given_click, axis=0),
                               rtol=1e-5)
    # The mean of the members' products, as docs/config.md says.
    np.testing.assert_allclose(
        outputs["purchase"], np.mean([c * g for c, g in zip(click, given_click)], axis=0),
        rtol=1e-5)


def test_conditional_task_loss_is_masked_to_the_parents_positives():
    config = _funnel_config({"condition": "click"})
    assert config.output_names == ["click", "purchase"]
    model = MultiTaskRankingModel(config)
    features, labels = _funnel_batch(config)
    clicked = labels["click_label"].numpy() == 1
    purchase = model(features)["purchase"].numpy()
    loss = float(model.task_losses((features, labels))["purchase"])
    expected = _bce(labels["purchase_label"].numpy()[clicked], purchase[clicked]).mean()
    assert loss == pytest.approx(expected, rel=1e-4)
    # Purchase labels of unclicked impressions do not matter ...
    flipped = dict(labels, purchase_label=tf.where(clicked, labels["purchase_label"], 1.0))
    assert float(model.task_losses((features, flipped))["purchase"]) == pytest.approx(loss)
    # ... and a batch without clicks gives the purchase tower no gradient.
    no_clicks = dict(labels, click_label=tf.zeros_like(labels["click_label"]))
    with tf.GradientTape() as tape:
        masked = model.task_losses((features, no_clicks))["purchase"]
    grads = tape.gradient(masked, model.members[0].towers["purchase"].trainable_variables)
    assert float(masked) == 0.0 and all(g is None or not np.any(g.numpy()) for g in grads)


def test_position_tower_joins_the_loss_only():
    config = tu.small_config(model={"position_tasks": ["click"], "position_form": "additive"})
    model = MultiTaskRankingModel(config)
    features, labels = tu.random_batch_with_labels(config, 16)
    at_top = dict(features, position=tf.zeros([16], tf.int64))
    lower = dict(features, position=tf.fill([16], tf.constant(5, tf.int64)))
    model.task_losses((at_top, labels))
    model.position_towers["click"].logits.embeddings.assign(
        tf.reshape(tf.range(21, dtype=tf.float32), [21, 1]))
    served = model(features)["click"].numpy()
    np.testing.assert_array_equal(model(at_top)["click"].numpy(), served)
    np.testing.assert_array_equal(model(lower)["click"].numpy(), served)
    top_loss = model.task_losses((at_top, labels))
    low_loss = model.task_losses((lower, labels))
    assert float(top_loss["click"]) != pytest.approx(float(low_loss["click"]))
    assert float(top_loss["dwell"]) == pytest.approx(float(low_loss["dwell"]))
    with pytest.raises(ValueError, match="model.position_tasks"):
        model.task_losses((features, labels))


def test_dropout_is_active_in_training_only():
    config = tu.small_config(model={"dropout": 0.5})
    model = MultiTaskRankingModel(config)
    features, labels = tu.random_batch_with_labels(config, 32)
    inference = model(features)["click"].numpy()
    np.testing.assert_array_equal(model(features, training=False)["click"].numpy(), inference)
    assert not np.allclose(model(features, training=True)["click"].numpy(), inference)
    # compute_loss threads `training` down to the dropout layers.
    eval_loss = float(model.compute_loss((features, labels), training=False))
    assert float(model.compute_loss((features, labels), training=False)) == eval_loss
    assert float(model.compute_loss((features, labels), training=True)) != eval_loss


def test_outputs_and_losses_are_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config = _funnel_config({"depends_on": "click"},
                                model={"architecture": "mmoe", "cross_layers": 1})
        model = MultiTaskRankingModel(config)
        model.compile(optimizer=tf.keras.mixed_precision.LossScaleOptimizer(
            tf.keras.optimizers.Adam(0.01)))
        features, labels = _funnel_batch(config)
        outputs = model(features)
        logs = model.train_step((features, labels))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert model.members[0].body.experts.experts[0].layers[0].compute_dtype == "float16"
    assert all(v.dtype == tf.float32 for v in outputs.values())
    assert np.isfinite(float(logs["loss"]))


def test_mirrored_conditional_mmoe_uncertainty_loss_equals_single_device(mirrored_result):
    """The masked task's mean is over the clicked examples of the global
    batch (3 on one replica, 1 on the other), not per replica."""
    assert mirrored_result["cond_mirrored_loss"] == pytest.approx(
        mirrored_result["cond_single_loss"], rel=1e-5)


def test_mirrored_embedding_penalty_equals_single_device_on_uneven_batch(mirrored_result):
    assert mirrored_result["l2_single_penalty"] > 0
    assert mirrored_result["l2_mirrored_penalty"] == pytest.approx(
        mirrored_result["l2_single_penalty"], rel=1e-5)


def test_mirrored_gradnorm_step_equals_single_device(mirrored_result):
    weights = mirrored_result["gn_task_weights"]
    assert not np.allclose(weights, 1.0)  # the step moved the task weights
    np.testing.assert_allclose(mirrored_result["gn_mirrored_task_weights"], weights, rtol=1e-5)
    assert mirrored_result["gn_weight_diff"] <= 1e-5


def _squared_id_rows(member, features):
    """Each example's sum of squared id embedding rows, from the tables."""
    total = np.zeros(int(features["user_id"].shape[0]))
    for name in ("user_id", "item_id", "category", "tags", "seen_items"):
        table = member.embedding._embeddings[name].embeddings.numpy()
        ids = features[name].numpy().reshape(len(total), -1)
        rows = np.sum(table[ids] ** 2, axis=-1) * (ids != features_lib.PADDING_ID
                                                   if name in ("tags", "seen_items") else 1)
        total += rows.sum(axis=1)
    return total


def test_embedding_l2_adds_exactly_its_penalty_to_the_loss():
    """l2 x the batch mean of each example's squared id rows, averaged over
    the ensemble's members; the logged loss stays the task losses'."""
    plain = MultiTaskRankingModel(tu.small_config(model={"ensemble_size": 2}))
    model = MultiTaskRankingModel(tu.small_config(model={"ensemble_size": 2,
                                                         "embedding_l2": 0.3}))
    features, labels = tu.random_batch_with_labels(model_config := tu.small_config(), BATCH)
    assert model_config.model.embedding_l2 == 0.0
    plain(features)
    model(features)
    model.set_weights(plain.get_weights())
    penalty = float(model.compute_loss((features, labels))) - float(
        plain.compute_loss((features, labels)))
    expected = 0.3 * np.mean([_squared_id_rows(m, features).mean() for m in model.members])
    assert expected > 0
    assert penalty == pytest.approx(expected, rel=1e-4)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    plain.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    logged = [m.fit(tf.data.Dataset.from_tensors((features, labels)), verbose=0)
              .history["loss"][0] for m in (_eager(model), _eager(plain))]
    assert logged[0] == pytest.approx(logged[1], rel=1e-6)


def test_interactions_and_id_regularisers_train_a_step_and_export(tmp_path):
    config = tu.small_config(model={
        "user_item_dot": True, "fm_interaction": True, "embedding_l2": 0.01,
        "embedding_dropout": 0.2, "embedding_learning_rate_multiplier": 0.1,
        "cross_layers": 1})
    model = _eager(task_lib.build_model(config))
    features, labels = _batch(config)
    before = model(features)["click"].numpy()
    history = model.fit(tf.data.Dataset.from_tensors((features, labels)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    served = model(features)
    assert not np.allclose(served["click"].numpy(), before)  # the step changed the model
    spec = {name: tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=name)
            for name, value in features.items()}
    predict = tf.function(lambda f: model(f, training=False))
    tf.saved_model.save(model, str(tmp_path),
                        signatures=predict.get_concrete_function(spec))
    loaded = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    exported = loaded(**features)
    for task in config.tasks:
        np.testing.assert_allclose(exported[task.name].numpy(), served[task.name].numpy(),
                                   rtol=1e-5)
