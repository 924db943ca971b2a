"""TFX Trainer entry point (`run_fn`): train the multi-task model on the
Transform output and export it with the serving signatures.

`train_model` is the training half on its own (input, distribution, mixed
precision, learning-rate schedule, validation inside the epoch with early
stopping, checkpoints and resume, TensorBoard), which the benchmarks call to
score models without exporting.

Validation inside the epoch: CTR models learn most in their first pass over
the data, and then their id embeddings memorise (the one-epoch phenomenon,
Zhang et al., CIKM 2022), so the best point is often inside the first pass,
where validating at epoch ends cannot find it. `fit` therefore runs over the
repeated train data in "Keras epochs" of `validation_interval` steps: Keras's
per-epoch validation, early stopping (which keeps the best point's weights),
checkpoints and TensorBoard scalars all work per validation point.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from mtrank.base import layout
from mtrank.base import config as config_lib
from mtrank.base.keras_env import check_legacy_keras
from mtrank.serving import signatures
from mtrank.trainer.lazy_adam import LazyAdam
from mtrank.trainer.model import MultiTaskRankingModel
from mtrank.trainer.weight_averaging import WeightAveraging

CHECKPOINTS_DIR = "checkpoints"

# The early-stopping monitor: the plain mean of the tasks' eval losses
# (`val_` + this in the logs).
MEAN_TASK_LOSS = "mean_task_loss"


def input_fn(file_pattern, data_accessor, tf_transform_output, config: config_lib.Config,
             batch_size: int, repeat: bool) -> tf.data.Dataset:
    """Batches of (transformed features, labels): one pass over the files, or
    repeated indefinitely when training runs for a fixed number of steps."""
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size, shuffle_seed=config.training.seed,
            num_epochs=None if repeat else 1),
        tf_transform_output.transformed_metadata.schema)
    label_keys = set(config.label_keys)

    def split_labels(batch: Dict[str, tf.Tensor]) -> Tuple[dict, dict]:
        features = {k: v for k, v in batch.items() if k not in label_keys}
        labels = {k: batch[k] for k in label_keys}
        return features, labels

    options = tf.data.Options()
    # Multi-worker: each worker keeps its share of the batches. Sharding by
    # file (the default) fails when Transform wrote fewer files than there
    # are workers.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.map(split_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE).with_options(options)


def _cluster_workers() -> int:
    """Workers (chief included) that TF_CONFIG names; 0 without TF_CONFIG."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def distribution_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG (set by a cluster) names several
    workers; else Mirrored over all local GPUs when there are several; else
    the default (one device)."""
    if _cluster_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs: always, except on the
    non-chief workers of a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _own_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """`path` on the chief; a scratch directory on the other workers, which
    must still write (collective saves) but not over the chief's files."""
    if is_chief(strategy):
        return path
    return tempfile.mkdtemp(prefix="mtrank_worker_")


def precision_policy(config: config_lib.Config, gpu_available: bool) -> str:
    """The Keras dtype policy: mixed_float16 only on a GPU (float16 on CPU is
    slower than float32, not faster)."""
    if config.training.mixed_precision and gpu_available:
        return "mixed_float16"
    if config.training.mixed_precision:
        logging.warning("training.mixed_precision is set but there is no GPU: "
                        "training in float32")
    return "float32"


@contextlib.contextmanager
def _dtype_policy(policy: str):
    """Sets the global Keras policy for building the model, then restores it:
    LocalDagRunner runs every component in one process."""
    saved = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(saved)


def learning_rate(training: config_lib.TrainingConfig, total_steps: Optional[int]):
    """The optimizer's learning rate: the configured value, or a schedule
    over optimizer steps (warmup, then constant or cosine decay to 0 at
    `total_steps`)."""
    if training.lr_schedule == "constant" and not training.warmup_steps:
        return training.learning_rate
    warmup = training.warmup_steps
    if training.lr_schedule == "cosine":
        decay_steps = max(1, (total_steps or 1) - warmup)
        alpha = 0.0
    else:
        # alpha=1 makes the decay a constant: what is left is the warmup.
        decay_steps, alpha = 1, 1.0
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else training.learning_rate,
        decay_steps=decay_steps, alpha=alpha,
        warmup_target=training.learning_rate if warmup else None, warmup_steps=warmup)


def build_model(config: config_lib.Config, lr=None) -> MultiTaskRankingModel:
    model = MultiTaskRankingModel(config)
    # Keras traces the steps with AutoGraph, which converts all of tf_keras on
    # the way: minutes before the first step of a model with tens of features
    # (census: 99 s, here 15 s without). The steps branch on Python values
    # (the config) only, so they are traced as written.
    model.train_step = tf.autograph.experimental.do_not_convert(model.train_step)
    model.test_step = tf.autograph.experimental.do_not_convert(model.test_step)
    model.compile(optimizer=optimizer(config.training,
                                      config.training.learning_rate if lr is None else lr))
    return model


def optimizer(training: config_lib.TrainingConfig, lr) -> tf.keras.optimizers.Optimizer:
    """Adam, LazyAdam when `training.lazy_adam` is set, or AdamW when
    `training.weight_decay` is."""
    if training.weight_decay:
        return tf.keras.optimizers.AdamW(lr, weight_decay=training.weight_decay)
    if training.lazy_adam:
        return LazyAdam(lr)
    return tf.keras.optimizers.Adam(lr)


def checkpoint_dir(fn_args: tfx.components.FnArgs, config: config_lib.Config) -> str:
    """Where this training keeps its resume checkpoint.

    Keyed by a fingerprint of the config and the input artifacts, so that a
    re-run of the same training (a new Trainer execution, which has a new
    model_run_dir) finds it, and a different training never restores it.
    Default: `checkpoints/` beside the Trainer's model_run directories.
    """
    key = json.dumps([config.to_json(), sorted(fn_args.train_files),
                      sorted(fn_args.eval_files), fn_args.transform_graph_path,
                      fn_args.train_steps, fn_args.eval_steps])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = config.training.checkpoint_dir or os.path.join(
        os.path.dirname(os.path.dirname(os.path.normpath(fn_args.model_run_dir))),
        CHECKPOINTS_DIR)
    return os.path.join(base, fingerprint)


def count_records(file_patterns: Sequence[str]) -> int:
    """Serialized records in the TFRecord files of `file_patterns`, counted
    without parsing them: a tenth of a parsed pass's time or less (0.3 s for
    185,000 transformed examples)."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    total = 0
    for compression in ("GZIP", ""):
        chosen = [f for f in files if f.endswith(".gz") == (compression == "GZIP")]
        if chosen:
            records = tf.data.TFRecordDataset(chosen, compression_type=compression)
            total += int(records.batch(4096).reduce(
                tf.constant(0, tf.int64), lambda n, batch: n + tf.size(batch, out_type=tf.int64)))
    return total


def validation_interval(training: config_lib.TrainingConfig, steps_per_pass: int) -> int:
    """Train steps between two validations: `training.validation_interval_steps`,
    or one pass over the train split (`steps_per_pass` batches).

    Once a pass by default, as measured: on 200k simulated impressions (14
    days, benchmarks/simulator.py, seed 0) four validations a pass kept PLE's
    half-pass point, whose mean eval loss was lowest (0.1577 against 0.1590 at
    the end of the pass) while its click AUC was not (0.6085 against 0.6392);
    shared-bottom gained 0.001-0.004 on each task. Every validation scores the
    whole eval split (or `eval_steps` batches), so the points compared are alike.
    """
    return training.validation_interval_steps or steps_per_pass


def patience_in_validations(training: config_lib.TrainingConfig, steps_per_pass: Optional[int],
                            steps_per_validation: int) -> int:
    """Validations without improvement before training stops:
    `early_stopping_patience` passes over the train split (validations, when
    the split is not counted: `train_steps` with `validation_interval_steps`).

    Counted in passes, because inside the first pass the eval loss is noisy: on
    200k simulated impressions with 4 validations a pass, a patience of one
    validation stopped PLE three quarters into the first pass (eval click AUC
    0.6353 there) and kept the half-pass point, 0.6085, where validating only at
    pass ends had given 0.6389 (benchmarks/simulator.py, seed 0;
    docs/benchmarks.md).
    """
    if steps_per_pass is None:
        return training.early_stopping_patience
    return training.early_stopping_patience * math.ceil(steps_per_pass / steps_per_validation)


class MeanTaskLoss(tf.keras.callbacks.Callback):
    """Adds `mean_task_loss` and `val_mean_task_loss` to the epoch logs: the
    plain mean of the tasks' `<task>_loss`, which early stopping monitors.

    Not `total_loss`, the sum weighted by tasks[].loss_weight: loss weights
    trade the tasks off in the gradient, and should not also move the point
    the run keeps. Must come before the callbacks that read it (History,
    which Keras appends last, included).
    """

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        self.task_names = list(task_names)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            losses = [logs.get(f"{prefix}{name}_loss") for name in self.task_names]
            if all(loss is not None for loss in losses):
                logs[prefix + MEAN_TASK_LOSS] = float(sum(float(x) for x in losses) / len(losses))


class StepAxisTensorBoard(tf.keras.callbacks.TensorBoard):
    """TensorBoard whose per-validation scalars (`epoch_<metric>`, train and
    validation) are at the optimizer's step count, not at the index of the
    validation point: the curve's x-axis is training steps, whatever the
    interval, and goes on across a resume."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(int(self.model.optimizer.iterations.read_value()), logs)


def train_model(fn_args: tfx.components.FnArgs, config: Optional[config_lib.Config] = None,
                strategy: Optional[tf.distribute.Strategy] = None,
                extra_callbacks: Sequence[tf.keras.callbacks.Callback] = ()
                ) -> Tuple[MultiTaskRankingModel, tf.keras.callbacks.History]:
    """Trains on fn_args' train files, validating on its eval files.

    `config` defaults to the one in fn_args.custom_config, `strategy` to
    `distribution_strategy()`. Callbacks in `extra_callbacks` run after the
    checkpoint callback (so a callback that stops the run finds the epoch
    already saved).
    """
    check_legacy_keras()
    if config is None:
        config = layout.config_from_properties(fn_args.custom_config)
    training = config.training
    tf.keras.utils.set_random_seed(training.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    strategy = strategy or distribution_strategy()
    batch_size = training.batch_size * strategy.num_replicas_in_sync
    # The train data repeats: each Keras epoch is one validation interval,
    # which need not end where a pass over the data does.
    train_ds = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                        config, batch_size, repeat=True)
    eval_ds = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                       config, batch_size, repeat=bool(fn_args.eval_steps))
    interval = training.validation_interval_steps
    steps_per_pass = None
    if not (interval and fn_args.train_steps):
        # Batches of a pass: the last one may be short (not dropped).
        steps_per_pass = max(1, math.ceil(count_records(fn_args.train_files) / batch_size))
    if not interval:
        interval = validation_interval(training, steps_per_pass)
    planned_steps = fn_args.train_steps or training.epochs * steps_per_pass
    steps_per_validation = min(interval, planned_steps)
    validations = math.ceil(planned_steps / steps_per_validation)
    total_steps = validations * steps_per_validation
    logging.info("training %d steps, validating every %d steps (%d validations)",
                 total_steps, steps_per_validation, validations)
    policy = precision_policy(config, bool(tf.config.list_logical_devices("GPU")))
    with _dtype_policy(policy), strategy.scope():
        model = build_model(config, learning_rate(training, total_steps))
    # The logged values are metric results, already aggregated over every
    # replica and worker; Keras's default ("auto") sums them over workers.
    model.distribute_reduction_method = "first"

    history = model.fit(
        train_ds,
        epochs=validations,
        steps_per_epoch=steps_per_validation,
        validation_data=eval_ds,
        validation_steps=fn_args.eval_steps,
        callbacks=[
            tf.keras.callbacks.BackupAndRestore(checkpoint_dir(fn_args, config)),
            *([WeightAveraging(training.ema_momentum)] if training.ema_momentum else []),
            MeanTaskLoss([t.name for t in config.tasks]),
            # Its best weights are the model's at the validation: with
            # ema_momentum the averages (WeightAveraging puts them in place
            # for the validation), every ensemble member's. It restores them
            # at the end of training, stopped early or not: the model
            # exported is the best point's.
            tf.keras.callbacks.EarlyStopping(
                monitor="val_" + MEAN_TASK_LOSS,
                patience=patience_in_validations(training, steps_per_pass, steps_per_validation),
                restore_best_weights=True),
            StepAxisTensorBoard(
                log_dir=_own_dir(fn_args.model_run_dir, strategy), update_freq="epoch"),
            *model.training_callbacks(),
            *extra_callbacks,
        ],
        verbose=2)
    return model, history


def export_model(model: MultiTaskRankingModel, fn_args: tfx.components.FnArgs,
                 config: config_lib.Config, strategy: tf.distribute.Strategy) -> None:
    """The SavedModel with the Transform layer and the serving signatures."""
    model.tft_layer = tft.TFTransformOutput(
        fn_args.transform_graph_path).transform_features_layer()
    export_dir = _own_dir(fn_args.serving_model_dir, strategy)
    model.save(export_dir, save_format="tf", signatures=signatures.make_signatures(model, config))
    signatures.write_serving_assets(export_dir, config)
    logging.info("exported model to %s", export_dir)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    config = layout.config_from_properties(fn_args.custom_config)
    strategy = distribution_strategy()
    model, _ = train_model(fn_args, config, strategy)
    export_model(model, fn_args, config, strategy)



def fn_args_from_artifacts(transformed_examples: tfx.types.Artifact, transform_graph_uri: str,
                           config: config_lib.Config, model_run_dir: str,
                           serving_model_dir: str, train_steps: int = 0,
                           eval_steps: int = 0) -> tfx.components.FnArgs:
    """The FnArgs the TFX Trainer would pass `run_fn` for these artifacts
    (built by TFX's own code): for benchmarks and tests that train on a
    Transform output without running the Trainer component."""
    from tfx.components.trainer import fn_args_utils
    from tfx.proto import trainer_pb2
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = transform_graph_uri
    fn_args = fn_args_utils.get_common_fn_args(
        {standard_component_specs.EXAMPLES_KEY: [transformed_examples],
         standard_component_specs.TRANSFORM_GRAPH_KEY: [transform_graph]},
        {standard_component_specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(
            trainer_pb2.TrainArgs(splits=["train"], num_steps=train_steps)),
         standard_component_specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(
            trainer_pb2.EvalArgs(splits=["eval"], num_steps=eval_steps)),
         standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(
             layout.config_properties(config))})
    fn_args.model_run_dir = model_run_dir
    fn_args.serving_model_dir = serving_model_dir
    return fn_args
