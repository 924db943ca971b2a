"""Client for mtrank ranking servers: ours (serving/server.py) or TensorFlow Serving.

It only uses the stock TensorFlow Serving stubs, so the same code talks to
both. Features are given as JSON-like dicts and become tf.Examples (or
predict_raw's tensors) by the JSON-to-Example mapping of the whole project,
base/examples.py.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mtrank.base import examples as examples_lib
from mtrank.base import log_contract, log_files
from mtrank.base import serving_contract as contract
from mtrank.serving import signatures

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256

Features = Mapping[str, Any]
Row = Tuple[str, str, Dict[str, float]]


def impression_features(event: Mapping[str, Any]) -> Dict[str, Any]:
    """The model input for a contract-v1 impression: its features plus user_id and item_id.

    The top-level ids are authoritative over same-named features. Position
    and feedback are not model inputs, so they are left out.
    """
    if event.get("type") != log_contract.IMPRESSION:
        raise ValueError(f"expected an impression event, got type {event.get('type')!r}")
    features = dict(event.get("features") or {})
    features["user_id"] = event["user_id"]
    features["item_id"] = event["item_id"]
    return features



def _fused_score_key(outputs) -> str:
    """Which of a model's outputs is the fused score: fused_score exists only
    when a task is named score."""
    return (contract.FUSED_SCORE_OUTPUT if contract.FUSED_SCORE_OUTPUT in outputs
            else contract.SCORE_OUTPUT)


class DeadlineExceeded(TimeoutError):
    """A call of the client ran out of its time before the server answered."""


def examples_tensor(candidates: Sequence[Union[Features, tf.train.Example]]
                    ) -> tensor_pb2.TensorProto:
    """serving_default's input: the candidates as serialized tf.Examples,
    feature dicts converted by examples.example_from_json."""
    serialized = [(c if isinstance(c, tf.train.Example) else examples_lib.example_from_json(c)
                   ).SerializeToString() for c in candidates]
    return tf.make_tensor_proto(serialized, dtype=tf.string)


# The serving contract's dtype name of each TensorFlow DataType predict_raw takes.
_DTYPE_NAMES = {tf_dtype.as_datatype_enum: name
                for name, tf_dtype in signatures.TF_DTYPES.items()}


def raw_tensors(candidates: Sequence[Features], inputs: Mapping[str, Tuple[int, int]]
                ) -> Dict[str, Any]:
    """TensorProtos for predict_raw: `inputs` gives each feature's (DataType, rank).

    Values convert to each input's dtype as everywhere (base/examples.py:
    3.0 for an int64 is 3; 3.5 is an error naming the feature); a missing or
    null feature takes the default ("" or 0), which is also how lists are
    padded to one length.
    """
    tensors = {}
    for name, (dtype_enum, rank) in sorted(inputs.items()):
        dtype = _DTYPE_NAMES.get(dtype_enum)
        if dtype is None:
            raise ValueError(f"predict_raw input '{name}' has unsupported dtype {dtype_enum}")
        where = f"feature '{name}'"
        default = examples_lib.convert(contract.DTYPE_DEFAULTS[dtype], dtype, where)
        rows = []
        for candidate in candidates:
            value = candidate.get(name)
            values = [] if value is None else value if isinstance(value, list) else [value]
            converted = examples_lib.convert_all(values, dtype, where)
            if rank == 1 and len(converted) > 1:
                raise ValueError(f"{where} is a scalar but has {len(converted)} values")
            rows.append(converted)
        tf_dtype = signatures.TF_DTYPES[dtype]
        if rank == 1:
            array = np.array([row[0] if row else default for row in rows],
                             dtype=tf_dtype.as_numpy_dtype)
        else:
            width = max((len(row) for row in rows), default=0)
            array = np.array([row + [default] * (width - len(row)) for row in rows],
                             dtype=tf_dtype.as_numpy_dtype).reshape(len(rows), width)
        tensors[name] = tf.make_tensor_proto(array, dtype=tf_dtype)
    return tensors


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What GetModelMetadata says about the served version."""

    name: str
    version: int
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The outputs of serving_default other than the fused score."""
        outputs = set(self.signature_defs[contract.SERVING_DEFAULT].outputs)
        return tuple(sorted(outputs - {_fused_score_key(outputs)}))


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class RankingClient:
    """Scores candidates on a server at `target` ("host:port"): ours or TF Serving.

    `signature` is serving_default (candidates sent as tf.Examples) or
    predict_raw (one tensor per feature, for when building Examples is not an
    option; the features' dtypes come from the server's metadata). Each call
    of `predict` has a deadline of `timeout_s` in all, however many requests
    it takes; a request answered UNAVAILABLE or RESOURCE_EXHAUSTED (server
    restarting, batch queue full) is retried up to `retries` times, after
    `backoff_s`, doubled each time, with jitter. With `root_certificates`
    (PEM bytes) the channel uses TLS.
    """

    def __init__(self, target: str, model_name: str = "mtrank", timeout_s: float = 10.0,
                 signature: str = contract.SERVING_DEFAULT, retries: int = 3,
                 backoff_s: float = 0.05, root_certificates: Optional[bytes] = None,
                 version: Optional[int] = None, version_label: Optional[str] = None,
                 seed: Optional[int] = None):
        if signature not in (contract.SERVING_DEFAULT, contract.PREDICT_RAW):
            raise ValueError(f"signature must be {contract.SERVING_DEFAULT} or "
                             f"{contract.PREDICT_RAW}, got {signature!r}")
        if retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0, timeout_s > 0")
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.signature = signature
        self.retries = retries
        self.backoff_s = backoff_s
        self.version = version
        self.version_label = version_label
        self._random = random.Random(seed)
        if root_certificates is not None:
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates),
                options=contract.GRPC_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=contract.GRPC_OPTIONS)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._raw_inputs: Optional[Mapping[str, Tuple[int, int]]] = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RankingClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model_spec(self, target) -> None:
        target.name = self.model_name
        if self.version is not None:
            target.version.value = self.version
        elif self.version_label is not None:
            target.version_label = self.version_label

    def _call(self, method, request, deadline: float):
        """One RPC within `deadline` (time.monotonic), retried when the server is busy."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"no answer from {self.target} within {self.timeout_s} s")
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt >= self.retries:
                    raise
                pause = self.backoff_s * 2 ** attempt * self._random.uniform(0.5, 1.5)
                attempt += 1
                logger.info("%s answered %s; retry %d in %.3f s", self.target, e.code().name,
                            attempt, pause)
                time.sleep(min(pause, max(deadline - time.monotonic(), 0)))

    def predict(self, examples: Iterable[Union[Features, tf.train.Example]],
                batch_size: int = DEFAULT_BATCH_SIZE) -> Dict[str, np.ndarray]:
        """Scores feature dicts (or, with serving_default, tf.Examples),
        `batch_size` candidates per request.

        Returns one array per output (the tasks and `score`), aligned with
        `examples`; {} when there are none. gRPC errors propagate as
        grpc.RpcError.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        candidates = list(examples)
        deadline = time.monotonic() + self.timeout_s
        parts: Dict[str, List[np.ndarray]] = {}
        for start in range(0, len(candidates), batch_size):
            request = predict_pb2.PredictRequest()
            self._model_spec(request.model_spec)
            request.model_spec.signature_name = self.signature
            chunk = candidates[start:start + batch_size]
            if self.signature == contract.PREDICT_RAW:
                for name, tensor in self._raw_tensors(chunk, deadline).items():
                    request.inputs[name].CopyFrom(tensor)
            else:
                request.inputs[contract.EXAMPLES_INPUT].CopyFrom(examples_tensor(chunk))
            response = self._call(self._predictions.Predict, request, deadline)
            for task, tensor in response.outputs.items():
                parts.setdefault(task, []).append(tf.make_ndarray(tensor))
        return {task: np.concatenate(arrays) for task, arrays in parts.items()}

    def scores(self, candidates: Iterable[Union[Features, tf.train.Example]],
               batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The fused ranking score of each candidate (sort by it, descending)."""
        outputs = self.predict(candidates, batch_size)
        return outputs.get(_fused_score_key(outputs), np.zeros(0, np.float32))

    def _raw_tensors(self, chunk: Sequence[Features], deadline: float) -> Dict[str, Any]:
        if self._raw_inputs is None:
            signature = self.metadata(deadline).signature_defs.get(contract.PREDICT_RAW)
            if signature is None:
                raise ValueError(f"model {self.model_name} has no {contract.PREDICT_RAW} "
                                 "signature")
            self._raw_inputs = {name: (info.dtype, len(info.tensor_shape.dim))
                                for name, info in signature.inputs.items()}
        return raw_tensors(chunk, self._raw_inputs)

    def metadata(self, deadline: Optional[float] = None) -> ModelMetadata:
        """The served version and its signatures."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append(contract.SIGNATURE_DEF_FIELD)
        response = self._call(self._predictions.GetModelMetadata, request,
                              deadline or time.monotonic() + self.timeout_s)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[contract.SIGNATURE_DEF_FIELD].Unpack(signature_def_map)
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                             dict(signature_def_map.signature_def))

    def status(self) -> Dict[int, str]:
        """State name (e.g. "AVAILABLE") of each version the server reports."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._call(self._models.GetModelStatus, request,
                              time.monotonic() + self.timeout_s)
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
                 **client_options) -> List[Row]:
    """Scores the first `limit` impressions of a log: rows of (request_id,
    item_id, {output: value}). `client_options` go to RankingClient
    (timeout_s, signature, retries, root_certificates, ...)."""
    impressions = read_impressions(logs_path, limit)
    with RankingClient(target, model_name, **client_options) as client:
        scores = client.predict([impression_features(e) for e in impressions], batch_size)
    return [
        (event["request_id"], event["item_id"],
         {task: float(scores[task][i]) for task in sorted(scores)})
        for i, event in enumerate(impressions)
    ]


def format_predictions(rows: List[Row]) -> str:
    """A plain-text table: request_id, item_id, then one column per output
    (4 significant digits: a fused score, a product of probabilities, can be
    far below 0.0001)."""
    tasks = sorted({task for _, _, scores in rows for task in scores})
    table = [["request_id", "item_id", *tasks]] + [
        [request_id, item_id, *(f"{scores[t]:.4g}" if t in scores else "-" for t in tasks)]
        for request_id, item_id, scores in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in table
    )


def print_predictions(target: str, logs_path: str, limit: Optional[int] = None,
                      model_name: str = "mtrank", out: Optional[TextIO] = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, **client_options) -> int:
    """`mtrank predict`: prints a table of scores per output; returns the number of rows."""
    out = out or sys.stdout
    rows = predict_logs(target, logs_path, limit=limit, model_name=model_name,
                        batch_size=batch_size, **client_options)
    if rows:
        print(format_predictions(rows), file=out)
    else:
        print(f"no impressions in {logs_path}", file=out)
    return len(rows)
