"""Tests of serving/client.py: building requests, and the client against our server."""
import concurrent.futures
import gzip
import io
import json
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from mtrank.base import examples
from mtrank.serving import client
from mtrank_testing import serving_util as testing_util
from mtrank_testing.example_util import feature_kinds


def impression(request_id, item_id, user_id="u1", **features):
    return {"type": "impression", "ts": "2024-05-01T12:00:00Z", "request_id": request_id,
            "user_id": user_id, "item_id": item_id, "position": 0, "features": features}


def test_impression_request_adds_ids_and_leaves_out_position():
    event = impression("r1", "i9", user_id="u5", item_price=2.0, item_tags=["x"])

    [serialized] = tf.make_ndarray(client.examples_tensor([client.impression_features(event)]))
    assert feature_kinds(tf.train.Example.FromString(serialized)) == {
        "user_id": ("bytes_list", [b"u5"]),
        "item_id": ("bytes_list", [b"i9"]),
        "item_price": ("float_list", [2.0]),
        "item_tags": ("bytes_list", [b"x"]),
    }


def test_impression_features_rejects_feedback():
    with pytest.raises(ValueError, match="impression"):
        client.impression_features({"type": "click", "request_id": "r", "user_id": "u",
                                    "item_id": "i"})


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "mtrank")
    testing_util.write_test_model(base, 1)
    testing_util.write_test_model(base, 2, bias=-0.5)
    with testing_util.running_server(base) as (_, address):
        yield address


@pytest.fixture
def ranking_client(target):
    with client.RankingClient(target) as c:
        yield c


FEATURE_DICTS = [
    {"user_id": f"user{i}", "item_id": f"item{i}", "item_price": i * 2, "hour": i,
     "item_tags": ["a"] * i}
    for i in range(5)
]


def test_predict_accepts_dicts_and_examples_alike(ranking_client):
    from_dicts = ranking_client.predict(FEATURE_DICTS)
    from_examples = ranking_client.predict(
        [examples.example_from_json(f) for f in FEATURE_DICTS])

    assert set(from_dicts) == {"click", "purchase", "score"}
    for task, scores in from_dicts.items():
        assert scores.shape == (5,)
        assert len(set(scores.tolist())) == 5
        np.testing.assert_array_equal(scores, from_examples[task])


def test_predict_batches_give_the_same_scores(ranking_client):
    whole = ranking_client.predict(FEATURE_DICTS)
    batched = ranking_client.predict(FEATURE_DICTS, batch_size=2)

    for task in whole:
        np.testing.assert_array_equal(batched[task], whole[task])


def test_predict_nothing_sends_nothing(ranking_client):
    assert ranking_client.predict([]) == {}


def test_metadata_and_status(ranking_client):
    metadata = ranking_client.metadata()

    assert (metadata.name, metadata.version, metadata.tasks) == ("mtrank", 2, ("click", "purchase"))
    assert ranking_client.status() == {2: "AVAILABLE"}


def test_errors_from_the_server_propagate(target):
    with client.RankingClient(target, model_name="other") as wrong_name:
        with pytest.raises(grpc.RpcError) as raised:
            wrong_name.predict(FEATURE_DICTS[:1])
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def logs_path(tmp_path):
    """A gzipped log: impressions, feedback, and a line that is not an event."""
    events = [
        impression("r1", "i1", item_price=1, hour=3),
        impression("r1", "i2", item_price=9.5, hour=3, item_tags=["sale"]),
        {"type": "click", "ts": "2024-05-01T12:00:05Z", "request_id": "r1", "user_id": "u1",
         "item_id": "i1"},
        impression("r2", "i3", user_id="u2", hour=20),
    ]
    lines = [json.dumps(e) for e in events]
    lines.insert(1, "{not json")
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_predict_logs_scores_impressions_in_order(target, ranking_client, logs_path):
    rows = client.predict_logs(target, logs_path)

    assert [(request_id, item_id) for request_id, item_id, _ in rows] == [
        ("r1", "i1"), ("r1", "i2"), ("r2", "i3")]
    expected = ranking_client.predict([
        {"user_id": "u1", "item_id": "i1", "item_price": 1, "hour": 3},
        {"user_id": "u1", "item_id": "i2", "item_price": 9.5, "hour": 3, "item_tags": ["sale"]},
        {"user_id": "u2", "item_id": "i3", "hour": 20},
    ])
    for i, (_, _, scores) in enumerate(rows):
        assert scores == {task: float(expected[task][i])
                          for task in ("click", "purchase", "score")}


def test_predict_logs_limit(target, logs_path):
    assert [row[1] for row in client.predict_logs(target, logs_path, limit=2)] == ["i1", "i2"]
    assert client.predict_logs(target, logs_path, limit=0) == []


def test_print_predictions_prints_a_table(target, logs_path):
    out = io.StringIO()

    assert client.print_predictions(target, logs_path, limit=2, out=out) == 2

    header, *rows = out.getvalue().splitlines()
    assert header.split() == ["request_id", "item_id", "click", "purchase", "score"]
    assert [row.split()[:2] for row in rows] == [["r1", "i1"], ["r1", "i2"]]
    for row in rows:
        assert all(0.0 <= float(cell) <= 1.0 for cell in row.split()[2:])


def test_format_predictions_aligns_columns():
    table = client.format_predictions([("r1", "a-long-item", {"click": 0.25, "score": 3.5e-9}),
                                       ("r22", "i", {"click": 0.123456, "score": 0.02})])

    # Small scores keep their significant digits.
    assert table.splitlines() == [
        "request_id  item_id      click   score",
        "r1          a-long-item  0.25    3.5e-09",
        "r22         i            0.1235  0.02",
    ]



MIXED_FEATURES = [
    {"user_id": "u1", "item_id": "i1", "item_price": 3, "hour": 7.0, "item_tags": ["a", "b"]},
    {"user_id": "u2", "item_id": "i2", "item_price": None, "item_tags": []},
    {"user_id": "u3", "item_id": "i3", "item_price": 9.5, "hour": 2, "item_tags": ["c"] * 5},
]


def test_predict_raw_scores_like_tf_examples(target):
    with client.RankingClient(target, signature="predict_raw") as raw, \
            client.RankingClient(target) as examples:
        from_raw = raw.predict(MIXED_FEATURES, batch_size=2)
        from_examples = examples.predict(MIXED_FEATURES)

    assert set(from_raw) == {"click", "purchase", "score"}
    for name, values in from_examples.items():
        np.testing.assert_allclose(from_raw[name], values, rtol=1e-6)


@pytest.mark.parametrize("value, words", [
    (7.5, "expected an integer"), ("seven", "expected a number"), ([1, 2], "scalar")])
def test_raw_tensors_reject_values_by_feature(value, words):
    with pytest.raises(ValueError, match=words) as raised:
        client.raw_tensors([{"hour": value}], {"hour": (tf.int64.as_datatype_enum, 1)})
    assert "hour" in str(raised.value)


class FlakyPredictions(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A real gRPC front that answers the first `failures` Predicts with
    `code` (or delays them), then forwards to the server at `target`."""

    def __init__(self, target, failures=0, code=grpc.StatusCode.UNAVAILABLE, delay_s=0.0):
        self._channel = grpc.insecure_channel(target)
        self._backend = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.failures, self.code, self.delay_s = failures, code, delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def Predict(self, request, context):
        with self._lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if fail:
            context.abort(self.code, "try again")
        return self._backend.Predict(request, timeout=10)

    def GetModelMetadata(self, request, context):
        return self._backend.GetModelMetadata(request, timeout=10)


@pytest.fixture
def flaky(target):
    servicers = []

    def start(**kwargs):
        servicer = FlakyPredictions(target, **kwargs)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servicers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servicers:
        server.stop(None)


def test_unavailable_is_retried_with_backoff(flaky, ranking_client):
    servicer, address = flaky(failures=2)
    with client.RankingClient(address, retries=2, backoff_s=0.01, seed=0) as retrying:
        scores = retrying.predict(FEATURE_DICTS)

    assert servicer.calls == 3
    np.testing.assert_array_equal(scores["score"], ranking_client.predict(FEATURE_DICTS)["score"])


def test_retries_give_up_and_other_errors_are_not_retried(flaky):
    servicer, address = flaky(failures=10)
    with client.RankingClient(address, retries=2, backoff_s=0.01) as retrying:
        with pytest.raises(grpc.RpcError) as raised:
            retrying.predict(FEATURE_DICTS)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 3

    servicer, address = flaky(failures=10, code=grpc.StatusCode.INVALID_ARGUMENT)
    with client.RankingClient(address, retries=2, backoff_s=0.01) as retrying:
        with pytest.raises(grpc.RpcError):
            retrying.predict(FEATURE_DICTS)
    assert servicer.calls == 1


def test_candidates_are_sent_in_requests_of_batch_size(flaky, ranking_client):
    servicer, address = flaky()
    candidates = [dict(f, item_id=f"item{i}") for i, f in enumerate(FEATURE_DICTS * 2)]
    with client.RankingClient(address) as batching_client:
        scores = batching_client.scores(candidates, batch_size=4)

    assert servicer.calls == 3  # 10 candidates, 4 a request
    np.testing.assert_allclose(scores, ranking_client.predict(candidates)["score"], rtol=1e-6)


def test_deadline_covers_the_whole_call(flaky):
    _, address = flaky(delay_s=1.0)
    with client.RankingClient(address, timeout_s=0.3) as hurried:
        with pytest.raises(grpc.RpcError) as raised:
            hurried.predict(FEATURE_DICTS)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
