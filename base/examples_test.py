"""Tests of the one JSON -> tf.Example mapping: conversion to a known dtype
(a config's), JSON objects without one (the client's), and writing values."""
import pytest
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.base import examples
from mtrank_testing.example_util import feature_kinds

CONFIG = config_lib.config_from_dict({
    "model_name": "m",
    "features": [
        {"name": "user_id", "kind": "categorical", "dtype": "string"},
        {"name": "item_id", "kind": "categorical", "dtype": "string"},
        {"name": "country", "kind": "categorical", "dtype": "string", "encoding": "vocabulary"},
        {"name": "price", "kind": "numeric", "dtype": "float"},
        {"name": "age", "kind": "numeric", "dtype": "int64"},
        {"name": "tags", "kind": "multivalent", "dtype": "string"},
        {"name": "cats", "kind": "multivalent", "dtype": "int64"},
    ],
    "tasks": [{"name": "click", "feedback": "click"}],
})


def _feature(name):
    return CONFIG.feature(name)


# --- feature_values: a config feature's dtype --------------------------------


def test_int_for_float_feature_becomes_float():
    values = examples.feature_values(_feature("price"), 3)
    assert values == [3.0] and isinstance(values[0], float)


def test_integral_float_for_int64_feature_becomes_int():
    values = examples.feature_values(_feature("age"), 31.0)
    assert values == [31] and type(values[0]) is int


def test_int_stays_int():
    values = examples.feature_values(_feature("age"), 7)
    assert values == [7] and type(values[0]) is int


@pytest.mark.parametrize("value", [2.5, -0.1, float("nan"), float("inf")])
def test_non_integral_float_for_int64_raises(value):
    with pytest.raises(ValueError, match="features.age"):
        examples.feature_values(_feature("age"), value)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 1e30])
def test_int64_out_of_range_raises(value):
    with pytest.raises(ValueError, match="features.age: .* out of the int64 range"):
        examples.feature_values(_feature("age"), value)


def test_int64_range_ends_are_kept():
    assert examples.feature_values(_feature("cats"), [-(2**63), 2**63 - 1]) == [
        -(2**63), 2**63 - 1]


@pytest.mark.parametrize("name", ["price", "age"])
def test_string_for_numeric_raises(name):
    with pytest.raises(ValueError, match=f"features.{name}: expected a number"):
        examples.feature_values(_feature(name), "12")


@pytest.mark.parametrize("name", ["price", "age"])
def test_boolean_for_numeric_raises(name):
    with pytest.raises(ValueError, match=f"features.{name}: expected a number, got True"):
        examples.feature_values(_feature(name), True)


@pytest.mark.parametrize("value", [12, 1.5])
def test_number_for_string_feature_raises(value):
    with pytest.raises(ValueError, match="features.country"):
        examples.feature_values(_feature("country"), value)


@pytest.mark.parametrize("name, value", [("country", ["DE"]), ("price", [1.0]), ("age", [])])
def test_list_for_scalar_raises(name, value):
    with pytest.raises(ValueError, match=f"features.{name}"):
        examples.feature_values(_feature(name), value)


def test_string_values_are_utf8_bytes():
    assert examples.feature_values(_feature("country"), "Sch\u00f6n") == ["Sch\u00f6n".encode()]
    assert examples.feature_values(_feature("tags"), ["x", "\u00e9"]) == [b"x", "\u00e9".encode()]


def test_scalar_for_multivalent_is_wrapped():
    assert examples.feature_values(_feature("tags"), "solo") == [b"solo"]
    assert examples.feature_values(_feature("cats"), 5) == [5]
    assert examples.feature_values(_feature("cats"), 5.0) == [5]


def test_multivalent_list_converts_each_element():
    assert examples.feature_values(_feature("cats"), [1, 2.0, 3]) == [1, 2, 3]
    with pytest.raises(ValueError, match="features.cats"):
        examples.feature_values(_feature("cats"), [1, 2.5])
    with pytest.raises(ValueError, match="features.tags"):
        examples.feature_values(_feature("tags"), ["a", 1])


def test_none_becomes_default_for_scalar_and_empty_for_list():
    assert examples.feature_values(_feature("country"), None) == [b""]
    price = examples.feature_values(_feature("price"), None)
    assert price == [0.0] and isinstance(price[0], float)
    age = examples.feature_values(_feature("age"), None)
    assert age == [0] and type(age[0]) is int
    assert examples.feature_values(_feature("tags"), None) == []
    assert examples.feature_values(_feature("cats"), None) == []


def test_bytes_are_a_string_value_as_they_are():
    # What a tf.Example already holds converts to itself, however it decodes.
    assert examples.convert(b"\xff\x00", "string", "feature 'f'") == b"\xff\x00"


# --- set_feature ----------------------------------------------------------------


def test_set_feature_writes_an_empty_list_of_the_feature_kind():
    example = tf.train.Example()
    examples.set_feature(example.features.feature, "cats", "int64", [])
    examples.set_feature(example.features.feature, "price", "float", [2.0])
    assert feature_kinds(example) == {"cats": ("int64_list", []), "price": ("float_list", [2.0])}


# --- example_from_json: a JSON object ---------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("u1", ("bytes_list", [b"u1"])),
    ("café", ("bytes_list", ["café".encode()])),
    (3, ("int64_list", [3])),
    (-2**63, ("int64_list", [-2**63])),
    (2.5, ("float_list", [2.5])),
    (3.0, ("float_list", [3.0])),
    (["a", "b"], ("bytes_list", [b"a", b"b"])),
    ([b"\xff", "b"], ("bytes_list", [b"\xff", b"b"])),
    ([1, 2], ("int64_list", [1, 2])),
    ([1, 2.5], ("float_list", [1.0, 2.5])),
])
def test_example_from_json_maps_types(value, expected):
    assert feature_kinds(examples.example_from_json({"f": value})) == {"f": expected}


@pytest.mark.parametrize("value", [None, []])
def test_example_from_json_omits_features_without_value(value):
    assert feature_kinds(examples.example_from_json({"f": value, "g": 1})) == {
        "g": ("int64_list", [1])}


@pytest.mark.parametrize("value, words", [
    (True, "booleans"),
    ([1, False], "booleans"),
    (["a", 1], "only strings or only numbers"),
    ([{"nested": 1}], "only strings or only numbers"),
    ({"nested": 1}, "dict"),
    (2**63, "int64"),
])
def test_example_from_json_rejects_values_it_cannot_map(value, words):
    with pytest.raises(ValueError, match=words) as raised:
        examples.example_from_json({"bad_feature": value})
    assert "bad_feature" in str(raised.value)


def test_example_from_json_rejects_names_that_are_not_strings():
    with pytest.raises(ValueError, match="feature names must be strings"):
        examples.example_from_json({3: "x"})


def test_example_from_json_converts_to_the_given_dtypes():
    example = examples.example_from_json(
        {"price": 3, "age": 4.0, "tags": [b"raw", "text"], "other": 1.5},
        {"price": "float", "age": "int64", "tags": "string"})
    assert feature_kinds(example) == {
        "price": ("float_list", [3.0]), "age": ("int64_list", [4]),
        "tags": ("bytes_list", [b"raw", b"text"]), "other": ("float_list", [1.5])}


def test_example_from_json_with_dtypes_names_the_value_that_cannot_be_converted():
    with pytest.raises(ValueError, match="feature 'age': expected an integer, got 4.5"):
        examples.example_from_json({"age": 4.5}, {"age": "int64"})


def test_example_values_lists_each_feature():
    example = examples.example_from_json({"a": "x", "b": [1, 2]})
    examples.set_feature(example.features.feature, "c", "float", [])
    assert examples.example_values(example) == {"a": [b"x"], "b": [1, 2], "c": []}
