"""Test helpers: a tiny SavedModel that honours the mtrank serving contract.

The trainer's real model takes minutes to build; the serving tests only need
something with the same signatures, input key, per-task outputs and
`assets.extra/mtrank_serving_spec.json`, whose scores depend on every feature
deterministically so tests can tell inputs (and versions) apart.
"""
from __future__ import annotations

import contextlib
import json
import os
import zlib
from typing import Iterator, Mapping, Sequence, Tuple

import grpc
import tensorflow as tf

from serving import model_store, server as server_lib

DEFAULT_TASKS = ("click", "purchase")
DEFAULT_FEATURES = {
    "user_id": {"dtype": "string", "shape": "scalar"},
    "item_id": {"dtype": "string", "shape": "scalar"},
    "item_price": {"dtype": "float", "shape": "scalar"},
    "hour": {"dtype": "int64", "shape": "scalar"},
    "item_tags": {"dtype": "string", "shape": "list"},
}
_HASH_BUCKETS = 97
_TF_DTYPES = {"string": tf.string, "int64": tf.int64, "float": tf.float32}
_DEFAULTS = {"string": "", "int64": 0, "float": 0.0}


def _weight(task: str, feature: str) -> float:
    """A fixed weight in ±[0.5, 1.5), different for each (task, feature)."""
    h = zlib.crc32(f"{task}/{feature}".encode())
    magnitude = 0.5 + (h % 1000) / 1000
    return magnitude if h & 1 << 20 else -magnitude


class _TestRanker(tf.Module):
    """score[task] = sigmoid(bias + sum over features of weight * encoded value).

    Strings are encoded as a hash bucket in [0, 1), numbers as asinh(value)
    and lists by their length.
    """

    def __init__(self, tasks: Sequence[str], features: Mapping[str, Mapping[str, str]],
                 bias: float):
        super().__init__()
        self._tasks = tuple(tasks)
        self._features = {name: dict(spec) for name, spec in sorted(features.items())}
        self._weights = tf.Variable(
            [[_weight(t, f) for t in self._tasks] for f in self._features], dtype=tf.float32
        )
        self._bias = tf.Variable(bias, dtype=tf.float32)

    def _encode(self, examples: tf.Tensor) -> tf.Tensor:
        parse_spec = {
            name: tf.io.FixedLenFeature([1], _TF_DTYPES[spec["dtype"]], _DEFAULTS[spec["dtype"]])
            if spec["shape"] == "scalar" else tf.io.VarLenFeature(_TF_DTYPES[spec["dtype"]])
            for name, spec in self._features.items()
        }
        parsed = tf.io.parse_example(examples, parse_spec)
        columns = []
        for name, spec in self._features.items():
            value = parsed[name]
            if spec["shape"] == "list":
                ones = tf.ones_like(value.indices[:, 0], dtype=tf.float32)
                counts = tf.SparseTensor(value.indices, ones, value.dense_shape)
                columns.append(tf.sparse.reduce_sum(counts, axis=1))
            elif spec["dtype"] == "string":
                buckets = tf.strings.to_hash_bucket_fast(value[:, 0], _HASH_BUCKETS)
                columns.append(tf.cast(buckets, tf.float32) / _HASH_BUCKETS)
            else:
                columns.append(tf.math.asinh(tf.cast(value[:, 0], tf.float32)))
        return tf.stack(columns, axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        logits = tf.matmul(self._encode(examples), self._weights) + self._bias
        return {task: tf.sigmoid(logits[:, i]) for i, task in enumerate(self._tasks)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform(self, examples):
        return {"encoded_features": self._encode(examples)}


def write_test_model(base_dir: str, version: int, tasks: Sequence[str] = DEFAULT_TASKS,
                     features: Mapping[str, Mapping[str, str]] = DEFAULT_FEATURES,
                     bias: float = 0.0, model_name: str = "mtrank") -> str:
    """Writes `base_dir/<version>` as a servable mtrank SavedModel; returns its path.

    `bias` shifts every logit, so two versions written with different biases
    give different scores for the same examples.
    """
    path = os.path.join(base_dir, str(version))
    module = _TestRanker(tasks, features, bias)
    tf.saved_model.save(module, path, signatures={
        model_store.SERVING_SIGNATURE: module.serve.get_concrete_function(),
        "transform_features": module.transform.get_concrete_function(),
    })
    spec_path = os.path.join(path, model_store.SPEC_PATH)
    os.makedirs(os.path.dirname(spec_path), exist_ok=True)
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump({"model_name": model_name, "tasks": list(tasks),
                   "features": {k: dict(v) for k, v in features.items()}}, f, indent=2)
    return path


@contextlib.contextmanager
def running_server(model_base: str,
                   model_name: str = "mtrank") -> Iterator[Tuple[grpc.Server, str]]:
    """Serves `model_base` on a free loopback port; yields (server, "127.0.0.1:port")."""
    server, port = server_lib.serve(model_base, model_name=model_name, port=0, max_workers=4)
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
