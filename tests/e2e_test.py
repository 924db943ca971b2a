"""End to end: simulated logs -> `mtrank run` (twice, sharing MLMD) ->
`mtrank serve` on a loopback port -> Predict through the stock TF Serving
stubs, and `mtrank predict`."""
import json
import os
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from pipeline import config_inference, simulator
from serving import client

MTRANK = [sys.executable, "-m", "pipeline"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(MTRANK + args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"mtrank {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Two runs of the pipeline on the same work dir, as a user would make."""
    root = tmp_path_factory.mktemp("e2e")
    logs = root / "logs"
    _run(["simulate", "--out", str(logs), "--impressions", "4000", "--days", "4", "--seed", "3"])
    log_glob = str(logs / simulator.EVENT_FILE_GLOB)
    # The inferred config, with blessing bounds loose enough for a model
    # trained on 3,000 impressions: this test is about the path.
    config = yaml.safe_load(config_inference.infer_config(log_glob).to_yaml())
    for task in config["tasks"]:
        task["eval"] = {"min_auc": 0.2, "max_auc_drop": 0.5}
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    work = root / "work"
    first = _run(["run", "--logs", log_glob, "--work-dir", str(work),
                  "--config", str(config_path)])
    first_summary = json.loads((work / "run_summary.json").read_text())
    _run(["run", "--logs", log_glob, "--work-dir", str(work), "--config", str(config_path)])
    second_summary = json.loads((work / "run_summary.json").read_text())
    return {"root": root, "logs": logs, "work": work, "config": config,
            "first": first_summary, "first_stdout": first.stdout, "second": second_summary}


def test_first_run_ingests_trains_blesses_and_pushes(pipeline_runs):
    summary = pipeline_runs["first"]
    assert summary["error"] is None
    assert summary["impressions"] == 4000
    assert summary["examples"]["train"] > 0 and summary["examples"]["eval"] > 0
    assert sum(summary["examples"].values()) == summary["impressions"]
    # Every line read is accounted for by exactly one outcome.
    outcomes = (summary["impressions"] + summary["feedback_merged"]
                + summary["feedback_late"] + summary["feedback_unused_type"]
                + summary["duplicates"]
                + sum(summary["dead_letters"].values()))
    assert outcomes == summary["lines_read"]
    task_names = [t["name"] for t in pipeline_runs["config"]["tasks"]]
    assert sorted(summary["tasks"]) == sorted(task_names)
    for name, metrics in summary["tasks"].items():
        assert 0.0 <= metrics["auc"] <= 1.0
        assert metrics["example_count"] == summary["examples"]["eval"]
        assert 0.5 < metrics["truth_auc"] <= 1.0, name
    assert summary["blessed"] is True
    version_dir = pipeline_runs["work"] / "serving_model" / "mtrank" / str(summary["pushed_version"])
    assert (version_dir / "saved_model.pb").exists()
    for component in ("LogExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator",
                      "Pusher"):
        assert summary["wall_s"][component] >= 0
        assert f"{component} done" in pipeline_runs["first_stdout"]


def test_second_run_compares_with_last_blessed_model(pipeline_runs):
    first, second = pipeline_runs["first"], pipeline_runs["second"]
    assert second["error"] is None
    for metrics in second["tasks"].values():
        assert "baseline_auc" in metrics
    versions = sorted(int(v) for v in os.listdir(pipeline_runs["work"] / "serving_model" / "mtrank"))
    if second["blessed"]:
        assert second["pushed_version"] > first["pushed_version"]
        assert versions == [first["pushed_version"], second["pushed_version"]]
    else:
        assert second["pushed_version"] is None and versions == [first["pushed_version"]]


@pytest.fixture(scope="module")
def served(pipeline_runs):
    port = _free_port()
    model_base = pipeline_runs["work"] / "serving_model" / "mtrank"
    process = subprocess.Popen(
        MTRANK + ["serve", "--model-base", str(model_base), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        yield {"target": f"127.0.0.1:{port}", "channel": channel, **pipeline_runs}
    finally:
        channel.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _last_day_with_impressions(logs_dir) -> str:
    """The eval day's file (the last file may hold only late feedback)."""
    for path in sorted(logs_dir.glob(simulator.EVENT_FILE_GLOB), reverse=True):
        if client.read_impressions(str(path), limit=1):
            return str(path)
    raise AssertionError(f"no impressions under {logs_dir}")


def _eval_impressions(logs_dir, n):
    return client.read_impressions(_last_day_with_impressions(logs_dir), limit=n)


def _predict_request(serialized):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mtrank"
    request.model_spec.signature_name = "serving_default"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
    return request


def test_predict_through_stock_stubs(served):
    impressions = _eval_impressions(served["logs"], 50)
    serialized = [client.impression_to_example(e).SerializeToString() for e in impressions]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    response = stub.Predict(_predict_request(serialized), timeout=30)
    tasks = {t["name"] for t in served["config"]["tasks"]}
    assert set(response.outputs) == tasks
    for task in tasks:
        scores = tf.make_ndarray(response.outputs[task])
        assert scores.shape == (len(serialized),)
        assert np.all((scores >= 0) & (scores <= 1)), task
        assert np.std(scores) > 0, f"{task}: every example got the same score"
    assert response.model_spec.version.value == served["first"]["pushed_version"] or \
        response.model_spec.version.value == served["second"]["pushed_version"]


def test_model_status_available(served):
    stub = model_service_pb2_grpc.ModelServiceStub(served["channel"])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mtrank"
    response = stub.GetModelStatus(request, timeout=10)
    states = [s.state for s in response.model_version_status]
    assert states == [get_model_status_pb2.ModelVersionStatus.AVAILABLE]


def test_malformed_request_is_invalid_argument_and_server_keeps_serving(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_predict_request([b"\x00not a tf.Example\xff"]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good = client.impression_to_example(_eval_impressions(served["logs"], 1)[0])
    response = stub.Predict(_predict_request([good.SerializeToString()]), timeout=10)
    assert len(response.outputs) == len(served["config"]["tasks"])


def test_predict_cli_prints_scores_per_task(served):
    last_day = _last_day_with_impressions(served["logs"])
    result = _run(["predict", "--target", served["target"], "--logs", last_day,
                   "--limit", "5"])
    for task in served["config"]["tasks"]:
        assert task["name"] in result.stdout


def test_partial_run_reuses_upstream_artifacts_and_inspect_shows_lineage(pipeline_runs):
    work = pipeline_runs["work"]
    log_glob = str(pipeline_runs["logs"] / simulator.EVENT_FILE_GLOB)
    result = _run(["run", "--logs", log_glob, "--work-dir", str(work),
                   "--config", str(pipeline_runs["root"] / "config.yaml"), "--only", "Evaluator"])
    summary = json.loads((work / "run_summary.json").read_text())
    assert summary["error"] is None
    assert set(summary["wall_s"]) == {"Evaluator", "total"}, result.stdout
    assert {"LogExampleGen", "Transform", "Trainer"} <= set(summary["reused"])
    assert set(summary["tasks"]) == {t["name"] for t in pipeline_runs["config"]["tasks"]}

    listing = _run(["inspect", "--work-dir", str(work)]).stdout
    assert "3 run(s)" in listing
    for component in ("LogExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert component in listing
    assert "mtrank.DeadLetters" in listing and "ModelBlessing" in listing


def test_unknown_component_for_partial_run_is_a_clear_error(pipeline_runs):
    result = subprocess.run(
        MTRANK + ["run", "--logs", str(pipeline_runs["logs"] / simulator.EVENT_FILE_GLOB),
                  "--work-dir", str(pipeline_runs["work"]),
                  "--config", str(pipeline_runs["root"] / "config.yaml"), "--only", "Trainr"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "no component 'Trainr'" in result.stderr and "Trainer" in result.stderr
