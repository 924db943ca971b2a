"""Tests of trainer/task.py on the real input path: the real Transform (tf.Transform
on Beam) over a few hundred rows, its output read by the trainer's input_fn
through the FnArgs TFX builds, and the real model.

Distribution runs in subprocesses: logical devices and TF_CONFIG must be set
before TensorFlow runs its first op.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tfx.types import artifact_utils, standard_artifacts

from mtrank.base import config as config_lib
from mtrank.trainer import task as task_lib
from mtrank.trainer.lazy_adam import LazyAdam
from mtrank_testing import trainer_util as tu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 240
# The train split's 4/5 of ROWS in TRAINING's batches of 16.
STEPS_PER_PASS = 12
TRAINING = {"batch_size": 16, "epochs": 3, "early_stopping_patience": 3, "learning_rate": 0.01,
            "bottom_units": [16], "tower_units": [8], "seed": 1}


def _config(**training) -> config_lib.Config:
    return tu.small_config(training={**TRAINING, **training})


def _instances(config):
    """ROWS raw instances: the fixture's 20, repeated with distinct items."""
    base = tu.raw_instances(config)
    rows = []
    for i in range(ROWS):
        row = dict(base[i % len(base)])
        row["item_id"] = [f"i{i}".encode()]
        rows.append(row)
    return rows


def _to_example(transformed: dict) -> bytes:
    feature = {}
    for name, value in transformed.items():
        value = np.atleast_1d(np.asarray(value)).ravel()
        if np.issubdtype(value.dtype, np.integer):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The Transform output and transformed train (4/5) / eval (1/5) splits,
    as the Transform component writes them."""
    work = tmp_path_factory.mktemp("task")
    config = _config()
    transformed, transform_dir = tu.run_transform(config, _instances(config), str(work))
    examples_dir = work / "transformed_examples"
    splits = {"train": transformed[: ROWS * 4 // 5], "eval": transformed[ROWS * 4 // 5:]}
    for split, rows in splits.items():
        os.makedirs(examples_dir / f"Split-{split}")
        with tf.io.TFRecordWriter(str(examples_dir / f"Split-{split}" / "data.gz"),
                                  options="GZIP") as writer:
            for row in rows:
                writer.write(_to_example(row))
    return {"examples": str(examples_dir), "transform": transform_dir}


def _fn_args(inputs, run_dir, config, train_steps=0):
    examples = standard_artifacts.Examples()
    examples.uri = inputs["examples"]
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return task_lib.fn_args_from_artifacts(
        examples, inputs["transform"], config, os.path.join(run_dir, "model_run", "7"),
        os.path.join(run_dir, "serving"), train_steps=train_steps)


class _EpochRecorder(tf.keras.callbacks.Callback):
    """Records the epochs run, the optimizer's step count at the start and
    after each epoch and the learning rate after each epoch; raises after
    epoch `stop_after`."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.epochs, self.steps, self.learning_rates = [], [], []
        self._stop_after = stop_after

    def on_train_begin(self, logs=None):
        self.steps.append(int(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations))
        self.learning_rates.append(float(self.model.optimizer.learning_rate))
        if epoch == self._stop_after:
            raise RuntimeError(f"interrupted after epoch {epoch}")


def test_interrupted_training_resumes_from_next_epoch_on_its_schedule(inputs, tmp_path):
    config = _config(epochs=2, lr_schedule="cosine", warmup_steps=4)
    fn_args = _fn_args(inputs, str(tmp_path), config)
    first = _EpochRecorder(stop_after=0)
    with pytest.raises(RuntimeError, match="interrupted after epoch 0"):
        task_lib.train_model(fn_args, config, extra_callbacks=[first])
    assert first.epochs == [0]
    backup = task_lib.checkpoint_dir(fn_args, config)
    assert backup.startswith(str(tmp_path / "checkpoints") + "/")
    assert os.listdir(backup)

    # The re-run is a new Trainer execution: another model_run_dir.
    rerun_args = _fn_args(inputs, str(tmp_path), config)
    rerun_args.model_run_dir = str(tmp_path / "model_run" / "8")
    assert task_lib.checkpoint_dir(rerun_args, config) == backup
    second = _EpochRecorder()
    model, history = task_lib.train_model(rerun_args, config, extra_callbacks=[second])
    assert second.epochs == [1]
    assert len(history.history["total_loss"]) == 1
    # Epoch 0's state came back: the optimizer's step count goes on from it.
    assert first.steps[0] == 0 and first.steps[1] > 0
    assert second.steps[0] == first.steps[1]
    assert second.steps[-1] > second.steps[0]
    # A finished run leaves no checkpoint to resume from.
    assert not os.path.exists(backup) or not os.listdir(backup)
    # TensorBoard logs of the re-run under its model_run_dir.
    assert tf.io.gfile.glob(os.path.join(rerun_args.model_run_dir, "train", "events.*"))
    assert tf.io.gfile.glob(os.path.join(rerun_args.model_run_dir, "validation", "events.*"))

    # The cosine schedule over the whole run (2 passes of counted batches):
    # part-way down after epoch 0; the last step's rate is the schedule's
    # last before 0 (0.01 x (1 + cos(pi x 19/20)) / 2 after 4 warmup steps).
    assert second.steps[-1] == 2 * STEPS_PER_PASS
    assert 0.001 < first.learning_rates[0] < 0.009
    assert second.learning_rates[-1] == pytest.approx(6.156e-5, rel=1e-3)


def test_validation_interval_is_one_pass_unless_configured():
    automatic = _config().training
    assert task_lib.validation_interval(automatic, 12) == 12
    assert task_lib.validation_interval(automatic, 7813) == 7813
    configured = _config(validation_interval_steps=7).training
    assert task_lib.validation_interval(configured, 7813) == 7


def test_count_records_counts_gzip_and_plain_tfrecord_files(tmp_path):
    for name, records, options in (("a.gz", 5000, "GZIP"), ("b.gz", 3, "GZIP"),
                                   ("c.tfrecord", 7, None)):
        with tf.io.TFRecordWriter(str(tmp_path / name), options) as writer:
            for i in range(records):
                writer.write(str(i).encode())
    assert task_lib.count_records([str(tmp_path / "*.gz")]) == 5003
    assert task_lib.count_records([str(tmp_path / "*.gz"), str(tmp_path / "c.*")]) == 5010
    assert task_lib.count_records([str(tmp_path / "missing-*")]) == 0


def test_mean_task_loss_is_the_unweighted_mean_of_the_task_losses():
    logs = {"click_loss": 0.2, "purchase_loss": 0.4, "dwell_loss": 1.5, "total_loss": 1.75,
            "val_click_loss": 0.3, "val_purchase_loss": 0.6, "val_dwell_loss": 2.1}
    task_lib.MeanTaskLoss(["click", "purchase", "dwell"]).on_epoch_end(0, logs)
    assert logs["mean_task_loss"] == pytest.approx(0.7)
    assert logs["val_mean_task_loss"] == pytest.approx(1.0)


def _eval_mean_task_loss(model, fn_args, config):
    """The mean over tasks of the eval split's task losses, for the model's
    current weights."""
    eval_ds = task_lib.input_fn(fn_args.eval_files, fn_args.data_accessor,
                                tft.TFTransformOutput(fn_args.transform_graph_path), config,
                                config.training.batch_size, repeat=False)
    logs = model.evaluate(eval_ds, return_dict=True, verbose=0)
    return float(np.mean([logs[f"{t.name}_loss"] for t in config.tasks]))


def _scalar_steps(log_dir, tag):
    steps = []
    for path in tf.io.gfile.glob(os.path.join(log_dir, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps.extend(event.step for value in event.summary.value if value.tag == tag)
    return sorted(steps)


class _DamageWeightsFrom(tf.keras.callbacks.Callback):
    """Adds noise to every trained weight at the start of each interval
    from `first`: the eval loss of the validations after it is worse than
    before, as when a model starts to memorise."""

    def __init__(self, first):
        super().__init__()
        self._first = first

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self._first:
            for weight in self.model.trainable_variables:
                weight.assign_add(tf.random.stateless_normal(weight.shape, seed=[epoch, 0]))


def test_validates_every_interval_and_keeps_the_best_points_averaged_weights(inputs, tmp_path):
    config = tu.small_config(
        training={**TRAINING, "epochs": 3, "validation_interval_steps": 4,
                  "early_stopping_patience": 9, "learning_rate": 0.05, "ema_momentum": 0.5},
        model={"ensemble_size": 2})
    fn_args = _fn_args(inputs, str(tmp_path), config)
    validations = 3 * STEPS_PER_PASS // 4
    model, history = task_lib.train_model(
        fn_args, config, extra_callbacks=[_DamageWeightsFrom(validations - 2)])

    losses = history.history["val_mean_task_loss"]
    assert len(losses) == validations
    assert int(model.optimizer.iterations) == 3 * STEPS_PER_PASS
    np.testing.assert_allclose(losses, np.mean(
        [history.history[f"val_{t.name}_loss"] for t in config.tasks], axis=0), rtol=1e-6)
    # The curve: one point per validation, at its training step.
    validation_steps = list(range(4, 3 * STEPS_PER_PASS + 1, 4))
    for phase in ("train", "validation"):
        assert _scalar_steps(os.path.join(fn_args.model_run_dir, phase),
                             "epoch_mean_task_loss") == validation_steps
    # The model (the one exported) has the best point's weights, not the
    # last point's: the averaged weights of both members.
    best = int(np.argmin(losses))
    assert best < validations - 2, losses
    assert _eval_mean_task_loss(model, fn_args, config) == pytest.approx(losses[best], rel=1e-5)


def test_stops_when_the_mean_eval_loss_stops_improving(inputs, tmp_path):
    config = _config(epochs=5, validation_interval_steps=4, early_stopping_patience=1)
    _, history = task_lib.train_model(_fn_args(inputs, str(tmp_path), config), config,
                                      extra_callbacks=[_DamageWeightsFrom(6)])
    losses = history.history["val_mean_task_loss"]
    best = int(np.argmin(losses))
    # Stopped one pass (3 validations of 4 of its 12 steps) after the best,
    # long before the 15 planned.
    assert best <= 5
    assert len(losses) == best + 1 + 3, losses


def test_patience_counts_passes_over_the_train_split():
    training = _config(early_stopping_patience=2).training
    assert task_lib.patience_in_validations(training, 12, 4) == 6
    assert task_lib.patience_in_validations(training, 12, 12) == 2  # once a pass
    assert task_lib.patience_in_validations(training, 7813, 1954) == 8  # 4 a pass
    assert task_lib.patience_in_validations(training, None, 50) == 2  # split not counted


def test_checkpoint_dir_differs_for_another_config_and_follows_config(inputs, tmp_path):
    config = _config()
    fn_args = _fn_args(inputs, str(tmp_path), config)
    other = _config(learning_rate=0.02)
    assert task_lib.checkpoint_dir(fn_args, other) != task_lib.checkpoint_dir(fn_args, config)
    configured = _config(checkpoint_dir=str(tmp_path / "ckpt"))
    assert task_lib.checkpoint_dir(fn_args, configured).startswith(str(tmp_path / "ckpt") + "/")


def test_learning_rate_schedules():
    cosine = task_lib.learning_rate(_config(lr_schedule="cosine", warmup_steps=4).training, 24)
    assert [round(float(cosine(s)), 6) for s in (0, 2, 4, 24)] == [0.0, 0.005, 0.01, 0.0]
    assert 0.0 < float(cosine(14)) < 0.01
    training = _config().training
    assert task_lib.learning_rate(training, None) == 0.01
    warm = task_lib.learning_rate(_config(warmup_steps=10).training, None)
    assert [round(float(warm(s)), 6) for s in (0, 5, 10, 1000)] == [0.0, 0.005, 0.01, 0.01]


def test_weight_decay_selects_adamw_that_shrinks_weights_without_gradient():
    assert type(task_lib.optimizer(_config().training, 0.01)) is tf.keras.optimizers.Adam
    adamw = task_lib.optimizer(_config(weight_decay=0.5).training, 0.1)
    assert isinstance(adamw, tf.keras.optimizers.AdamW)
    weight = tf.Variable([2.0, -2.0])
    adamw.apply_gradients([(tf.zeros(2), weight)])
    # Decoupled decay: w -= lr * weight_decay * w, with a zero gradient.
    np.testing.assert_allclose(weight.numpy(), [1.9, -1.9], rtol=1e-5)


def test_lazy_adam_selects_lazy_adam():
    assert type(task_lib.optimizer(_config(lazy_adam=True).training, 0.01)) is LazyAdam


def test_mixed_precision_only_with_a_gpu():
    assert task_lib.precision_policy(_config(mixed_precision=True), True) == "mixed_float16"
    assert task_lib.precision_policy(_config(mixed_precision=True), False) == "float32"
    assert task_lib.precision_policy(_config(), True) == "float32"


def test_run_fn_uses_one_device_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = task_lib.distribution_strategy()
    assert strategy.num_replicas_in_sync == 1 and task_lib.is_chief(strategy)


# Trains the same config on one device with a global batch of 32 and on two
# replicas (logical CPUs, or two worker processes) with 16 each.
_TRAIN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    mode, examples, transform, out_dir = sys.argv[1:5]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfx.types import artifact_utils, standard_artifacts
    from mtrank.trainer import task
    from mtrank_testing import trainer_util as tu

    training = json.loads(sys.argv[5])
    def fit(batch_size, strategy, run_dir):
        config = tu.small_config(training=dict(training, batch_size=batch_size))
        artifact = standard_artifacts.Examples()
        artifact.uri = examples
        artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
        fn_args = task.fn_args_from_artifacts(
            artifact, transform, config, os.path.join(run_dir, "model_run", "1"),
            os.path.join(run_dir, "serving"))
        model, history = task.train_model(fn_args, config, strategy)
        return {"replicas": model.distribute_strategy.num_replicas_in_sync,
                "chief": task.is_chief(model.distribute_strategy),
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}

    if mode == "mirrored":
        result = {
            # The trainer's own choice: one device (no GPU, no TF_CONFIG).
            "single": fit(32, None, os.path.join(out_dir, "single")),
            "mirrored": fit(16, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                            os.path.join(out_dir, "mirrored"))}
    else:  # a worker of TF_CONFIG's cluster: the strategy is the trainer's choice
        result = fit(16, None, os.path.join(out_dir, "multi_worker"))
    print(json.dumps(result))
""")


def _run_script(mode, inputs, out_dir, env_extra=None):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN_SCRIPT, mode, inputs["examples"], inputs["transform"],
         # LazyAdam, as inferred configs train: its sparse updates of
         # mirrored variables are the trainer's own code, Adam's are Keras'.
         str(out_dir), json.dumps({**TRAINING, "epochs": 2, "lazy_adam": True})],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=240):
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _assert_same_losses(a, b):
    for key in ("total_loss", "val_total_loss", "val_click_auc"):
        assert len(a[key]) == len(b[key]) == 2, key
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, err_msg=key)


@pytest.fixture(scope="module")
def single_device(inputs, tmp_path_factory):
    result = _result(_run_script("mirrored", inputs, tmp_path_factory.mktemp("mirrored")))
    assert result["single"]["replicas"] == 1
    return result


def test_two_logical_devices_train_to_the_same_losses_as_one(single_device):
    assert single_device["mirrored"]["replicas"] == 2
    _assert_same_losses(single_device["mirrored"]["history"],
                        single_device["single"]["history"])


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_from_tf_config_train_to_the_same_losses_as_one(
        inputs, single_device, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = [
        _run_script("worker", inputs, tmp_path / f"w{i}", {"TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    try:
        results = [_result(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    for result in results:
        _assert_same_losses(result["history"], single_device["single"]["history"])
    # Only the chief writes into the model_run_dir.
    assert os.listdir(tmp_path / "w0" / "multi_worker" / "model_run" / "1")
    assert not os.path.exists(tmp_path / "w1" / "multi_worker" / "model_run" / "1")
