"""TFX Trainer entry point (`run_fn`): train the multi-task model on the
Transform output and export it with the serving signatures."""
from __future__ import annotations

from typing import Dict, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from pipeline import config as config_lib
from pipeline.keras_env import check_legacy_keras
from serving import signatures
from trainer.model import MultiTaskRankingModel

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

    return dataset.map(split_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def distribution_strategy() -> tf.distribute.Strategy:
    """Mirrored over all GPUs when there are several, else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def build_model(config: config_lib.Config) -> MultiTaskRankingModel:
    model = MultiTaskRankingModel(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.training.learning_rate))
    return model


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    check_legacy_keras()
    config = config_lib.config_from_json(fn_args.custom_config["config_json"])
    tf.keras.utils.set_random_seed(config.training.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = distribution_strategy()
    batch_size = config.training.batch_size * strategy.num_replicas_in_sync
    training = config.training
    fixed_steps = bool(fn_args.train_steps)
    train_ds = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                        config, batch_size, repeat=fixed_steps)
    eval_ds = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                       config, batch_size, repeat=bool(fn_args.eval_steps))
    with strategy.scope():
        model = build_model(config)

    epochs = min(training.epochs, fn_args.train_steps) if fixed_steps else training.epochs
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=max(1, fn_args.train_steps // epochs) if fixed_steps else None,
        validation_data=eval_ds,
        validation_steps=fn_args.eval_steps,
        callbacks=[
            tf.keras.callbacks.EarlyStopping(
                monitor="val_total_loss", patience=training.early_stopping_patience,
                restore_best_weights=True),
            tf.keras.callbacks.TensorBoard(
                log_dir=fn_args.model_run_dir, update_freq="epoch"),
        ],
        verbose=2)

    model.tft_layer = tf_transform_output.transform_features_layer()
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=signatures.make_signatures(model, config))
    signatures.write_serving_spec(fn_args.serving_model_dir, config)
    logging.info("exported model to %s", fn_args.serving_model_dir)
