"""Serving signatures of the exported SavedModel (serving contract v1).

`serving_default`: input `examples` (serialized tf.Example with the
impression's features plus user_id and item_id; no labels, no position);
outputs one tensor per task, keyed by task name, one value per example.
`transform_features`: the same input, the transformed features out.

Beside the SavedModel, `assets.extra/mtrank_serving_spec.json` tells a server
each feature's dtype, so it can convert int64 sent for a float feature (or the
reverse) before parsing.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from pipeline import config as config_lib
from trainer import features as features_lib

SERVING_SPEC_FILE = "mtrank_serving_spec.json"
EXAMPLES_INPUT = "examples"


def _transformed(model, serialized: tf.Tensor, config: config_lib.Config):
    parsed = tf.io.parse_example(serialized, features_lib.serving_feature_spec(config))
    return model.tft_layer(parsed)


def make_signatures(model, config: config_lib.Config):
    """Concrete functions for `model.save(..., signatures=...)`. The model
    must carry the Transform layer as `model.tft_layer`."""
    examples_spec = tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)

    @tf.function(input_signature=[examples_spec])
    def serve(examples):
        return model(_transformed(model, examples, config))

    @tf.function(input_signature=[examples_spec])
    def transform_features(examples):
        return _transformed(model, examples, config)

    return {
        "serving_default": serve.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }


def serving_spec(config: config_lib.Config) -> dict:
    return {
        "model_name": config.model_name,
        "tasks": [t.name for t in config.tasks],
        "features": {
            f.name: {"dtype": f.dtype, "shape": "scalar" if f.is_scalar else "list"}
            for f in config.features},
    }


def write_serving_spec(export_dir: str, config: config_lib.Config) -> None:
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, SERVING_SPEC_FILE), "w") as f:
        f.write(json.dumps(serving_spec(config), indent=2, sort_keys=True))
