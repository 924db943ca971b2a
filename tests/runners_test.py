"""The Beam runner set-ups of docs/scaling.md, without a cluster or network.

The flags come from the doc's `runner-flags` blocks, so the doc and these
tests cannot drift apart:
  - `mtrank run --beam-arg=...` hands them to `create_pipeline` unchanged;
  - Dataflow: the runner builds the job (dry run: translated, not submitted)
    and its worker pool from them;
  - Flink / Spark / external workers (PortableRunner): the portable pipeline
    and the options a job server would receive are what the doc says;
  - the portable Job API itself runs the ingestion in process (embedded job
    server), and so does the DirectRunner in multi-processing mode, both with
    the same examples as the in-memory DirectRunner. (tests/e2e_test.py runs
    the whole pipeline through the same embedded job server once.)
"""
import glob
import json
import logging
import os
import re
import shlex

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.portable_runner import JobServiceHandle, PortableRunner
from tfx.utils import dependency_utils

from mtrank.components import ingest
from mtrank.cli import main as cli
from mtrank.base import config as config_lib
from mtrank.pipeline import config_inference, local_runner
from mtrank.simulator import logs as simulator

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "docs", "scaling.md")
BEAM_ARG = "--beam-arg="
IMAGE = "europe-west1-docker.pkg.dev/my-project/mtrank/beam-worker:0.1.0"


def _doc_commands() -> dict:
    """name -> the tokens of the command in the doc's `runner-flags: name` block."""
    with open(DOC) as f:
        text = f.read()
    blocks = re.findall(r"<!-- runner-flags: ([\w-]+) -->\s*```[\w]*\n(.*?)```", text, re.S)
    return {name: shlex.split(body.replace("\\\n", " ")) for name, body in blocks}


COMMANDS = _doc_commands()


def _beam_args(name: str):
    return [t[len(BEAM_ARG):] for t in COMMANDS[name] if t.startswith(BEAM_ARG)]


def _flag(args, name: str):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A tiny simulated log (3 days, so both splits get examples) and its config."""
    root = tmp_path_factory.mktemp("runner_logs")
    simulator.simulate(str(root), impressions=300, days=3, seed=7)
    log_glob = str(root / simulator.EVENT_FILE_GLOB)
    return log_glob, config_inference.infer_config(log_glob)


def _ingestion(pipeline, log_glob: str, config, out: str) -> None:
    """LogsToExamples and the writes of the LogExampleGen executor."""
    outputs = pipeline | "LogsToExamples" >> ingest.LogsToExamples(log_glob, config)
    for split in ingest.SPLITS:
        outputs[split] | f"Write{split}" >> beam.io.WriteToTFRecord(
            f"{out}/Split-{split}/data_tfrecord", file_name_suffix=".gz")
    outputs["dead_letters"] | "WriteDeadLetters" >> beam.io.WriteToText(
        f"{out}/dead_letters/dead_letters", file_name_suffix=".jsonl")
    outputs["counts"] | "WriteCounts" >> beam.io.WriteToText(
        f"{out}/dead_letters/counts.json", shard_name_template="")


def _read_outputs(out: str) -> dict:
    result = {}
    for split in ingest.SPLITS:
        files = sorted(glob.glob(f"{out}/Split-{split}/data_tfrecord*"))
        result[split] = sorted(
            r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    lines = []
    for path in glob.glob(f"{out}/dead_letters/dead_letters*"):
        with open(path) as f:
            lines.extend(f.read().splitlines())
    result["dead_letters"] = sorted(lines)
    with open(f"{out}/dead_letters/counts.json") as f:
        result["counts"] = json.load(f)
    return result


@pytest.fixture(scope="module")
def in_memory_outputs(logs, tmp_path_factory):
    """The reference: what `mtrank run`'s default DirectRunner writes."""
    out = str(tmp_path_factory.mktemp("in_memory"))
    pipeline = beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"]))
    _ingestion(pipeline, *logs, out)
    pipeline.run().wait_until_finish()
    outputs = _read_outputs(out)
    assert outputs["train"] and outputs["eval"]
    return outputs


# --- mtrank run --beam-arg ----------------------------------------------------


def test_doc_has_every_runner_block():
    assert {"dataflow", "flink", "spark", "external", "portable-embedded",
            "direct-multi"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_doc_command_parses(name, caplog):
    tokens = COMMANDS[name]
    assert tokens[:2] == ["mtrank", "run"]
    args = cli.build_parser().parse_args(tokens[1:])
    assert args.beam_arg == _beam_args(name)
    assert args.beam_arg, "a runner-flags block without --beam-arg"
    # Every flag is one Beam knows: Beam drops (and only logs) the others.
    with caplog.at_level(logging.WARNING, logger="apache_beam.options.pipeline_options"):
        PipelineOptions(args.beam_arg).get_all_options()
    assert "Discarding" not in caplog.text


class _Stop(Exception):
    pass


@pytest.mark.parametrize("beam_args,expected", [
    ([], ["--direct_num_workers=1"]),  # mtrank run's default
    (["--runner=DataflowRunner", "--project=my-project", "--max_num_workers=20"], None),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], None),
])
def test_beam_args_reach_create_pipeline(logs, tmp_path, monkeypatch, beam_args, expected):
    captured = {}

    def fake_create_pipeline(**kwargs):
        captured.update(kwargs)
        raise _Stop  # nothing of TFX runs

    monkeypatch.setattr(local_runner.pipeline_lib, "create_pipeline", fake_create_pipeline)
    log_glob, config = logs
    config_path = tmp_path / "config.yaml"
    config_lib.save_config(config, str(config_path))
    with pytest.raises(_Stop):
        cli.main(["run", "--logs", log_glob, "--work-dir", str(tmp_path / "work"),
                  "--config", str(config_path)] + [BEAM_ARG + a for a in beam_args])
    assert captured["beam_pipeline_args"] == (expected or beam_args)


def test_beam_arg_needs_equals_sign():
    # argparse reads "--runner=X" after a space as an option of its own.
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(
            ["run", "--logs", "x", "--work-dir", "w", "--beam-arg", "--runner=DataflowRunner"])


# --- Dataflow -----------------------------------------------------------------


def test_dataflow_job_is_built_without_submitting(logs):
    from apache_beam.runners.dataflow.internal import apiclient
    from apache_beam.runners.dataflow.internal.clients import dataflow

    args = _beam_args("dataflow")
    assert _flag(args, "runner") == "DataflowRunner"
    for required in ("project", "region", "temp_location", "staging_location",
                     "sdk_container_image"):
        assert _flag(args, required), required
    # --dry_run: the runner translates the pipeline and builds the job, then
    # returns instead of staging files or calling the Dataflow API.
    options = PipelineOptions(args + ["--dry_run=True"])
    pipeline = beam.Pipeline(options=options)
    # The logs stay local: reading validates the glob when the pipeline is built.
    _ingestion(pipeline, *logs, "gs://my-bucket/mtrank/pipeline_root/LogExampleGen")
    result = pipeline.run()
    job = result.job
    # TFX adds no package of its own when it sees a dependency flag.
    assert dependency_utils.make_beam_dependency_flags(args) == args
    assert job.proto.type == dataflow.Job.TypeValueValuesEnum.JOB_TYPE_BATCH

    # The portable pipeline the job carries: our transforms, all in one Docker
    # environment, the worker image of the doc.
    proto = job.proto_pipeline
    transforms = proto.components.transforms.values()
    names = {t.unique_name for t in transforms}
    for step in ("LogsToExamples", "Writetrain", "Writeeval", "WriteDeadLetters", "WriteCounts"):
        assert step in names, step
    # The join's shuffle is in the job, inside LogsToExamples.
    assert any(t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn
               and t.unique_name.startswith("LogsToExamples/") for t in transforms)
    env_ids = {t.environment_id for t in proto.components.transforms.values()
               if t.environment_id}
    assert len(env_ids) == 1
    env = proto.components.environments[env_ids.pop()]
    assert env.urn == common_urns.environments.DOCKER.urn
    image = beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
    assert image == _flag(args, "sdk_container_image") == IMAGE
    # Beam comes from the image: no SDK tarball to stage.
    staged = [beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
        d.role_payload).staged_name for d in env.dependencies]
    assert not any("sdk" in name.lower() for name in staged), staged

    # The job environment (worker pool) the submission would send, built as
    # the client builds it, with the pipeline URL it would have staged.
    environment = apiclient.Environment(
        packages=[], options=options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=f"{_flag(args, 'staging_location')}/pipeline.pb",
        proto_pipeline=proto).proto
    pool = environment.workerPools[0]
    assert pool.machineType == _flag(args, "machine_type") == "n2-standard-4"
    assert pool.autoscalingSettings.maxNumWorkers == int(_flag(args, "max_num_workers"))
    assert pool.workerHarnessContainerImage == IMAGE
    assert "use_runner_v2" in environment.experiments
    assert environment.tempStoragePrefix.endswith("my-bucket/mtrank/tmp")
    sdk_options = {p.key: p.value for p in
                   environment.sdkPipelineOptions.additionalProperties}["options"]
    sent = {p.key: p.value for p in sdk_options.object_value.properties}
    assert sent["project"].string_value == "my-project"
    assert sent["region"].string_value == "europe-west1"


# --- Flink / Spark (PortableRunner) -------------------------------------------


@pytest.mark.parametrize("name", ["flink", "spark", "external"])
def test_portable_pipeline_and_options(logs, tmp_path, name):
    args = _beam_args(name)
    options = PipelineOptions(args)
    pipeline = beam.Pipeline(options=options)
    _ingestion(pipeline, *logs, str(tmp_path / "out"))
    # What PortableRunner sends a job server: the pipeline proto, in the
    # environment the options describe, and the options themselves.
    proto = PortableRunner.get_proto_pipeline(pipeline, options)
    env_ids = {t.environment_id for t in proto.components.transforms.values()
               if t.environment_id}
    assert len(env_ids) == 1, "every Python step runs in the one SDK environment"
    env = proto.components.environments[env_ids.pop()]

    environment_type = _flag(args, "environment_type")
    if environment_type == "DOCKER":
        assert env.urn == common_urns.environments.DOCKER.urn
        payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
        assert payload.container_image == _flag(args, "environment_config") == IMAGE
    elif environment_type == "PROCESS":
        assert env.urn == common_urns.environments.PROCESS.urn
        payload = beam_runner_api_pb2.ProcessPayload.FromString(env.payload)
        assert payload.command == "/opt/apache/beam/boot"
        assert dict(payload.env) == {"TF_USE_LEGACY_KERAS": "1"}
    elif environment_type == "EXTERNAL":
        assert env.urn == common_urns.environments.EXTERNAL.urn
        payload = beam_runner_api_pb2.ExternalPayload.FromString(env.payload)
        assert payload.endpoint.url == _flag(args, "environment_config") == "localhost:50000"
    else:
        pytest.fail(f"unexpected environment_type {environment_type}")

    if environment_type != "PROCESS":
        # TFX adds no package of its own when it sees a dependency flag.
        assert dependency_utils.make_beam_dependency_flags(args) == args

    sent = JobServiceHandle.encode_pipeline_options(
        options.get_all_options(retain_unknown_options=True))
    assert sent["beam:option:runner:v1"] == "PortableRunner"
    assert sent["beam:option:job_endpoint:v1"] == _flag(args, "job_endpoint")
    assert sent["beam:option:job_endpoint:v1"].endswith(":8099")
    assert sent["beam:option:environment_type:v1"] == environment_type
    if _flag(args, "parallelism"):
        assert sent["beam:option:parallelism:v1"] == _flag(args, "parallelism")


def test_portable_job_api_runs_ingestion(logs, tmp_path, in_memory_outputs):
    """The Job API path of Flink and Spark (prepare, stage artifacts, run),
    against Beam's embedded job server: same examples as in memory."""
    args = _beam_args("portable-embedded")
    assert _flag(args, "job_endpoint") == "embed"
    out = str(tmp_path / "out")
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    _ingestion(pipeline, *logs, out)
    pipeline.run().wait_until_finish()
    assert _read_outputs(out) == in_memory_outputs


# --- DirectRunner multi-processing --------------------------------------------


def test_direct_multi_processing_same_examples(logs, tmp_path, in_memory_outputs):
    args = _beam_args("direct-multi")
    assert _flag(args, "direct_running_mode") == "multi_processing"
    out = str(tmp_path / "out")
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    _ingestion(pipeline, *logs, out)
    pipeline.run().wait_until_finish()
    assert _read_outputs(out) == in_memory_outputs
