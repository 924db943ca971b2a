"""A gRPC server that speaks the TensorFlow Serving API for one mtrank model.

It serves the same model base directory as the official `tensorflow/serving`
image, through the same stock services, so one client works with both:

  tensorflow.serving.PredictionService: Predict, GetModelMetadata
  tensorflow.serving.ModelService:      GetModelStatus
  grpc.health.v1.Health:                Check, Watch

Unlike TF Serving it checks every Example against the model's serving spec
first, converting numbers to the declared dtype and naming the feature in the
error when a value cannot be used. The newest version present at start-up is
loaded; restart the server to pick up a newer one.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import signal
import threading
from typing import Tuple

import grpc
import tensorflow as tf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import model_store

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
DEFAULT_MAX_WORKERS = 8
SIGNATURE_DEF_FIELD = "signature_def"
# A batch of serialized Examples easily exceeds gRPC's 4 MiB default, and TF
# Serving accepts far larger requests, so both ends raise the limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
# gRPC sets SO_REUSEPORT by default, so a second server on a busy port would
# bind silently and share its traffic; fail loudly instead.
_SERVER_OPTIONS = GRPC_OPTIONS + (("grpc.so_reuseport", 0),)
_SERVICE_NAMES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)


class RequestError(Exception):
    """A request the server refuses; becomes the gRPC status `code` with `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _dtype_name(dtype: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DataType({dtype})"


def _rpc(method):
    """Turns RequestError into its status and anything else into INTERNAL, logging both."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RequestError as e:
            logger.warning("%s from %s rejected (%s): %s",
                           method.__name__, context.peer(), e.code.name, e.message)
            code, message = e.code, e.message
        except Exception:  # the server must keep serving whatever one request does
            logger.exception("%s from %s failed", method.__name__, context.peer())
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        context.abort(code, message)

    return wrapper


class ModelServer(prediction_service_pb2_grpc.PredictionServiceServicer,
                  model_service_pb2_grpc.ModelServiceServicer):
    """Serves the newest version under `model_base` as model `model_name`.

    Classify, Regress, MultiInference and HandleReloadConfigRequest keep the
    stock UNIMPLEMENTED answers: mtrank clients only use Predict.
    """

    def __init__(self, model_base: str, model_name: str = "mtrank"):
        self.model_base = model_base
        self.model_name = model_name
        self.model = model_store.load_latest(model_base)
        if self.model.spec.model_name != model_name:
            logger.warning("serving %s as %r, but its spec names it %r",
                           self.model.path, model_name, self.model.spec.model_name)
        self._signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in self.model.signature_defs.items():
            self._signature_def_map.signature_def[key].CopyFrom(signature_def)
        self._outputs = frozenset(
            self.model.signature_defs[model_store.SERVING_SIGNATURE].outputs
        )

    @property
    def version(self) -> int:
        return self.model.version

    def _check_model_spec(self, model_spec) -> None:
        if model_spec.name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model '{model_spec.name}' is not served; "
                               f"this server serves '{self.model_name}'")
        if model_spec.HasField("version") and model_spec.version.value != self.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"version {model_spec.version.value} of model '{self.model_name}' "
                               f"is not loaded; version {self.version} is")
        if model_spec.version_label:
            raise _invalid("version labels are not supported; request a version number")

    def _echo_model_spec(self, target) -> None:
        target.name = self.model_name
        target.version.value = self.version

    def _read_examples(self, request) -> list:
        unknown = sorted(set(request.inputs) - {model_store.EXAMPLES_INPUT})
        if unknown:
            raise _invalid(f"unknown input keys {unknown}; the only input is "
                           f"'{model_store.EXAMPLES_INPUT}'")
        if model_store.EXAMPLES_INPUT not in request.inputs:
            raise _invalid(f"input '{model_store.EXAMPLES_INPUT}' is missing")
        tensor = request.inputs[model_store.EXAMPLES_INPUT]
        if tensor.dtype != types_pb2.DT_STRING:
            raise _invalid(f"input '{model_store.EXAMPLES_INPUT}' must be DT_STRING "
                           f"(serialized tf.Example), got {_dtype_name(tensor.dtype)}")
        try:
            serialized = tf.make_ndarray(tensor)
        except (ValueError, TypeError) as e:
            raise _invalid(f"input '{model_store.EXAMPLES_INPUT}' is not a valid tensor: {e}")
        if serialized.ndim != 1:
            raise _invalid(f"input '{model_store.EXAMPLES_INPUT}' must have shape [batch], "
                           f"got {list(serialized.shape)}")
        conformed = []
        for i, example in enumerate(serialized):
            try:
                conformed.append(self.model.spec.conform(example))
            except model_store.ExampleError as e:
                raise _invalid(f"examples[{i}]: {e}")
        return conformed

    @_rpc
    def Predict(self, request, context):
        """Scores a batch of serialized tf.Examples: one float tensor per task."""
        self._check_model_spec(request.model_spec)
        signature = request.model_spec.signature_name or model_store.SERVING_SIGNATURE
        if signature != model_store.SERVING_SIGNATURE:
            raise _invalid(f"signature '{signature}' is not served; use "
                           f"'{model_store.SERVING_SIGNATURE}'")
        wanted = set(request.output_filter) or self._outputs
        if wanted - self._outputs:
            raise _invalid(f"output_filter names unknown outputs {sorted(wanted - self._outputs)}")
        examples = self._read_examples(request)
        try:
            outputs = self.model.predict(examples)
        except tf.errors.InvalidArgumentError as e:
            raise _invalid(f"the model rejected the examples: {e.message}")
        response = predict_pb2.PredictResponse()
        self._echo_model_spec(response.model_spec)
        response.model_spec.signature_name = signature
        for key in sorted(wanted):
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
        return response

    @_rpc
    def GetModelMetadata(self, request, context):
        """The loaded version's SignatureDefMap, packed as TF Serving packs it."""
        self._check_model_spec(request.model_spec)
        fields = set(request.metadata_field)
        if fields != {SIGNATURE_DEF_FIELD}:
            raise _invalid(f"metadata_field must be ['{SIGNATURE_DEF_FIELD}'], "
                           f"got {sorted(fields)}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._echo_model_spec(response.model_spec)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(self._signature_def_map)
        return response

    @_rpc
    def GetModelStatus(self, request, context):
        """The loaded version, AVAILABLE with status OK."""
        self._check_model_spec(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(
            version=self.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        )
        return response


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _start(model_base: str, model_name: str, host: str, port: int, max_workers: int
           ) -> Tuple[grpc.Server, int, ModelServer, health.HealthServicer]:
    model_server = ModelServer(model_base, model_name)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                              thread_name_prefix="mtrank-serving"),
        options=_SERVER_OPTIONS,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(model_server, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_server, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("",) + _SERVICE_NAMES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = _address(host, port)
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    if not bound_port:  # older gRPC releases report failure as port 0
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, bound_port, model_server, health_servicer


def serve(model_base: str, model_name: str = "mtrank", host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, max_workers: int = DEFAULT_MAX_WORKERS
          ) -> Tuple[grpc.Server, int]:
    """Starts serving the newest version under `model_base`; returns (server, bound port).

    Port 0 picks a free port. The caller stops the server with `server.stop(grace)`.
    """
    server, bound_port, _, _ = _start(model_base, model_name, host, port, max_workers)
    return server, bound_port


def serve_forever(model_base: str, model_name: str = "mtrank", host: str = DEFAULT_HOST,
                  port: int = DEFAULT_PORT, max_workers: int = DEFAULT_MAX_WORKERS,
                  grace_s: float = 5.0) -> None:
    """Serves until SIGTERM or SIGINT, then lets requests in flight finish within `grace_s`.

    Signal handlers can only be installed from the main thread, so this is for
    the `mtrank serve` command, not for use inside other programs.
    """
    stop = threading.Event()

    def request_stop(signum, frame):
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server, bound_port, model_server, health_servicer = _start(
            model_base, model_name, host, port, max_workers)
        print(f"serving model {model_name} version {model_server.version} from {model_base} "
              f"on {_address(host, bound_port)}", flush=True)
        stop.wait()
        # Health watchers learn of the shutdown while requests in flight finish.
        health_servicer.enter_graceful_shutdown()
        server.stop(grace_s).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
