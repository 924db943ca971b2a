"""The in-memory reference of the simulator benchmark: what a practitioner
would write in an afternoon instead of the pipeline, fit on the same
examples.

It reads ExampleGen's raw tf.Examples (train and eval splits) into memory
and fits one plain Keras model: an embedding per categorical and
multivalent feature (vocabulary from the train split), standardised
numerics, a user_id . item_id dot product, a shared MLP with one head per
task, every task that `depends_on` another as a funnel (ESMM: p(parent) x
p(task | parent)), and a position-bias logit on the tasks without a parent,
used in training only. Epochs end at the best eval loss (restored). The
score is each binary task's AUC on the eval split, position-free, as the
pipeline's served model is scored.
"""
from __future__ import annotations

import glob
import os
from typing import Dict

import numpy as np

from mtrank.base import config as config_lib

EMBEDDING_DIM = 16
HIDDEN_UNITS = (256, 128)
BATCH_SIZE = 1024
MAX_EPOCHS = 10


def read_split(examples_uri: str, split: str, config: config_lib.Config) -> Dict[str, object]:
    """{feature or label: values} of one split, all in memory."""
    import tensorflow as tf

    spec = {config_lib.POSITION: tf.io.FixedLenFeature([], tf.int64, 0)}
    for feature in config.features:
        dtype = tf.string if feature.dtype == "string" else (
            tf.int64 if feature.dtype == "int64" else tf.float32)
        spec[feature.name] = (tf.io.VarLenFeature(dtype) if feature.kind == "multivalent"
                              else tf.io.FixedLenFeature([], dtype, "" if dtype == tf.string else 0))
    for task in config.tasks:
        spec[task.label_key] = tf.io.FixedLenFeature([], tf.float32, 0.0)
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536).map(
        lambda records: tf.io.parse_example(records, spec))
    parts = list(dataset)
    columns = {}
    for name, value in spec.items():
        tensors = [p[name] for p in parts]
        if isinstance(value, tf.io.VarLenFeature):
            columns[name] = tf.concat([tf.RaggedTensor.from_sparse(t) for t in tensors], axis=0)
        else:
            columns[name] = tf.concat(tensors, axis=0)
        if columns[name].dtype == tf.int64 and name in {f.name for f in config.features
                                                          if f.kind != "numeric"}:
            columns[name] = tf.strings.as_string(columns[name])
    return columns


def build_model(train: Dict[str, object], features, tasks, max_position: int):
    """(the model trained, with the position logit; the model scored, without)."""
    import tensorflow as tf

    inputs, parts, id_vectors = {}, [], {}
    for feature in features:
        column = train[feature.name]
        ragged = isinstance(column, tf.RaggedTensor)
        dtype = column.dtype if feature.kind != "numeric" else tf.float32
        inputs[feature.name] = tf.keras.Input(shape=(None,) if ragged else (), dtype=dtype,
                                              ragged=ragged, name=feature.name)
        if feature.kind == "numeric":
            values = tf.cast(column, tf.float32)
            norm = tf.keras.layers.Normalization(
                axis=None, mean=float(tf.reduce_mean(values)),
                variance=float(tf.math.reduce_variance(values)))
            parts.append(tf.reshape(norm(tf.cast(inputs[feature.name], tf.float32)), (-1, 1)))
            continue
        # The train split's values as the vocabulary (adapt() would take
        # minutes: it walks the data in batches of 32).
        values = (column.flat_values if ragged else column).numpy()
        lookup = tf.keras.layers.StringLookup(vocabulary=np.unique(values))
        table = tf.keras.layers.Embedding(lookup.vocabulary_size(), EMBEDDING_DIM)
        vectors = table(lookup(inputs[feature.name]))
        parts.append(tf.reduce_mean(vectors, axis=1) if ragged else vectors)
        if feature.name in (config_lib.USER_ID, config_lib.ITEM_ID):
            id_vectors[feature.name] = vectors
    dot = tf.reduce_sum(id_vectors[config_lib.USER_ID] * id_vectors[config_lib.ITEM_ID],
                        axis=-1, keepdims=True)
    hidden = tf.concat(parts + [dot], axis=-1)
    for units in HIDDEN_UNITS:
        hidden = tf.keras.layers.Dense(units, activation="relu")(hidden)
    position = tf.keras.Input(shape=(), dtype=tf.int64, name=config_lib.POSITION)
    position_logit = tf.keras.layers.Embedding(max_position + 1, 1)(
        tf.minimum(position, max_position))
    logits = {t.name: tf.keras.layers.Dense(1)(tf.keras.layers.Dense(64, activation="relu")(
        hidden)) for t in tasks}
    train_p, served_p = {}, {}
    for task in tasks:  # parents come first in a valid config
        if task.depends_on:
            conditional = tf.sigmoid(logits[task.name])
            train_p[task.name] = train_p[task.depends_on] * conditional
            served_p[task.name] = served_p[task.depends_on] * conditional
        else:
            train_p[task.name] = tf.sigmoid(logits[task.name] + position_logit)
            served_p[task.name] = tf.sigmoid(logits[task.name])
    all_inputs = {**inputs, config_lib.POSITION: position}
    trained = tf.keras.Model(all_inputs, {k: tf.keras.layers.Reshape((), name=k)(v)
                                          for k, v in train_p.items()})
    served = tf.keras.Model(all_inputs, {k: tf.keras.layers.Reshape(())(v)
                                         for k, v in served_p.items()})
    return trained, served


def fit_and_score(examples_uri: str, config: config_lib.Config, seed: int = 0) -> Dict[str, float]:
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    tf.keras.utils.set_random_seed(seed)
    tasks = [t for t in config.tasks if t.type == "binary"]
    train, evaluation = (read_split(examples_uri, s, config) for s in ("train", "eval"))
    labels = {t.label_key: t.name for t in tasks}
    x_train = {k: v for k, v in train.items() if k not in labels}
    x_eval = {k: v for k, v in evaluation.items() if k not in labels}
    y_train = {name: train[key] for key, name in labels.items()}
    y_eval = {name: evaluation[key] for key, name in labels.items()}
    trained, served = build_model(train, config.features, tasks, config.model.max_position)
    trained.compile(tf.keras.optimizers.Adam(1e-3),
                    loss={t.name: tf.keras.losses.BinaryCrossentropy() for t in tasks})
    trained.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=MAX_EPOCHS, verbose=2,
                validation_data=(x_eval, y_eval), callbacks=[tf.keras.callbacks.EarlyStopping(
                    patience=1, restore_best_weights=True)])
    scores = served.predict(x_eval, batch_size=8192, verbose=0)
    return {t.name: round(float(roc_auc_score(y_eval[t.name].numpy(), scores[t.name])), 4)
            for t in tasks}
