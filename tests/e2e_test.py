"""End to end: simulated logs -> `mtrank run` (twice, sharing MLMD; the second
time on logs whose click feedback is noise, which the Evaluator must stop, and
on Beam's portable runner) ->
`mtrank report` rendered in headless Chromium -> `mtrank serve` on loopback
ports -> Predict through the stock TF Serving stubs, :regress over its REST
API, and `mtrank predict`."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import grpc
from ml_metadata.proto import metadata_store_pb2
import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from mtrank_testing import browser as browser_testing
from mtrank.base import config as config_lib
from mtrank.base import examples
from mtrank.pipeline import config_inference
from mtrank.reporting import metadata, report
from mtrank.simulator import logs as simulator
from mtrank.serving import client

MTRANK = [sys.executable, "-m", "mtrank.cli"]
# The `mtrank` command with one addition: Beam's PortableRunner logger at INFO,
# on stdout between the run's progress lines. The PortableRunner logs each
# job's state changes there as the job service reports them; the DirectRunner
# has no job service and logs none.
MTRANK_LOGGING_PORTABLE_JOBS = [sys.executable, "-c", (
    "import logging, sys\n"
    "log = logging.getLogger('apache_beam.runners.portability.portable_runner')\n"
    "log.setLevel(logging.INFO)\n"
    "log.addHandler(logging.StreamHandler(sys.stdout))\n"
    "from mtrank.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))")]
PORTABLE_JOB_DONE = "Job state changed to DONE"
# Beam's portable runner with an embedded job server and the SDK harness in
# the launching process: the Job API that the Flink and Spark runners speak
# (docs/scaling.md), with no cluster.
PORTABLE_RUNNER_ARGS = ["--beam-arg=--runner=PortableRunner", "--beam-arg=--job_endpoint=embed",
                        "--beam-arg=--environment_type=LOOPBACK"]
BEAM_COMPONENTS = ("LogExampleGen", "StatisticsGen", "Transform", "Evaluator")
SCHEMA = os.path.join(os.path.dirname(__file__), "..", "pipeline", "schemas", "simulator.pbtxt")
# Click's AUC floor. On these logs (fixed seeds) the first model reaches
# about 0.539 and the model of noise clicks about 0.519 (trainer of
# 2026-12-03: validation inside the epoch, early stopping on the mean task
# loss; it was 0.544 and 0.520 before); runs repeat these to
# about 0.002. With 980 eval examples (74 clicks) a noise model's AUC varies
# by about 0.035 between seeds, so no floor is far from both: the floor sits
# halfway, and a trainer change that moves the first model's AUC (the first
# assertion of the second-run test prints both) may need it moved.
CLICK_MIN_AUC = 0.529


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, command=MTRANK, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command + args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"mtrank {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Two runs of the pipeline on the same work dir, as a user would make,
    with the curated simulator schema: the first on simulated logs, on the
    default DirectRunner; the second on the same logs with every click moved
    to a random impression (a logging bug), on Beam's portable runner
    (PORTABLE_RUNNER_ARGS: the Job API of Flink and Spark, in process). Both
    runs log the portable runner's job states. Then `mtrank report` on the
    work dir."""
    root = tmp_path_factory.mktemp("e2e")
    logs, shuffled = root / "logs", root / "logs_click_shuffled"
    simulate = ["simulate", "--impressions", "4000", "--days", "4", "--seed", "3"]
    _run(simulate + ["--out", str(logs)])
    _run(simulate + ["--out", str(shuffled), "--shuffle-feedback", "click"])
    log_glob = str(logs / simulator.EVENT_FILE_GLOB)
    # The inferred config, with blessing bounds loose enough for a model
    # trained on 3,000 impressions, except click's floor; slices by device
    # (each a few hundred eval examples), drift and skew checks.
    config = yaml.safe_load(config_inference.infer_config(log_glob).to_yaml())
    for task in config["tasks"]:
        task["eval"] = {"min_auc": 0.2, "max_auc_drop": 0.5}
        if task["name"] == "click":
            task["eval"]["min_auc"] = CLICK_MIN_AUC
    # CLICK_MIN_AUC sits between the AUCs of the shared bottom trained on
    # these logs and on the shuffled ones, so the test pins that model, with
    # independent tasks: the inferred funnel (dwell depends_on click) trains
    # click on dwell's labels too, which moved click to 0.530 here.
    # The same for the training: with the inferred weight averaging the
    # model of noise clicks reached 0.532.
    config["model"] = {"architecture": "shared_bottom"}
    config["training"]["ema_momentum"] = 0.0
    for task in config["tasks"]:
        task.pop("depends_on", None)
    config["validation"] = {"slices": [["device"]], "min_slice_size": 250,
                            "drift": {"device": 0.2, "item_price": 0.2},
                            "skew": {"device": 0.2, "country": 0.2}}
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    work = root / "work"
    run = ["run", "--work-dir", str(work), "--config", str(config_path), "--schema", SCHEMA]
    first = _run(run + ["--logs", log_glob], command=MTRANK_LOGGING_PORTABLE_JOBS)
    first_summary = json.loads((work / "run_summary.json").read_text())
    second = _run(run + ["--logs", str(shuffled / simulator.EVENT_FILE_GLOB)]
                  + PORTABLE_RUNNER_ARGS, command=MTRANK_LOGGING_PORTABLE_JOBS)
    second_summary = json.loads((work / "run_summary.json").read_text())
    reported = _run(["report", "--work-dir", str(work), "--out", str(root / "report.html")])
    return {"root": root, "logs": logs, "work": work, "config": config,
            "first": first_summary, "first_stdout": first.stdout, "second": second_summary,
            "second_stdout": second.stdout, "report_stdout": reported.stdout,
            "report": root / "report.html"}


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


def test_second_run_on_noise_clicks_is_not_blessed_and_names_click(pipeline_runs):
    first, second = pipeline_runs["first"], pipeline_runs["second"]
    aucs = {"first": first["tasks"]["click"]["auc"], "second": second["tasks"]["click"]["auc"]}
    assert aucs["first"] > CLICK_MIN_AUC, aucs
    assert second["error"] is None and second["data_anomalies"] == []
    for metrics in second["tasks"].values():
        assert "baseline_auc" in metrics
    assert aucs["second"] < CLICK_MIN_AUC, aucs
    assert second["blessed"] is False and second["pushed_version"] is None
    versions = sorted(int(v) for v in os.listdir(pipeline_runs["work"] / "serving_model" / "mtrank"))
    assert versions == [first["pushed_version"]]
    # Only click failed, overall (and maybe on its large device slices), by
    # the amount its AUC missed the floor.
    failures = second["validation_failures"]
    assert {f["task"] for f in failures} == {"click"}, failures
    overall = [f for f in failures if f["slice"] == "overall"]
    assert [(f["metric"], f["kind"], f["bound"]) for f in overall] == [
        ("auc", "absolute", f">= {CLICK_MIN_AUC:g}")]
    assert overall[0]["by"] == pytest.approx(CLICK_MIN_AUC - second["tasks"]["click"]["auc"],
                                             abs=1e-4)
    assert "validation failed: task click, slice overall: auc" in pipeline_runs["second_stdout"]
    # Bounds apply to the device slices large enough to judge.
    assert second["slices"]["min_slice_size"] == 250
    assert second["slices"]["gated"] and all(
        second["slices"]["sizes"][s] >= 250 for s in second["slices"]["gated"])
    assert all(second["slices"]["sizes"][s] < 250 for s in second["slices"]["too_small"])


def _lines_per_component(stdout: str) -> dict:
    """component -> what the run printed between its start and its end lines."""
    lines, current = {}, None
    for line in stdout.splitlines():
        started = re.fullmatch(r"\[\d+/\d+\] (\w+) \.\.\.", line)
        if started:
            current = started.group(1)
            lines[current] = []
        elif re.match(r"\[\d+/\d+\] \w+ done in ", line):
            current = None
        elif current:
            lines[current].append(line)
    return lines


def test_second_run_ran_every_beam_job_through_the_portable_runner(pipeline_runs):
    first = _lines_per_component(pipeline_runs["first_stdout"])
    second = _lines_per_component(pipeline_runs["second_stdout"])
    # The DirectRunner's run submitted no job to a job service.
    assert not any(PORTABLE_JOB_DONE in line for lines in first.values() for line in lines)
    for component in BEAM_COMPONENTS:
        assert any(PORTABLE_JOB_DONE in line for line in second[component]), \
            (component, second[component])
    assert not any(PORTABLE_JOB_DONE in line for component, lines in second.items()
                   if component not in BEAM_COMPONENTS for line in lines)
    # The same impressions, ingested and split as on the DirectRunner.
    assert pipeline_runs["second"]["examples"] == pipeline_runs["first"]["examples"]
    assert pipeline_runs["second"]["impressions"] == pipeline_runs["first"]["impressions"]


def test_data_gate_compared_the_second_run_with_the_first_runs_statistics(pipeline_runs):
    store = metadata.open_store(str(pipeline_runs["work"]))
    def executions_of(node):
        return [e.id for e in store.get_executions() if metadata.node_id(store, e.id) == node]

    statistics = sorted(ev.artifact_id for ev in store.get_events_by_execution_ids(
        executions_of("StatisticsGen")) if ev.type == metadata_store_pb2.Event.OUTPUT)
    gates = executions_of("DataValidationGate")
    assert len(statistics) == 2 and len(gates) == 2
    previous = {gate: [ev.artifact_id for ev in store.get_events_by_execution_ids([gate])
                       if ev.path.steps and ev.path.steps[0].key == "previous_statistics"]
                for gate in gates}
    assert previous == {gates[0]: [], gates[1]: [statistics[0]]}


def test_report_in_headless_chromium(pipeline_runs, tmp_path):
    table = pipeline_runs["report_stdout"]
    click_overall = [line for line in table.splitlines()
                     if line.startswith("click") and " overall " in line and " auc " in line]
    assert any(line.endswith("FAIL") for line in click_overall), table
    assert "blessed: False" in table
    dom, screenshot = browser_testing.render(str(pipeline_runs["report"]), str(tmp_path))
    assert "NOT blessed" in dom
    for task in pipeline_runs["config"]["tasks"]:
        assert f"<h3>{task['name']} (candidate / last blessed)</h3>" in dom
    assert '<tr class="fail"><td>click</td><td>overall</td><td>auc</td>' in dom
    # Reliability, PR and by-slice plots per binary task, decoded by the browser.
    binary = [t for t in pipeline_runs["config"]["tasks"] if t.get("type", "binary") == "binary"]
    images = int(dom.split('data-images="')[1].split('"')[0])
    assert images >= 3 * len(binary)
    assert f'data-decoded="{images}"' in dom
    for role in ("candidate model", "baseline model (last blessed)", "evaluated examples",
                 "trainer transform_graph", "trainer schema"):
        assert role in dom, role
    assert 'id="statistics"' in dom and "device" in dom
    assert browser_testing.distinct_colours(screenshot) > 50


def test_schema_export_is_the_imported_schema(pipeline_runs, tmp_path):
    """What `mtrank schema` writes (called in this process: no second start of TensorFlow)."""
    exported = tmp_path / "schema.pbtxt"
    source = report.export_schema(str(pipeline_runs["work"]), str(exported))
    assert "/ImportSchemaGen/" in source
    with open(SCHEMA) as f:
        assert exported.read_text() == f.read()


@pytest.fixture(scope="module")
def served(pipeline_runs):
    port, rest_port = _free_port(), _free_port()
    model_base = pipeline_runs["work"] / "serving_model" / "mtrank"
    process = subprocess.Popen(
        MTRANK + ["serve", "--model-base", str(model_base), "--port", str(port),
                  "--rest-port", str(rest_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        # REST listens before gRPC starts, so it is up once gRPC is.
        grpc.channel_ready_future(channel).result(timeout=120)
        yield {"target": f"127.0.0.1:{port}", "rest": f"http://127.0.0.1:{rest_port}",
               "channel": channel, **pipeline_runs}
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
    serialized = [examples.example_from_json(client.impression_features(e)).SerializeToString()
                  for e in impressions]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    response = stub.Predict(_predict_request(serialized), timeout=30)
    outputs = config_lib.config_from_dict(served["config"]).output_names
    # One output per task (and P(task | parent) per funnel task, which this
    # test's config drops), and the fused ranking score (serving.score).
    assert set(response.outputs) == set(outputs) | {"score"}
    for output in outputs:
        scores = tf.make_ndarray(response.outputs[output])
        assert scores.shape == (len(serialized),)
        assert np.all((scores >= 0) & (scores <= 1)), output
        assert np.std(scores) > 0, f"{output}: every example got the same score"
    assert response.model_spec.version.value == served["first"]["pushed_version"] or \
        response.model_spec.version.value == served["second"]["pushed_version"]


def test_rest_regress_on_json_features_scores_as_grpc_predict(served):
    features = [client.impression_features(e) for e in _eval_impressions(served["logs"], 20)]
    serialized = [examples.example_from_json(f).SerializeToString() for f in features]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    over_grpc = stub.Predict(_predict_request(serialized), timeout=30).outputs["score"]
    body = json.dumps({"signature_name": "regress", "examples": features}).encode()
    request = urllib.request.Request(served["rest"] + "/v1/models/mtrank:regress", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        over_rest = json.load(response)["results"]
    np.testing.assert_allclose(np.array(over_rest, np.float32), tf.make_ndarray(over_grpc),
                               rtol=1e-6)


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
    good = examples.example_from_json(
        client.impression_features(_eval_impressions(served["logs"], 1)[0]))
    response = stub.Predict(_predict_request([good.SerializeToString()]), timeout=10)
    assert {t["name"] for t in served["config"]["tasks"]} < set(response.outputs)


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
                   "--config", str(pipeline_runs["root"] / "config.yaml"), "--schema", SCHEMA,
                   "--only", "Evaluator"])
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
