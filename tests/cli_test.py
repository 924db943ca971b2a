"""The `mtrank` command line over the packages below it: `mtrank compile`
gives the spec kubeflow/runner.py compiles, and `mtrank tensorboard` prints
the command for the Trainer runs reporting/training_logs.py finds."""
import json
import os

from mtrank.base import config as config_lib
from mtrank.cli import main as cli
from mtrank.kubeflow import runner
from mtrank_testing import trainer_util as tu

IMAGE = "registry.example/mtrank:1.2.3"
PIPELINE_ROOT = "gs://bucket/mtrank"
LOGS = "gs://bucket/logs/events-*.jsonl.gz"


def _compile(config, path):
    return runner.compile_pipeline(
        config, str(path), log_glob=LOGS, pipeline_root=PIPELINE_ROOT, image=IMAGE,
        beam_pipeline_args=runner.dataflow_beam_args("proj", "europe-west4", PIPELINE_ROOT,
                                                     IMAGE))


def test_cli_compile(tmp_path, capsys):
    small = tu.small_config()
    config = small.model_copy(update={"training": small.training.model_copy(
        update={"gpus": 2, "gpu_type": "NVIDIA_L4"})})
    config_path = tmp_path / "config.yaml"
    config_lib.save_config(config, str(config_path))
    output = tmp_path / "cli.json"
    assert cli.main(["compile", "--output", str(output), "--logs", LOGS, "--config",
                     str(config_path), "--pipeline-root", PIPELINE_ROOT, "--image", IMAGE,
                     "--dataflow-project", "proj", "--dataflow-region", "europe-west4"]) == 0
    compiled = json.loads(output.read_text())
    steps = len(compiled["pipelineSpec"]["root"]["dag"]["tasks"])
    assert f"{steps} steps" in capsys.readouterr().out
    assert json.dumps(compiled, sort_keys=True) == json.dumps(
        _compile(config, tmp_path / "direct.json"), sort_keys=True)


def _trainer_run_dir(work_dir, name):
    """A Trainer run under pipeline_root, with one TensorBoard event file."""
    path = work_dir / "pipeline_root" / "Trainer" / "model_run" / name
    (path / "train").mkdir(parents=True)
    (path / "train" / "events.out.tfevents.1.host").write_bytes(b"")
    return str(path)


def test_cli_config_schema_writes_the_config_json_schema(tmp_path, capsys):
    assert cli.main(["config-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_lib.json_schema()
    out = tmp_path / "mtrank-config.schema.json"
    assert cli.main(["config-schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == config_lib.json_schema()
    assert str(out) in capsys.readouterr().out


def test_cli_tensorboard_prints_command_bound_to_localhost(tmp_path, capsys):
    uri = _trainer_run_dir(tmp_path, "5")
    assert cli.main(["tensorboard", "--work-dir", str(tmp_path), "--port", "7007"]) == 0
    out = capsys.readouterr().out
    command = out.strip().splitlines()[-1]
    assert f"--logdir_spec run5:{uri}" in command
    assert "--host 127.0.0.1 --port 7007" in command
    assert os.path.basename(command.split()[0]) == "tensorboard"


def test_cli_tensorboard_without_logs_exits_2(tmp_path, capsys):
    assert cli.main(["tensorboard", "--work-dir", str(tmp_path)]) == 2
    assert "no Trainer TensorBoard logs" in capsys.readouterr().err
