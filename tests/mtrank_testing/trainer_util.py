"""Test fixtures shared by the trainer, serving and pipeline tests: a small
config covering every feature kind, raw instances with edge cases, and a
helper that runs the real Transform over them with tf.Transform on Beam."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np
import tensorflow as tf

from mtrank.base import layout
from mtrank.base import config as config_lib
from mtrank.base import examples
from mtrank.serving import signatures
from mtrank.trainer import features as features_lib

CONFIG_DICT: Dict[str, Any] = {
    "model_name": "mtrank_test",
    "features": [
        {"name": "user_id", "kind": "categorical", "dtype": "string",
         "encoding": "hashing", "hash_buckets": 50, "embedding_dim": 4},
        {"name": "item_id", "kind": "categorical", "dtype": "string",
         "encoding": "hashing", "hash_buckets": 100, "embedding_dim": 4},
        {"name": "category", "kind": "categorical", "dtype": "string",
         "encoding": "vocabulary", "vocab_size": 3, "embedding_dim": 4},
        {"name": "age", "kind": "numeric", "dtype": "int64", "transform": "zscore"},
        {"name": "price", "kind": "numeric", "dtype": "float", "transform": "log"},
        {"name": "popularity", "kind": "numeric", "dtype": "float", "transform": "buckets",
         "num_buckets": 4, "embedding_dim": 3},
        {"name": "tags", "kind": "multivalent", "dtype": "string", "encoding": "hashing",
         "hash_buckets": 20, "max_len": 4, "embedding_dim": 4},
        {"name": "seen_items", "kind": "multivalent", "dtype": "int64",
         "encoding": "vocabulary", "vocab_size": 3, "max_len": 3, "embedding_dim": 4},
    ],
    "tasks": [
        {"name": "click", "feedback": "click", "type": "binary"},
        {"name": "purchase", "feedback": "purchase", "type": "binary", "loss_weight": 2.0,
         "eval": {"min_auc": 0.6, "max_auc_drop": 0.05}},
        {"name": "dwell", "feedback": "dwell", "type": "regression", "loss_weight": 0.5,
         "eval": {"min_auc": None, "max_auc_drop": None, "max_mse": 4.0,
                  "max_mse_increase": 0.1}},
    ],
    "training": {"batch_size": 8, "learning_rate": 0.01, "bottom_units": [16],
                 "tower_units": [8], "seed": 1},
}

# Index of the instance missing `age` (and `price`); of the one with an empty
# `tags` list; of the one whose lists are longer than max_len. The most
# frequent category is "a"; `click_label` is (category == "a").
MISSING_SCALAR = 3
EMPTY_LIST = 5
LONG_LIST = 7
NUM_INSTANCES = 20
CATEGORIES = ["a"] * 8 + ["b"] * 5 + ["c"] * 3 + ["d"] * 2 + ["e"] * 2  # "a" most frequent


def small_config(**overrides) -> config_lib.Config:
    raw = dict(CONFIG_DICT)
    raw.update(overrides)
    return config_lib.config_from_dict(raw)


def raw_feature_spec(config: config_lib.Config) -> Dict[str, tf.io.VarLenFeature]:
    """As the pipeline's schema (infer_feature_shape=False) yields: all VarLen."""
    spec = {f.name: tf.io.VarLenFeature(signatures.TF_DTYPES[f.dtype]) for f in config.features}
    for task in config.tasks:
        spec[task.label_key] = tf.io.VarLenFeature(tf.float32)
    return spec


def raw_instances(config: config_lib.Config) -> List[Dict[str, list]]:
    """NUM_INSTANCES raw instances as lists (a missing value is an empty list)."""
    rng = np.random.RandomState(7)
    instances = []
    for i in range(NUM_INSTANCES):
        tags = [f"t{j}" for j in rng.choice(10, size=1 + i % 3, replace=False)]
        seen = [int(v) for v in rng.choice([7, 7, 7, 8, 8, 9, 10, 11], size=1 + i % 2)]
        instance = {
            "user_id": [f"u{i % 6}".encode()],
            "item_id": [f"i{i}".encode()],
            "category": [CATEGORIES[i].encode()],
            "age": [int(18 + 3 * i)],
            "price": [float(i * 2.5)],
            "popularity": [float(i)],
            "tags": [t.encode() for t in tags],
            "seen_items": seen,
            "click_label": [float(CATEGORIES[i] == "a")],
            "purchase_label": [float(i % 4 == 0)],
            "dwell_label": [float(i % 5)],
        }
        if i == MISSING_SCALAR:
            instance["age"] = []
            instance["price"] = []
        if i == EMPTY_LIST:
            instance["tags"] = []
        if i == LONG_LIST:
            instance["tags"] = [f"t{j}".encode() for j in range(6)]
            instance["seen_items"] = [7, 8, 9, 10, 11]
        instances.append(instance)
    return instances


def to_example(instance: Dict[str, Sequence], config: config_lib.Config,
               include_labels: bool = True) -> tf.train.Example:
    """A tf.Example holding the instance's non-empty values, in the config's
    dtypes (labels are floats)."""
    dtypes = {f.name: f.dtype for f in config.features}
    dtypes.update({t.label_key: "float" for t in config.tasks})
    return examples.example_from_json(
        {name: list(values) for name, values in instance.items()
         if include_labels or name not in config.label_keys}, dtypes)


def run_transform(config: config_lib.Config, instances: List[Dict[str, list]],
                  work_dir: str):
    """Runs the real preprocessing_fn with tf.Transform on Beam.

    Returns (transformed instances, transform output dir). The transform
    output dir can be read by tft.TFTransformOutput.
    """
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from mtrank.trainer import preprocessing

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(raw_feature_spec(config)))
    custom_config = layout.config_properties(config)

    def preprocessing_fn(inputs):
        return preprocessing.preprocessing_fn(inputs, custom_config)

    output_dir = os.path.join(work_dir, "transform_output")
    with tft_beam.Context(temp_dir=os.path.join(work_dir, "tft_tmp"), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (
            (instances, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    return transformed, output_dir


def batch_of(transformed: List[Dict[str, Any]], keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """Stacks transformed instances into batched arrays."""
    return {k: np.stack([np.asarray(t[k]) for t in transformed]) for k in keys}


def random_transformed_batch(config: config_lib.Config, batch_size: int,
                             seed: int = 0) -> Dict[str, tf.Tensor]:
    """Transformed-shaped random features: ids within embedding_input_dim,
    multivalent ids [batch, max_len] (some padding), normalised floats."""
    rng = np.random.RandomState(seed)
    out = {}
    for f in config.features:
        if not features_lib.is_embedded(f):
            out[f.name] = tf.constant(rng.randn(batch_size), tf.float32)
        elif f.kind == "multivalent":
            ids = rng.randint(1, features_lib.embedding_input_dim(f), size=(batch_size, f.max_len))
            lengths = rng.randint(0, f.max_len + 1, size=batch_size)
            ids[np.arange(f.max_len)[None, :] >= lengths[:, None]] = features_lib.PADDING_ID
            out[f.name] = tf.constant(ids, tf.int64)
        else:
            out[f.name] = tf.constant(
                rng.randint(0, features_lib.embedding_input_dim(f), size=batch_size), tf.int64)
    return out


def random_batch_with_labels(config: config_lib.Config, batch_size: int, seed: int = 0):
    """(random transformed features, labels) for any config: binary labels
    0/1 at random (the first binary task's label is 1 for category id 0, so
    it is learnable), regression labels in [0, 3)."""
    rng = np.random.RandomState(seed + 1)
    features = random_transformed_batch(config, batch_size, seed=seed)
    labels = {}
    first_binary = next((t.name for t in config.tasks if t.type == "binary"), None)
    for task in config.tasks:
        if task.name == first_binary and "category" in features:
            values = (features["category"].numpy() == 0).astype(np.float32)
        elif task.type == "binary":
            values = rng.randint(0, 2, batch_size).astype(np.float32)
        else:
            values = (rng.rand(batch_size) * 3).astype(np.float32)
        labels[task.label_key] = tf.constant(values)
    return features, labels
