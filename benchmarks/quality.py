"""What the quality benchmarks (census.py, simulator.py) share: run the real
pipeline up to Transform once, then train models on its output with the real
trainer code and score them on a split.

The pipeline part is `local_runner.run(..., to_component="Transform")`, the
same components `mtrank run` runs (ExampleGen, statistics, schema, validation
gate, Transform). Its outputs are found through ML Metadata and reused by
later runs on the same work directory with the same input and config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mtrank.base import config as config_lib  # noqa: E402

TRANSFORM_MARKER = "transform_outputs.json"


@dataclasses.dataclass(frozen=True)
class TransformOutputs:
    """URIs of one pipeline run up to Transform."""

    examples: str               # ExampleGen's raw tf.Examples, Split-<name>/
    transformed_examples: str   # Transform's output examples, Split-<name>/
    transform_graph: str
    splits: List[str]
    transform_s: float          # wall time of the pipeline run (0 when reused)


def _fingerprint(input_glob: str, config: config_lib.Config) -> str:
    """What the Transform output depends on: the input and the config's
    input, features, tasks and position towers (Transform passes `position`
    only for them); not the other training or model settings."""
    raw = config.to_dict()
    key = {k: raw.get(k) for k in ("input", "split", "features", "tasks")}
    key["position_tasks"] = config.model.position_tasks
    return hashlib.sha256(json.dumps([os.path.abspath(input_glob), key],
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _latest_outputs(work_dir: str, node_id: str) -> Dict[str, list]:
    """{artifact type name: [artifacts]} of the newest completed execution
    of `node_id`."""
    from ml_metadata.proto import metadata_store_pb2

    from mtrank.reporting import metadata

    store = metadata.open_store(work_dir)
    executions = sorted(store.get_executions(), key=lambda e: e.id, reverse=True)
    for execution in executions:
        if execution.last_known_state not in (metadata_store_pb2.Execution.COMPLETE,
                                              metadata_store_pb2.Execution.CACHED):
            continue
        if metadata.node_id(store, execution.id) != node_id:
            continue
        outputs: Dict[str, list] = {}
        output_ids = [event.artifact_id
                      for event in store.get_events_by_execution_ids([execution.id])
                      if event.type == metadata_store_pb2.Event.OUTPUT]
        for artifact in store.get_artifacts_by_id(output_ids):
            type_name = store.get_artifact_types_by_id([artifact.type_id])[0].name
            outputs.setdefault(type_name, []).append(artifact)
        return outputs
    raise RuntimeError(f"no completed {node_id} execution in {work_dir}")


def transform_once(input_glob: str, work_dir: str, config: config_lib.Config
                   ) -> TransformOutputs:
    """Runs the pipeline up to Transform on `input_glob`, or reuses the run
    an earlier call made in `work_dir` for the same input and config."""
    from mtrank.components import tabular_example_gen
    from mtrank.pipeline import local_runner

    marker = os.path.join(work_dir, TRANSFORM_MARKER)
    fingerprint = _fingerprint(input_glob, config)
    if os.path.exists(marker):
        with open(marker) as f:
            saved = json.load(f)
        if saved["fingerprint"] == fingerprint and os.path.isdir(saved["transform_graph"]):
            saved.pop("fingerprint")
            return TransformOutputs(**{**saved, "transform_s": 0.0})
    started = time.time()
    summary = local_runner.run(input_glob, work_dir, config, to_component="Transform")
    if summary.get("error"):
        raise RuntimeError(f"pipeline up to Transform failed: {summary['error']}")
    transform = _latest_outputs(work_dir, "Transform")
    example_gen_id = ("LogExampleGen" if config.input.format == "logs" else
                      tabular_example_gen.COMPONENT_IDS[config.input.format])
    examples = _latest_outputs(work_dir, example_gen_id)["Examples"][0]
    transformed = transform["Examples"][0]
    from tfx.types import artifact_utils

    outputs = TransformOutputs(
        examples=examples.uri, transformed_examples=transformed.uri,
        transform_graph=transform["TransformGraph"][0].uri,
        splits=artifact_utils.decode_split_names(
            transformed.properties["split_names"].string_value),
        transform_s=round(time.time() - started, 1))
    with open(marker, "w") as f:
        json.dump({**dataclasses.asdict(outputs), "fingerprint": fingerprint}, f, indent=2)
    return outputs


def _examples_artifact(outputs: TransformOutputs):
    from tfx.types import artifact_utils, standard_artifacts

    artifact = standard_artifacts.Examples()
    artifact.uri = outputs.transformed_examples
    artifact.split_names = artifact_utils.encode_split_names(outputs.splits)
    return artifact


def fn_args(outputs: TransformOutputs, config: config_lib.Config, run_dir: str):
    from mtrank.trainer import task

    return task.fn_args_from_artifacts(
        _examples_artifact(outputs), outputs.transform_graph, config,
        os.path.join(run_dir, "model_run", "1"), os.path.join(run_dir, "serving"))


def split_dataset(outputs: TransformOutputs, config: config_lib.Config, split: str,
                  batch_size: int = 4096):
    """One pass over a split of the Transform output, as the trainer reads it."""
    import tensorflow_transform as tft
    from tfx.components.trainer import fn_args_utils
    from tfx.types import artifact_utils
    from tfx.utils import io_utils

    from mtrank.trainer import task

    artifact = _examples_artifact(outputs)
    accessor = fn_args_utils.get_common_fn_args(
        {"examples": [artifact]},
        {"train_args": "{}", "eval_args": "{}", "custom_config": "null"}).data_accessor
    pattern = io_utils.all_files_pattern(artifact_utils.get_split_uri([artifact], split))
    return task.input_fn([pattern], accessor, tft.TFTransformOutput(outputs.transform_graph),
                         config, batch_size, repeat=False)


def predictions(model, dataset, config: config_lib.Config):
    """({task: labels}, {task: served predictions}) over a dataset, as numpy."""
    import numpy as np

    labels: Dict[str, list] = {t.name: [] for t in config.tasks}
    scores: Dict[str, list] = {t.name: [] for t in config.tasks}
    for features, batch_labels in dataset:
        outputs = model(features, training=False)
        for task in config.tasks:
            labels[task.name].append(batch_labels[task.label_key].numpy().ravel())
            scores[task.name].append(outputs[task.name].numpy().ravel())
    return ({k: np.concatenate(v) for k, v in labels.items()},
            {k: np.concatenate(v) for k, v in scores.items()})


def train_and_score(outputs: TransformOutputs, config: config_lib.Config, run_dir: str,
                    split: str) -> Dict[str, float]:
    """Trains with the trainer's `train_model` on the train split (early
    stopping on eval) and returns each binary task's AUC on `split`."""
    from sklearn.metrics import roc_auc_score

    from mtrank.trainer import task

    model, _ = task.train_model(fn_args(outputs, config, run_dir), config)
    labels, scores = predictions(model, split_dataset(outputs, config, split), config)
    return {t.name: round(float(roc_auc_score(labels[t.name], scores[t.name])), 4)
            for t in config.tasks if t.type == "binary"}


def with_model(config: config_lib.Config, architecture: str,
               tasks: Optional[Sequence[str]] = None, **model_fields) -> config_lib.Config:
    """The config with `model.architecture` (and other model fields) set,
    keeping only `tasks` when given (a single-task baseline)."""
    raw = config.to_dict()
    # Through ModelConfig, so fields of the old architecture that do not apply
    # to the new one (num_experts for shared_bottom) are dropped.
    raw["model"] = config.model.model_copy(
        update=dict(architecture=architecture, **model_fields)).relevant_fields()
    if tasks is not None:
        raw["tasks"] = [t for t in raw["tasks"] if t["name"] in tasks]
        if "position_tasks" in raw["model"]:
            raw["model"]["position_tasks"] = [
                t for t in raw["model"]["position_tasks"] if t in tasks]
    return config_lib.config_from_dict(raw)


def round_order(ways: Sequence, round_index: int) -> List:
    """The ways to time in round `round_index`, each round starting with
    the next, so that a drift in the shared machine's load favours none."""
    start = round_index % len(ways)
    return list(ways[start:]) + list(ways[:start])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def code_version() -> Dict[str, str]:
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def report(result: dict, table: str, out: Optional[str]) -> None:
    """Prints the table; with `out`, writes {model: {task: auc}} there and
    the whole result beside it (`<out>.details.json`)."""
    print()
    print(table)
    if out:
        with open(out, "w") as f:
            json.dump(result["aucs"], f, indent=2)
        with open(os.path.splitext(out)[0] + ".details.json", "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")
