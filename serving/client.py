"""Client for mtrank ranking servers: ours (serving/server.py) or TensorFlow Serving.

It only uses the stock TensorFlow Serving stubs, so the same code talks to
both. Features are given as JSON-like dicts and become tf.Examples through
`example_from_json`, the JSON-to-Example mapping of the whole project.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, TextIO, Tuple, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components import log_contract, log_files
from serving import model_store
from serving.server import GRPC_OPTIONS, SIGNATURE_DEF_FIELD

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256

Features = Mapping[str, Any]
Row = Tuple[str, str, Dict[str, float]]


def _is_number(value) -> bool:
    # bool is an int subclass, but true/false is not a number in the log contract.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int64(name: str, value: int) -> int:
    if not model_store.INT64_MIN <= value <= model_store.INT64_MAX:
        raise ValueError(f"feature '{name}': {value} does not fit in int64")
    return value


def example_from_json(features: Features) -> tf.train.Example:
    """Builds a tf.Example from a JSON object of features.

    str -> bytes_list (UTF-8); int -> int64_list; float -> float_list;
    a list of str -> bytes_list; a list of numbers -> int64_list if all are
    ints, else float_list. None and [] carry no value, so the feature is
    omitted and the model's default applies. Booleans, mixed lists and any
    other type raise ValueError naming the feature.
    """
    example = tf.train.Example()
    for name, value in features.items():
        if not isinstance(name, str):
            raise ValueError(f"feature names must be strings, got {name!r}")
        if value is None or (isinstance(value, list) and not value):
            continue
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        if all(isinstance(v, str) for v in values):
            feature.bytes_list.value.extend(v.encode("utf-8") for v in values)
        elif all(isinstance(v, int) and _is_number(v) for v in values):
            feature.int64_list.value.extend(_check_int64(name, v) for v in values)
        elif all(_is_number(v) for v in values):
            feature.float_list.value.extend(values)
        elif any(isinstance(v, bool) for v in values):
            raise ValueError(f"feature '{name}': booleans are not allowed; use 0/1 or a string")
        elif isinstance(value, list):
            raise ValueError(f"feature '{name}': a list must hold only strings or only numbers")
        else:
            raise ValueError(f"feature '{name}': expected string, number or list, "
                             f"got {type(value).__name__}")
    return example


def impression_to_example(event: Mapping[str, Any]) -> tf.train.Example:
    """The model input for a contract-v1 impression: its features plus user_id and item_id.

    The top-level ids are authoritative over same-named features. Position
    and feedback are not model inputs, so they are left out.
    """
    if event.get("type") != log_contract.IMPRESSION:
        raise ValueError(f"expected an impression event, got type {event.get('type')!r}")
    features = dict(event.get("features") or {})
    features["user_id"] = event["user_id"]
    features["item_id"] = event["item_id"]
    return example_from_json(features)


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What GetModelMetadata says about the served version."""

    name: str
    version: int
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The tasks scored by serving_default, i.e. its output keys."""
        return tuple(sorted(self.signature_defs[model_store.SERVING_SIGNATURE].outputs))


class RankingClient:
    """Scores examples on a server at `target` ("host:port") over an insecure channel."""

    def __init__(self, target: str, model_name: str = "mtrank", timeout_s: float = 10.0):
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RankingClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def predict(self, examples: Iterable[Union[Features, tf.train.Example]],
                batch_size: int = DEFAULT_BATCH_SIZE) -> Dict[str, np.ndarray]:
        """Scores feature dicts or tf.Examples, `batch_size` per request.

        Returns one array per task, aligned with `examples`; {} when there
        are none. gRPC errors propagate as grpc.RpcError.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        serialized = [
            (e if isinstance(e, tf.train.Example) else example_from_json(e)).SerializeToString()
            for e in examples
        ]
        parts: Dict[str, List[np.ndarray]] = {}
        for start in range(0, len(serialized), batch_size):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = self.model_name
            request.model_spec.signature_name = model_store.SERVING_SIGNATURE
            request.inputs[model_store.EXAMPLES_INPUT].CopyFrom(
                tf.make_tensor_proto(serialized[start:start + batch_size], dtype=tf.string))
            response = self._predictions.Predict(request, timeout=self.timeout_s)
            for task, tensor in response.outputs.items():
                parts.setdefault(task, []).append(tf.make_ndarray(tensor))
        return {task: np.concatenate(arrays) for task, arrays in parts.items()}

    def metadata(self) -> ModelMetadata:
        """The served version and its signatures."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append(SIGNATURE_DEF_FIELD)
        response = self._predictions.GetModelMetadata(request, timeout=self.timeout_s)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_def_map)
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                             dict(signature_def_map.signature_def))

    def status(self) -> Dict[int, str]:
        """State name (e.g. "AVAILABLE") of each version the server reports."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._models.GetModelStatus(request, timeout=self.timeout_s)
        return {
            status.version: get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
            for status in response.model_version_status
        }


def read_impressions(logs_path: str, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """The first `limit` (default all) valid impressions in a JSONL or JSONL.gz log, as dicts.

    `logs_path` may also be a directory or a glob. Lines that are not valid
    contract-v1 events are skipped and counted in a warning.
    """
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    impressions: List[Dict[str, Any]] = []
    invalid = 0
    for event in log_files.iter_events(logs_path):
        if limit is not None and len(impressions) >= limit:
            break
        if isinstance(event, log_contract.DeadLetter):
            invalid += 1
        elif event.is_impression:
            impressions.append(dataclasses.asdict(event))
    if invalid:
        logger.warning("skipped %d lines of %s that are not valid log events", invalid, logs_path)
    return impressions


def predict_logs(target: str, logs_path: str, limit: Optional[int] = None,
                 model_name: str = "mtrank", batch_size: int = DEFAULT_BATCH_SIZE,
                 timeout_s: float = 10.0) -> List[Row]:
    """Scores the first `limit` impressions of a log: rows of (request_id, item_id, scores)."""
    impressions = read_impressions(logs_path, limit)
    with RankingClient(target, model_name, timeout_s) as client:
        scores = client.predict((impression_to_example(e) for e in impressions), batch_size)
    return [
        (event["request_id"], event["item_id"],
         {task: float(scores[task][i]) for task in sorted(scores)})
        for i, event in enumerate(impressions)
    ]


def format_predictions(rows: List[Row]) -> str:
    """A plain-text table: request_id, item_id, then one column per task."""
    tasks = sorted({task for _, _, scores in rows for task in scores})
    table = [["request_id", "item_id", *tasks]] + [
        [request_id, item_id, *(f"{scores[t]:.4f}" if t in scores else "-" for t in tasks)]
        for request_id, item_id, scores in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in table
    )


def print_predictions(target: str, logs_path: str, limit: Optional[int] = None,
                      model_name: str = "mtrank", out: Optional[TextIO] = None) -> int:
    """`mtrank predict`: prints a table of per-task scores; returns the number of rows."""
    out = out or sys.stdout
    rows = predict_logs(target, logs_path, limit=limit, model_name=model_name)
    if rows:
        print(format_predictions(rows), file=out)
    else:
        print(f"no impressions in {logs_path}", file=out)
    return len(rows)
