"""A gRPC server that speaks the TensorFlow Serving API for mtrank models.

It serves the same model directories and reads the same configuration files
as the official `tensorflow/serving` image, through the same stock services,
so one client works with both:

  tensorflow.serving.PredictionService: Predict, Classify, Regress,
                                        MultiInference, GetModelMetadata
  tensorflow.serving.ModelService:      GetModelStatus, HandleReloadConfigRequest
  grpc.health.v1.Health:                Check, Watch

and, with a REST port, TF Serving's REST API on the same models (serving/rest.py).

Models come from a ModelServerConfig (several models, version policies,
labels; serving/model_manager.py keeps them loaded, polling for new
versions). With batching parameters, concurrent requests are merged into one
model call (serving/batching.py). Unlike TF Serving it checks every Example
against the model's serving spec (in the model's own call), converting
numbers to the declared dtype and naming the feature when a value cannot be
used, and it answers any malformed request with INVALID_ARGUMENT (NOT_FOUND
for an unknown model or version).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import signal
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from mtrank.base import serving_contract as contract
from mtrank.serving import batching, metrics as metrics_lib, model_manager, model_store, server_config
from mtrank.serving import rest, signatures, tensors
from mtrank.serving.errors import RequestError, invalid

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
DEFAULT_MAX_WORKERS = 64
# Server processes of `mtrank serve` (serving/workers.py): measured best on
# 2 CPUs (docs/serving.md, issue 20).
DEFAULT_WORKERS = 2
DEFAULT_POLL_S = 1.0
# One thread per op: a ranking model's ops are small, and splitting them over
# threads cost more than it saved. The demo's model on 2 CPUs, in process:
# 0.92-1.00 ms a call of 1 example and 1.95-2.21 ms of 64 with one intra-op
# thread (1 or 2 inter-op), 1.24-1.42 ms and 3.0-3.3 ms with TensorFlow's
# default (all cores for both).
DEFAULT_INTRA_OP_THREADS = 1
# Each model call's ops run in the thread that calls it: handing them to an
# inter-op pool and waiting cost more than running two small ops at once
# saved. `benchmarks/serving.py --clients 1,32 --candidates 1,64 --rounds 3`,
# runs alternating -1 and 0, two each: 1 client p50 2.24-2.31x the echo's
# against 2.57-2.60x; 32 clients with batching 0.79-0.80x the echo's
# requests/s against 0.72-0.74x (1 candidate), 0.29-0.30x its candidates/s
# against 0.27-0.28x (64); only 1 client with 64 candidates was slower,
# p50 3.01-3.41 against 2.81-3.29 ms (docs/serving.md).
DEFAULT_INTER_OP_THREADS = -1
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
_UNKNOWN_LABEL = "<unknown>"
_NO_DEADLINE_S = 365 * 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How the server runs (the model config says what it serves).

    max_request_bytes: larger requests get INVALID_ARGUMENT; gRPC itself
      refuses messages over twice this with RESOURCE_EXHAUSTED.
    max_values_per_input: the largest tensor (in values) a request may send.
    max_concurrent_rpcs: beyond it gRPC answers RESOURCE_EXHAUSTED at once.
    batching: None serves each request with its own model call.
    tls_cert / tls_key: PEM files; both set serves TLS only.
    metrics_port: serve Prometheus metrics over HTTP on this port (0: any free).
    rest_port: serve TensorFlow Serving's REST API (serving/rest.py) on this
      port (0: any free; None: none), over TLS when tls_cert is set.
    intra_op_threads: threads one op may use, as TF Serving's
      --tensorflow_intra_op_parallelism (0: TensorFlow picks; None: as it
      is, for a server inside another program). The pool is the process's
      and can only be sized before TensorFlow first runs in it; `mtrank
      serve` sets DEFAULT_INTRA_OP_THREADS.
    inter_op_threads: ops the models' Sessions run at once, as TF Serving's
      --tensorflow_inter_op_parallelism (0: TensorFlow picks; negative:
      each call's ops run in the calling thread).
    reuse_port: listen with SO_REUSEPORT, sharing the ports with other
      processes that do (the workers of serving/workers.py); off, a busy
      port fails the start.
    metrics_dir: keep the metrics in this directory, summed with those of
      the other processes that write there (prometheus_client's
      multiprocess mode; the environment variable PROMETHEUS_MULTIPROC_DIR
      must name it before prometheus_client is imported).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_workers: int = DEFAULT_MAX_WORKERS
    poll_interval_s: float = DEFAULT_POLL_S
    max_request_bytes: int = contract.MAX_MESSAGE_BYTES
    max_values_per_input: int = 10_000_000
    max_concurrent_rpcs: int = 1024
    batching: Optional[server_config.BatchingParameters] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    metrics_port: Optional[int] = None
    rest_port: Optional[int] = None
    grace_s: float = 10.0
    intra_op_threads: Optional[int] = None
    inter_op_threads: int = DEFAULT_INTER_OP_THREADS
    reuse_port: bool = False
    metrics_dir: Optional[str] = None

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")


def set_intra_op_threads(threads: Optional[int]) -> None:
    """Sizes TensorFlow's intra-op pool (None: leaves it as it is); once
    TensorFlow has run, it stays as it is and a warning says so."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        logger.warning("TensorFlow is already running in this process; its intra-op pool "
                       "keeps its size (%d)",
                       tf.config.threading.get_intra_op_parallelism_threads())


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _examples_from_input(input_proto) -> np.ndarray:
    """The serialized Examples of a Classify / Regress `Input`."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        examples = []
        for example in input_proto.example_list_with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)  # the example's own features win
            examples.append(merged)
    else:
        raise invalid("input: set example_list or example_list_with_context")
    if not examples:
        raise invalid("input: no examples")
    array = np.empty(len(examples), dtype=object)
    for i, example in enumerate(examples):
        array[i] = example.SerializeToString()
    return array


# How a model run refuses its input. TensorFlow raises UnicodeDecodeError
# instead of InvalidArgumentError when its message quotes bytes that are not
# UTF-8, as its Example parser does for some Examples protobuf reads.
_MODEL_REFUSALS = (model_store.ExamplesNeedConforming, tf.errors.InvalidArgumentError,
                   UnicodeDecodeError)


def _refusal_message(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "TensorFlow could not parse an Example"
    return getattr(error, "message", str(error))


def _conform_example_inputs(inputs, spec: model_store.ServingSpec):
    """`inputs` with their Examples conformed to the spec (INVALID_ARGUMENT
    naming one that cannot be); None when no input holds Examples. For a
    merged batch the name's index is the batch's: the batcher then runs each
    request alone, so that the client is told its own index."""
    names = [name for name, array in inputs.items()
             if name in contract.EXAMPLE_INPUTS and array.dtype == object]
    if not names:
        return None
    conformed = dict(inputs)
    for name in names:
        conformed[name] = tensors.conform_examples(name, inputs[name], spec)
    return conformed


class Answer:
    """One request's outcome, as ModelServer.answering fills it: its status
    (OK unless refused) and response, and the model and signature its
    metrics count it under."""

    def __init__(self, model_server: "ModelServer", method_name: str):
        self._model_server = model_server
        self._method_name = method_name
        self.code, self.message, self.response = grpc.StatusCode.OK, "", None
        self.model_label, self.signature_label = "", ""

    def count_as(self, request) -> None:
        """Counts the request under the model and signature it names."""
        self.model_label, self.signature_label = _labels(self._model_server, self._method_name,
                                                         request)


class ModelServer:
    """Answers the TF Serving API for the models of a ModelServerConfig."""

    def __init__(self, config: model_server_config_pb2.ModelServerConfig,
                 options: ServerOptions = ServerOptions()):
        self.options = options
        self.metrics = metrics_lib.ServerMetrics(options.metrics_dir)
        # Applies a HandleReloadConfigRequest; a worker of several applies
        # it in every worker (serving/workers.py).
        self.reload_hook: Optional[Callable] = None
        self.batcher = (batching.Batcher(options.batching, self.metrics.record_batch)
                        if options.batching else None)
        try:
            self.manager = model_manager.ModelManager(
                config, self.warm_up, self._model_changed,
                model_store.session_config(options.inter_op_threads))
        except BaseException:
            if self.batcher is not None:
                self.batcher.stop()
            raise

    def _model_changed(self, model: str, available: int, failed: bool) -> None:
        self.metrics.versions_loaded.labels(model).set(available)
        if failed:
            self.metrics.load_failures.labels(model).inc()

    @contextlib.contextmanager
    def answering(self, method_name: str, peer: Callable[[], str]) -> Iterator[Answer]:
        """Answers one request, over gRPC or REST alike: counts it in flight,
        then by outcome and latency, and turns what the block raises into the
        answer's status, a RequestError's own or INTERNAL (logged) for
        anything else, so that the server keeps serving whatever one request
        does. `peer` names the client in the log."""
        answer = Answer(self, method_name)
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            yield answer
        except RequestError as e:
            answer.code, answer.message = e.code, e.message
            logger.warning("%s from %s rejected (%s): %s", method_name, peer(), e.code.name,
                           e.message)
        except Exception:  # the server must keep serving whatever one request does
            logger.exception("%s from %s failed", method_name, peer())
            answer.code = grpc.StatusCode.INTERNAL
            answer.message = "internal error; see the server log"
        finally:
            self.metrics.in_flight.dec()
            self.metrics.record_request(answer.model_label, answer.signature_label, method_name,
                                        answer.code.name, time.perf_counter() - start)

    # Running signatures.

    def _execute(self, loaded: model_store.LoadedModel, signature: str, inputs, size: int,
                 output_keys: Sequence[str], deadline: Optional[float]) -> Dict[str, np.ndarray]:
        def run(merged):
            try:
                return loaded.run(signature, merged, output_keys)
            except _MODEL_REFUSALS as e:
                error = e  # Examples of the other numeric kind fail the model's parse
            conformed = _conform_example_inputs(merged, loaded.spec)
            if conformed is not None:
                try:
                    return loaded.run(signature, conformed, output_keys, check_examples=False)
                except _MODEL_REFUSALS as e:
                    error = e
            raise invalid(f"the model rejected the input: {_refusal_message(error)}") from None

        if self.batcher is None or size == 0 or deadline == 0:
            outputs = run(inputs)
            self.metrics.record_batch(1, size)
            return outputs
        key = batching.batch_key(id(loaded), signature, output_keys, inputs)
        future = self.batcher.submit(key, run, inputs, size)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "the deadline passed while the request waited for its batch"
                               ) from None

    def signature(self, loaded: model_store.LoadedModel, name: str, method: Optional[str]
                  ) -> model_store.SignatureInfo:
        """The version's signature `name`; INVALID_ARGUMENT when it has none, or
        when `method` is set and the signature has another method."""
        signature = loaded.signature_infos.get(name)
        if signature is None:
            raise invalid(f"signature '{name}' not found in model '{loaded.name}' version "
                          f"{loaded.version}; signatures: {sorted(loaded.signature_infos)}")
        if method is not None and signature.method != method:
            raise invalid(f"signature '{name}' is a {signature.method or 'predict'} "
                          f"signature, not {method}")
        return signature

    # PredictionService.

    def predict_outputs(self, request: predict_pb2.PredictRequest,
                        deadline: Optional[float] = None, loaded=None
                        ) -> Tuple[model_store.LoadedModel, str, Dict[str, np.ndarray]]:
        """Predict's outputs by name, in name order, and the version and
        signature that made them: any signature, on named input tensors;
        `output_filter` selects outputs."""
        loaded = loaded or self.manager.resolve(request.model_spec)
        name = request.model_spec.signature_name or contract.SERVING_DEFAULT
        signature = self.signature(loaded, name, None)
        wanted = signature.outputs
        if request.output_filter:
            wanted = tuple(sorted(set(request.output_filter)))
            unknown = [key for key in wanted if key not in signature.outputs]
            if unknown:
                raise invalid(f"output_filter names unknown outputs {unknown}; outputs of "
                              f"'{name}': {list(signature.outputs)}")
        inputs, size = tensors.decode_inputs(name, signature, request.inputs, loaded.spec,
                                             self.options.max_values_per_input)
        return loaded, name, self._execute(loaded, name, inputs, size, wanted, deadline)

    def predict(self, request: predict_pb2.PredictRequest,
                deadline: Optional[float] = None, loaded=None) -> bytes:
        """The serialized PredictResponse to `request` (predict_outputs)."""
        loaded, name, outputs = self.predict_outputs(request, deadline, loaded)
        return tensors.predict_response_bytes(
            _model_spec_bytes(loaded.name, loaded.version, name), outputs)

    def _examples_signature(self, loaded, request, method: str):
        name = request.model_spec.signature_name or contract.SERVING_DEFAULT
        signature = self.signature(loaded, name, method)
        (input_key,) = (signature_input.name for signature_input in signature.inputs)
        examples = _examples_from_input(request.input)
        tensors.check_examples_parse(input_key, examples, loaded.spec)
        if examples.size > self.options.max_values_per_input:
            raise invalid(f"input: {examples.size} examples is more than the limit of "
                          f"{self.options.max_values_per_input}")
        return name, signature, {input_key: examples}, examples.size

    def classify(self, request: classification_pb2.ClassificationRequest,
                 deadline: Optional[float] = None, loaded=None):
        """A classification signature (mtrank's `classify`): one class per binary task,
        scored by its probability."""
        loaded = loaded or self.manager.resolve(request.model_spec)
        name, signature, inputs, size = self._examples_signature(
            loaded, request, contract.CLASSIFY_METHOD)
        keys = [k for k in signature.outputs
                if k in (contract.CLASSIFY_CLASSES, contract.CLASSIFY_SCORES)]
        outputs = self._execute(loaded, name, inputs, size, keys, deadline)
        response = classification_pb2.ClassificationResponse()
        self._echo(response.model_spec, loaded, name)
        classes = outputs.get(contract.CLASSIFY_CLASSES)
        scores = outputs.get(contract.CLASSIFY_SCORES)
        for i in range(size):
            row = response.result.classifications.add()
            width = (classes if classes is not None else scores).shape[1]
            for j in range(width):
                entry = row.classes.add()
                if classes is not None:
                    entry.label = classes[i, j].decode()
                if scores is not None:
                    entry.score = float(scores[i, j])
        return response

    def regress(self, request: regression_pb2.RegressionRequest,
                deadline: Optional[float] = None, loaded=None):
        """A regression signature (mtrank's `regress`: the fused score)."""
        loaded = loaded or self.manager.resolve(request.model_spec)
        name, signature, inputs, size = self._examples_signature(
            loaded, request, contract.REGRESS_METHOD)
        (output_key,) = signature.outputs
        outputs = self._execute(loaded, name, inputs, size, [output_key], deadline)
        response = regression_pb2.RegressionResponse()
        self._echo(response.model_spec, loaded, name)
        for value in outputs[output_key].reshape(size, -1)[:, 0]:
            response.result.regressions.add(value=float(value))
        return response

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest,
                        deadline: Optional[float] = None, loaded=None):
        """Several classify / regress tasks of one model version on one input."""
        if not request.tasks:
            raise invalid("tasks: at least one task is needed")
        first = request.tasks[0].model_spec
        loaded = loaded or self.manager.resolve(first)
        response = inference_pb2.MultiInferenceResponse()
        seen = set()
        for i, task in enumerate(request.tasks):
            spec = task.model_spec
            if spec.name != first.name or spec.WhichOneof("version_choice") != first.WhichOneof(
                    "version_choice") or (spec.version.value, spec.version_label) != (
                    first.version.value, first.version_label):
                raise invalid(f"tasks[{i}]: every task must name the same model and version")
            if spec.signature_name in seen:
                raise invalid(f"tasks[{i}]: signature '{spec.signature_name}' is used twice")
            seen.add(spec.signature_name)
            if task.method_name == contract.CLASSIFY_METHOD:
                sub = classification_pb2.ClassificationRequest(model_spec=spec, input=request.input)
                result = response.results.add()
                answer = self.classify(sub, deadline, loaded)
                result.classification_result.CopyFrom(answer.result)
            elif task.method_name == contract.REGRESS_METHOD:
                sub = regression_pb2.RegressionRequest(model_spec=spec, input=request.input)
                result = response.results.add()
                answer = self.regress(sub, deadline, loaded)
                result.regression_result.CopyFrom(answer.result)
            else:
                raise invalid(f"tasks[{i}].method_name: must be {contract.CLASSIFY_METHOD} or "
                              f"{contract.REGRESS_METHOD}, got {task.method_name!r}")
            result.model_spec.CopyFrom(answer.model_spec)
        return response

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                           deadline: Optional[float] = None):
        """The version's SignatureDefMap, packed as TF Serving packs it."""
        loaded = self.manager.resolve(request.model_spec)
        fields = set(request.metadata_field)
        if fields != {contract.SIGNATURE_DEF_FIELD}:
            raise invalid(f"metadata_field must be ['{contract.SIGNATURE_DEF_FIELD}'], "
                          f"got {sorted(fields)}")
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        for key, info in loaded.signature_infos.items():
            signature_def_map.signature_def[key].CopyFrom(info.definition)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._echo(response.model_spec, loaded, "")
        response.metadata[contract.SIGNATURE_DEF_FIELD].Pack(signature_def_map)
        return response

    # ModelService.

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest,
                         deadline: Optional[float] = None):
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(self.manager.status(request.model_spec))
        return response

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest,
                      deadline: Optional[float] = None):
        try:
            (self.reload_hook or self.reload_here)(request.config)
        except (server_config.ServerConfigError, FileNotFoundError, ValueError) as e:
            raise invalid(str(e)) from None
        return model_management_pb2.ReloadConfigResponse()

    def reload_here(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves exactly `config`'s models in this process, once loaded."""
        self.manager.reload(config)

    @staticmethod
    def _echo(target, loaded: model_store.LoadedModel, signature: str) -> None:
        target.ParseFromString(_model_spec_bytes(loaded.name, loaded.version, signature))

    def warm_up(self, loaded: model_store.LoadedModel) -> None:
        """Replays the version's warmup requests on it (not batched), as TF
        Serving does before a version takes traffic; a failure fails the load."""
        handlers = {"predict_log": self.predict, "classify_log": self.classify,
                    "regress_log": self.regress, "multi_inference_log": self.multi_inference}
        for record in signatures.read_warmup_logs(loaded.path):
            kind = record.WhichOneof("log_type")
            if kind not in handlers:
                raise ValueError(f"{loaded.path}: warmup record of unsupported type {kind}")
            handlers[kind](getattr(record, kind).request, 0, loaded)

    def served_model_label(self, name: str) -> str:
        return name if self.manager.serves(name) else _UNKNOWN_LABEL

    def stop(self) -> None:
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.stop()


_PREDICTION_METHODS = {
    "Predict": (predict_pb2.PredictRequest, ModelServer.predict),
    "Classify": (classification_pb2.ClassificationRequest, ModelServer.classify),
    "Regress": (regression_pb2.RegressionRequest, ModelServer.regress),
    "MultiInference": (inference_pb2.MultiInferenceRequest, ModelServer.multi_inference),
    "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest,
                         ModelServer.get_model_metadata),
}
_MODEL_METHODS = {
    "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest, ModelServer.get_model_status),
    "HandleReloadConfigRequest": (model_management_pb2.ReloadConfigRequest,
                                  ModelServer.reload_config),
}


_SIGNATURE_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})
_KNOWN_SIGNATURES = frozenset({contract.SERVING_DEFAULT, contract.PREDICT_RAW,
                               contract.REGRESS, contract.CLASSIFY,
                               contract.TRANSFORM_FEATURES})


def _labels(model_server: ModelServer, method_name: str, request) -> Tuple[str, str]:
    """(model, signature) metric labels; unknown model names share one label,
    so that clients cannot grow the metrics without bound."""
    spec = request.tasks[0].model_spec if isinstance(
        request, inference_pb2.MultiInferenceRequest) and request.tasks else getattr(
        request, "model_spec", None)
    if spec is None:
        return "", ""
    signature = ""
    if method_name in _SIGNATURE_METHODS:
        signature = spec.signature_name or contract.SERVING_DEFAULT
        if signature not in _KNOWN_SIGNATURES:
            signature = _UNKNOWN_LABEL
    return model_server.served_model_label(spec.name), signature


@functools.lru_cache(maxsize=256)
def _model_spec_bytes(name: str, version: int, signature: str) -> bytes:
    """The serialized ModelSpec a response names its version and signature
    (none when "") with."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec.SerializeToString()


def _serialized(response) -> bytes:
    """A response message serialized; Predict's comes serialized already."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _handler(model_server: ModelServer, method_name: str, request_class, method: Callable):
    """A unary handler taking the raw request bytes, so that undecodable and
    oversized requests get INVALID_ARGUMENT rather than gRPC's INTERNAL."""
    limit = model_server.options.max_request_bytes

    def handle(request_bytes: bytes, context: grpc.ServicerContext):
        with model_server.answering(method_name, context.peer) as answer:
            if len(request_bytes) > limit:
                raise invalid(f"the request has {len(request_bytes)} bytes, more than the limit "
                              f"of {limit}")
            request = request_class()
            try:
                consumed = request.ParseFromString(request_bytes)
            except DecodeError as e:
                raise invalid(f"not a {request_class.DESCRIPTOR.full_name}: {e}") from None
            if consumed != len(request_bytes):  # stopped early at a stray end-group tag
                raise invalid(f"not a {request_class.DESCRIPTOR.full_name}: parsing stopped at "
                              f"byte {consumed} of {len(request_bytes)}")
            answer.count_as(request)
            remaining = context.time_remaining()
            # Without a deadline gRPC reports centuries remaining.
            deadline = (None if remaining is None or remaining > _NO_DEADLINE_S
                        else time.monotonic() + remaining)
            answer.response = method(model_server, request, deadline)
        if answer.code != grpc.StatusCode.OK:
            context.abort(answer.code, answer.message)
        return answer.response

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None,
        response_serializer=_serialized)


def _generic_handlers(model_server: ModelServer) -> List[grpc.GenericRpcHandler]:
    return [
        grpc.method_handlers_generic_handler(service, {
            name: _handler(model_server, name, request_class, method)
            for name, (request_class, method) in methods.items()})
        for service, methods in ((PREDICTION_SERVICE, _PREDICTION_METHODS),
                                 (MODEL_SERVICE, _MODEL_METHODS))]


def grpc_server(options: ServerOptions, handlers: Sequence[grpc.GenericRpcHandler]
                ) -> grpc.Server:
    """The gRPC server `start` serves on (not yet bound or started): its
    thread pool, message limits and port sharing. benchmarks/serving.py
    builds its echo server with it, so that the ceiling it measures is this
    stack's."""
    return grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=options.max_workers,
                                              thread_name_prefix="mtrank-serving"),
        handlers=handlers,
        options=(
            ("grpc.max_receive_message_length", 2 * options.max_request_bytes),
            ("grpc.max_send_message_length", contract.MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default, so a second server on a
            # busy port would bind silently and share its traffic: only
            # the workers of one `mtrank serve` share theirs.
            ("grpc.so_reuseport", 1 if options.reuse_port else 0),
        ),
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )


@dataclasses.dataclass
class RunningServer:
    """A started server: `port` it listens on (gRPC), `rest_port` (REST, or
    None), `stop()` to drain and end it."""

    grpc_server: grpc.Server
    port: int
    model_server: ModelServer
    health: health.HealthServicer
    metrics_port: Optional[int]
    rest: Optional[rest.RestServer] = None

    @property
    def rest_port(self) -> Optional[int]:
        return self.rest.port if self.rest is not None else None

    def stop(self, grace_s: Optional[float] = None) -> None:
        """Reports NOT_SERVING, lets gRPC requests in flight finish within
        `grace_s` and REST ones within the options' grace_s, both at once (new
        ones are refused), then stops batching, polling and metrics."""
        self.health.enter_graceful_shutdown()
        grpc_stopped = self.grpc_server.stop(grace_s)
        if self.rest is not None:
            self.rest.stop()
        grpc_stopped.wait()
        self.model_server.stop()
        self.model_server.metrics.stop_http()


def start(config: model_server_config_pb2.ModelServerConfig,
          options: ServerOptions = ServerOptions()) -> RunningServer:
    """Loads the models (first versions synchronously) and starts serving."""
    set_intra_op_threads(options.intra_op_threads)
    model_server = ModelServer(config, options)
    rest_server = None
    try:
        server = grpc_server(options, _generic_handlers(model_server))
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        address = _address(options.host, options.port)
        try:
            if options.tls_cert:
                with open(options.tls_key, "rb") as key, open(options.tls_cert, "rb") as cert:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                bound_port = server.add_secure_port(address, credentials)
            else:
                bound_port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from None
        if not bound_port:  # older gRPC releases report failure as port 0
            raise OSError(f"cannot listen on {address}")
        metrics_port = (model_server.metrics.start_http(options.metrics_port, options.host)
                        if options.metrics_port is not None else None)
        if options.rest_port is not None:
            rest_server = rest.RestServer(model_server, options.rest_port)
        server.start()
    except BaseException:
        if rest_server is not None:
            rest_server.stop()
        model_server.metrics.stop_http()
        model_server.stop()
        raise
    model_server.manager.start_polling(options.poll_interval_s)
    return RunningServer(server, bound_port, model_server, health_servicer, metrics_port,
                         rest_server)


def serve(model_base: str, model_name: str = "mtrank", host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, max_workers: int = DEFAULT_MAX_WORKERS,
          rest_port: Optional[int] = None) -> RunningServer:
    """Serves the newest version under `model_base` as `model_name`, and over
    REST too with a `rest_port`. Port 0 picks a free port (the result's `port`,
    `rest_port`). New versions are picked up while it runs; `stop()` ends
    serving and polling."""
    return start(server_config.single_model_config(model_name, model_base),
                 ServerOptions(host=host, port=port, max_workers=max_workers,
                               rest_port=rest_port))


def serve_forever(config: model_server_config_pb2.ModelServerConfig,
                  options: ServerOptions = ServerOptions(), workers: int = 1) -> int:
    """Serves until SIGTERM or SIGINT, then drains requests in flight within
    `options.grace_s`; returns the exit status (0, or 1 when a worker ended
    on its own). With `workers` > 1, that many server processes share the
    ports (serving/workers.py).

    Signal handlers can only be installed from the main thread, so this is for
    the `mtrank serve` command, not for use inside other programs.
    """
    stop = threading.Event()
    signalled = threading.Event()

    def request_stop(signum, frame):
        logger.info("received %s; stopping", signal.Signals(signum).name)
        signalled.set()
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if workers > 1:
            from mtrank.serving import workers as workers_lib

            running = workers_lib.Supervisor(config, options, workers, on_worker_ended=stop.set)
            available = running.ready[0]["versions"]
            processes = f" ({workers} worker processes)"
        else:
            running = start(config, options)
            available = running.model_server.manager.available()
            processes = ""
        served = ", ".join(f"{name} versions {list(versions)}"
                           for name, versions in available.items())
        metrics = (f"; metrics on http://{_address(options.host, running.metrics_port)}/metrics"
                   if running.metrics_port is not None else "")
        rest_api = (f"; REST on {'https' if options.tls_cert else 'http'}://"
                    f"{_address(options.host, running.rest_port)}"
                    if running.rest_port is not None else "")
        print(f"serving {served} on {_address(options.host, running.port)}"
              f"{' (TLS)' if options.tls_cert else ''}{rest_api}{metrics}{processes}", flush=True)
        stop.wait()
        running.stop(options.grace_s)
        # Stopped by a worker that ended, not by a signal: a failure.
        return 0 if signalled.is_set() else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
