"""JSON values -> tf.Example features: the one mapping of the project.

Ingestion (components/labelling.py, components/tabular.py), the client
(serving/client.py) and the server's guard (ServingSpec.conform in
serving/model_store.py) all convert values with these functions:

  string            -> bytes_list (UTF-8)
  integer           -> int64_list
  other number      -> float_list

A feature whose dtype is known (the config's, or the serving spec's) takes
its values in that dtype: an integer for a float feature becomes a float,
and an integral float (3.0) for an int64 feature becomes an integer, rather
than being refused. What cannot be converted raises ValueError naming the
feature: a string for a number or the reverse, a fractional or non-finite
float for int64, an integer outside int64, a boolean (true/false is not a
number in the log contract), a list mixing strings and numbers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
from mtrank.base import config as config_lib
from mtrank.base import serving_contract
from tensorflow.core.example import example_pb2

# The tf.Example value list that holds each dtype.
VALUE_LISTS = {"string": "bytes_list", "int64": "int64_list", "float": "float_list"}


def is_number(value) -> bool:
    # bool is an int subclass, but true/false is not a number here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_bytes(value, where: str) -> bytes:
    """A string value: str as UTF-8; bytes, what a tf.Example already holds, as they are."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError(f"{where}: expected a string, got {value!r}")


def _check_number(value, where: str) -> None:
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{where}: expected a number, got a string")
    if not is_number(value):
        raise ValueError(f"{where}: expected a number, got {value!r}")


def to_float(value, where: str) -> float:
    _check_number(value, where)
    return float(value)


def to_int64(value, where: str) -> int:
    """An integer within int64; an integral float (3.0) is converted, 3.5
    (or NaN, or infinity) has no integer value."""
    _check_number(value, where)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if not serving_contract.INT64_MIN <= value <= serving_contract.INT64_MAX:
        raise ValueError(f"{where}: {value!r} is out of the int64 range")
    return int(value)


_CONVERTERS = {"string": to_bytes, "int64": to_int64, "float": to_float}


def convert(value, dtype: str, where: str):
    """One value in `dtype` ("string", "int64" or "float"), as a tf.Example holds it."""
    return _CONVERTERS[dtype](value, where)


def convert_all(values: Sequence, dtype: str, where: str) -> list:
    convert_one = _CONVERTERS[dtype]
    return [convert_one(value, where) for value in values]


def json_dtype(value, where: str) -> str:
    """The dtype a JSON value (or list of values) maps to when no config
    fixes it: strings (or bytes, as to_bytes takes them) -> string,
    integers -> int64, numbers -> float."""
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (str, bytes)) for v in values):
        return "string"
    if all(isinstance(v, int) and is_number(v) for v in values):
        return "int64"
    if all(is_number(v) for v in values):
        return "float"
    if any(isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: booleans are not allowed; use 0/1 or a string")
    if isinstance(value, list):
        raise ValueError(f"{where}: a list must hold only strings or only numbers")
    raise ValueError(f"{where}: expected string, number or list, got {type(value).__name__}")


def feature_values(feature: config_lib.FeatureConfig, value) -> list:
    """One config feature's value in its config dtype, as the list a
    tf.Example holds. A missing (None) scalar becomes the feature's default,
    the same default the serving signature applies, so training and serving
    agree; a missing list is empty."""
    where = f"features.{feature.name}"
    if value is None:
        return [] if not feature.is_scalar else [
            convert(feature.default_value, feature.dtype, where)]
    if feature.is_scalar:
        if isinstance(value, list):
            raise ValueError(f"{where}: expected one value, got a list")
        return [convert(value, feature.dtype, where)]
    return convert_all(value if isinstance(value, list) else [value], feature.dtype, where)


def set_feature(feature_map, name: str, dtype: str, values: Sequence) -> None:
    """Writes values already in `dtype` into a tf.Example's feature map, in
    place (no intermediate protos: this runs for every feature of every
    impression). The dtype is explicit because an empty list still needs the
    feature's own kind, or the schema would see one feature with two types."""
    value_list = getattr(feature_map[name], VALUE_LISTS[dtype])
    if values:
        value_list.value.extend(values)
    else:
        value_list.SetInParent()


def example_from_json(features: Mapping[str, Any],
                      dtypes: Optional[Mapping[str, str]] = None) -> example_pb2.Example:
    """A tf.Example from a JSON object of features.

    A value may be a list (every feature takes one: the model's spec says
    which are scalars). Each feature named in `dtypes` takes that dtype; any
    other takes its values' (json_dtype). None and [] carry no value, so the
    feature is omitted and the model's default applies.
    """
    example = example_pb2.Example()
    feature_map = example.features.feature
    for name, value in features.items():
        if not isinstance(name, str):
            raise ValueError(f"feature names must be strings, got {name!r}")
        if value is None or (isinstance(value, list) and not value):
            continue
        where = f"feature '{name}'"
        dtype = (dtypes or {}).get(name) or json_dtype(value, where)
        set_feature(feature_map, name, dtype,
                    convert_all(value if isinstance(value, list) else [value], dtype, where))
    return example


def example_values(example: example_pb2.Example) -> Dict[str, List]:
    """{name: values} of a tf.Example's features (for inspection)."""
    values = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values[name] = list(getattr(feature, kind).value) if kind else []
    return values
