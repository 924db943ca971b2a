"""Tests of serving/tensors.py and the Examples check it relies on
(model_store.parse_strictly and examples_fit agree with conforming each
Example), and tensors round-trip."""
import random

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from mtrank.serving import model_store, tensors, wire
from mtrank_testing import serving_util as testing_util
from mtrank.serving.errors import RequestError

SPEC = model_store.ServingSpec.from_json({
    "model_name": "mtrank", "tasks": ["click"], "features": testing_util.DEFAULT_FEATURES})


def example(**features):
    ex = tf.train.Example()
    for name, values in features.items():
        feature = ex.features.feature[name]
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str):
                feature.bytes_list.value.append(value.encode())
            elif isinstance(value, int):
                feature.int64_list.value.append(value)
            else:
                feature.float_list.value.append(value)
    return ex.SerializeToString()


VALID = example(user_id="u", item_id="i", item_price=2.5, hour=3, item_tags=["a", "b"])
CORPUS = [
    VALID, b"", example(user_id="u"), example(user_id="u", unknown="x"),
    example(item_price=3), example(hour=4.0), example(hour=4.5), example(user_id=7),
    example(item_price=[1.0, 2.0]), example(item_tags=[1, 2]), example(user_id=[]),
]


def garbage(rng):
    prefix = rng.choice([b"\x07", b"\x0f", b"\x00", b"\x0a\xff\xff\xff\xff\x0f", b"\x0c",
                         b"\x0a\x05", VALID[:7], b"\x0b"])
    return prefix + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))


def conforms_unchanged(serialized):
    """What the per-Example path makes of it: True (as is, for the model),
    or False (converted or refused)."""
    try:
        conformed = SPEC.conform(serialized)
    except model_store.ExampleError:
        return False
    parse_spec = {name: tf.io.VarLenFeature(tf.string if f.dtype == "string" else
                                            tf.int64 if f.dtype == "int64" else tf.float32)
                  for name, f in SPEC.features.items()}
    try:
        as_is = tf.io.parse_example([serialized], parse_spec)
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
        return False
    again = tf.io.parse_example([conformed], parse_spec)
    return all(tf.sparse.to_dense(as_is[k]).numpy().tolist()
               == tf.sparse.to_dense(again[k]).numpy().tolist() for k in parse_spec)


def batch_passes_check(batch):
    """What the server decides without conforming: True sends the batch to
    the model as it is."""
    if not model_store.parse_strictly(batch):
        return False
    try:
        return bool(model_store.examples_fit(tf.constant(batch, dtype=tf.string), SPEC))
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
        # TensorFlow quotes the bad bytes in its message, which need not be UTF-8.
        return False


def test_examples_check_accepts_only_what_conform_leaves_as_it_is():
    rng = random.Random(7)
    candidates = CORPUS + [garbage(rng) for _ in range(300)]
    for serialized in candidates:
        if batch_passes_check([VALID, serialized]):
            assert conforms_unchanged(serialized), serialized
    assert batch_passes_check([VALID, example(user_id="u", unknown="x"), b""] * 6)
    for refused in (example(hour=4.5), example(item_price=3), example(item_price=[1.0, 2.0]),
                    b"\x00garbage", b"\x0a\xff\xff\xff\xff\x0f"):
        assert not batch_passes_check([VALID] * 20 + [refused])


def test_parse_check_names_the_element_that_is_not_an_example():
    tensors.check_examples_parse("examples", np.array([VALID] * 3, dtype=object), SPEC)
    bad = np.array([VALID] * 20 + [b"\x00garbage"], dtype=object)
    with pytest.raises(RequestError, match=r"examples\[20\]: not a serialized tf.Example"):
        tensors.check_examples_parse("examples", bad, SPEC)


def test_conform_converts_numbers_and_names_what_cannot_be():
    converted = tensors.conform_examples(
        "examples", np.array([VALID, example(item_price=3)], dtype=object), SPEC)
    assert tf.train.Example.FromString(converted[0]) == tf.train.Example.FromString(VALID)
    assert tf.train.Example.FromString(converted[1]).features.feature[
        "item_price"].float_list.value == [3.0]
    bad = np.array([VALID] * 20 + [example(hour=4.5)], dtype=object)
    with pytest.raises(RequestError, match=r"examples\[20\]: feature 'hour'"):
        tensors.conform_examples("examples", bad, SPEC)


@pytest.mark.parametrize("array", [
    np.array([0.5, 0.25], np.float32), np.zeros((0,), np.float32),
    np.arange(6, dtype=np.int64).reshape(2, 3), np.array([[b"a", b"b"]], dtype=object)])
def test_to_tensor_proto_matches_make_tensor_proto(array):
    proto = tensor_pb2.TensorProto()
    tensors.to_tensor_proto(array, proto)
    assert proto == tf.make_tensor_proto(array)


def test_predict_response_bytes_is_the_message_the_protobuf_api_builds():
    outputs = {"click": np.linspace(0, 1, 100, dtype=np.float32),  # a length over one varint byte
               "classes": np.array([[b"click", b"like"]], dtype=object),
               "rank": np.arange(3, dtype=np.int64), "none": np.zeros((0, 2), np.float32)}
    spec = model_pb2.ModelSpec(name="mtrank", signature_name="serving_default")
    spec.version.value = 300
    got = predict_pb2.PredictResponse.FromString(
        tensors.predict_response_bytes(spec.SerializeToString(), outputs))
    want = predict_pb2.PredictResponse(model_spec=spec)
    for key, array in outputs.items():
        want.outputs[key].CopyFrom(tf.make_tensor_proto(array))
    assert got == want


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**35 + 7])
def test_varint_is_protobufs(value):
    # An int64_list holding only `value`: field tag, packed length, then the varint.
    serialized = tf.train.Int64List(value=[value]).SerializeToString()
    assert serialized[2:] == wire.varint(value)
