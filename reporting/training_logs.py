"""`mtrank tensorboard`: the TensorBoard logs of the newest Trainer runs
under a work directory, found through ML Metadata (the ModelRun artifacts
the Trainer wrote), or under pipeline_root/ when there is no metadata."""
from __future__ import annotations

import glob
import os
import shlex
import sys
from typing import List, Tuple

from mtrank.base import layout
from mtrank.reporting import metadata

MODEL_RUN_TYPE = "ModelRun"


def model_run_dirs(work_dir: str, limit: int = 5) -> List[Tuple[str, str]]:
    """[(name, directory)] of the newest `limit` Trainer runs that wrote
    logs, newest first. The name is the run's MLMD artifact id (`run7`), or
    the directory name when found by listing."""
    runs: List[Tuple[str, str]] = []
    if metadata.exists(work_dir):
        store = metadata.open_store(work_dir)
        artifacts = sorted(store.get_artifacts_by_type(MODEL_RUN_TYPE), key=lambda a: -a.id)
        runs = [(f"run{a.id}", a.uri) for a in artifacts]
    else:
        pattern = os.path.join(layout.pipeline_root(work_dir), "Trainer", "model_run", "*")
        runs = [(f"run{os.path.basename(d)}", d)
                for d in sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True)]
    with_logs = [(name, d) for name, d in runs
                 if glob.glob(os.path.join(d, "**", "events.out.tfevents.*"), recursive=True)]
    if not with_logs:
        raise FileNotFoundError(
            f"no Trainer TensorBoard logs under {work_dir}: run `mtrank run --work-dir "
            f"{work_dir}` first")
    return with_logs[:limit]


def tensorboard_command(runs: List[Tuple[str, str]], port: int) -> List[str]:
    """TensorBoard over these runs, bound to 127.0.0.1 only."""
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(tensorboard):
        tensorboard = "tensorboard"
    spec = ",".join(f"{name}:{directory}" for name, directory in runs)
    return [tensorboard, "--logdir_spec", spec, "--host", "127.0.0.1", "--port", str(port)]


def format_command(command: List[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
