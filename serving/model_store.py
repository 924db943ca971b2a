"""Loading one mtrank SavedModel version and fitting requests to its inputs.

A model base directory has TF Serving's layout, `BASE/<version>/saved_model.pb`
with integer versions, so our server and the official TensorFlow Serving image
can serve the same directory. Each version carries
`assets.extra/mtrank_serving_spec.json`, which names the tasks and declares
every feature's dtype; `ServingSpec.conform` uses it to turn a client's
tf.Example into exactly what the model parses.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import warnings
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import input_pb2

from mtrank.base import examples as examples_lib
from mtrank.base import serving_contract as contract
from mtrank.serving import signatures, wire


# The C++ protobuf parser warns when it stops early; the callers check for that
# themselves and answer the client, so the warning would only flood the log.
warnings.filterwarnings("ignore", message="Unexpected end-group tag", category=RuntimeWarning)


class ExampleError(ValueError):
    """An example that does not fit the model's features; the message says why."""


class ExamplesNeedConforming(ValueError):
    """A batch holds an Example that ServingSpec.conform would change (or
    refuse): the model's outputs for it are not to be used."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How the model parses one feature: `dtype` and scalar or list `shape`."""

    dtype: str
    shape: str


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """The content of a version's mtrank_serving_spec.json."""

    model_name: str
    tasks: Tuple[str, ...]
    features: Mapping[str, FeatureSpec]

    @classmethod
    def from_json(cls, obj) -> "ServingSpec":
        """Validates a decoded spec; ValueError names the offending field."""
        if not isinstance(obj, dict):
            raise ValueError("serving spec must be a JSON object")
        model_name = obj.get("model_name")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError("serving spec: 'model_name' must be a non-empty string")
        tasks = obj.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(
            isinstance(t, str) and t for t in tasks
        ):
            raise ValueError("serving spec: 'tasks' must be a non-empty list of names")
        raw_features = obj.get("features")
        if not isinstance(raw_features, dict):
            raise ValueError("serving spec: 'features' must be an object")
        features = {}
        for name, feature in raw_features.items():
            if not isinstance(feature, dict):
                raise ValueError(f"serving spec: features.{name} must be an object")
            if feature.get("dtype") not in contract.DTYPES:
                raise ValueError(
                    f"serving spec: features.{name}.dtype must be one of {contract.DTYPES}")
            if feature.get("shape") not in contract.SHAPES:
                raise ValueError(
                    f"serving spec: features.{name}.shape must be one of {contract.SHAPES}")
            features[name] = FeatureSpec(feature["dtype"], feature["shape"])
        return cls(model_name, tuple(tasks), features)

    def conform(self, serialized: bytes) -> bytes:
        """Re-serializes a client's Example with exactly the features the model parses.

        Clients build Examples from JSON, where 3 and 3.0 are easily confused,
        so values are converted to the declared dtype by the rules ingestion
        and the client use (base/examples.py): integers become floats, and
        integral floats become integers. Anything else that does not fit
        raises ExampleError naming the feature. Features the model does not
        read are dropped; a scalar without values is dropped too, so the
        model's default applies as it does for a missing one. The Example is
        always rebuilt, so fields protobuf kept without knowing them, which
        TensorFlow's parser may refuse, are dropped as well.
        """
        example = example_pb2.Example()
        try:
            consumed = example.ParseFromString(serialized)
        except DecodeError as e:
            raise ExampleError(f"not a serialized tf.Example: {e}") from None
        # The parser stops quietly at a zero tag; bytes left over mean the
        # input was not an Example, however much of it parsed.
        if consumed != len(serialized):
            raise ExampleError(
                f"not a serialized tf.Example: parsing stopped at byte {consumed} "
                f"of {len(serialized)}")
        conformed = example_pb2.Example()
        for name, spec in self.features.items():
            if name not in example.features.feature:
                continue
            feature = example.features.feature[name]
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            if not values:
                continue
            if spec.shape == "scalar" and len(values) != 1:
                raise ExampleError(
                    f"feature '{name}' is a scalar but has {len(values)} values"
                )
            try:
                converted = examples_lib.convert_all(values, spec.dtype, f"feature '{name}'")
            except ValueError as e:
                raise ExampleError(str(e)) from None
            examples_lib.set_feature(conformed.features.feature, name, spec.dtype, converted)
        return conformed.SerializeToString()


def parse_strictly(serialized: Sequence[bytes]) -> bool:
    """Whether every element is one whole serialized Example, by the C++
    protobuf parser in one call (as one ExampleList message). TensorFlow's
    own Example parser is laxer: it read 2% of a sample of corrupted Examples
    that this refuses, and 8% of 6,000 Examples of the demo's model with one
    or two bytes changed, inserted or cut (docs/serving.md).
    """
    # wire.length_delimited's fields written into the one join: through it,
    # each Example's bytes would be copied once more, into its field.
    joined = b"".join([part for x in serialized
                       for part in (_EXAMPLE_LIST_TAG, wire.varint(len(x)), x)])
    try:
        return input_pb2.ExampleList().ParseFromString(joined) == len(joined)
    except DecodeError:
        return False


def examples_fit(serialized: tf.Tensor, spec: ServingSpec) -> tf.Tensor:
    """Ops deciding whether a batch of strictly parsed Examples can go to the
    model as it is: the run fails with InvalidArgumentError unless
    ServingSpec.conform would make no change the model could see, and the
    result is then True. TensorFlow parses them with the declared dtypes (a
    feature of the other numeric kind, or the wrong kind, fails) and each
    scalar as a fixed-length scalar (several values, or a present feature
    without values, fail). One parse op and two small ones: the check it
    replaced (every feature variable-length, then a count of each scalar's
    values per Example, 5 ops a scalar) cost 0.09 ms more a call of one
    Example on the demo's model. Features the model does not read stay in
    the bytes; the model ignores them as conform would drop them.
    """
    parse_spec = {}
    for name, feature in spec.features.items():
        dtype = signatures.TF_DTYPES[feature.dtype]
        parse_spec[name] = (
            tf.io.FixedLenFeature([], dtype, default_value=contract.DTYPE_DEFAULTS[feature.dtype])
            if feature.shape == "scalar" else tf.io.VarLenFeature(dtype))
    if not parse_spec:
        return tf.constant(True)
    parsed = tf.io.parse_example(serialized, parse_spec)
    first = parsed[min(parse_spec)]
    rows = (first.dense_shape[0] if isinstance(first, tf.SparseTensor)
            else tf.shape(first, out_type=tf.int64)[0])
    # Always True once the parse succeeded; fetching it makes the parse run.
    return tf.greater_equal(rows, 0)


_EXAMPLE_LIST_TAG = b"\x0a"  # ExampleList.examples: field 1, length-delimited


@dataclasses.dataclass(frozen=True)
class InputInfo:
    """One signature input as a request is checked against it: `dims` None
    for any rank, a size of -1 for any size; `holds_examples` for serialized
    tf.Examples."""

    name: str
    dtype: int
    dims: Optional[Tuple[int, ...]]
    holds_examples: bool


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """What answering a request needs of a SignatureDef, read from it once
    when the version loads: reading the protobuf maps of the SignatureDef at
    every request (sorting its outputs, checking each input) was a sixth of
    the server's own time on a request of one Example."""

    definition: meta_graph_pb2.SignatureDef
    inputs: Tuple[InputInfo, ...]  # by name
    outputs: Tuple[str, ...]  # sorted

    @classmethod
    def of(cls, definition: meta_graph_pb2.SignatureDef) -> "SignatureInfo":
        inputs = []
        for name in sorted(definition.inputs):
            info = definition.inputs[name]
            shape = info.tensor_shape
            dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
            inputs.append(InputInfo(
                name, info.dtype, dims,
                name in contract.EXAMPLE_INPUTS and info.dtype == tf.string.as_datatype_enum))
        return cls(definition, tuple(inputs), tuple(sorted(definition.outputs)))

    @property
    def method(self) -> str:
        return self.definition.method_name


def list_versions(model_base: str) -> Tuple[int, ...]:
    """Ascending versions under `model_base`: integer subdirectories with a saved_model.pb."""
    if not os.path.isdir(model_base):
        raise FileNotFoundError(f"model base directory {model_base!r} does not exist")
    return tuple(sorted(
        int(entry) for entry in os.listdir(model_base)
        if entry.isdigit()
        and os.path.isfile(os.path.join(model_base, entry, "saved_model.pb"))
    ))


class SessionSignatures:
    """A version's signatures, run in a TF1 Session as TensorFlow Serving runs them.

    Why not tf.saved_model.load and the eager signature functions: a Session
    callable runs the same graph with far less Python around each call. On
    the demo's model, 1 example: 0.66-0.69 ms a call back to back against
    0.85-1.14 ms eager; and through the server at 32 clients with batching,
    1,394-1,638 requests/s against 1,036-1,089 (docs/serving.md).

    A callable is made per (signature, inputs, outputs) asked for, through
    the Session's CallableOptions (as TF Serving's RunCallable): Session.run
    and make_callable with feeds re-resolve the feeds in Python on every call,
    which cost 0.1-0.4 ms more a call here. Callables are safe to call from
    many threads at once.

    A signature that takes serialized Examples also computes `examples_fit`
    on them, in the same call, and `run` raises ExamplesNeedConforming when
    it is False. Checking each Example in Python first cost more than the
    model: in process, on the demo's model, a request of 64 candidates took
    3.3 ms checked in Python (1 candidate: 1.04 ms), 2.4 ms checked in the
    graph (0.93 ms), of which the model alone takes 1.7 ms (0.71 ms).
    """

    def __init__(self, path: str, config: tf.compat.v1.ConfigProto, spec: ServingSpec):
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        # The TF1 loader is marked deprecated in favour of the eager one,
        # which is what this class is avoiding; the warning would mislead.
        with self._graph.as_default(), deprecation.silence():
            meta_graph = tf.compat.v1.saved_model.load(
                self._session, [tf.saved_model.SERVING], path)
        # Keys with two underscores are the loader's own (the init op).
        self.infos: Dict[str, SignatureInfo] = {
            key: SignatureInfo.of(value) for key, value in meta_graph.signature_def.items()
            if not key.startswith("__")}
        # Built now, before any request, so that the graph never changes while
        # it runs. Signature -> the name of its examples_fit tensor.
        self._checks: Dict[str, str] = {}
        with self._graph.as_default():
            for key, info in self.infos.items():
                for signature_input in info.inputs:
                    if signature_input.holds_examples:
                        examples = self._graph.get_tensor_by_name(
                            info.definition.inputs[signature_input.name].name)
                        self._checks[key] = examples_fit(examples, spec).name
        self._callables: Dict[tuple, Callable[..., list]] = {}
        self._lock = threading.Lock()

    def run(self, signature: str, inputs: Mapping[str, np.ndarray],
            output_keys: Sequence[str], check_examples: bool = True) -> Dict[str, np.ndarray]:
        """The signature's outputs; with `check_examples`, raises
        ExamplesNeedConforming rather than answer for Examples that
        ServingSpec.conform would change."""
        check = check_examples and signature in self._checks
        input_keys = tuple(sorted(inputs))
        key = (signature, input_keys, tuple(output_keys), check)
        call = self._callables.get(key)
        if call is None:
            call = self._make_callable(key)
        fetched = call(*(inputs[name] for name in input_keys))
        if check and not fetched[-1]:
            raise ExamplesNeedConforming(f"signature '{signature}': an Example needs conforming")
        return dict(zip(output_keys, fetched))

    def _make_callable(self, key: tuple) -> Callable[..., list]:
        signature, input_keys, output_keys, check = key
        signature_def = self.infos[signature].definition
        with self._lock:
            if key not in self._callables:
                fetch = [signature_def.outputs[name].name for name in output_keys]
                options = config_pb2.CallableOptions(
                    feed=[signature_def.inputs[name].name for name in input_keys],
                    fetch=fetch + [self._checks[signature]] if check else fetch)
                self._callables[key] = self._session._make_callable_from_options(options)
            return self._callables[key]

    def close(self) -> None:
        self._session.close()


def session_config(inter_op_threads: int = 0) -> tf.compat.v1.ConfigProto:
    """A Session's settings: `inter_op_threads` as TF Serving's
    --tensorflow_inter_op_parallelism (0: TensorFlow picks; negative: each
    call's ops run in the calling thread). The intra-op pool is the
    process's (server.set_intra_op_threads)."""
    return tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op_threads)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One loaded version: what the server needs to answer every request."""

    name: str
    version: int
    path: str
    spec: ServingSpec
    signatures: SessionSignatures

    @property
    def signature_infos(self) -> Mapping[str, SignatureInfo]:
        return self.signatures.infos

    def run(self, signature: str, inputs: Mapping[str, np.ndarray],
            output_keys: Sequence[str], check_examples: bool = True) -> Dict[str, np.ndarray]:
        """Runs a signature on decoded inputs; the outputs as arrays
        (SessionSignatures.run)."""
        return self.signatures.run(signature, inputs, output_keys, check_examples)


def read_serving_spec(saved_model_dir: str) -> ServingSpec:
    with open(os.path.join(saved_model_dir, contract.SERVING_SPEC_PATH), encoding="utf-8") as f:
        return ServingSpec.from_json(json.load(f))


def load_version(name: str, model_base: str, version: int,
                 config: Optional[tf.compat.v1.ConfigProto] = None) -> LoadedModel:
    """Loads `model_base/<version>`; raises (OSError, ValueError, tf errors) when
    it is not a complete mtrank SavedModel."""
    path = os.path.join(model_base, str(version))
    spec = read_serving_spec(path)
    session_signatures = SessionSignatures(path, config or session_config(), spec)
    serving = session_signatures.infos.get(contract.SERVING_DEFAULT)
    if serving is None or contract.EXAMPLES_INPUT not in serving.definition.inputs:
        session_signatures.close()
        raise ValueError(f"{path}: signature '{contract.SERVING_DEFAULT}' with input "
                         f"'{contract.EXAMPLES_INPUT}' is required")
    return LoadedModel(name=name, version=version, path=path, spec=spec,
                       signatures=session_signatures)


def version_fingerprint(version_dir: str) -> Tuple[Tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file: it changes while a version
    is still being written."""
    entries = []
    for directory, _, files in os.walk(version_dir):
        for file_name in files:
            full = os.path.join(directory, file_name)
            try:
                stat = os.stat(full)
            except FileNotFoundError:  # removed while walking: still changing
                continue
            entries.append((os.path.relpath(full, version_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))
