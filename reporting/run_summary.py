"""The run summary, read back from ML Metadata after a run.

Everything here comes from the artifacts and executions the run recorded
(ingestion counts, TFMA metrics and validation, blessing, push), so the
summary shows what the pipeline did, not what the CLI expected it to do.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Dict, List, Optional

import ml_metadata as mlmd
import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2

from mtrank.base import counts
from mtrank.components import tabular_example_gen
from mtrank.components.sliced_evaluator import SLICE_GATING_FILE
from mtrank.reporting import metadata


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


def collect(store: mlmd.MetadataStore, since_execution_id: int) -> dict:
    """Builds the run summary of the executions after `since_execution_id`."""
    nodes = metadata.outputs_by_node(store, since_execution_id)
    summary = {
        "lines_read": None, "impressions": None, "feedback_merged": None,
        "feedback_late": None, "feedback_unused_type": None, "duplicates": None,
        "examples": {}, "examples_uri": None, "dead_letters": {}, "tasks": {},
        "validation_failures": [], "blessed": False, "pushed_version": None, "wall_s": {},
        "reused": [], "slices": {},
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
        ingest_counts = json.loads(
            metadata.custom_property(examples, counts.COUNTS_PROPERTY) or "{}")
        summary["lines_read"] = ingest_counts.get(counts.LINES_READ, 0)
        for outcome in (counts.EXAMPLE, counts.FEEDBACK_MERGED, counts.FEEDBACK_LATE,
                        counts.FEEDBACK_UNUSED_TYPE, counts.DUPLICATES):
            summary[outcome] = ingest_counts.get(outcome, 0)
        summary["examples"] = counts.examples_per_split(ingest_counts)
        summary["examples_uri"] = examples.uri
        summary["dead_letters"] = counts.dead_letters_per_reason(ingest_counts)

    evaluation = _first(nodes, "Evaluator", "ModelEvaluation")
    if evaluation is not None:
        summary["tasks"] = task_metrics(evaluation.uri)
        summary["validation_failures"] = validation_failures(evaluation.uri)
        summary["slices"] = slice_gating(evaluation.uri)

    blessing = _first(nodes, "Evaluator", "ModelBlessing")
    summary["blessed"] = bool(blessing is not None
                              and metadata.custom_property(blessing, "blessed") == 1)
    pushed = _first(nodes, "Pusher", "PushedModel")
    if pushed is not None and metadata.custom_property(pushed, "pushed") == 1:
        summary["pushed_version"] = int(metadata.custom_property(pushed, "pushed_version"))
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
