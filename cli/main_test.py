"""The mtrank command: a bad config or logs that are not there fail with
status 2 before TensorFlow is imported; -v shows what is hidden by default."""
import json
import os
import subprocess
import sys

import pytest

from mtrank.cli import main as cli
from mtrank.simulator import logs as simulator

# Runs main() in a fresh interpreter and reports what it imported.
FRESH_MAIN = """
import json, sys
from mtrank.cli import main
status = main.main(json.loads(sys.argv[1]))
heavy = sorted(m for m in ("tensorflow", "tfx", "apache_beam") if m in sys.modules)
print(json.dumps({"status": status, "heavy_imports": heavy}))
"""


def _fresh_main(argv, cwd):
    result = subprocess.run([sys.executable, "-c", FRESH_MAIN, json.dumps(argv)], cwd=cwd,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    outcome = json.loads(result.stdout.splitlines()[-1])
    return outcome["status"], outcome["heavy_imports"], result.stderr


def test_bad_config_fails_before_tensorflow_is_imported(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.jsonl").write_text("")
    (tmp_path / "bad.yaml").write_text("model_name: m\ntasks: 3\n")
    status, heavy, stderr = _fresh_main(
        ["run", "--logs", "logs/*.jsonl", "--work-dir", "work", "--config", "bad.yaml"],
        tmp_path)
    assert status == 2
    assert stderr.startswith("mtrank run: bad.yaml: ") and "tasks" in stderr, stderr
    assert heavy == []


@pytest.mark.parametrize("argv", [
    ["run", "--logs", "missing/*.jsonl", "--work-dir", "work"],
    ["run", "--logs", "missing/*.jsonl", "--work-dir", "work", "--config", "any.yaml"],
    ["run", "--logs", "missing/{YYYY}-{MM}-{DD}.jsonl.gz", "--span", "2026-11-01",
     "--work-dir", "work"],
    ["init-config", "--logs", "missing/*.jsonl", "--out", "config.yaml"],
    ["compile", "--logs", "missing/*.jsonl", "--output", "job.json",
     "--pipeline-root", "gs://bucket/root"],
    ["predict", "--target", "127.0.0.1:1", "--logs", "missing.jsonl"],
], ids=["run", "run-with-config", "run-daily-partitions", "init-config", "compile", "predict"])
def test_missing_logs_fail_before_tensorflow_is_imported(tmp_path, argv):
    status, heavy, stderr = _fresh_main(argv, tmp_path)
    assert status == 2
    assert stderr.startswith(f"mtrank {argv[0]}: no log files match 'missing"), stderr
    assert heavy == []


def test_missing_model_base_fails_before_tensorflow_is_imported(tmp_path):
    status, heavy, stderr = _fresh_main(["serve", "--model-base", "missing"], tmp_path)
    assert status == 2
    assert stderr == "mtrank serve: --model-base 'missing' is not a directory\n"
    assert heavy == []


def test_verbose_is_an_option_of_every_command():
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "-v"]).verbose
    assert parser.parse_args(["run", "--logs", "x", "--work-dir", "w", "--verbose"]).verbose
    assert not parser.parse_args(["simulate", "--out", "x"]).verbose


def test_noise_is_hidden_by_default_and_shown_with_verbose(tmp_path):
    """Both commands import TensorFlow, whose import prints the CUDA factory
    lines (ERROR, so TF_CPP_MIN_LOG_LEVEL=2 keeps them). The run also shows
    that -v does not reach TFX's Beam executors, which parse sys.argv with
    absl's flags, where -v is --verbosity."""
    simulator.simulate(str(tmp_path / "logs"), impressions=300, days=2, seed=0)
    log_glob = str(tmp_path / "logs" / simulator.EVENT_FILE_GLOB)
    mtrank = [sys.executable, "-m", "mtrank.cli"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    config = str(tmp_path / "config.yaml")
    quiet = subprocess.run(mtrank + ["init-config", "--logs", log_glob, "--out", config],
                           env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    verbose = subprocess.run(
        mtrank + ["run", "--logs", log_glob, "--config", config, "--only", "LogExampleGen",
                  "--work-dir", str(tmp_path / "work"), "-v"],
        env=env, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "LogExampleGen done" in verbose.stdout
    assert "Unable to register cuFFT factory" in verbose.stderr
    assert "INFO absl: Component LogExampleGen is finished." in verbose.stderr
