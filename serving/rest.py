"""TensorFlow Serving's REST API, answered by the gRPC server's own ModelServer.

`mtrank serve --rest-port` (TF Serving's 8501 by default) serves TF Serving's
HTTP/JSON paths, bodies and status codes in the gRPC server's process. Each
JSON request becomes the gRPC request it stands for and runs through the
ModelServer method the gRPC handler calls, so both APIs share the loaded
versions, labels, hot reload, request checks, batching and metrics; a
refusal's gRPC status becomes TF Serving's HTTP status (INVALID_ARGUMENT 400,
NOT_FOUND 404, ...) with the body {"error": "..."}.

  GET  /v1/models/NAME[/versions/V|/labels/L]           GetModelStatus
  GET  /v1/models/NAME[/versions/V|/labels/L]/metadata  GetModelMetadata
  POST /v1/models/NAME[/versions/V|/labels/L]:predict   Predict: "instances"
       (row format) or "inputs" (columnar), {"b64": ...} for bytes
  POST ...:classify, ...:regress                        Classify, Regress:
       "examples" (and an optional "context") as JSON objects of features
  GET  /monitoring/prometheus/metrics                   the server's metrics,
       where serving/monitoring.config puts them for TF Serving

Where mtrank's rules differ from TF Serving's, mtrank's apply, as over gRPC:
JSON values become tensors and tf.Examples by base/examples.py (a number of
the other numeric kind is converted, true/false is not a number, null leaves
a feature out), and an unknown input is refused rather than ignored.

aiohttp serves it on an event loop in a thread of its own; the requests run
in a thread pool, since model calls block.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import json
import re
import socket
import ssl
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import grpc
import numpy as np
import prometheus_client
from aiohttp import web
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from mtrank.base import examples as examples_lib
from mtrank.base import serving_contract as contract
from mtrank.serving import model_store, signatures, tensors
from mtrank.serving.errors import RequestError, invalid

if TYPE_CHECKING:  # server.py imports this module to start it
    from mtrank.serving.server import Answer, ModelServer

# TF Serving's default, and the path of serving/monitoring.config.
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# TF Serving's paths, case-insensitive as there: a model, then a version or a label.
_MODEL_PATH = (r"/v1/models/(?P<name>[^/:]+)"
               r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?")
_POST_PATH = re.compile(_MODEL_PATH + r":(?P<action>predict|classify|regress)", re.IGNORECASE)
_GET_PATH = re.compile(_MODEL_PATH + r"(?P<metadata>/metadata)?", re.IGNORECASE)

# TF Serving's HTTP status for each gRPC status a request can end with; any
# other (INTERNAL) is 500.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# The serving contract's dtype name of each input DataType the API takes.
_DTYPE_NAMES = {tf_dtype.as_datatype_enum: name
                for name, tf_dtype in signatures.TF_DTYPES.items()}
# TF Serving's rule: a string output whose name ends so is bytes, sent as {"b64": ...}.
_BYTES_SUFFIX = "_bytes"


@dataclasses.dataclass(frozen=True)
class Route:
    """What a request's path names: a model, maybe a version or a label, and
    the action (predict, classify, regress, status or metadata)."""

    model: str
    version: Optional[int]
    label: Optional[str]
    action: str

    def fill(self, model_spec) -> None:
        model_spec.name = self.model
        if self.version is not None:
            model_spec.version.value = self.version
        elif self.label is not None:
            model_spec.version_label = self.label


def parse_route(http_method: str, raw_path: str) -> Route:
    """The Route of a path as sent (percent-encoded); INVALID_ARGUMENT,
    TF Serving's "Malformed request", for a path or method it does not serve."""
    pattern = {"POST": _POST_PATH, "GET": _GET_PATH}.get(http_method)
    match = pattern.fullmatch(raw_path) if pattern else None
    if match is None:
        raise invalid(f"Malformed request: {http_method} {raw_path}")
    digits = match["version"]
    # len first: Python refuses to convert thousands of digits at all.
    if digits and (len(digits) > 19 or int(digits) > contract.INT64_MAX):
        raise invalid(f"Failed to convert version: {digits} to numeric.")
    version = int(digits) if digits else None
    if http_method == "POST":
        action = match["action"].lower()
    else:
        action = "metadata" if match["metadata"] else "status"
    label = urllib.parse.unquote(match["label"]) if match["label"] else None
    return Route(urllib.parse.unquote(match["name"]), version, label, action)


# Request bodies.

def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _json_object(body: bytes) -> Dict[str, Any]:
    """The body as the JSON object every request body must be."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, or nesting past Python's stack
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(document, dict):
        raise invalid(f"the request body must be a JSON object, got {_json_type(document)}")
    return document


def _signature_name(document: Mapping[str, Any]) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"'signature_name' must be a string, got {_json_type(name)}")
    return name


def _is_b64(value) -> bool:
    """Whether `value` is TF Serving's bytes object, {"b64": "<base64>"}."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decoded(value, where: str):
    """`value`, or each value of a list, with {"b64": ...} decoded to bytes."""
    if isinstance(value, list):
        return [_decoded_one(item, where) for item in value]
    return _decoded_one(value, where)


def _decoded_one(value, where: str):
    if not _is_b64(value):
        return value
    try:
        return base64.b64decode(value["b64"], validate=True)
    except binascii.Error:
        raise ValueError(f"{where}: {{\"b64\": ...}} must hold base64") from None


# Predict.

def _dense(value, where: str) -> Tuple[Tuple[int, ...], List[Any]]:
    """The shape of a JSON value as a tensor (nested lists, a list per
    dimension) and its values in order. A tensor is rectangular: every list
    at one depth has the first one's length."""
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    level = [value]
    for depth, size in enumerate(shape):
        below = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                raise invalid(f"{where}: not a tensor: at depth {depth} every item must be a "
                              f"list of {size}, as the first is")
            below.extend(item)
        level = below
    if any(isinstance(item, list) for item in level):
        raise invalid(f"{where}: not a tensor: lists nested deeper than the first value's")
    return tuple(shape), level


def _fill_tensor(name: str, value, info: meta_graph_pb2.TensorInfo, target) -> None:
    """`target`: a JSON value (a value or nested lists) as a tensor of the
    input's dtype, each value converted by the project's one rule
    (base/examples.py: 3 for a float is 3.0, 3.0 for an int64 is 3)."""
    where = f"input '{name}'"
    dtype = _DTYPE_NAMES.get(info.dtype)
    if dtype is None:
        raise invalid(f"{where} is {tensors.dtype_name(info.dtype)}, which the REST API does "
                      "not take")
    shape, leaves = _dense(value, where)
    try:
        values = examples_lib.convert_all(_decoded(leaves, where), dtype, where)
    except ValueError as e:
        raise invalid(str(e)) from None
    array = np.array(values, dtype=signatures.TF_DTYPES[dtype].as_numpy_dtype).reshape(shape)
    tensors.to_tensor_proto(array, target)


def _by_input(value, signature: meta_graph_pb2.SignatureDef, where: str) -> Dict[str, Any]:
    """{input name: value}: `value` itself when it is an object of inputs,
    else the value of the signature's only input."""
    if isinstance(value, dict) and not _is_b64(value):
        return value
    if len(signature.inputs) != 1:
        raise invalid(f"{where}: the signature has inputs {sorted(signature.inputs)}; give an "
                      "object of them")
    (name,) = signature.inputs
    return {name: value}


def _instances_by_input(instances, signature: meta_graph_pb2.SignatureDef
                        ) -> Dict[str, List[Any]]:
    """The row format's instances as {input name: the instances' values}."""
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty array")
    rows = [_by_input(instance, signature, f"instances[{i}]")
            for i, instance in enumerate(instances)]
    names = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != names:
            raise invalid(f"instances[{i}] has inputs {sorted(row)}, instances[0] "
                          f"{sorted(names)}: every instance needs the same")
    return {name: [row[name] for row in rows] for name in names}


def _input_values(document: Mapping[str, Any], signature: meta_graph_pb2.SignatureDef
                  ) -> Tuple[bool, Dict[str, Any]]:
    """(whether the body has the row format, {input name: JSON value})."""
    if ("instances" in document) == ("inputs" in document):
        raise invalid("the body needs 'instances' (row format) or 'inputs' (columnar format), "
                      "one of them")
    if "instances" in document:
        return True, _instances_by_input(document["instances"], signature)
    return False, _by_input(document["inputs"], signature, "inputs")


def _shortest(values) -> np.ndarray:
    """float32 values as the float64 values of their shortest decimal form
    that reads back as the same float32, which JSON writes as TF Serving does."""
    return np.asarray(values, dtype=np.float32).astype(str).astype(np.float64)


def _floats(values) -> list:
    return _shortest(values).tolist()


def _strings(value, as_b64: bool):
    """Nested lists of bytes as JSON: text, or {"b64": ...} when asked or
    when the bytes are not UTF-8."""
    if isinstance(value, list):
        return [_strings(item, as_b64) for item in value]
    if not as_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def _json_columns(outputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Each output as a JSON value. The float32 outputs are converted in one
    _shortest call: a call per output was a tenth of the REST API's own time
    on a one-Example answer of eight outputs."""
    floats = [name for name, array in outputs.items() if array.dtype == np.float32]
    columns: Dict[str, Any] = {}
    if floats:
        values = _shortest(np.concatenate([outputs[name].ravel() for name in floats]))
        start = 0
        for name in floats:
            array = outputs[name]
            columns[name] = values[start:start + array.size].reshape(array.shape).tolist()
            start += array.size
    for name, array in outputs.items():
        if array.dtype == object:
            columns[name] = _strings(array.tolist(), name.endswith(_BYTES_SUFFIX))
        elif name not in columns:
            columns[name] = array.tolist()
    return {name: columns[name] for name in outputs}


def _row_predictions(outputs: Mapping[str, np.ndarray]) -> list:
    """TF Serving's row format: per example, the only output's value or an
    object of every output's."""
    sizes = {name: array.shape[0] if array.ndim else None for name, array in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise invalid(f"the outputs' batch sizes {sizes} differ, so they have no row format; "
                      "send 'inputs' (columnar format)")
    columns = _json_columns(outputs)
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def _columnar_outputs(outputs: Mapping[str, np.ndarray]):
    """TF Serving's columnar format: the only output's value, or an object of
    every output's."""
    columns = _json_columns(outputs)
    return next(iter(columns.values())) if len(columns) == 1 else columns


def _predict(model_server: ModelServer, route: Route, body: bytes, answer: Answer):
    document = _json_object(body)
    request = predict_pb2.PredictRequest()
    route.fill(request.model_spec)
    request.model_spec.signature_name = _signature_name(document)
    answer.count_as(request)
    loaded = model_server.manager.resolve(request.model_spec)
    name = request.model_spec.signature_name or contract.SERVING_DEFAULT
    signature = model_server.signature(loaded, name, None).definition
    row_format, values = _input_values(document, signature)
    unknown = sorted(set(values) - set(signature.inputs))
    if unknown:
        raise invalid(f"unknown input(s) {unknown} for signature '{name}'; its inputs are "
                      f"{sorted(signature.inputs)}")
    for input_name, value in values.items():
        _fill_tensor(input_name, value, signature.inputs[input_name], request.inputs[input_name])
    _, _, outputs = model_server.predict_outputs(request, None, loaded)
    if row_format:
        return {"predictions": _row_predictions(outputs)}
    return {"outputs": _columnar_outputs(outputs)}


# Classify and Regress.

def _example(features, dtypes: Mapping[str, str], where: str):
    """A tf.Example from a JSON object of features, each in its serving spec dtype."""
    if not isinstance(features, dict):
        raise invalid(f"{where} must be an object of features, got {_json_type(features)}")
    try:
        return examples_lib.example_from_json(
            {name: _decoded(value, f"feature '{name}'") for name, value in features.items()},
            dtypes)
    except ValueError as e:
        raise invalid(f"{where}: {e}") from None


def _fill_examples(input_proto, document: Mapping[str, Any], spec: model_store.ServingSpec
                   ) -> None:
    """A Classify / Regress `input` from the body's "examples" and optional
    "context" (features every example shares; an example's own win)."""
    examples = document.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid("'examples' must be a non-empty array of objects of features")
    dtypes = {name: feature.dtype for name, feature in spec.features.items()}
    context = document.get("context")
    if context is None:
        target = input_proto.example_list.examples
    else:
        with_context = input_proto.example_list_with_context
        with_context.context.CopyFrom(_example(context, dtypes, "context"))
        target = with_context.examples
    for i, features in enumerate(examples):
        target.add().CopyFrom(_example(features, dtypes, f"examples[{i}]"))


def _examples_request(request, model_server: ModelServer, route: Route, body: bytes,
                      answer: Answer) -> model_store.LoadedModel:
    """Fills a Classify / Regress request; the version it is for."""
    document = _json_object(body)
    route.fill(request.model_spec)
    request.model_spec.signature_name = _signature_name(document)
    answer.count_as(request)
    loaded = model_server.manager.resolve(request.model_spec)
    _fill_examples(request.input, document, loaded.spec)
    return loaded


def _classify(model_server: ModelServer, route: Route, body: bytes, answer: Answer):
    """{"results": per example, [label, score] per class}: mtrank's classify
    signature gives each binary task its probability."""
    request = classification_pb2.ClassificationRequest()
    loaded = _examples_request(request, model_server, route, body, answer)
    results = []
    for row in model_server.classify(request, None, loaded).result.classifications:
        scores = _floats([entry.score for entry in row.classes])
        results.append([[entry.label, score] for entry, score in zip(row.classes, scores)])
    return {"results": results}


def _regress(model_server: ModelServer, route: Route, body: bytes, answer: Answer):
    """{"results": one value per example}: mtrank's regress signature gives
    the fused score."""
    request = regression_pb2.RegressionRequest()
    loaded = _examples_request(request, model_server, route, body, answer)
    result = model_server.regress(request, None, loaded).result
    return {"results": _floats([regression.value for regression in result.regressions])}


# Status and metadata, as TF Serving renders the protos (json_format).

def _status(model_server: ModelServer, route: Route, body: bytes, answer: Answer):
    request = get_model_status_pb2.GetModelStatusRequest()
    route.fill(request.model_spec)
    answer.count_as(request)
    return json_format.MessageToDict(model_server.get_model_status(request),
                                     including_default_value_fields=True)


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


def _metadata(model_server: ModelServer, route: Route, body: bytes, answer: Answer):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        metadata_field=[contract.SIGNATURE_DEF_FIELD])
    route.fill(request.model_spec)
    answer.count_as(request)
    response = model_server.get_model_metadata(request)
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[contract.SIGNATURE_DEF_FIELD].Unpack(signature_def_map)
    return {"model_spec": _proto_json(response.model_spec),
            "metadata": {contract.SIGNATURE_DEF_FIELD: _proto_json(signature_def_map)}}


# Each action: the gRPC method it stands for (as metrics count it), and its answer.
_ACTIONS = {
    "predict": ("Predict", _predict),
    "classify": ("Classify", _classify),
    "regress": ("Regress", _regress),
    "status": ("GetModelStatus", _status),
    "metadata": ("GetModelMetadata", _metadata),
}


def _json_bytes(document) -> bytes:
    return json.dumps(document).encode("utf-8")


# The HTTP server.

def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket listening on host:port (0: any free port), bound here so that
    a busy port fails the start at once; with `reuse_port`, shared with the
    other processes that listen there with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=reuse_port)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} for the REST API: {e}") from None


def _tls_context(cert: Optional[str], key: Optional[str]) -> Optional[ssl.SSLContext]:
    """TLS with the gRPC port's certificate, so that setting one leaves no
    plain-text port open."""
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class HttpServer:
    """An aiohttp application on an event loop in a thread of its own,
    serving on `sock` (TLS with `tls`); `stop()` drains and ends it.
    `add_routes(app)` adds the handlers. RestServer is one;
    benchmarks/serving.py's echo server is another, so that the ceiling it
    measures is this stack's."""

    def __init__(self, sock: socket.socket, tls: Optional[ssl.SSLContext], grace_s: float,
                 max_request_bytes: int, add_routes, loop_name: str = "mtrank-rest-loop"):
        self.port = sock.getsockname()[1]
        self._grace_s = grace_s
        self._max_request_bytes = max_request_bytes
        self._runner: Optional[web.AppRunner] = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=loop_name,
                                        daemon=True)
        self._thread.start()
        try:
            self._run(self._serve(sock, tls, add_routes))
        except BaseException:
            sock.close()
            self.stop()
            raise

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _serve(self, sock: socket.socket, tls: Optional[ssl.SSLContext], add_routes
                     ) -> None:
        # aiohttp refuses a body of client_max_size bytes or more.
        app = web.Application(client_max_size=self._max_request_bytes + 1)
        add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._grace_s)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=tls).start()

    def stop(self) -> None:
        """Stops listening, lets requests in flight finish within grace_s,
        then ends the event loop."""
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class RestServer(HttpServer):
    """The REST API of a ModelServer on `port` of its options' host (0: any
    free one, then `port` says which); `stop()` drains and ends it."""

    def __init__(self, model_server: ModelServer, port: int):
        options = model_server.options
        self._model_server = model_server
        self._pool = concurrent.futures.ThreadPoolExecutor(options.max_workers,
                                                           thread_name_prefix="mtrank-rest")
        super().__init__(listening_socket(options.host, port, options.reuse_port),
                         _tls_context(options.tls_cert, options.tls_key), options.grace_s,
                         options.max_request_bytes, self._add_routes)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get(PROMETHEUS_PATH, self._metrics)
        app.router.add_route("*", "/v1/{tail:.*}", self._v1)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._model_server.metrics.exposition(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def _v1(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None  # refused in _answer, so that it is counted like any refusal
        status, payload = await self._loop.run_in_executor(
            self._pool, self._answer, request.method, request.rel_url.raw_path, body,
            request.remote)
        return web.Response(status=status, body=payload, content_type="application/json")

    def _answer(self, http_method: str, raw_path: str, body: Optional[bytes],
                peer: Optional[str]) -> Tuple[int, bytes]:
        """(HTTP status, JSON body) for one request to a /v1/ path."""
        try:
            route = parse_route(http_method, raw_path)
        except RequestError as e:
            return _HTTP_STATUS[e.code], _json_bytes({"error": e.message})
        method_name, respond = _ACTIONS[route.action]
        with self._model_server.answering(method_name, lambda: f"REST {peer}") as answer:
            if body is None:
                raise invalid(f"the request has more bytes than the limit of "
                              f"{self._max_request_bytes}")
            answer.response = _json_bytes(respond(self._model_server, route, body, answer))
        if answer.code != grpc.StatusCode.OK:
            return _HTTP_STATUS.get(answer.code, 500), _json_bytes({"error": answer.message})
        return 200, answer.response

    def stop(self) -> None:
        """Stops listening, lets requests in flight finish within the options'
        grace_s, then ends the event loop and the pool."""
        super().stop()
        # Requests still queued have lost their connections; those running finish.
        self._pool.shutdown(cancel_futures=True)
