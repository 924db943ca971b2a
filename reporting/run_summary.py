"""The run summary, read back from ML Metadata after a run.

Everything here comes from the artifacts and executions the run recorded
(ingestion counts, TFMA metrics and validation, blessing, push), so the
summary shows what the pipeline did, not what the CLI expected it to do.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
from typing import Dict, List, Optional

import ml_metadata as mlmd
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from ml_metadata.proto import metadata_store_pb2
from sklearn.metrics import roc_auc_score

from mtrank.components import ingest, labelling, spans, tabular_example_gen
from mtrank.components.log_example_gen import COUNTS_PROPERTY
from mtrank.base import config as config_lib
from mtrank.components.sliced_evaluator import SLICE_GATING_FILE

TRUTH_FILE = "truth.jsonl.gz"


def open_store(metadata_path: str) -> mlmd.MetadataStore:
    return mlmd.MetadataStore(metadata_store_pb2.ConnectionConfig(
        sqlite=metadata_store_pb2.SqliteMetadataSourceConfig(filename_uri=metadata_path)))


def last_execution_id(store: mlmd.MetadataStore) -> int:
    executions = store.get_executions()
    return max((e.id for e in executions), default=0)


def _node_id(store: mlmd.MetadataStore, execution_id: int) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        if store.get_context_types_by_id([context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return str(execution_id)


def _custom(artifact, name: str):
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    return getattr(value, kind)


def _outputs_by_node(store: mlmd.MetadataStore, since_execution_id: int):
    """{node_id: (execution, {artifact type name: [artifacts]})} for the run."""
    executions = [e for e in store.get_executions() if e.id > since_execution_id]
    result = {}
    for execution in sorted(executions, key=lambda e: e.id):
        events = store.get_events_by_execution_ids([execution.id])
        output_ids = [ev.artifact_id for ev in events
                      if ev.type in (metadata_store_pb2.Event.OUTPUT,
                                     metadata_store_pb2.Event.DECLARED_OUTPUT)]
        artifacts = collections.defaultdict(list)
        for artifact in store.get_artifacts_by_id(output_ids):
            type_name = store.get_artifact_types_by_id([artifact.type_id])[0].name
            artifacts[type_name].append(artifact)
        result[_node_id(store, execution.id)] = (execution, artifacts)
    return result


def task_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """Overall-slice metrics per task (output): the candidate's under their
    names, the last blessed model's (when there is one) as baseline_<name>."""
    metrics: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
    for per_slice in tfma.load_metrics(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for kv in per_slice.metric_keys_and_values:
            key = kv.key
            if key.is_diff or not kv.value.HasField("double_value"):
                continue
            name = f"baseline_{key.name}" if key.model_name == "baseline" else key.name
            metrics[key.output_name][name] = round(kv.value.double_value.value, 5)
    return dict(metrics)


def _slice_value(key) -> str:
    kind = key.WhichOneof("kind")
    value = getattr(key, kind) if kind else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _slice_name(slice_key) -> str:
    """`device=mobile`, as eval_config.slice_name names slices; `overall`."""
    return ",".join(f"{k.column}={_slice_value(k)}"
                    for k in slice_key.single_slice_keys) or "overall"


def data_anomalies(error: Optional[str]) -> List[str]:
    """The anomalies a DataValidationGate error names, one a line."""
    marker = "run stopped before Transform: "
    if not error or not error.startswith("DataAnomaliesError") or marker not in error:
        return []
    return error.split(marker, 1)[1].split("; ")


def validation_failures(evaluation_uri: str) -> List[dict]:
    """Each failed bound: task, slice, metric, whether the absolute value or
    the change against the last blessed model failed, the value, the bound
    and by how much it missed."""
    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        for failure in per_slice.failures:
            key, threshold = failure.metric_key, failure.metric_threshold
            value = (failure.metric_value.double_value.value
                     if failure.HasField("metric_value") else None)
            entry = {"task": key.output_name, "slice": _slice_name(per_slice.slice_key),
                     "metric": key.name, "kind": "change" if key.is_diff else "absolute",
                     "value": value, "bound": None, "by": None,
                     "message": failure.message.strip()}
            if threshold.HasField("value_threshold"):
                bounds = threshold.value_threshold
                if bounds.HasField("lower_bound") and (value is None or
                                                       value < bounds.lower_bound.value):
                    entry["bound"] = f">= {bounds.lower_bound.value:g}"
                    entry["by"] = None if value is None else bounds.lower_bound.value - value
                elif bounds.HasField("upper_bound"):
                    entry["bound"] = f"<= {bounds.upper_bound.value:g}"
                    entry["by"] = None if value is None else value - bounds.upper_bound.value
            elif threshold.HasField("change_threshold"):
                change = threshold.change_threshold
                limit = change.absolute.value
                if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER:
                    entry["bound"] = f"change >= {limit:g}"
                    entry["by"] = None if value is None else limit - value
                else:
                    entry["bound"] = f"change <= {limit:g}"
                    entry["by"] = None if value is None else value - limit
            failures.append(entry)
    return failures


def describe_failure(failure: dict) -> str:
    """One line: which task and slice failed which bound, and by how much."""
    value = "not computed" if failure["value"] is None else f"{failure['value']:.4f}"
    missed = "" if failure["by"] is None else f", missed by {failure['by']:.4f}"
    what = f"{failure['metric']} change" if failure["kind"] == "change" else failure["metric"]
    return (f"task {failure['task']}, slice {failure['slice']}: {what} {value} fails "
            f"{failure['bound']}{missed}{' (' + failure['message'] + ')' if failure['message'] else ''}")


def slice_gating(evaluation_uri: str) -> dict:
    """Which slices the bounds applied to, and their sizes (SlicedEvaluator)."""
    path = os.path.join(evaluation_uri, SLICE_GATING_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _find_truth_file(log_glob: str) -> Optional[str]:
    for directory in sorted({os.path.dirname(p)
                             for p in glob.glob(spans.any_span_glob(log_glob))}):
        for candidate in (directory, os.path.dirname(directory)):
            path = os.path.join(candidate, TRUTH_FILE)
            if os.path.exists(path):
                return path
    return None


def truth_auc(truth_path: str, examples_uri: str, config: config_lib.Config
              ) -> Dict[str, Dict[str, float]]:
    """AUC of the simulator's generating probabilities against the labels of
    the eval split, per binary task: `truth_auc` from p_<feedback> (the
    ceiling for these labels) and, where the simulator gives it,
    `truth_auc_no_position` from p_<feedback>_no_position (the ceiling for a
    position-free model such as the served one)."""
    truth = {}
    with gzip.open(truth_path, "rt") as f:
        for line in f:
            row = json.loads(line)
            truth[(row["request_id"], row["item_id"])] = row
    columns = {}
    for task in config.tasks:
        if task.type == "binary":
            columns[task.name] = {"truth_auc": f"p_{task.feedback}",
                                  "truth_auc_no_position": f"p_{task.feedback}_no_position"}
    labels = collections.defaultdict(list)
    scores = collections.defaultdict(lambda: collections.defaultdict(list))
    files = tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        ids = [feature[key].bytes_list.value for key in (config_lib.REQUEST_ID, config_lib.ITEM_ID)
               if key in feature]
        if len(ids) < 2 or not all(ids):
            return {}  # the examples do not identify impressions (no item_id feature)
        row = truth.get((ids[0][0].decode(), ids[1][0].decode()))
        if row is None:
            continue
        for task in config.tasks:
            if task.name not in columns or columns[task.name]["truth_auc"] not in row:
                continue
            labels[task.name].append(feature[task.label_key].float_list.value[0])
            for metric, column in columns[task.name].items():
                if column in row:
                    scores[task.name][metric].append(row[column])
    result = {}
    for task, task_labels in labels.items():
        if not 0 < sum(task_labels) < len(task_labels):
            continue
        result[task] = {metric: round(float(roc_auc_score(task_labels, values)), 5)
                        for metric, values in scores[task].items()
                        if len(values) == len(task_labels)}
    return result


def collect(metadata_path: str, since_execution_id: int, config: config_lib.Config,
            log_glob: str) -> dict:
    """Builds the run summary of the executions after `since_execution_id`."""
    store = open_store(metadata_path)
    nodes = _outputs_by_node(store, since_execution_id)
    summary = {
        "lines_read": None, "impressions": None, "feedback_merged": None,
        "feedback_late": None, "feedback_unused_type": None, "duplicates": None,
        "examples": {}, "dead_letters": {}, "tasks": {}, "validation_failures": [],
        "blessed": False, "pushed_version": None, "wall_s": {}, "reused": [],
        "slices": {},
    }
    for node_id, (execution, _) in nodes.items():
        # A partial run (--only / --from) reuses upstream outputs: those
        # components did not run, so they have no wall time.
        if execution.last_known_state == metadata_store_pb2.Execution.CACHED:
            summary["reused"].append(node_id)
            continue
        summary["wall_s"][node_id] = round(
            (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000, 1)

    examples = _example_gen_output(nodes)
    if examples is not None:
        counts = json.loads(_custom(examples, COUNTS_PROPERTY) or "{}")
        summary["lines_read"] = counts.get(ingest.LINES_READ, 0)
        for outcome in (labelling.EXAMPLE, labelling.FEEDBACK_MERGED, labelling.FEEDBACK_LATE,
                        labelling.FEEDBACK_UNUSED_TYPE, labelling.DUPLICATES):
            summary[outcome] = counts.get(outcome, 0)
        summary["examples"] = {key.split(".", 1)[1]: n for key, n in sorted(counts.items())
                               if key.startswith(ingest.split_count_key(""))}
        summary["dead_letters"] = {
            k[len(labelling.DEAD_LETTER_PREFIX):]: v for k, v in counts.items()
            if k.startswith(labelling.DEAD_LETTER_PREFIX)}

    evaluation = _first(nodes, "Evaluator", "ModelEvaluation")
    if evaluation is not None:
        summary["tasks"] = task_metrics(evaluation.uri)
        summary["validation_failures"] = validation_failures(evaluation.uri)
        summary["slices"] = slice_gating(evaluation.uri)
    truth_path = _find_truth_file(log_glob) if config.input.format == "logs" else None
    if truth_path and examples is not None:
        for task, aucs in truth_auc(truth_path, examples.uri, config).items():
            summary["tasks"].setdefault(task, {}).update(aucs)

    blessing = _first(nodes, "Evaluator", "ModelBlessing")
    summary["blessed"] = bool(blessing is not None and _custom(blessing, "blessed") == 1)
    pushed = _first(nodes, "Pusher", "PushedModel")
    if pushed is not None and _custom(pushed, "pushed") == 1:
        summary["pushed_version"] = int(_custom(pushed, "pushed_version"))
    return summary


EXAMPLE_GEN_IDS = ("LogExampleGen", *tabular_example_gen.COMPONENT_IDS.values())


def _example_gen_output(nodes):
    """The Examples artifact of whichever ExampleGen the run used."""
    for node_id in EXAMPLE_GEN_IDS:
        examples = _first(nodes, node_id, "Examples")
        if examples is not None:
            return examples
    return None


def _first(nodes, node_id: str, type_name: str):
    if node_id not in nodes:
        return None
    artifacts = nodes[node_id][1].get(type_name) or []
    return artifacts[0] if artifacts else None


def format_table(summary: dict) -> str:
    """The summary as the text the CLI prints."""
    lines = [
        f"lines read {summary['lines_read']}, examples {summary['examples']}, "
        f"feedback merged {summary['feedback_merged']}, late {summary['feedback_late']}, "
        f"duplicates {summary['duplicates']}",
        f"dead letters {summary['dead_letters'] or 'none'}",
        "",
        f"{'task':<14}{'auc':>9}{'truth_auc':>11}{'no_pos':>9}{'loss':>9}{'mean_label':>12}"
        f"{'examples':>10}",
    ]
    for task, metrics in summary["tasks"].items():
        def fmt(name, width):
            value = metrics.get(name)
            return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"
        count = metrics.get("example_count")
        lines.append(f"{task:<14}{fmt('auc', 9)}{fmt('truth_auc', 11)}{fmt('truth_auc_no_position', 9)}"
                     f"{fmt('binary_crossentropy', 9)}{fmt('mean_label', 12)}"
                     f"{int(count) if count is not None else '-':>10}")
    lines.append("truth_auc: the simulator's generating probabilities on the same labels; "
                 "no_pos: the same without the position effect, which the served model "
                 "does not see" if any("truth_auc" in m for m in summary["tasks"].values()) else "")
    for failure in summary["validation_failures"]:
        lines.append(f"validation failed: {describe_failure(failure)}")
    if summary.get("slices", {}).get("too_small"):
        lines.append(f"slices under {summary['slices']['min_slice_size']} eval examples, "
                     f"reported but not gated: {', '.join(summary['slices']['too_small'])}")
    for anomaly in summary.get("data_anomalies", []):
        lines.append(f"data anomaly: {anomaly}")
    lines.append(f"blessed {summary['blessed']}, pushed version {summary['pushed_version']}")
    lines.append("wall s " + ", ".join(f"{k} {v}" for k, v in summary["wall_s"].items()))
    if summary["reused"]:
        lines.append("reused from the last run: " + ", ".join(summary["reused"]))
    return "\n".join(lines)
