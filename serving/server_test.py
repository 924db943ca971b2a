"""Tests of serving/server.py over real gRPC, with the stock TF Serving stubs as client."""
import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import model_store, server as server_lib, testing_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """Versions 1 and 2 with different biases, so their scores differ."""
    base = str(tmp_path_factory.mktemp("models") / "mtrank")
    testing_util.write_test_model(base, 1, bias=0.0)
    testing_util.write_test_model(base, 2, bias=1.0)
    return base


@pytest.fixture(scope="module")
def target(model_base):
    with testing_util.running_server(model_base) as (_, address):
        yield address


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
        model_store.SERVING_SIGNATURE]
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


def scores(stub, serialized):
    response = stub.Predict(predict_request(serialized), timeout=10)
    return {task: tf.make_ndarray(tensor) for task, tensor in response.outputs.items()}


def assert_rejected(stub, request, code, *words):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=10)
    assert raised.value.code() == code, raised.value.details()
    for word in words:
        assert word in raised.value.details()


@pytest.mark.parametrize("batch_size", [1, 7])
def test_predict_gives_one_probability_per_example_and_task(prediction_stub, batch_size):
    response = prediction_stub.Predict(predict_request(varied_examples(batch_size)), timeout=10)

    assert set(response.outputs) == {"click", "purchase"}
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


def test_empty_batch_gives_empty_outputs(prediction_stub):
    served = scores(prediction_stub, [])

    assert {task: values.shape for task, values in served.items()} == {
        "click": (0,), "purchase": (0,)}


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


def test_integral_float_for_int64_feature_is_converted(prediction_stub):
    as_float, as_int, other = scores(prediction_stub, [
        example(user_id="u", hour=5.0), example(user_id="u", hour=5), example(user_id="u", hour=6),
    ])["purchase"]

    assert as_float == as_int
    assert as_int != other


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


def _garbage_examples():
    return predict_request([example(user_id="u"), b"\xff\xfenot an example"])


def _zero_tag_garbage():
    # Protobuf's parser stops at a zero tag without an error: this must still
    # be rejected, not scored as an empty Example.
    return predict_request([b"\x00not a tf.Example\xff"])


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
    (_garbage_examples, grpc.StatusCode.INVALID_ARGUMENT, ["examples[1]"]),
    (_zero_tag_garbage, grpc.StatusCode.INVALID_ARGUMENT, ["examples[0]", "byte 1 of 18"]),
    (_wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, ["DT_FLOAT"]),
    (_two_dimensional, grpc.StatusCode.INVALID_ARGUMENT, ["shape"]),
    (_unknown_input_key, grpc.StatusCode.INVALID_ARGUMENT, ["inputs"]),
    (_missing_examples, grpc.StatusCode.INVALID_ARGUMENT, ["examples"]),
    (_unknown_output, grpc.StatusCode.INVALID_ARGUMENT, ["dwell_time"]),
    (lambda: predict_request([example(user_id="u")], signature_name="classify"),
     grpc.StatusCode.INVALID_ARGUMENT, ["classify"]),
    (lambda: predict_request([example(user_id="u")], model_name="other"),
     grpc.StatusCode.NOT_FOUND, ["other"]),
])
def test_bad_requests_are_rejected_and_serving_goes_on(prediction_stub, make_request, code, words):
    assert_rejected(prediction_stub, make_request(), code, *words)

    assert scores(prediction_stub, [example(user_id="u")])["click"].shape == (1,)


def test_requested_version_must_be_the_loaded_one(prediction_stub):
    request = predict_request([example(user_id="u")])
    request.model_spec.version.value = 2
    assert prediction_stub.Predict(request, timeout=10).model_spec.version.value == 2

    request.model_spec.version.value = 1
    assert_rejected(prediction_stub, request, grpc.StatusCode.NOT_FOUND, "version 1")


def test_output_filter_selects_tasks(prediction_stub):
    request = predict_request([example(user_id="u")])
    request.output_filter.append("purchase")

    assert set(prediction_stub.Predict(request, timeout=10).outputs) == {"purchase"}


def test_model_errors_become_invalid_argument_and_others_internal(prediction_stub, monkeypatch):
    def reject(self, examples):
        raise tf.errors.InvalidArgumentError(None, None, "Key: hour. Can't parse")

    monkeypatch.setattr(model_store.LoadedModel, "predict", reject)
    assert_rejected(prediction_stub, predict_request([example(user_id="u")]),
                    grpc.StatusCode.INVALID_ARGUMENT, "Can't parse")

    def crash(self, examples):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model_store.LoadedModel, "predict", crash)
    assert_rejected(prediction_stub, predict_request([example(user_id="u")]),
                    grpc.StatusCode.INTERNAL)

    monkeypatch.undo()
    assert scores(prediction_stub, [example(user_id="u")])["click"].shape == (1,)


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
    assert {"serving_default", "transform_features"} <= set(signatures)
    serving = signatures["serving_default"]
    assert {k: v.dtype for k, v in serving.inputs.items()} == {"examples": types_pb2.DT_STRING}
    assert set(serving.outputs) == {"click", "purchase"}
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
    server, port = server_lib.serve(model_base, port=0)
    try:
        listening = [c.laddr for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    finally:
        server.stop(grace=None).wait()

    assert port > 0
    # gRPC may listen on a dual-stack socket, where IPv4 loopback is v4-mapped.
    assert [ip for ip, _ in listening] in (["127.0.0.1"], ["::ffff:127.0.0.1"])


def test_missing_model_base_fails_at_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        server_lib.serve(str(tmp_path / "nothing"), port=0)


def test_serve_forever_announces_and_stops_on_sigterm(model_base):
    code = ("from serving import server; "
            f"server.serve_forever({model_base!r}, 'mtrank', '127.0.0.1', 0)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving model mtrank version 2 from {model_base} on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert scores(prediction_service_pb2_grpc.PredictionServiceStub(ch),
                          [example(user_id="u")])["click"].shape == (1,)

        process.send_signal(signal.SIGTERM)

        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_models_config_serves_mtrank_latest_version():
    with open(os.path.join(REPO_ROOT, "serving", "models.config"), encoding="utf-8") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())

    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "mtrank", "/models/mtrank", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
