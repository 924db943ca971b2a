"""kubeflow/runner.py: the pipeline as a KFP v2 PipelineJob spec, offline (what
`mtrank compile` writes; the command itself is tested in tests/cli_test.py)."""
import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mtrank.kubeflow import runner
from mtrank_testing import trainer_util as tu

IMAGE = "registry.example/mtrank:1.2.3"
ROOT = "gs://bucket/mtrank"
LOGS = "gs://bucket/logs/events-*.jsonl.gz"
BEAM_COMPONENTS = ("LogExampleGen", "StatisticsGen", "Transform", "Evaluator")
COMPONENTS = BEAM_COMPONENTS + ("SchemaGen", "ExampleValidator", "DataValidationGate",
                                "Trainer", "Pusher")


@pytest.fixture(scope="module")
def config():
    small = tu.small_config()
    return small.model_copy(update={"training": small.training.model_copy(
        update={"gpus": 2, "gpu_type": "NVIDIA_L4"})})


def _compile(config, path, **kwargs):
    return runner.compile_pipeline(
        config, str(path), log_glob=LOGS, pipeline_root=ROOT, image=IMAGE,
        beam_pipeline_args=runner.dataflow_beam_args("proj", "europe-west4", ROOT, IMAGE),
        **kwargs)


@pytest.fixture(scope="module")
def spec(config, tmp_path_factory):
    return _compile(config, tmp_path_factory.mktemp("kfp") / "pipeline.json")


def test_spec_loads_as_a_kfp_pipeline_spec(config, spec):
    pipeline_spec = json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert pipeline_spec.pipeline_info.name == runner.kfp_pipeline_name(config.model_name)
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == ROOT


def test_every_component_runs_in_the_image(spec):
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    for component in COMPONENTS:
        container = executors[f"{component}_executor"]["container"]
        assert container["image"] == IMAGE, component


def test_code_is_referenced_by_import_path_not_uploaded(spec):
    text = json.dumps(spec)
    assert "mtrank.trainer.task.run_fn" in text
    assert "mtrank.trainer.preprocessing.preprocessing_fn" in text
    assert "module_file" not in text or '"module_file": ""' in text.replace(" ", "")


def test_beam_components_get_the_dataflow_arguments(spec):
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    for component in BEAM_COMPONENTS:
        args = executors[f"{component}_executor"]["container"]["args"]
        assert "--runner=DataflowRunner" in args, component
        assert "--region=europe-west4" in args
        assert f"--sdk_container_image={IMAGE}" in args
        assert f"--temp_location={ROOT}/beam-tmp" in args


def test_trainer_gets_the_gpus_of_the_config(spec):
    resources = spec["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"][
        "container"]["resources"]
    assert resources["accelerator"] == {"type": "NVIDIA_L4", "count": "2"}


def test_no_gpu_asked_when_the_config_has_none(config, tmp_path):
    cpu = config.model_copy(update={"training": config.training.model_copy(update={"gpus": 0})})
    spec = _compile(cpu, tmp_path / "cpu.json")
    trainer = spec["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]
    assert "resources" not in trainer["container"]


def test_compiling_is_deterministic(config, spec, tmp_path):
    again = _compile(config, tmp_path / "again.json")
    assert json.dumps(again, sort_keys=True) == json.dumps(spec, sort_keys=True)


def test_push_goes_to_the_model_base_directory(config, spec):
    assert f"{ROOT}/serving_model/{config.model_name}" in json.dumps(spec)


def test_kfp_pipeline_name():
    assert runner.kfp_pipeline_name("Ranker_v2") == "ranker-v2"


def test_daily_partitions_are_refused_with_the_reason(config, tmp_path):
    with pytest.raises(ValueError, match="KubeflowV2DagRunner cannot compile"):
        runner.compile_pipeline(config, str(tmp_path / "p.json"),
                                log_glob="gs://logs/{YYYY}-{MM}-{DD}/*.jsonl.gz",
                                pipeline_root="gs://b/root")
