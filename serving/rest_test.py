"""Tests of serving/rest.py: TF Serving's REST API over real HTTP on 127.0.0.1,
beside the gRPC API of the same server, compared with the stock gRPC stubs."""
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from google.protobuf import json_format, text_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from mtrank.base import examples as examples_lib
from mtrank.serving import rest, server as server_lib, server_config
from mtrank_testing import serving_util as testing_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """Versions 1 and 2 of the test model, with different biases so that
    their scores differ; every server here serves copies of them."""
    store = str(tmp_path_factory.mktemp("models") / "mtrank")
    testing_util.write_test_model(store, 1, bias=0.0)
    testing_util.write_test_model(store, 2, bias=1.0)
    return store


@pytest.fixture(scope="module")
def running(model_store):
    """Both versions, version 1 labelled `stable`; gRPC and REST on free ports."""
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(f"""model_config_list {{
      config {{ name: "mtrank" base_path: "{model_store}" model_platform: "tensorflow"
                model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
                version_labels {{ key: "stable" value: 1 }} }}
    }}""", config)
    running = server_lib.start(config, server_lib.ServerOptions(port=0, rest_port=0,
                                                                max_workers=16))
    yield running
    running.stop(grace_s=None)


@pytest.fixture(scope="module")
def url(running):
    return f"http://127.0.0.1:{running.rest_port}"


@pytest.fixture(scope="module")
def prediction_stub(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def call(url, path, body=None, method=None, context=None):
    """(HTTP status, decoded JSON body) of one request; a dict body is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            status, content_type, text = (response.status, response.headers["Content-Type"],
                                          response.read())
    except urllib.error.HTTPError as e:
        status, content_type, text = e.code, e.headers["Content-Type"], e.read()
    assert content_type == "application/json", content_type
    return status, json.loads(text)


def candidates(n):
    return [{"user_id": f"user{i}", "item_id": f"item{i % 3}", "item_price": 1.5 * i,
             "hour": i % 24, "item_tags": ["t"] * (i % 4)} for i in range(n)]


def serialized(features):
    return [examples_lib.example_from_json(f).SerializeToString() for f in features]


def b64_instances(features):
    return [{"b64": base64.b64encode(s).decode()} for s in serialized(features)]


def grpc_scores(stub, features, version=None):
    """serving_default's outputs over gRPC, the stock stubs' way."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mtrank"
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized(features), tf.string))
    response = stub.Predict(request, timeout=30)
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def as_float32(values):
    return np.array(values, dtype=np.float32)


def predict_raw_instances(features):
    """predict_raw's instances for the candidates: every feature named, lists
    padded with "" to one length (a tensor is rectangular)."""
    width = max(len(f["item_tags"]) for f in features)
    return [{**f, "item_tags": f["item_tags"] + [""] * (width - len(f["item_tags"]))}
            for f in features]


# Status and metadata.

def test_status_reports_versions_as_tf_serving_renders_them(url):
    available = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}

    assert call(url, "/v1/models/mtrank") == (200, {"model_version_status": [
        {"version": "1", **available}, {"version": "2", **available}]})
    assert call(url, "/v1/models/mtrank/versions/2") == (
        200, {"model_version_status": [{"version": "2", **available}]})
    assert call(url, "/v1/models/mtrank/labels/stable") == (
        200, {"model_version_status": [{"version": "1", **available}]})


def test_metadata_is_the_signature_def_map_grpc_gives(url, prediction_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mtrank"
    expected = get_model_metadata_pb2.SignatureDefMap()
    prediction_stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(
        expected)

    status, body = call(url, "/v1/models/mtrank/metadata")

    assert status == 200
    assert body["model_spec"] == {"name": "mtrank", "version": "2", "signature_name": ""}
    assert set(body["metadata"]) == {"signature_def"}
    served = json_format.ParseDict(body["metadata"]["signature_def"],
                                   get_model_metadata_pb2.SignatureDefMap())
    assert served == expected
    assert body["metadata"]["signature_def"]["signature_def"]["regress"]["method_name"] == \
        "tensorflow/serving/regress"
    assert call(url, "/v1/models/mtrank/labels/stable/metadata")[1]["model_spec"]["version"] \
        == "1"


# Predict.

def test_predict_row_format_gives_each_example_its_outputs_as_grpc_does(url, prediction_stub):
    features = candidates(5)

    status, body = call(url, "/v1/models/mtrank:predict", {"instances": b64_instances(features)})

    assert status == 200
    expected = grpc_scores(prediction_stub, features)
    assert [set(row) for row in body["predictions"]] == [{"click", "purchase", "score"}] * 5
    for name, values in expected.items():
        np.testing.assert_array_equal(as_float32([row[name] for row in body["predictions"]]),
                                      values)
    assert len({row["score"] for row in body["predictions"]}) == 5


def test_predict_columnar_format_gives_each_output_its_column(url, prediction_stub):
    features = candidates(3)
    body = {"signature_name": "serving_default", "inputs": b64_instances(features)}

    status, answer = call(url, "/v1/models/mtrank:predict", body)

    assert status == 200
    expected = grpc_scores(prediction_stub, features)
    assert set(answer["outputs"]) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(as_float32(answer["outputs"][name]), values)
    # An object naming the only input is the same request.
    named = {"inputs": {"examples": b64_instances(features)}}
    assert call(url, "/v1/models/mtrank:predict", named) == (200, answer)


def test_predict_raw_takes_named_features_in_both_formats_converting_numbers(
        url, prediction_stub):
    features = candidates(4)
    instances = predict_raw_instances(features)
    # 3 for a float input and 3.0 for an int64 one are converted, as over gRPC.
    instances[3] = {**instances[3], "item_price": 3, "hour": 3.0}
    features[3]["item_price"] = 3.0

    status, rows = call(url, "/v1/models/mtrank:predict",
                        {"signature_name": "predict_raw", "instances": instances})
    columns = {name: [instance[name] for instance in instances] for name in instances[0]}
    _, by_column = call(url, "/v1/models/mtrank:predict",
                        {"signature_name": "predict_raw", "inputs": columns})

    assert status == 200
    expected = grpc_scores(prediction_stub, features)
    for name, values in expected.items():
        np.testing.assert_allclose(as_float32([row[name] for row in rows["predictions"]]),
                                   values, rtol=1e-6)
        assert by_column["outputs"][name] == [row[name] for row in rows["predictions"]]


def test_a_signature_with_one_output_predicts_plain_values_and_strings_stay_text(url):
    examples = b64_instances(candidates(2))

    _, regressed = call(url, "/v1/models/mtrank:predict",
                        {"signature_name": "regress", "instances": examples})
    _, classified = call(url, "/v1/models/mtrank:predict",
                         {"signature_name": "classify", "inputs": examples})

    assert [type(value) for value in regressed["predictions"]] == [float, float]
    assert classified["outputs"]["classes"] == [["click", "purchase"]] * 2
    assert np.shape(classified["outputs"]["scores"]) == (2, 2)


def test_versions_and_labels_pick_the_version_that_answers(url, prediction_stub):
    features = candidates(3)
    body = {"instances": b64_instances(features)}
    scores = {}
    for path in ("", "/versions/1", "/versions/2", "/labels/stable"):
        status, answer = call(url, f"/v1/models/mtrank{path}:predict", body)
        assert status == 200, answer
        scores[path] = as_float32([row["score"] for row in answer["predictions"]])

    for version, paths in ((1, ("/versions/1", "/labels/stable")), (2, ("", "/versions/2"))):
        for path in paths:
            np.testing.assert_array_equal(
                scores[path], grpc_scores(prediction_stub, features, version)["score"])
    assert not np.allclose(scores["/versions/1"], scores["/versions/2"])


# Classify and regress, on features as JSON.

def test_classify_gives_each_task_its_probability_as_grpc_predict(url, prediction_stub):
    features = candidates(3)
    shared = {"item_id": "item9"}
    body = {"signature_name": "classify", "context": shared,
            "examples": [{k: v for k, v in f.items() if k != "item_id"} for f in features]}

    status, answer = call(url, "/v1/models/mtrank:classify", body)

    assert status == 200
    expected = grpc_scores(prediction_stub, [{**f, **shared} for f in features])
    assert [[label for label, _ in row] for row in answer["results"]] == [
        ["click", "purchase"]] * 3
    for i, task in enumerate(("click", "purchase")):
        np.testing.assert_array_equal(as_float32([row[i][1] for row in answer["results"]]),
                                      expected[task])


def test_rest_predict_and_regress_score_exactly_as_grpc_predict(url, prediction_stub):
    """The same candidates, as serialized Examples (:predict) and as JSON
    features (:regress), score exactly as the stock gRPC stubs' Predict."""
    features = candidates(6)
    expected = grpc_scores(prediction_stub, features)["score"]

    _, predicted = call(url, "/v1/models/mtrank:predict", {"instances": b64_instances(features)})
    _, regressed = call(url, "/v1/models/mtrank:regress",
                        {"signature_name": "regress", "examples": features})

    np.testing.assert_array_equal(as_float32([r["score"] for r in predicted["predictions"]]),
                                  expected)
    np.testing.assert_array_equal(as_float32(regressed["results"]), expected)


def test_json_features_are_converted_to_the_spec_dtypes(url):
    """int 3 for the float item_price and 4.0 for the int64 hour score as 3.0
    and 4; null and [] leave a feature out; {"b64": ...} is bytes."""
    as_declared = {"user_id": "u", "item_price": 3.0, "hour": 4}
    other_kind = {"user_id": {"b64": base64.b64encode(b"u").decode()}, "item_price": 3,
                  "hour": 4.0, "item_id": None, "item_tags": []}

    status, answer = call(url, "/v1/models/mtrank:regress",
                          {"signature_name": "regress", "examples": [as_declared, other_kind]})

    assert status == 200
    assert answer["results"][0] == answer["results"][1]


# Errors.

_GOOD = {"instances": b64_instances(candidates(1))}
_RAW = {"signature_name": "predict_raw", "instances": predict_raw_instances(candidates(2))}


@pytest.mark.parametrize("path, body, status, words", [
    (":predict", b"{not json", 400, ["JSON Parse error"]),
    (":predict", b"", 400, ["JSON Parse error"]),
    (":predict", [1, 2], 400, ["JSON object"]),
    (":predict", {"signature_name": "serving_default"}, 400, ["'instances'", "'inputs'"]),
    (":predict", {**_GOOD, "inputs": []}, 400, ["'instances'", "'inputs'"]),
    (":predict", {"instances": []}, 400, ["non-empty"]),
    (":predict", {"instances": {"b64": "AAAA"}}, 400, ["non-empty array"]),
    (":predict", {**_GOOD, "signature_name": 7}, 400, ["signature_name"]),
    (":predict", {"instances": [{"b64": "not base64!"}]}, 400, ["base64"]),
    (":predict", {"instances": [{"b64": base64.b64encode(b"\x00x").decode()}]}, 400,
     ["examples[0]"]),
    (":predict", {"instances": [3.5]}, 400, ["input 'examples'", "expected a string"]),
    (":predict", {"instances": [{"user_id": "u"}]}, 400, ["unknown input", "user_id"]),
    (":predict", {**_RAW, "instances": [{**_RAW["instances"][0], "hour": "noon"}]}, 400,
     ["input 'hour'", "expected a number"]),
    (":predict", {**_RAW, "instances": [{**_RAW["instances"][0], "hour": 4.5}]}, 400,
     ["input 'hour'", "expected an integer"]),
    (":predict", {**_RAW, "instances": [{**_RAW["instances"][0], "item_price": True}]}, 400,
     ["input 'item_price'"]),
    (":predict", {**_RAW, "instances": [_RAW["instances"][0], {"user_id": "u"}]}, 400,
     ["instances[1]"]),
    (":predict", {"signature_name": "predict_raw",
                  "inputs": {**{k: [v] for k, v in _RAW["instances"][0].items()},
                             "item_tags": [["a"], ["a", "b"]]}}, 400, ["not a tensor"]),
    (":predict", {"signature_name": "predict_raw", "inputs": ["u"]}, 400, ["give an object"]),
    (":classify", {"signature_name": "classify", "examples": [{"hour": 4.5}]}, 400,
     ["examples[0]", "feature 'hour'", "expected an integer"]),
    (":classify", {"signature_name": "classify", "examples": [{"item_price": [1.0, 2.0]}]},
     400, ["item_price", "scalar"]),
    (":regress", {"signature_name": "regress", "examples": ["u"]}, 400, ["examples[0]"]),
    (":regress", {"signature_name": "regress", "examples": []}, 400, ["'examples'"]),
    (":regress", {"signature_name": "regress", "examples": [{}], "context": 3}, 400,
     ["context"]),
    # TF Serving's own REST API answers an unknown signature 400 (INVALID_ARGUMENT).
    (":predict", {**_GOOD, "signature_name": "score_all"}, 400, ["score_all"]),
    (":classify", {"examples": [{"hour": 1}]}, 400, ["not tensorflow/serving/classify"]),
    ("/versions/7:predict", _GOOD, 404, ["version 7"]),
    ("/labels/canary:predict", _GOOD, 404, ["canary"]),
    ("/versions/7", None, 404, ["version 7"]),
    ("/versions/7/metadata", None, 404, ["version 7"]),
    ("/versions/99999999999999999999:predict", _GOOD, 400, ["Failed to convert version"]),
    ("/frobnicate", None, 400, ["Malformed request: GET /v1/models/mtrank/frobnicate"]),
    (":explain", _GOOD, 400, ["Malformed request"]),
])
def test_errors_are_tf_serving_json_and_serving_goes_on(url, path, body, status, words):
    answer = call(url, f"/v1/models/mtrank{path}", body)

    assert answer[0] == status, answer
    assert list(answer[1]) == ["error"]
    for word in words:
        assert word in answer[1]["error"]
    assert call(url, "/v1/models/mtrank:predict", _GOOD)[0] == 200


@pytest.mark.parametrize("path, method", [
    ("/v1/models/other", "GET"), ("/v1/models/other/metadata", "GET"),
    ("/v1/models/other:predict", "POST"), ("/v1/models/other:regress", "POST")])
def test_an_unknown_model_is_404(url, path, method):
    status, answer = call(url, path, _GOOD if method == "POST" else None, method)

    assert status == 404
    assert answer["error"].startswith("model 'other' is not served")


def test_a_wrong_method_is_a_malformed_request(url):
    assert call(url, "/v1/models/mtrank", _GOOD, "PUT") == (
        400, {"error": "Malformed request: PUT /v1/models/mtrank"})
    assert call(url, "/v1/models/mtrank:predict")[0] == 400  # GET


# Metrics.

def _samples(url):
    with urllib.request.urlopen(url + rest.PROMETHEUS_PATH, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _predictions(samples, code):
    labels = {"method": "Predict", "model": "mtrank", "signature": "serving_default",
              "code": code}
    return samples.get(("mtrank_serving_requests_total", tuple(sorted(labels.items()))), 0.0)


def test_prometheus_metrics_on_the_rest_port_count_rest_requests(url):
    before = _samples(url)
    for _ in range(3):
        call(url, "/v1/models/mtrank:predict", _GOOD)
    call(url, "/v1/models/mtrank:predict", {"instances": [3.5]})
    after = _samples(url)

    assert _predictions(after, "OK") - _predictions(before, "OK") == 3
    assert _predictions(after, "INVALID_ARGUMENT") - _predictions(before, "INVALID_ARGUMENT") == 1
    with open(os.path.join(REPO_ROOT, "serving", "monitoring.config")) as f:
        assert re.search(r'path:\s*"([^"]+)"', f.read())[1] == rest.PROMETHEUS_PATH


# Limits, TLS, start and stop.

def test_binds_loopback_by_default(running):
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == running.rest_port]

    assert listening == ["127.0.0.1"]


def _rest_threads():
    return [t for t in threading.enumerate() if t.name.startswith("mtrank-rest")]


def test_a_body_over_the_limit_is_refused_and_stop_ends_rest(model_store):
    threads_before = set(_rest_threads())
    with testing_util.running_server(model_store, rest_port=0, max_request_bytes=2000) as (
            running, _):
        url = f"http://127.0.0.1:{running.rest_port}"
        status, answer = call(url, "/v1/models/mtrank:predict",
                              {"instances": [{"b64": "A" * 4000}]})
        assert (status, answer) == (400, {"error": "the request has more bytes than the limit "
                                                   "of 2000"})
        assert call(url, "/v1/models/mtrank:predict", _GOOD)[0] == 200
        assert set(_rest_threads()) > threads_before

    with pytest.raises(OSError):  # refused
        call(url, "/v1/models/mtrank")
    assert set(_rest_threads()) == threads_before


def test_with_a_tls_certificate_rest_is_https_only(model_store, tmp_path):
    from serving.server_test import _self_signed_certificate

    cert, key, cert_pem = _self_signed_certificate(tmp_path)
    with testing_util.running_server(model_store, rest_port=0, tls_cert=cert,
                                     tls_key=key) as (running, _):
        verified = ssl.create_default_context(cadata=cert_pem.decode())
        https = f"https://127.0.0.1:{running.rest_port}"
        assert call(https, "/v1/models/mtrank", context=verified)[0] == 200
        with pytest.raises(OSError):  # the TLS handshake fails
            call(f"http://127.0.0.1:{running.rest_port}", "/v1/models/mtrank")


def test_a_busy_rest_port_fails_the_start(model_store):
    threads_before = set(_rest_threads())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="REST API"):
            server_lib.start(server_config.single_model_config("mtrank", model_store),
                             server_lib.ServerOptions(port=0, rest_port=taken.getsockname()[1]))
    assert set(_rest_threads()) == threads_before


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mtrank_serve_serves_rest_beside_grpc_and_stops_on_sigterm(model_store):
    port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrank.cli", "serve", "--model-base", model_store,
         "--port", str(port), "--rest-port", str(rest_port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving mtrank versions [2] on 127.0.0.1:{port}; REST on "
                               f"http://127.0.0.1:{rest_port}"), line
        assert call(f"http://127.0.0.1:{rest_port}", "/v1/models/mtrank:predict",
                    _GOOD)[0] == 200

        process.send_signal(signal.SIGTERM)

        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


# Hot reload.

async def _post_while_pushing(url, body, expected, push):
    """Four clients post `body` until version 2 has answered 50 times after
    `push`; returns (the version each answer came from, failures)."""
    answers, failures, done = [], [], asyncio.Event()

    async def send(session):
        while not done.is_set():
            try:
                async with session.post(url, json=body) as response:
                    status, answer = response.status, await response.json()
            except aiohttp.ClientError as e:
                failures.append(repr(e))
                continue
            if status != 200:
                failures.append((status, answer))
                continue
            scores = as_float32([row["score"] for row in answer["predictions"]])
            # Merged into a larger batch, a score may differ in its last bit.
            version = next((v for v, s in expected.items() if np.allclose(s, scores, rtol=1e-6)),
                           None)
            if version is None:
                failures.append(f"scores of no version: {scores}")
            answers.append(version)

    async def wait_until(condition):
        give_up = time.monotonic() + 60
        while not condition() and not failures and time.monotonic() < give_up:
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.create_task(send(session)) for _ in range(4)]
        await wait_until(lambda: len(answers) >= 50)
        await asyncio.to_thread(push)
        await wait_until(lambda: 2 in answers)
        swapped_at = len(answers)
        await wait_until(lambda: len(answers) >= swapped_at + 50)
        done.set()
        await asyncio.gather(*senders)
    return answers, failures


def test_new_version_takes_over_under_rest_load_without_a_failed_request(
        model_store, prediction_stub, tmp_path):
    base = tmp_path / "mtrank"
    shutil.copytree(os.path.join(model_store, "1"), base / "1")
    features = candidates(4)
    expected = {v: grpc_scores(prediction_stub, features, v)["score"] for v in (1, 2)}

    with testing_util.running_server(
            str(base), poll_interval_s=0.05, rest_port=0,
            batching=server_config.BatchingParameters(batch_timeout_micros=1000)) as (
            running, _):
        url = f"http://127.0.0.1:{running.rest_port}"
        answers, failures = asyncio.run(_post_while_pushing(
            url + "/v1/models/mtrank:predict", {"instances": b64_instances(features)}, expected,
            lambda: shutil.copytree(os.path.join(model_store, "2"), base / "2")))
        status = call(url, "/v1/models/mtrank")

    assert failures == []
    assert 1 in answers and 2 in answers
    assert answers[-20:] == [2] * 20
    assert [(s["version"], s["state"]) for s in status[1]["model_version_status"]] == [
        ("1", "END"), ("2", "AVAILABLE")]
