"""Helpers of the benchmark smoke tests: run a benchmark script, and a tiny
Census-Income run of census.py that census_test.py and
train_throughput_test.py share (the second reuses its Transform)."""
import json
import os
import subprocess
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
CENSUS_SMOKE_ROWS = 2000


def run_script(name, *args, timeout=900):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, name), *args],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


# Transform's cost is per feature (a Beam stage each), not per row: the smoke
# runs keep a few of the shipped config's features.
CENSUS_SMOKE_FEATURES = ("age", "education", "sex", "weeks_worked", "det_hh_summ",
                         "capital_gains")


def census_smoke_config(path) -> str:
    from mtrank.base import config as config_lib

    config = config_lib.load_config(os.path.join(BENCHMARKS, "..", "pipeline", "configs",
                                                 "census.yaml"))
    raw = config.to_dict()
    raw["features"] = [f for f in raw["features"] if f["name"] in CENSUS_SMOKE_FEATURES]
    # One member: the smoke checks the script, ensembles are tested in trainer/.
    raw["model"]["ensemble_size"] = 1
    config_lib.save_config(config_lib.config_from_dict(raw), str(path))
    return str(path)


def census_smoke(tmp_path_factory) -> dict:
    """census.py on the first CENSUS_SMOKE_ROWS rows and a few features, once
    per test session."""
    work = tmp_path_factory.getbasetemp() / "census_bench"
    out = work / "result.json"
    if not out.exists():
        work.mkdir(exist_ok=True)
        config = census_smoke_config(work / "census.yaml")
        (work / "stdout.txt").write_text(run_script(
            "census.py", "--rows", str(CENSUS_SMOKE_ROWS), "--models", "shared_bottom",
            "--config", config, "--work", str(work), "--out", str(out)))
    return {"work": str(work), "config": str(work / "census.yaml"), "stdout": (work / "stdout.txt").read_text(),
            "aucs": json.loads(out.read_text()),
            "details": json.loads((work / "result.details.json").read_text())}
