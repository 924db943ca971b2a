"""Test helpers: a tiny SavedModel that honours the mtrank serving contract.

The trainer's real model takes minutes to build; the serving tests only need
something with the same signatures, input key, per-task outputs and
`assets.extra/mtrank_serving_spec.json`, whose scores depend on every feature
deterministically so tests can tell inputs (and versions) apart.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from mtrank.base import serving_contract
from mtrank.serving import server as server_lib, server_config, signatures

DEFAULT_TASKS = ("click", "purchase")
DEFAULT_FEATURES = {
    "user_id": {"dtype": "string", "shape": "scalar"},
    "item_id": {"dtype": "string", "shape": "scalar"},
    "item_price": {"dtype": "float", "shape": "scalar"},
    "hour": {"dtype": "int64", "shape": "scalar"},
    "item_tags": {"dtype": "string", "shape": "list"},
}
_HASH_BUCKETS = 97


def _weight(task: str, feature: str) -> float:
    """A fixed weight in ±[0.5, 1.5), different for each (task, feature)."""
    h = zlib.crc32(f"{task}/{feature}".encode())
    magnitude = 0.5 + (h % 1000) / 1000
    return magnitude if h & 1 << 20 else -magnitude


def _first_or_default(value: tf.SparseTensor, default) -> tf.Tensor:
    batch = value.dense_shape[0]
    first = tf.sparse.reset_shape(tf.sparse.slice(value, [0, 0], [batch, 1]),
                                  tf.stack([batch, 1]))
    return tf.sparse.to_dense(first, default_value=tf.cast(default, value.dtype))[:, 0]


class _TestRanker(tf.Module):
    """score[task] = sigmoid(bias + sum over features of weight * encoded value).

    Strings are encoded as a hash bucket in [0, 1), numbers as asinh(value)
    and lists by their length. `transform` takes parsed raw features (as
    parse_example gives them), `predict` the transformed ones, like the
    trainer's Transform layer and model.
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

    def transform(self, parsed: Mapping[str, tf.SparseTensor]) -> Dict[str, tf.Tensor]:
        columns = []
        for name, spec in self._features.items():
            value = parsed[name]
            if spec["shape"] == "list":
                ones = tf.ones_like(value.indices[:, 0], dtype=tf.float32)
                counts = tf.SparseTensor(value.indices, ones, value.dense_shape)
                columns.append(tf.sparse.reduce_sum(counts, axis=1, output_is_sparse=False))
                continue
            first = _first_or_default(value, serving_contract.DTYPE_DEFAULTS[spec["dtype"]])
            if spec["dtype"] == "string":
                buckets = tf.strings.to_hash_bucket_fast(first, _HASH_BUCKETS)
                columns.append(tf.cast(buckets, tf.float32) / _HASH_BUCKETS)
            else:
                columns.append(tf.math.asinh(tf.cast(first, tf.float32)))
        return {"encoded_features": tf.reshape(tf.stack(columns, axis=1),
                                               [-1, len(self._features)])}

    def predict(self, transformed: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        logits = tf.matmul(transformed["encoded_features"], self._weights) + self._bias
        return {task: tf.sigmoid(logits[:, i]) for i, task in enumerate(self._tasks)}


def write_test_model(base_dir: str, version: int, tasks: Sequence[str] = DEFAULT_TASKS,
                     features: Mapping[str, Mapping[str, str]] = DEFAULT_FEATURES,
                     bias: float = 0.0, model_name: str = "mtrank",
                     score_weights: Optional[Mapping[str, float]] = None,
                     score_form: str = "weighted_product") -> str:
    """Writes `base_dir/<version>` as a servable mtrank SavedModel; returns its path.

    `bias` shifts every logit, so two versions written with different biases
    give different scores for the same examples. The score weighs every task
    1 unless `score_weights` says otherwise. The export goes through the same
    signatures and assets code as the trainer's.
    """
    path = os.path.join(base_dir, str(version))
    module = _TestRanker(tasks, features, bias)
    formula = signatures.ScoreFormula(
        score_form, dict(score_weights or {task: 1.0 for task in tasks}))
    raw = [signatures.RawFeature(name, spec["dtype"], spec["shape"] == "scalar")
           for name, spec in features.items()]
    tf.saved_model.save(module, path, signatures=signatures.build_signatures(
        module.transform, module.predict, raw, formula, tasks))
    signatures.write_assets(path, {
        "model_name": model_name, "tasks": list(tasks),
        "features": {k: dict(v) for k, v in features.items()},
        "score": {"output": formula.output, "form": formula.form,
                  "weights": dict(formula.weights)}})
    return path


@contextlib.contextmanager
def running_server(model_base: str, model_name: str = "mtrank",
                   **options) -> Iterator[Tuple[server_lib.RunningServer, str]]:
    """Serves `model_base` on a free loopback port; yields (server, "127.0.0.1:port").

    `options` are ServerOptions fields (batching, poll_interval_s, ...).
    """
    options.setdefault("max_workers", 16)
    running = server_lib.start(server_config.single_model_config(model_name, model_base),
                               server_lib.ServerOptions(port=0, **options))
    try:
        yield running, f"127.0.0.1:{running.port}"
    finally:
        running.stop(grace_s=None)
