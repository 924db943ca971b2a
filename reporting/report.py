"""`mtrank report`: one self-contained HTML page about the last run of a work
directory, and the same comparison as a text table for the terminal.

Everything comes from what the run recorded: the Evaluator's TFMA output
(metrics per task and slice for the candidate and the last blessed model, the
validation result, and TFMA's CalibrationPlot / ConfusionMatrixPlot data for
the plots), the statistics and anomalies of the data, and the lineage of the
evaluated model from ML Metadata. Plots are PNGs embedded as data URIs, so the
page is one file that opens anywhere.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import html
import io
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG only
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow_data_validation as tfdv  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from ml_metadata.proto import metadata_store_pb2  # noqa: E402

from mtrank.components import data_gate  # noqa: E402
from mtrank.reporting import run_summary  # noqa: E402

BASELINE = "baseline"
METADATA_FILE = "metadata.sqlite"
SUMMARY_FILE = "run_summary.json"
STATISTICS_FILE = "FeatureStats.pb"  # per split, as StatisticsGen writes it


@dataclasses.dataclass
class BoundCheck:
    """One bound of one task on one slice, and how the candidate did."""

    task: str
    slice: str
    metric: str
    kind: str  # absolute / change
    bound: str
    candidate: Optional[float]
    baseline: Optional[float]
    value: Optional[float]  # the candidate's value, or its change for a change bound
    passed: bool


@dataclasses.dataclass
class Evaluation:
    """The TFMA output of one Evaluator run, organised for the report."""

    # metrics[(task, slice)][(metric, model)] = value, model "" or BASELINE.
    metrics: Dict[Tuple[str, str], Dict[Tuple[str, str], float]]
    checks: List[BoundCheck]
    # plots[(task, slice, model)] = the TFMA plot proto (calibration buckets, PR matrices).
    plots: Dict[Tuple[str, str, str], object]
    gating: dict


def _model(key) -> str:
    return BASELINE if key.model_name == BASELINE else ""


def _bound_text(threshold) -> Tuple[str, str]:
    """(kind, text) of a MetricThreshold with one of its two parts."""
    if threshold.HasField("value_threshold"):
        value = threshold.value_threshold
        parts = []
        if value.HasField("lower_bound"):
            parts.append(f">= {value.lower_bound.value:g}")
        if value.HasField("upper_bound"):
            parts.append(f"<= {value.upper_bound.value:g}")
        return "absolute", " and ".join(parts)
    change = threshold.change_threshold
    sign = ">=" if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER else "<="
    return "change", f"change {sign} {change.absolute.value:g}"


def _split_threshold(threshold) -> List:
    """A MetricThreshold holding a value and a change part, as two."""
    parts = []
    if threshold.HasField("value_threshold"):
        parts.append(tfma.MetricThreshold(value_threshold=threshold.value_threshold))
    if threshold.HasField("change_threshold"):
        parts.append(tfma.MetricThreshold(change_threshold=threshold.change_threshold))
    return parts


def _slice_of_spec(spec) -> Optional[str]:
    """The slice a feature_values spec names; "overall" for the empty spec;
    None for a spec over all values of features."""
    if spec.feature_keys:
        return None
    return ",".join(f"{k}={v}" for k, v in spec.feature_values.items()) or "overall"


def load_evaluation(evaluation_uri: str) -> Evaluation:
    """Metrics, bounds with pass/fail, and plots of an Evaluator output."""
    metrics: Dict[Tuple[str, str], Dict[Tuple[str, str], float]] = collections.defaultdict(dict)
    for per_slice in tfma.load_metrics(evaluation_uri):
        name = run_summary._slice_name(per_slice.slice_key)
        for kv in per_slice.metric_keys_and_values:
            if kv.value.HasField("double_value"):
                key = kv.key
                metric = f"{key.name}_diff" if key.is_diff else key.name
                metrics[(key.output_name, name)][(metric, _model(key))] = kv.value.double_value.value
    plots = {}
    for per_slice in tfma.load_plots(evaluation_uri):
        name = run_summary._slice_name(per_slice.slice_key)
        for kv in per_slice.plot_keys_and_values:
            plots[(kv.key.output_name, name, _model(kv.key))] = kv.value
    failed = {(f["task"], f["slice"], f["metric"], f["kind"])
              for f in run_summary.validation_failures(evaluation_uri)}
    eval_config = tfma.load_eval_result(evaluation_uri).config
    checks = []
    for spec in eval_config.metrics_specs:
        for task in spec.output_names:
            for metric_config in spec.metrics:
                for per_slice in metric_config.per_slice_thresholds:
                    for threshold in _split_threshold(per_slice.threshold):
                        kind, bound = _bound_text(threshold)
                        for slicing_spec in per_slice.slicing_specs:
                            slice_name = _slice_of_spec(slicing_spec)
                            values = metrics.get((task, slice_name), {})
                            name = _metric_name(values, metric_config.class_name)
                            if kind == "change" and not any(
                                    model == BASELINE for _, model in values):
                                continue  # no baseline yet: change bounds not applied
                            candidate = values.get((name, ""))
                            diff = values.get((f"{name}_diff", ""))
                            checks.append(BoundCheck(
                                task=task, slice=slice_name, metric=name or metric_config.class_name,
                                kind=kind, bound=bound, candidate=candidate,
                                baseline=values.get((name, BASELINE)),
                                value=diff if kind == "change" else candidate,
                                passed=(task, slice_name, name, kind) not in failed
                                and (diff is not None if kind == "change" else candidate is not None)))
    return Evaluation(metrics=dict(metrics), checks=checks, plots=plots,
                      gating=run_summary.slice_gating(evaluation_uri))


def _metric_name(values: Dict[Tuple[str, str], float], class_name: str) -> Optional[str]:
    """The metric key name TFMA gave `class_name` (AUC -> auc)."""
    wanted = {"AUC": "auc", "MeanSquaredError": "mean_squared_error"}.get(class_name,
                                                                         class_name.lower())
    return wanted if (wanted, "") in values else None


# Plots -----------------------------------------------------------------------

def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def reliability_points(plot) -> List[Tuple[float, float, float]]:
    """(mean prediction, mean label, examples) of each non-empty bucket of a
    TFMA CalibrationPlot."""
    points = []
    for bucket in plot.calibration_histogram_buckets.buckets:
        n = bucket.num_weighted_examples.value
        if n > 0:
            points.append((bucket.total_weighted_refined_prediction.value / n,
                           bucket.total_weighted_label.value / n, n))
    return points


def pr_points(plot) -> List[Tuple[float, float]]:
    """(recall, precision) at each threshold of a TFMA ConfusionMatrixPlot."""
    return [(m.recall, m.precision) for m in plot.confusion_matrix_at_thresholds.matrices
            if m.true_positives + m.false_positives > 0]


def _plot_per_model(title: str, xlabel: str, ylabel: str, series, diagonal: bool) -> str:
    figure, axes = plt.subplots(figsize=(4.2, 3.4))
    if diagonal:
        axes.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1)
    for label, points, style in series:
        if points:
            xs, ys = zip(*[(p[0], p[1]) for p in points])
            axes.plot(xs, ys, style, label=label, markersize=4)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="best", fontsize=8)
    return _png(figure)


def task_plots(evaluation: Evaluation, task: str) -> Dict[str, str]:
    """{"reliability": png, "pr": png} for a binary task (overall slice)."""
    series = {"reliability": [], "pr": []}
    for model, label, style in (("", "candidate", "o-"), (BASELINE, "last blessed", "s--")):
        plot = evaluation.plots.get((task, "overall", model))
        if plot is not None and plot.HasField("calibration_histogram_buckets"):
            series["reliability"].append((label, reliability_points(plot), style))
        if plot is not None and plot.HasField("confusion_matrix_at_thresholds"):
            series["pr"].append((label, pr_points(plot), style.replace("o", "").replace("s", "")))
    result = {}
    if series["reliability"]:
        result["reliability"] = _plot_per_model(
            f"{task}: reliability", "mean prediction", "observed rate", series["reliability"],
            diagonal=True)
    if series["pr"]:
        result["pr"] = _plot_per_model(f"{task}: precision-recall", "recall", "precision",
                                       series["pr"], diagonal=False)
    return result


def slice_plot(evaluation: Evaluation, task: str, metric: str) -> Optional[str]:
    """Bars of `metric` per slice, candidate beside the last blessed model."""
    slices = sorted((s for t, s in evaluation.metrics if t == task),
                    key=lambda s: (s != "overall", s))
    candidate = [evaluation.metrics[(task, s)].get((metric, "")) for s in slices]
    if not any(v is not None for v in candidate):
        return None
    baseline = [evaluation.metrics[(task, s)].get((metric, BASELINE)) for s in slices]
    figure, axes = plt.subplots(figsize=(max(4.2, 0.55 * len(slices) + 1.5), 3.4))
    positions = range(len(slices))
    has_baseline = any(v is not None for v in baseline)
    width = 0.4 if has_baseline else 0.7
    axes.bar([p - (width / 2 if has_baseline else 0) for p in positions],
             [v if v is not None else 0 for v in candidate], width, label="candidate")
    if has_baseline:
        axes.bar([p + width / 2 for p in positions], [v if v is not None else 0 for v in baseline],
                 width, label="last blessed")
    axes.set_xticks(list(positions))
    axes.set_xticklabels(slices, rotation=45, ha="right", fontsize=8)
    axes.set(title=f"{task}: {metric} by slice", ylabel=metric)
    axes.legend(loc="best", fontsize=8)
    return _png(figure)


# Data and lineage ------------------------------------------------------------

@dataclasses.dataclass
class RunArtifacts:
    """What the report shows of one run, found in ML Metadata."""

    evaluation_uri: Optional[str]
    statistics_uri: Optional[str]
    anomalies: Dict[str, List[str]]
    lineage: List[Tuple[str, str, int, str]]  # (role, type, artifact id, uri)
    blessed: Optional[bool]


def _last_run_artifacts(store) -> Dict[str, object]:
    """{type name: the newest artifact of that type} among the artifacts of
    the last pipeline run (a run that stopped early has no later ones; a
    partial run includes the upstream artifacts it reused)."""
    types = {t.id: t.name for t in store.get_artifact_types()}
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    if not runs:
        return {}
    last = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    newest: Dict[str, object] = {}
    for artifact in store.get_artifacts_by_context(last.id):
        name = types[artifact.type_id]
        if name not in newest or artifact.id > newest[name].id:
            newest[name] = artifact
    return newest


def _inputs_of_producer(store, artifact_id: int) -> List[Tuple[str, object]]:
    """[(input key, artifact)] of the execution that produced `artifact_id`."""
    outputs = [e for e in store.get_events_by_artifact_ids([artifact_id])
               if e.type in (metadata_store_pb2.Event.OUTPUT,
                             metadata_store_pb2.Event.DECLARED_OUTPUT)]
    if not outputs:
        return []
    events = [e for e in store.get_events_by_execution_ids([outputs[0].execution_id])
              if e.type in (metadata_store_pb2.Event.INPUT,
                            metadata_store_pb2.Event.DECLARED_INPUT)]
    by_id = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    return [(e.path.steps[0].key if e.path.steps else "input", by_id[e.artifact_id])
            for e in events if e.artifact_id in by_id]


def load_run(work_dir: str) -> RunArtifacts:
    """The last evaluation, statistics and anomalies, and the lineage of the
    evaluated model: the examples it was evaluated on, the model, the
    baseline, and what the Trainer read (transform graph, schema, examples)."""
    path = os.path.join(work_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ML Metadata at {path}: run `mtrank run` first")
    store = run_summary.open_store(path)
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    newest = _last_run_artifacts(store)
    evaluation = newest.get("ModelEvaluation")
    statistics = newest.get("ExampleStatistics")
    anomalies = newest.get("ExampleAnomalies")
    blessing = newest.get("ModelBlessing")
    lineage = []
    if evaluation is not None:
        for key, artifact in _inputs_of_producer(store, evaluation.id):
            role = {"baseline_model": "baseline model (last blessed)",
                    "model": "candidate model", "examples": "evaluated examples"}.get(key, key)
            lineage.append((role, type_names[artifact.type_id], artifact.id, artifact.uri))
            if key == "model":
                for trainer_key, trainer_input in _inputs_of_producer(store, artifact.id):
                    lineage.append((f"trainer {trainer_key}", type_names[trainer_input.type_id],
                                    trainer_input.id, trainer_input.uri))
    if statistics is not None:
        lineage.append(("statistics", "ExampleStatistics", statistics.id, statistics.uri))
    found = data_gate.read_anomalies(_as_tfx_artifact(anomalies)) if anomalies else {}
    blessed = None
    if blessing is not None and "blessed" in blessing.custom_properties:
        blessed = blessing.custom_properties["blessed"].int_value == 1
    return RunArtifacts(
        evaluation_uri=evaluation.uri if evaluation is not None else None,
        statistics_uri=statistics.uri if statistics is not None else None,
        anomalies=found, lineage=lineage, blessed=blessed)


def _as_tfx_artifact(mlmd_artifact):
    """An ExampleAnomalies TFX artifact over an MLMD one (for its split names)."""
    from tfx.types import standard_artifacts

    artifact = standard_artifacts.ExampleAnomalies()
    artifact.set_mlmd_artifact(mlmd_artifact)
    return artifact


def statistics_rows(statistics_uri: str) -> List[List[str]]:
    """[split, feature, type, present, missing, summary] for each feature of
    each split of a StatisticsGen output."""
    splits = sorted(name[len("Split-"):] for name in os.listdir(statistics_uri)
                    if name.startswith("Split-"))
    rows = []
    for split in splits:
        path = os.path.join(statistics_uri, f"Split-{split}", STATISTICS_FILE)
        if not os.path.exists(path):
            continue
        for dataset in tfdv.load_stats_binary(path).datasets:
            for feature in dataset.features:
                rows.append([split, feature.path.step[0] if feature.path.step else feature.name,
                             statistics_type_name(feature.type), *_feature_summary(feature)])
    return rows


def _feature_summary(feature) -> List[str]:
    """present, missing, and a one-line summary of a feature's statistics."""
    if feature.HasField("num_stats"):
        stats = feature.num_stats
        return [str(stats.common_stats.num_non_missing), str(stats.common_stats.num_missing),
                f"mean {stats.mean:.4g}, std {stats.std_dev:.4g}, min {stats.min:.4g}, "
                f"max {stats.max:.4g}, zeros {stats.num_zeros}"]
    if feature.HasField("string_stats"):
        stats = feature.string_stats
        top = ", ".join(f"{v.value} ({int(v.frequency)})" for v in stats.top_values[:3])
        return [str(stats.common_stats.num_non_missing), str(stats.common_stats.num_missing),
                f"{stats.unique} unique; top {top}"]
    return ["-", "-", "-"]


def statistics_type_name(type_value: int) -> str:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    return statistics_pb2.FeatureNameStatistics.Type.Name(type_value)


# Output ----------------------------------------------------------------------

def _fmt(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def text_table(evaluation: Optional[Evaluation], run: RunArtifacts, summary: dict) -> str:
    """The terminal version: every bound per task and slice, pass or FAIL."""
    lines = []
    if evaluation is None:
        lines.append("no evaluation in this work directory (the run stopped before the "
                     "Evaluator)")
    else:
        header = f"{'task':<12}{'slice':<22}{'metric':<20}{'bound':<18}" \
                 f"{'candidate':>10}{'baseline':>10}{'value':>10}  result"
        lines += [header, "-" * len(header)]
        for c in evaluation.checks:
            lines.append(f"{c.task:<12}{c.slice:<22}{c.metric:<20}{c.bound:<18}"
                         f"{_fmt(c.candidate):>10}{_fmt(c.baseline):>10}{_fmt(c.value):>10}  "
                         f"{'pass' if c.passed else 'FAIL'}")
        too_small = evaluation.gating.get("too_small") or []
        if too_small:
            lines.append(f"not gated (under {evaluation.gating['min_slice_size']} examples): "
                         + ", ".join(too_small))
    lines.append(f"blessed: {run.blessed}")
    for split, problems in run.anomalies.items():
        lines += [f"anomaly [{split}] {p}" for p in problems]
    lines += [f"anomaly {a}" for a in summary.get("data_anomalies") or []]
    return "\n".join(lines)


def _table_html(header: List[str], rows: List[List[str]], classes: Optional[List[str]] = None,
                table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
                    + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}' \
           "</tbody></table>"


_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
tr.pass td.result, td.pass { color: #1a7f37; font-weight: bold; }
tr.fail { background: #ffe5e5; }
.figures img { margin: 4px; border: 1px solid #eee; }
.verdict { font-size: 18px; font-weight: bold; }
.blessed { color: #1a7f37; } .not-blessed { color: #b00020; }
"""


def render_html(evaluation: Optional[Evaluation], run: RunArtifacts, summary: dict,
                title: str) -> str:
    """The report page: verdict, bounds per task and slice, plots, data
    statistics and anomalies, lineage."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    verdict = {True: ("blessed", "blessed: pushed if the Pusher ran"),
               False: ("not-blessed", "NOT blessed: not pushed"),
               None: ("not-blessed", "no blessing: the run stopped before the Evaluator")}
    cls, text = verdict[run.blessed]
    parts.append(f'<p class="verdict {cls}" id="verdict">{html.escape(text)}</p>')
    if summary.get("error"):
        parts.append(f"<p id='error'>run error: {html.escape(summary['error'])}</p>")

    parts.append("<h2>Bounds per task and slice</h2>")
    if evaluation is None:
        parts.append("<p>No evaluation.</p>")
    else:
        rows, classes = [], []
        for c in evaluation.checks:
            rows.append([c.task, c.slice, c.metric, c.kind, c.bound, _fmt(c.candidate),
                         _fmt(c.baseline), _fmt(c.value), "pass" if c.passed else "FAIL"])
            classes.append("pass" if c.passed else "fail")
        parts.append(_table_html(["task", "slice", "metric", "bound kind", "bound", "candidate",
                                  "last blessed", "checked value", "result"], rows, classes,
                                 "bounds"))
        too_small = evaluation.gating.get("too_small") or []
        if too_small:
            parts.append(f"<p>Slices under {evaluation.gating['min_slice_size']} eval examples, "
                         f"evaluated but not gated: {html.escape(', '.join(too_small))}</p>")

        parts.append("<h2>Metrics per task and slice</h2>")
        for task in sorted({t for t, _ in evaluation.metrics}):
            slices = sorted((s for t, s in evaluation.metrics if t == task),
                            key=lambda s: (s != "overall", s))
            names = sorted({m for s in slices for m, model in evaluation.metrics[(task, s)]
                            if model == "" and not m.endswith("_diff")})
            rows = [[s] + [f"{_fmt(evaluation.metrics[(task, s)].get((m, '')))} / "
                           f"{_fmt(evaluation.metrics[(task, s)].get((m, BASELINE)))}"
                           for m in names] for s in slices]
            parts.append(f"<h3>{html.escape(task)} (candidate / last blessed)</h3>")
            parts.append(_table_html(["slice"] + names, rows, table_id=f"metrics-{task}"))
            figures = task_plots(evaluation, task)
            bounded = "auc" if any((m == "auc") for m in names) else "mean_squared_error"
            by_slice = slice_plot(evaluation, task, bounded)
            if by_slice:
                figures["by_slice"] = by_slice
            parts.append('<div class="figures">' + "".join(
                f'<img alt="{html.escape(task)} {kind}" data-plot="{kind}" src="{png}">'
                for kind, png in figures.items()) + "</div>")

    parts.append("<h2>Data: anomalies</h2>")
    anomalies = [[split, p] for split, problems in run.anomalies.items() for p in problems]
    anomalies += [["gate", a] for a in summary.get("data_anomalies") or []]
    parts.append(_table_html(["where", "anomaly"], anomalies, table_id="anomalies")
                 if anomalies else "<p id='anomalies'>No anomalies.</p>")
    parts.append("<h2>Data: statistics</h2>")
    if run.statistics_uri:
        parts.append(_table_html(["split", "feature", "type", "present", "missing", "summary"],
                                 statistics_rows(run.statistics_uri), table_id="statistics"))
    parts.append("<h2>Lineage</h2>")
    parts.append(_table_html(["role", "type", "artifact id", "uri"],
                             [list(map(str, row)) for row in run.lineage], table_id="lineage"))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(work_dir: str, out: str) -> str:
    """Writes the HTML report of `work_dir`'s last run to `out`; returns the
    text table for the terminal."""
    run = load_run(work_dir)
    summary_path = os.path.join(work_dir, SUMMARY_FILE)
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    evaluation = load_evaluation(run.evaluation_uri) if run.evaluation_uri else None
    page = render_html(evaluation, run, summary, f"mtrank report: {os.path.abspath(work_dir)}")
    with open(out, "w") as f:
        f.write(page)
    return text_table(evaluation, run, summary)


SCHEMA_PRODUCERS = ("SchemaGen", "ImportSchemaGen")


def _data_schema(store):
    """The newest schema of the raw data (SchemaGen's or ImportSchemaGen's,
    not Transform's post-transform schema)."""
    schemas = sorted(store.get_artifacts_by_type("Schema"), key=lambda a: a.id, reverse=True)
    for schema in schemas:
        for event in store.get_events_by_artifact_ids([schema.id]):
            if (event.type == metadata_store_pb2.Event.OUTPUT
                    and run_summary._node_id(store, event.execution_id) in SCHEMA_PRODUCERS):
                return schema
    return None


def export_schema(work_dir: str, out: str) -> str:
    """Copies the schema of the last run (inferred or imported) to `out`;
    returns the artifact URI it came from."""
    path = os.path.join(work_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ML Metadata at {path}: run `mtrank run` first")
    store = run_summary.open_store(path)
    schema = _data_schema(store)
    if schema is None:
        raise FileNotFoundError(f"no schema recorded in {path}: the last run stopped before "
                                "SchemaGen")
    with open(os.path.join(schema.uri, "schema.pbtxt")) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(text)
    return schema.uri
