"""Tests of serving/batching.py: merging, back-pressure, isolation of a bad request."""
import threading

import grpc
import numpy as np
import pytest

from mtrank.serving import batching
from mtrank.serving.errors import RequestError
from mtrank.serving.server_config import BatchingParameters


class RecordingModel:
    """Doubles its input; remembers each call's batch; can be held mid-call."""

    def __init__(self):
        self.batches = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, inputs):
        self.batches.append(inputs["x"].tolist())
        self.started.set()
        assert self.release.wait(30)
        if np.any(inputs["x"] < 0):
            raise ValueError("negative input")
        return {"y": inputs["x"] * 2}


def submit(batcher, model, values):
    inputs = {"x": np.array(values, np.float32)}
    return batcher.submit(batching.batch_key("m", "sig", ["y"], inputs), model, inputs,
                          len(values))


@pytest.fixture
def make_batcher():
    made = []

    def make(**params):
        batcher = batching.Batcher(BatchingParameters(**params))
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop()


def test_requests_are_merged_into_one_call_and_each_gets_its_rows(make_batcher):
    batcher = make_batcher(max_batch_size=4, batch_timeout_micros=30_000_000)
    model = RecordingModel()

    futures = [submit(batcher, model, values) for values in ([1], [2, 3], [4], [5, 6], [7, 8])]

    assert [f.result(timeout=30)["y"].tolist() for f in futures] == [
        [2], [4, 6], [8], [10, 12], [14, 16]]
    # A batch runs as soon as it holds max_batch_size examples, long before
    # its timeout.
    assert model.batches == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_inputs_of_different_shapes_do_not_share_a_batch(make_batcher):
    batcher = make_batcher(max_batch_size=2, batch_timeout_micros=30_000_000)
    model = RecordingModel()

    def submit_shaped(width, value):
        inputs = {"x": np.full((1, width), value, np.float32)}
        return batcher.submit(batching.batch_key("m", "sig", ["y"], inputs), model, inputs, 1)

    futures = [submit_shaped(2, 1), submit_shaped(3, 2), submit_shaped(2, 3),
               submit_shaped(3, 4)]

    assert [f.result(timeout=30)["y"].tolist() for f in futures] == [
        [[2, 2]], [[4, 4, 4]], [[6, 6]], [[8, 8, 8]]]
    assert sorted(model.batches) == [[[1, 1], [3, 3]], [[2, 2, 2], [4, 4, 4]]]


def test_full_queue_is_refused_with_resource_exhausted(make_batcher):
    batcher = make_batcher(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1,
                           max_enqueued_batches=2)
    model = RecordingModel()
    model.release.clear()
    running = submit(batcher, model, [1])
    assert model.started.wait(30)
    queued = [submit(batcher, model, [2]), submit(batcher, model, [3])]

    with pytest.raises(RequestError) as raised:
        submit(batcher, model, [4])

    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    model.release.set()
    assert [f.result(timeout=30)["y"].tolist() for f in [running] + queued] == [[2], [4], [6]]


def test_a_failing_request_does_not_fail_those_merged_with_it(make_batcher):
    batcher = make_batcher(max_batch_size=3, batch_timeout_micros=30_000_000)
    model = RecordingModel()

    good, bad, other = (submit(batcher, model, v) for v in ([1], [-1], [2]))

    assert good.result(timeout=30)["y"].tolist() == [2]
    assert other.result(timeout=30)["y"].tolist() == [4]
    with pytest.raises(ValueError, match="negative"):
        bad.result(timeout=30)
    assert model.batches == [[1, -1, 2], [1], [-1], [2]]


def test_request_larger_than_max_batch_size_runs_alone(make_batcher):
    batcher = make_batcher(max_batch_size=2, batch_timeout_micros=30_000_000)
    model = RecordingModel()

    assert submit(batcher, model, [1, 2, 3]).result(timeout=30)["y"].tolist() == [2, 4, 6]
    assert model.batches == [[1, 2, 3]]


def test_stop_runs_what_is_queued_then_refuses(make_batcher):
    batcher = make_batcher(max_batch_size=8, batch_timeout_micros=30_000_000)
    model = RecordingModel()
    waiting = submit(batcher, model, [1])

    batcher.stop()

    assert waiting.result(timeout=0)["y"].tolist() == [2]
    with pytest.raises(RequestError) as raised:
        submit(batcher, model, [2])
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
