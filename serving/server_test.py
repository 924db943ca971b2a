"""Tests of serving/server.py over real gRPC, with the stock TF Serving stubs as client."""
import collections
import concurrent.futures
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from mtrank.base import serving_contract
from mtrank.serving import model_store, server as server_lib, server_config
from mtrank_testing import serving_util as testing_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_AND_SCORE = {"click", "purchase", "score"}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """Versions 1 and 2 with different biases, so their scores differ."""
    base = str(tmp_path_factory.mktemp("models") / "mtrank")
    testing_util.write_test_model(base, 1, bias=0.0)
    testing_util.write_test_model(base, 2, bias=1.0)
    return base


@pytest.fixture(scope="module")
def running(model_base):
    with testing_util.running_server(model_base) as (running, _):
        yield running


@pytest.fixture(scope="module")
def target(running):
    return f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def channel(target):
    with grpc.insecure_channel(target) as ch:
        yield ch


@pytest.fixture(scope="module")
def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def in_process_scores(model_base, version, serialized):
    """What the version's serving_default returns when called directly."""
    signature = tf.saved_model.load(os.path.join(model_base, str(version))).signatures[
        serving_contract.SERVING_DEFAULT]
    outputs = signature(examples=tf.constant(serialized, dtype=tf.string))
    return {task: tensor.numpy() for task, tensor in outputs.items()}


def example(**features):
    ex = tf.train.Example()
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            continue
        feature = ex.features.feature[name]
        if isinstance(values[0], str):
            feature.bytes_list.value.extend(v.encode() for v in values)
        elif isinstance(values[0], int):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(values)
    return ex.SerializeToString()


def varied_examples(n):
    return [example(user_id=f"user{i}", item_id=f"item{i % 3}", item_price=1.5 * i,
                    hour=i % 24, item_tags=["t"] * (i % 4))
            for i in range(n)]


def predict_request(serialized, model_name="mtrank", signature_name=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
    return request


def raw_request(n=3, **overrides):
    """predict_raw inputs for the same candidates as varied_examples(n)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mtrank"
    request.model_spec.signature_name = "predict_raw"
    inputs = {
        "user_id": tf.make_tensor_proto([f"user{i}" for i in range(n)], tf.string),
        "item_id": tf.make_tensor_proto([f"item{i % 3}" for i in range(n)], tf.string),
        "item_price": tf.make_tensor_proto([1.5 * i for i in range(n)], tf.float32),
        "hour": tf.make_tensor_proto([i % 24 for i in range(n)], tf.int64),
        "item_tags": tf.make_tensor_proto(
            [["t"] * (i % 4) + [""] * (3 - i % 4) for i in range(n)], tf.string),
    }
    inputs.update(overrides)
    for name, tensor in inputs.items():
        if tensor is not None:
            request.inputs[name].CopyFrom(tensor)
    return request


def scores(stub, serialized):
    response = stub.Predict(predict_request(serialized), timeout=10)
    return {task: tf.make_ndarray(tensor) for task, tensor in response.outputs.items()}


def assert_rejected(stub, request, code, *words, method="Predict"):
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(request, timeout=10)
    assert raised.value.code() == code, raised.value.details()
    for word in words:
        assert word in raised.value.details()


def metric(running_server, name, **labels):
    return running_server.model_server.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("batch_size", [1, 7])
def test_predict_gives_one_probability_per_example_and_output(prediction_stub, batch_size):
    response = prediction_stub.Predict(predict_request(varied_examples(batch_size)), timeout=10)

    assert set(response.outputs) == TASKS_AND_SCORE
    for tensor in response.outputs.values():
        values = tf.make_ndarray(tensor)
        assert values.shape == (batch_size,)
        assert values.dtype == np.float32
        assert np.all((values >= 0) & (values <= 1))
    assert response.model_spec.name == "mtrank"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"


def test_scores_equal_the_newest_saved_model_called_in_process(prediction_stub, model_base):
    serialized = varied_examples(6)

    served = scores(prediction_stub, serialized)
    expected = in_process_scores(model_base, 2, serialized)

    assert served.keys() == expected.keys()
    for task in expected:
        np.testing.assert_array_equal(served[task], expected[task])
        assert len(set(served[task].tolist())) == 6  # different inputs, different scores
    older = in_process_scores(model_base, 1, serialized)
    assert not np.allclose(served["click"], older["click"])


def test_negative_inter_op_setting_serves_the_same_scores(model_base):
    serialized = varied_examples(6)
    expected = in_process_scores(model_base, 2, serialized)
    with testing_util.running_server(model_base, inter_op_threads=-1) as (_, target):
        with grpc.insecure_channel(target) as channel:
            served = scores(prediction_service_pb2_grpc.PredictionServiceStub(channel),
                            serialized)

    for task in expected:
        np.testing.assert_array_equal(served[task], expected[task])


def test_predict_raw_scores_like_serving_default(prediction_stub):
    from_examples = scores(prediction_stub, varied_examples(5))
    response = prediction_stub.Predict(raw_request(5), timeout=10)

    assert response.model_spec.signature_name == "predict_raw"
    for name, values in from_examples.items():
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), values, rtol=1e-6)


def test_predict_raw_converts_numbers_of_the_other_kind(prediction_stub):
    as_declared = prediction_stub.Predict(raw_request(3), timeout=10)
    converted = prediction_stub.Predict(raw_request(
        3, item_price=tf.make_tensor_proto([0, 1, 3], tf.int64),
        hour=tf.make_tensor_proto([0.0, 1.0, 2.0], tf.float32)), timeout=10)

    assert tf.make_ndarray(converted.outputs["score"])[0] == tf.make_ndarray(
        as_declared.outputs["score"])[0]
    assert_rejected(prediction_stub, raw_request(
        3, hour=tf.make_tensor_proto([0.5, 1.0, 2.0], tf.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "hour", "not all integers")


def test_empty_batch_gives_empty_outputs(prediction_stub):
    served = scores(prediction_stub, [])

    assert {task: values.shape for task, values in served.items()} == {
        "click": (0,), "purchase": (0,), "score": (0,)}


def test_int64_for_float_feature_is_converted(prediction_stub):
    as_int, as_float, other, extra = scores(prediction_stub, [
        example(user_id="u", item_price=3),
        example(user_id="u", item_price=3.0),
        example(user_id="u", item_price=4.0),
        example(user_id="u", item_price=3.0, not_a_model_feature="dropped"),
    ])["click"]

    assert as_int == as_float
    assert as_float != other  # the price does reach the model
    assert extra == as_float


def test_example_that_protobuf_reads_and_tensorflow_refuses_is_served_conformed(
        prediction_stub):
    """Found by fuzzing: a stray fixed32 field inside a BytesList, which
    protobuf keeps as an unknown field and TensorFlow's parser refuses with
    a message that is not UTF-8."""
    odd = (b"\n\x1c\n\x0b\n\x01s\x12\x06\n\x04\n\x02\xff\n\rq\n\x01a\x12\x08\x12\x06"
           b"\n\x04\x00\x00\x80?")
    with pytest.raises(UnicodeDecodeError):
        tf.io.parse_example([odd], {"s": tf.io.VarLenFeature(tf.string)})

    served = scores(prediction_stub, [odd, example(user_id="u")])["click"]
    assert served[0] == scores(prediction_stub, [example()])["click"][0]


@pytest.mark.parametrize("features, feature_name", [
    ({"hour": 5.5}, "hour"),
    ({"item_price": "cheap"}, "item_price"),
    ({"hour": "noon"}, "hour"),
    ({"user_id": 7}, "user_id"),
    ({"item_tags": [1.0, 2.0]}, "item_tags"),
    ({"item_price": [1.0, 2.0]}, "item_price"),  # a scalar with two values
])
def test_values_that_do_not_fit_the_spec_are_rejected_by_name(
        prediction_stub, features, feature_name):
    assert_rejected(prediction_stub, predict_request([example(**features)]),
                    grpc.StatusCode.INVALID_ARGUMENT, feature_name)


def _wrong_dtype():
    request = predict_request([])
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    return request


def _two_dimensional():
    request = predict_request([])
    request.inputs["examples"].CopyFrom(
        tf.make_tensor_proto([[example(user_id="u")]], dtype=tf.string))
    return request


def _unknown_input_key():
    request = predict_request([example(user_id="u")])
    request.inputs["inputs"].CopyFrom(request.inputs["examples"])
    return request


def _missing_examples():
    request = predict_request([])
    del request.inputs["examples"]
    return request


def _unknown_output():
    request = predict_request([example(user_id="u")])
    request.output_filter.append("dwell_time")
    return request


@pytest.mark.parametrize("make_request, code, words", [
    (lambda: predict_request([example(user_id="u"), b"\xff\xfenot an example"]),
     grpc.StatusCode.INVALID_ARGUMENT, ["examples[1]"]),
    # Protobuf stops at a zero tag without an error: still not an Example.
    (lambda: predict_request([b"\x00not a tf.Example\xff"]),
     grpc.StatusCode.INVALID_ARGUMENT, ["examples[0]", "byte 1 of 18"]),
    (_wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, ["DT_FLOAT"]),
    (_two_dimensional, grpc.StatusCode.INVALID_ARGUMENT, ["rank"]),
    (_unknown_input_key, grpc.StatusCode.INVALID_ARGUMENT, ["inputs"]),
    (_missing_examples, grpc.StatusCode.INVALID_ARGUMENT, ["examples"]),
    (_unknown_output, grpc.StatusCode.INVALID_ARGUMENT, ["dwell_time"]),
    (lambda: predict_request([example(user_id="u")], signature_name="score_all"),
     grpc.StatusCode.INVALID_ARGUMENT, ["score_all"]),
    (lambda: predict_request([example(user_id="u")], model_name="other"),
     grpc.StatusCode.NOT_FOUND, ["other"]),
])
def test_bad_requests_are_rejected_and_serving_goes_on(prediction_stub, make_request, code, words):
    assert_rejected(prediction_stub, make_request(), code, *words)

    assert scores(prediction_stub, [example(user_id="u")])["click"].shape == (1,)


def test_requested_version_must_be_available(prediction_stub):
    request = predict_request([example(user_id="u")])
    request.model_spec.version.value = 2
    assert prediction_stub.Predict(request, timeout=10).model_spec.version.value == 2

    request.model_spec.version.value = 1
    assert_rejected(prediction_stub, request, grpc.StatusCode.NOT_FOUND, "version 1")
    request.model_spec.version_label = "stable"
    assert_rejected(prediction_stub, request, grpc.StatusCode.NOT_FOUND, "stable")


def test_output_filter_selects_outputs(prediction_stub):
    request = predict_request([example(user_id="u")])
    request.output_filter.append("purchase")

    assert set(prediction_stub.Predict(request, timeout=10).outputs) == {"purchase"}


def test_model_errors_become_invalid_argument_and_others_internal(prediction_stub, monkeypatch):
    def reject(self, signature, inputs, output_keys, check_examples=True):
        raise tf.errors.InvalidArgumentError(None, None, "Key: hour. Can't parse")

    monkeypatch.setattr(model_store.LoadedModel, "run", reject)
    assert_rejected(prediction_stub, predict_request([example(user_id="u")]),
                    grpc.StatusCode.INVALID_ARGUMENT, "Can't parse")

    def crash(self, signature, inputs, output_keys, check_examples=True):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model_store.LoadedModel, "run", crash)
    assert_rejected(prediction_stub, predict_request([example(user_id="u")]),
                    grpc.StatusCode.INTERNAL)

    monkeypatch.undo()
    assert scores(prediction_stub, [example(user_id="u")])["click"].shape == (1,)


def examples_input(target, n=3):
    for serialized in varied_examples(n):
        target.example_list.examples.add().ParseFromString(serialized)


def test_classify_gives_each_binary_task_with_its_probability(prediction_stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "mtrank", "classify"
    examples_input(request.input)
    expected = scores(prediction_stub, varied_examples(3))

    response = prediction_stub.Classify(request, timeout=10)

    assert response.model_spec.version.value == 2
    for i, row in enumerate(response.result.classifications):
        assert [c.label for c in row.classes] == ["click", "purchase"]
        np.testing.assert_allclose([c.score for c in row.classes],
                                   [expected["click"][i], expected["purchase"][i]], rtol=1e-6)
    request.model_spec.signature_name = ""  # serving_default is a predict signature
    assert_rejected(prediction_stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                    "not tensorflow/serving/classify", method="Classify")


def test_regress_gives_the_fused_score_and_multi_inference_both(prediction_stub):
    expected = scores(prediction_stub, varied_examples(3))["score"]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "mtrank", "regress"
    examples_input(request.input)

    regressed = prediction_stub.Regress(request, timeout=10)

    np.testing.assert_allclose([r.value for r in regressed.result.regressions], expected,
                               rtol=1e-6)
    multi = inference_pb2.MultiInferenceRequest()
    examples_input(multi.input)
    for signature, method in (("regress", "tensorflow/serving/regress"),
                              ("classify", "tensorflow/serving/classify")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "mtrank", signature
    results = prediction_stub.MultiInference(multi, timeout=10).results
    np.testing.assert_allclose([r.value for r in results[0].regression_result.regressions],
                               expected, rtol=1e-6)
    assert len(results[1].classification_result.classifications) == 3


def test_model_status_reports_newest_version_available(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mtrank"

    response = stub.GetModelStatus(request, timeout=10)

    assert [(s.version, s.state, s.status.error_code)
            for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    request.model_spec.name = "other"
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelStatus(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_metadata_lists_signatures(prediction_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "mtrank"
    request.metadata_field.append("signature_def")

    response = prediction_stub.GetModelMetadata(request, timeout=10)

    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_def_map)
    signatures = signature_def_map.signature_def
    assert set(signatures) == {"serving_default", "predict_raw", "regress", "classify",
                               "transform_features"}
    serving = signatures["serving_default"]
    assert {k: v.dtype for k, v in serving.inputs.items()} == {"examples": types_pb2.DT_STRING}
    assert set(serving.outputs) == TASKS_AND_SCORE
    assert {k: v.dtype for k, v in signatures["predict_raw"].inputs.items()} == {
        "user_id": types_pb2.DT_STRING, "item_id": types_pb2.DT_STRING,
        "item_price": types_pb2.DT_FLOAT, "hour": types_pb2.DT_INT64,
        "item_tags": types_pb2.DT_STRING}
    assert response.model_spec.version.value == 2
    del request.metadata_field[:]
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.GetModelMetadata(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("service", ["", "tensorflow.serving.PredictionService"])
def test_health_is_serving(channel, service):
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_binds_loopback_by_default(model_base):
    running = server_lib.serve(model_base, port=0)
    port = running.port
    try:
        listening = [c.laddr for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    finally:
        running.stop()

    assert port > 0
    # gRPC may listen on a dual-stack socket, where IPv4 loopback is v4-mapped.
    assert [ip for ip, _ in listening] in (["127.0.0.1"], ["::ffff:127.0.0.1"])


def test_missing_model_base_fails_at_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        server_lib.serve(str(tmp_path / "nothing"), port=0)


# Malformed requests.

_GARBAGE_PREFIXES = (b"\x07", b"\x0f", b"\x00", b"\x0a\xff\xff\xff\xff\x0f")


def _mutated(rng: random.Random, serialized: bytes) -> bytes:
    mutated = bytearray(serialized)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(mutated))
        kind = rng.random()
        if kind < 0.4:
            mutated[at] = rng.randrange(256)
        elif kind < 0.7:
            del mutated[at]
        else:
            mutated.insert(at, rng.randrange(256))
    return bytes(mutated)


def test_fuzz_of_corrupted_examples_is_served_or_refused_never_an_internal_error(
        model_base, prediction_stub):
    """Corrupted copies of a valid Example beside two valid ones: protobuf
    refuses most, TensorFlow's parser refuses some protobuf reads (the model
    call then fails and the server conforms them). Each request is answered
    OK or INVALID_ARGUMENT; when OK, the valid neighbours score as alone."""
    rng = random.Random(20261124)
    valid = varied_examples(3)
    alone = scores(prediction_stub, [valid[0], valid[2]])["click"]
    codes = collections.Counter()
    for _ in range(300):
        request = predict_request([valid[0], _mutated(rng, valid[1]), valid[2]])
        try:
            response = prediction_stub.Predict(request, timeout=10)
        except grpc.RpcError as e:
            codes[e.code()] += 1
            continue
        codes[grpc.StatusCode.OK] += 1
        click = tf.make_ndarray(response.outputs["click"])
        np.testing.assert_allclose(click[[0, 2]], alone, rtol=1e-6)

    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, codes


def _fuzz_cases(rng: random.Random, n: int):
    """(method, request or raw bytes, expected code) for n malformed requests."""
    invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

    def garbage(size):
        return rng.choice(_GARBAGE_PREFIXES) + bytes(rng.getrandbits(8) for _ in range(size))

    def predict_with(tensor):
        request = predict_request([])
        request.inputs["examples"].CopyFrom(tensor)
        return request

    def raw_with(name, tensor):
        return raw_request(3, **{name: tensor})

    makers = [
        lambda: ("raw", garbage(rng.randrange(0, 200)), invalid),
        lambda: ("Predict", predict_request([garbage(rng.randrange(0, 60))
                                             for _ in range(rng.randrange(1, 4))]), invalid),
        lambda: ("Predict", predict_with(tf.make_tensor_proto(
            np.arange(rng.randrange(1, 5)).astype(rng.choice([np.float32, np.int64, np.bool_,
                                                               np.int32])))), invalid),
        lambda: ("Predict", predict_with(tf.make_tensor_proto(
            [[b"x"] * rng.randrange(1, 3)] * rng.randrange(1, 3), tf.string)), invalid),
        lambda: ("Predict", predict_with(tf.make_tensor_proto(b"scalar", tf.string)), invalid),
        lambda: ("Predict", predict_request([example(user_id="u")],
                                            signature_name=f"sig{rng.randrange(10**6)}"),
                 invalid),
        lambda: ("Predict", predict_request([example(user_id="u")],
                                            model_name=f"model{rng.randrange(10**6)}"), missing),
        lambda: ("Predict", _with_version(predict_request([example(user_id="u")]),
                                          rng.randrange(3, 10**9)), missing),
        lambda: ("Predict", _with_extra_input(predict_request([example(user_id="u")]),
                                              f"in{rng.randrange(10**6)}"), invalid),
        lambda: ("Predict", predict_request([example(**{rng.choice(["hour", "item_price"]):
                                                        rng.choice(["text", [1.5, 2.5]])})]),
                 invalid),
        lambda: ("Predict", predict_request([example(hour=rng.uniform(0.01, 0.99) + 3)]),
                 invalid),
        lambda: ("Predict", raw_with(rng.choice(["item_price", "hour"]),
                                     tf.make_tensor_proto(["a", "b", "c"], tf.string)), invalid),
        lambda: ("Predict", raw_with("user_id", tf.make_tensor_proto([1.0, 2.0, 3.0])), invalid),
        lambda: ("Predict", raw_with("item_tags", tf.make_tensor_proto(["a", "b", "c"])),
                 invalid),
        lambda: ("Predict", raw_with("hour", tf.make_tensor_proto(
            np.arange(rng.choice([1, 2, 4, 5]), dtype=np.int64))), invalid),
        lambda: ("Predict", raw_with("hour", None), invalid),
        lambda: ("Predict", _declared_shape(rng.choice([10**7, 10**12, 2**40])), invalid),
        lambda: ("Predict", _short_content(rng.randrange(4, 50)), invalid),
        lambda: ("Predict", predict_request([b"\x0a" * rng.randrange(300_000, 400_000)]),
                 invalid),
        lambda: ("Classify", _classify(rng.choice(["", "serving_default", "regress"])), invalid),
        lambda: ("Regress", _regress_without_examples(), invalid),
    ]
    for _ in range(n):
        yield rng.choice(makers)()


def _with_version(request, version):
    request.model_spec.version.value = version
    return request


def _with_extra_input(request, name):
    request.inputs[name].CopyFrom(request.inputs["examples"])
    return request


def _declared_shape(size):
    request = predict_request([])
    tensor = request.inputs["examples"]
    tensor.tensor_shape.dim[0].size = size
    return request


def _short_content(declared):
    tensor = tf.make_tensor_proto(np.ones(3, np.float32))
    tensor.tensor_shape.dim[0].size = declared
    return raw_request(3, item_price=tensor)


def _classify(signature):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "mtrank", signature
    examples_input(request.input, 1)
    return request


def _regress_without_examples():
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "mtrank", "regress"
    return request


def test_fuzz_of_malformed_requests_gets_clear_errors_and_serving_goes_on(model_base):
    """1,200 seeded malformed requests: garbage bytes, wrong dtypes and shapes,
    unknown inputs, signatures, models and versions, oversized ones."""
    options = dict(max_request_bytes=256 * 1024, max_values_per_input=1_000_000,
                   batching=server_config.BatchingParameters(batch_timeout_micros=0))
    with testing_util.running_server(model_base, **options) as (running, target):
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            raw_predict = channel.unary_unary(
                "/tensorflow.serving.PredictionService/Predict")
            wrong = []
            for i, (method, request, expected) in enumerate(
                    _fuzz_cases(random.Random(20261123), 1200)):
                call = raw_predict if method == "raw" else getattr(stub, method)
                try:
                    call(request, timeout=10)
                    wrong.append((i, method, "OK"))
                except grpc.RpcError as e:
                    if e.code() != expected:
                        wrong.append((i, method, e.code(), e.details()))
            assert wrong == []
            assert scores(stub, varied_examples(2))["score"].shape == (2,)
        assert metric(running, "mtrank_serving_requests_total", model="<unknown>",
                      signature="serving_default", method="Predict", code="NOT_FOUND") > 0
        assert metric(running, "mtrank_serving_requests_total", model="", signature="",
                      method="Predict", code="INVALID_ARGUMENT") > 0


# Hot reload, batching, back-pressure.

def test_new_version_takes_over_under_load_without_a_failed_request(tmp_path):
    staging, base = str(tmp_path / "staging"), tmp_path / "mtrank"
    testing_util.write_test_model(str(base), 1, bias=0.0)
    testing_util.write_test_model(staging, 2, bias=1.0)
    request = predict_request(varied_examples(4))
    expected = {v: in_process_scores(p, v, varied_examples(4))["score"]
                for v, p in ((1, str(base)), (2, staging))}
    stop = threading.Event()
    failures, answers = [], []

    with testing_util.running_server(
            str(base), poll_interval_s=0.05,
            batching=server_config.BatchingParameters(batch_timeout_micros=1000)) as (
            running, target):
        def send():
            with grpc.insecure_channel(target) as ch:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
                while not stop.is_set():
                    try:
                        response = stub.Predict(request, timeout=10)
                    except grpc.RpcError as e:
                        failures.append(e.code())
                        continue
                    version = response.model_spec.version.value
                    answers.append(version)
                    if not np.allclose(tf.make_ndarray(response.outputs["score"]),
                                       expected[version], rtol=1e-6):
                        failures.append(f"wrong scores for version {version}")

        senders = [threading.Thread(target=send) for _ in range(4)]
        for thread in senders:
            thread.start()
        try:
            while len(answers) < 50 and not failures:
                time.sleep(0.01)
            shutil.copytree(os.path.join(staging, "2"), base / "2")
            give_up = time.monotonic() + 60
            while 2 not in answers and time.monotonic() < give_up and not failures:
                time.sleep(0.01)
            swapped_at = len(answers)
            while len(answers) < swapped_at + 50 and not failures:
                time.sleep(0.01)
        finally:
            stop.set()
            for thread in senders:
                thread.join()
        statuses = {s.version: s.state for s in running.model_server.manager.status(
            predict_request([]).model_spec)}

    assert failures == []
    assert 1 in answers and 2 in answers
    assert answers[-20:] == [2] * 20
    assert statuses == {1: get_model_status_pb2.ModelVersionStatus.END,
                        2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}


def test_concurrent_requests_are_merged_into_few_model_calls(model_base, prediction_stub):
    batching = server_config.BatchingParameters(max_batch_size=64, batch_timeout_micros=500_000,
                                                num_batch_threads=1)
    requests = [predict_request(varied_examples(i + 1)) for i in range(8)]
    with testing_util.running_server(model_base, batching=batching) as (running, target):
        calls_before = metric(running, "mtrank_serving_model_calls_total")
        start = threading.Barrier(8)
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

            def send(request):
                start.wait()
                return stub.Predict(request, timeout=30)

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(send, requests))
        calls = metric(running, "mtrank_serving_model_calls_total") - calls_before

    assert calls <= 2, f"8 concurrent requests took {calls} model calls"
    for i, response in enumerate(responses):  # each got its own rows
        expected = scores(prediction_stub, varied_examples(i + 1))
        for name in TASKS_AND_SCORE:
            np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), expected[name],
                                       rtol=1e-6)


def test_merged_requests_are_conformed_and_a_bad_one_is_told_its_own_index(
        model_base, prediction_stub):
    batching = server_config.BatchingParameters(max_batch_size=64, batch_timeout_micros=500_000,
                                                num_batch_threads=1)
    as_int = [example(user_id="u", item_price=3)]
    bad = [example(user_id="u"), example(user_id="u", item_price=[1.0, 2.0])]
    good = varied_examples(3)
    with testing_util.running_server(model_base, batching=batching) as (running, target):
        start = threading.Barrier(3)
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

            def send(serialized):
                start.wait()
                try:
                    return stub.Predict(predict_request(serialized), timeout=30)
                except grpc.RpcError as e:
                    return e

            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                converted, refused, served = pool.map(send, [as_int, bad, good])

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "examples[1]" in refused.details() and "item_price" in refused.details()
    expected = scores(prediction_stub, [example(user_id="u", item_price=3.0)])
    np.testing.assert_allclose(tf.make_ndarray(converted.outputs["click"]), expected["click"],
                               rtol=1e-6)
    np.testing.assert_allclose(tf.make_ndarray(served.outputs["click"]),
                               scores(prediction_stub, good)["click"], rtol=1e-6)


def _block_model_calls(monkeypatch):
    """Makes every model call wait for `release` once it has set `started`;
    returns (started, release, the sizes of the calls' Example batches)."""
    started, release, sizes = threading.Event(), threading.Event(), []
    run = model_store.LoadedModel.run

    def blocking_run(self, signature, inputs, output_keys, check_examples=True):
        sizes.append(len(inputs["examples"]))
        started.set()
        release.wait(30)
        return run(self, signature, inputs, output_keys, check_examples)

    monkeypatch.setattr(model_store.LoadedModel, "run", blocking_run)
    return started, release, sizes


def test_full_batch_queue_answers_resource_exhausted_at_once(model_base, monkeypatch):
    batching = server_config.BatchingParameters(max_batch_size=1, batch_timeout_micros=0,
                                                num_batch_threads=1, max_enqueued_batches=1)
    with testing_util.running_server(model_base, batching=batching) as (running, target):
        started, release, _ = _block_model_calls(monkeypatch)
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            request = predict_request(varied_examples(1))
            running_call = stub.Predict.future(request, timeout=30)
            assert started.wait(30)
            # One batch may wait while one runs: of two more, one is refused.
            waiting = [stub.Predict.future(request, timeout=30) for _ in range(2)]
            give_up = time.monotonic() + 30
            while not any(f.done() for f in waiting) and time.monotonic() < give_up:
                time.sleep(0.01)
            refused = [f for f in waiting if f.done()]
            release.set()
            for call in waiting + [running_call]:
                call.exception(timeout=30)  # waits for the answer
            codes = sorted(call.code().name for call in waiting + [running_call])
            monkeypatch.undo()
            assert stub.Predict(request, timeout=10).outputs["score"].tensor_shape.dim[0].size == 1

    # Refused while the model was still blocked, not after a wait.
    assert [f.code() for f in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert codes == ["OK", "OK", "RESOURCE_EXHAUSTED"]


def test_request_whose_deadline_passes_in_the_queue_leaves_its_batch(model_base, monkeypatch):
    batching = server_config.BatchingParameters(max_batch_size=64, batch_timeout_micros=0,
                                                num_batch_threads=1)
    with testing_util.running_server(model_base, batching=batching) as (running, target):
        started, release, run_sizes = _block_model_calls(monkeypatch)
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            first = stub.Predict.future(predict_request(varied_examples(1)), timeout=30)
            assert started.wait(30)
            with pytest.raises(grpc.RpcError) as raised:  # queued behind the blocked call
                stub.Predict(predict_request(varied_examples(5)), timeout=0.5)
            release.set()
            first.result(timeout=30)
            after = stub.Predict(predict_request(varied_examples(3)), timeout=30)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert after.outputs["score"].tensor_shape.dim[0].size == 3
    assert run_sizes == [1, 3], "the expired request of 5 examples still ran"


# Operations: metrics, TLS, reload over gRPC, config files, shutdown.

def test_metrics_endpoint_counts_requests_and_latency(model_base):
    with testing_util.running_server(model_base, metrics_port=0) as (running, target):
        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            for _ in range(3):
                stub.Predict(predict_request(varied_examples(2)), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.Predict(predict_request([b"\x00"]), timeout=10)
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).read().decode()

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    labels = (("method", "Predict"), ("model", "mtrank"), ("signature", "serving_default"))
    assert samples[("mtrank_serving_requests_total", tuple(sorted(labels + (("code", "OK"),))))] \
        == 3
    assert samples[("mtrank_serving_requests_total",
                    tuple(sorted(labels + (("code", "INVALID_ARGUMENT"),))))] == 1
    assert samples[("mtrank_serving_request_latency_seconds_count", labels)] == 4
    assert samples[("mtrank_serving_versions_available", (("model", "mtrank"),))] == 1


def _self_signed_certificate(directory):
    """(cert path, key path, cert PEM) for 127.0.0.1 and localhost."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path), cert_pem


def test_tls_serves_verified_clients_only(model_base, tmp_path):
    from mtrank.serving import client as client_lib

    cert, key, cert_pem = _self_signed_certificate(tmp_path)
    with testing_util.running_server(model_base, tls_cert=cert, tls_key=key) as (_, target):
        with client_lib.RankingClient(target, root_certificates=cert_pem) as ranking:
            assert ranking.predict([{"user_id": "u"}])["score"].shape == (1,)
        with grpc.insecure_channel(target) as plain:
            with pytest.raises(grpc.RpcError) as raised:
                prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(
                    predict_request([example(user_id="u")]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reload_config_request_serves_the_new_model_set(model_base, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(os.path.join(model_base, "1"), other / "5")
    with testing_util.running_server(model_base) as (_, target):
        with grpc.insecure_channel(target) as ch:
            models = model_service_pb2_grpc.ModelServiceStub(ch)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            request = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(f"""model_config_list {{
              config {{ name: "mtrank" base_path: "{model_base}" model_platform: "tensorflow"
                        model_version_policy {{ all {{}} }} }}
              config {{ name: "other" base_path: "{other}" model_platform: "tensorflow" }}
            }}""", request.config)

            models.HandleReloadConfigRequest(request, timeout=60)

            assert stub.Predict(predict_request([example(user_id="u")], model_name="other"),
                                timeout=10).model_spec.version.value == 5
            older = predict_request([example(user_id="u")])
            older.model_spec.version.value = 1
            assert stub.Predict(older, timeout=10).model_spec.version.value == 1
            request.config.model_config_list.config[1].model_platform = "pytorch"
            with pytest.raises(grpc.RpcError) as raised:
                models.HandleReloadConfigRequest(request, timeout=60)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "model_platform" in raised.value.details()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_the_request_in_flight(model_base, tmp_path):
    """`mtrank serve` as a user runs it: a request waiting for its batch when
    SIGTERM arrives is answered; the process then exits 0."""
    batching_file = tmp_path / "batching_parameters.txt"
    batching_file.write_text("max_batch_size { value: 128 }\n"
                             "batch_timeout_micros { value: 1500000 }\n")
    port, metrics_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrank.cli", "serve", "--model-base", model_base,
         "--port", str(port), "--enable-batching", "--batching-parameters-file",
         str(batching_file), "--metrics-port", str(metrics_port), "--rest-port", "0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving mtrank versions [2] on 127.0.0.1:{port}"), line
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            in_flight = stub.Predict.future(predict_request(varied_examples(2)), timeout=30)
            while "mtrank_serving_requests_in_flight 1.0" not in urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode():
                assert not in_flight.done(), in_flight.exception()
                time.sleep(0.02)

            process.send_signal(signal.SIGTERM)

            assert tf.make_ndarray(in_flight.result(timeout=30).outputs["score"]).shape == (2,)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_models_config_file_serves_several_models(model_base, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(os.path.join(model_base, "1"), second / "3")
    config_file = tmp_path / "models.config"
    config_file.write_text(f"""model_config_list {{
      config {{ name: "mtrank" base_path: "{model_base}" model_platform: "tensorflow"
                model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
                version_labels {{ key: "stable" value: 1 }} }}
      config {{ name: "second" base_path: "{second}" model_platform: "tensorflow" }}
    }}""")
    running = server_lib.start(server_config.read_model_server_config(str(config_file)),
                               server_lib.ServerOptions(port=0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            stable = predict_request([example(user_id="u")])
            stable.model_spec.version_label = "stable"
            assert stub.Predict(stable, timeout=10).model_spec.version.value == 1
            assert stub.Predict(predict_request([example(user_id="u")]),
                                timeout=10).model_spec.version.value == 2
            assert stub.Predict(predict_request([example(user_id="u")], model_name="second"),
                                timeout=10).model_spec.version.value == 3
    finally:
        running.stop(grace_s=None)


def test_intra_op_pool_is_set_before_tensorflow_runs_and_kept_after():
    code = ("from pipeline import keras_env\n"
            "import tensorflow as tf\n"
            "from serving import server\n"
            "server.set_intra_op_threads(1)\n"
            "tf.constant(1.0) + 1.0\n"
            "server.set_intra_op_threads(3)\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads())\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1"]
    assert "intra-op pool keeps its size (1)" in result.stderr
