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

from mtrank.base import layout  # noqa: E402
from mtrank.components import data_gate  # noqa: E402
from mtrank.reporting import metadata, run_summary  # noqa: E402

BASELINE = "baseline"
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


# Points of a reliability diagram: each about a tenth of the examples.
RELIABILITY_POINTS = 10


def reliability_points(plot, points: int = RELIABILITY_POINTS
                       ) -> List[Tuple[float, float, float]]:
    """(mean prediction, observed rate, examples) of about `points` groups of
    equal example count, in order of prediction.

    TFMA's CalibrationPlot buckets have equal widths over [0, 1], and a rare
    event's predictions all fall into the first few of them; merging its
    narrow buckets at the quantiles of the predictions spreads the points
    over the range the model predicts (as fine as the buckets allow)."""
    buckets = [(b.num_weighted_examples.value, b.total_weighted_refined_prediction.value,
                b.total_weighted_label.value)
               for b in plot.calibration_histogram_buckets.buckets
               if b.num_weighted_examples.value > 0]
    total = sum(n for n, _, _ in buckets)
    result = []
    examples = predictions = labels = seen = 0.0
    for n, prediction, label in buckets:
        examples, predictions, labels, seen = (examples + n, predictions + prediction,
                                               labels + label, seen + n)
        # A group ends at the next quantile; the last one at the last bucket.
        if seen * points >= total * (len(result) + 1):
            result.append((predictions / examples, labels / examples, examples))
            examples = predictions = labels = 0.0
    return result


def pr_points(plot) -> List[Tuple[float, float]]:
    """(recall, precision) at each threshold of a TFMA ConfusionMatrixPlot."""
    return [(m.recall, m.precision) for m in plot.confusion_matrix_at_thresholds.matrices
            if m.true_positives + m.false_positives > 0]


def _zoomed_range(values: List[float]) -> Tuple[float, float]:
    """[low, high] around `values` with a margin of a twentieth, within [0, 1]."""
    low, high = min(values), max(values)
    margin = max(high - low, 1e-3) / 20
    return max(0.0, low - margin), min(1.0, high + margin)


def _plot_per_model(title: str, xlabel: str, ylabel: str, series, reliability: bool) -> str:
    """One line per model. A reliability diagram shares one range zoomed to
    its points on both axes, so the diagonal (calibrated) stays the diagonal;
    a precision-recall curve spans every recall and the precisions seen."""
    figure, axes = plt.subplots(figsize=(4.2, 3.4))
    xs_all = [p[0] for _, points, _ in series for p in points]
    ys_all = [p[1] for _, points, _ in series for p in points]
    if reliability:
        low, high = _zoomed_range(xs_all + ys_all)
        axes.plot([low, high], [low, high], color="#bbbbbb", linestyle="--", linewidth=1,
                  label="calibrated")
        xlim = ylim = (low, high)
    else:
        xlim, ylim = (0, 1), (0, min(1.02, 1.1 * max(ys_all, default=1.0)))
    for label, points, style in series:
        if points:
            xs, ys = zip(*[(p[0], p[1]) for p in points])
            axes.plot(xs, ys, style, label=label, markersize=4)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=xlim, ylim=ylim)
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
            f"{task}: reliability ({RELIABILITY_POINTS} equal-count groups)",
            "mean prediction", "observed rate", series["reliability"], reliability=True)
    if series["pr"]:
        result["pr"] = _plot_per_model(f"{task}: precision-recall", "recall", "precision",
                                       series["pr"], reliability=False)
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
    if has_baseline:
        # Below the bars' tops, which are what a reader compares.
        axes.legend(loc="lower right", fontsize=8, framealpha=0.9)
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
    # What the Pusher did: None when it did not run (the run stopped before
    # it), else whether it pushed, and the version and directory it pushed to.
    pushed: Optional[bool] = None
    pushed_version: Optional[str] = None
    pushed_destination: Optional[str] = None


# The component whose output of a type the report shows: Transform can also
# write ExampleStatistics and ExampleAnomalies (of the transformed data,
# without splits; the pipeline turns them off).
PRODUCERS = {"ExampleStatistics": "StatisticsGen", "ExampleAnomalies": "ExampleValidator",
             "ModelEvaluation": "Evaluator", "ModelBlessing": "Evaluator",
             "PushedModel": "Pusher"}


def _last_run_artifacts(store) -> Dict[str, object]:
    """{type name: the newest artifact of that type} among the artifacts of
    the last pipeline run (a run that stopped early has no later ones; a
    partial run includes the upstream artifacts it reused), from the
    type's producer in PRODUCERS where it has one."""
    types = {t.id: t.name for t in store.get_artifact_types()}
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    if not runs:
        return {}
    last = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    newest: Dict[str, object] = {}
    for artifact in sorted(store.get_artifacts_by_context(last.id), key=lambda a: -a.id):
        name = types[artifact.type_id]
        if name not in newest and (name not in PRODUCERS
                                   or _producer(store, artifact.id) == PRODUCERS[name]):
            newest[name] = artifact
    return newest


def _producer(store, artifact_id: int) -> Optional[str]:
    """The pipeline node that output the artifact."""
    for event in store.get_events_by_artifact_ids([artifact_id]):
        if metadata.is_output(event):
            return metadata.node_id(store, event.execution_id)
    return None


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
    store = metadata.open_store(work_dir)
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    newest = _last_run_artifacts(store)
    evaluation = newest.get("ModelEvaluation")
    statistics = newest.get("ExampleStatistics")
    anomalies = newest.get("ExampleAnomalies")
    blessing = newest.get("ModelBlessing")
    pushed_model = newest.get("PushedModel")
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
    pushed = version = destination = None
    if pushed_model is not None:
        pushed = metadata.custom_property(pushed_model, "pushed") == 1
        version = metadata.custom_property(pushed_model, "pushed_version")
        destination = metadata.custom_property(pushed_model, "pushed_destination")
        if pushed:
            lineage.append(("pushed model", "PushedModel", pushed_model.id, destination))
    return RunArtifacts(
        evaluation_uri=evaluation.uri if evaluation is not None else None,
        statistics_uri=statistics.uri if statistics is not None else None,
        anomalies=found, lineage=lineage, blessed=blessed, pushed=pushed,
        pushed_version=None if version is None else str(version),
        pushed_destination=destination)



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
                rows.append([split, ".".join(feature.path.step) or feature.name,
                             statistics_type_name(feature.type), *_feature_summary(feature)])
    return rows


def _number(value: float) -> str:
    """A statistic: counts whole with thousands separators, other numbers
    (and timestamps, means of timestamps) to four significant digits."""
    if float(value).is_integer() and abs(value) < 1e9:
        return f"{int(value):,}"
    return f"{value:.4g}"



def _feature_summary(feature) -> List[str]:
    """present, missing, and a one-line summary of a feature's statistics."""
    for kind in ("num_stats", "string_stats"):
        if feature.HasField(kind):
            stats = getattr(feature, kind)
            break
    else:
        return ["-", "-", "-"]
    common = stats.common_stats
    if kind == "num_stats":
        summary = (f"mean {_number(stats.mean)}, std {_number(stats.std_dev)}, "
                   f"min {_number(stats.min)}, median {_number(stats.median)}, "
                   f"max {_number(stats.max)}, zeros {_number(stats.num_zeros)}")
    else:
        top = ", ".join(f"{v.value} ({_number(v.frequency)})" for v in stats.top_values[:3])
        summary = f"{_number(stats.unique)} unique; top {top}"
    if common.max_num_values > 1:
        summary += f"; {common.min_num_values}-{common.max_num_values} values per example"
    return [_number(common.num_non_missing), _number(common.num_missing), summary]


def statistics_type_name(type_value: int) -> str:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    return statistics_pb2.FeatureNameStatistics.Type.Name(type_value)


# Output ----------------------------------------------------------------------

# Metrics that count examples: printed as whole numbers.
COUNT_METRICS = ("example_count", "weighted_example_count")


def _fmt(value: Optional[float], metric: str = "") -> str:
    """A metric's value: counts whole with thousands separators; rates of
    rare events (mean label 0.0049) to three significant digits; the rest,
    AUCs and losses, to four decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in COUNT_METRICS:
        return f"{round(value):,}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:#.3g}"  # "#": 0.00750 beside 0.00872, not 0.0075
    return f"{value:.4f}"


def _has_baseline(evaluation: Optional[Evaluation]) -> bool:
    return evaluation is not None and any(
        model == BASELINE for values in evaluation.metrics.values() for _, model in values)


def _describe_check(check: BoundCheck) -> str:
    """`click, slice overall: auc 0.5012 fails >= 0.58`."""
    if check.value is None:
        what = f"{check.metric} not computed"
    elif check.kind == "change":
        what = f"{check.metric} changed by {check.value:+.4f} against the last blessed model"
    else:
        what = f"{check.metric} {_fmt(check.value, check.metric)}"
    return f"{check.task}, slice {check.slice}: {what}, bound {check.bound}"


def verdict(evaluation: Optional[Evaluation], run: RunArtifacts) -> Tuple[bool, str, List[str]]:
    """(blessed, headline, details): whether the candidate was blessed, by
    which bounds, and what the Pusher did with it."""
    checks = evaluation.checks if evaluation is not None else []
    failed = [c for c in checks if not c.passed]
    if run.blessed is None:
        return False, "No blessing: the run stopped before the Evaluator, so nothing was pushed", []
    details = []
    if run.blessed:
        if run.pushed:
            headline = (f"Blessed and pushed: version {run.pushed_version} to "
                        f"{run.pushed_destination}")
        elif run.pushed is None:
            headline = "Blessed, but not pushed: the run stopped before the Pusher"
        else:
            headline = "Blessed, but the Pusher did not push it"
        # One line per bound: its tasks and slices.
        passed = collections.defaultdict(list)
        for c in checks:
            passed[f"{c.metric} {c.bound}"].append(f"{c.task} ({c.slice})")
        details.append(f"All {len(checks)} bounds passed: " + "; ".join(
            f"{bound} on {', '.join(where)}" for bound, where in sorted(passed.items())))
    else:
        why = f"{len(failed)} of {len(checks)} bounds failed" if failed \
            else "TFMA's validation failed, though no bound of the table did"
        headline = f"NOT blessed, so not pushed: {why}"
        details += [f"failed: {_describe_check(c)}" for c in failed]

    if evaluation is not None and not _has_baseline(evaluation):
        details.append("No last blessed model to compare with: change bounds were not "
                       "applied (the first model is judged on absolute bounds only).")
    return run.blessed, headline, details


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
                         f"{_fmt(c.candidate, c.metric):>10}{_fmt(c.baseline, c.metric):>10}"
                         f"{_fmt(c.value, c.metric):>10}  {'pass' if c.passed else 'FAIL'}")
        too_small = evaluation.gating.get("too_small") or []
        if too_small:
            lines.append(f"not gated (under {evaluation.gating['min_slice_size']:,} examples): "
                         + ", ".join(too_small))
    _, headline, details = verdict(evaluation, run)
    lines.append(f"blessed: {run.blessed}: {headline}")
    lines += [f"  {d}" for d in details]
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
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
tr.pass td.result, td.pass { color: #1a7f37; font-weight: bold; }
tr.fail { background: #ffe5e5; }
.figures img { margin: 4px; border: 1px solid #eee; }
.verdict { font-size: 18px; font-weight: bold; margin-bottom: 4px; }
.blessed { color: #1a7f37; } .not-blessed { color: #b00020; }
"""


def _metric_order(names: List[str]) -> List[str]:
    """The bounded metric first, counts last, the rest by name between."""
    return sorted(names, key=lambda m: (m not in ("auc", "mean_squared_error"),
                                        m in COUNT_METRICS, m))


def render_html(evaluation: Optional[Evaluation], run: RunArtifacts, summary: dict,
                title: str) -> str:
    """The report page, one <section> each: verdict, bounds per task and
    slice, metrics and plots per task, data anomalies and statistics,
    lineage."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    blessed, headline, details = verdict(evaluation, run)
    parts.append('<section id="section-verdict">')
    parts.append(f'<p class="verdict {"blessed" if blessed else "not-blessed"}" id="verdict">'
                 f"{html.escape(headline)}</p>")
    if details:
        parts.append('<ul id="verdict-details">'
                     + "".join(f"<li>{html.escape(d)}</li>" for d in details) + "</ul>")
    if summary.get("examples"):
        parts.append("<p id='examples'>Examples: " + html.escape(", ".join(
            f"{split} {n:,}" for split, n in sorted(summary["examples"].items()))) + "</p>")
    if summary.get("error"):
        parts.append(f"<p id='error'>run error: {html.escape(summary['error'])}</p>")
    parts.append("</section>")

    parts.append('<section id="section-bounds"><h2>Bounds per task and slice</h2>')
    if evaluation is None:
        parts.append("<p>No evaluation: the run stopped before the Evaluator.</p></section>")
    else:
        rows, classes = [], []
        for c in evaluation.checks:
            rows.append([c.task, c.slice, c.metric, c.kind, c.bound, _fmt(c.candidate, c.metric),
                         _fmt(c.baseline, c.metric), _fmt(c.value, c.metric),
                         "pass" if c.passed else "FAIL"])
            classes.append("pass" if c.passed else "fail")
        parts.append(_table_html(["task", "slice", "metric", "bound kind", "bound", "candidate",
                                  "last blessed", "checked value", "result"], rows, classes,
                                 "bounds"))
        too_small = evaluation.gating.get("too_small") or []
        if too_small:
            parts.append(f"<p>Slices under {evaluation.gating['min_slice_size']:,} eval examples, "
                         f"evaluated but not gated: {html.escape(', '.join(too_small))}</p>")
        parts.append("</section>")

        has_baseline = _has_baseline(evaluation)
        parts.append('<section id="section-metrics"><h2>Metrics per task and slice</h2>')
        if not has_baseline:
            parts.append("<p>No last blessed model yet: the candidate's metrics only.</p>")
        for task in sorted({t for t, _ in evaluation.metrics}):
            slices = sorted((s for t, s in evaluation.metrics if t == task),
                            key=lambda s: (s != "overall", s))
            names = _metric_order(list({m for s in slices for m, model in
                                        evaluation.metrics[(task, s)]
                                        if model == "" and not m.endswith("_diff")}))

            def cell(slice_name, metric):
                values = evaluation.metrics[(task, slice_name)]
                candidate = _fmt(values.get((metric, "")), metric)
                if not has_baseline:
                    return candidate
                return f"{candidate} / {_fmt(values.get((metric, BASELINE)), metric)}"

            rows = [[s] + [cell(s, m) for m in names] for s in slices]
            parts.append(f"<h3>{html.escape(task)} (candidate / last blessed)</h3>"
                         if has_baseline else f"<h3>{html.escape(task)}</h3>")
            parts.append(_table_html(["slice"] + names, rows, table_id=f"metrics-{task}"))
            figures = task_plots(evaluation, task)
            bounded = "auc" if any((m == "auc") for m in names) else "mean_squared_error"
            by_slice = slice_plot(evaluation, task, bounded)
            if by_slice:
                figures["by_slice"] = by_slice
            parts.append('<div class="figures">' + "".join(
                f'<img alt="{html.escape(task)} {kind}" data-plot="{kind}" src="{png}">'
                for kind, png in figures.items()) + "</div>")
        parts.append("</section>")

    parts.append('<section id="section-anomalies"><h2>Data: anomalies</h2>')
    anomalies = [[split, p] for split, problems in run.anomalies.items() for p in problems]
    anomalies += [["gate", a] for a in summary.get("data_anomalies") or []]
    parts.append(_table_html(["where", "anomaly"], anomalies, table_id="anomalies")
                 if anomalies else "<p id='anomalies'>No anomalies: every split matched the "
                                   "schema, and drift and skew were within their bounds.</p>")
    parts.append("</section>")

    parts.append('<section id="section-statistics"><h2>Data: statistics</h2>')
    rows = statistics_rows(run.statistics_uri) if run.statistics_uri else []
    if rows:
        parts.append(_table_html(["split", "feature", "type", "present", "missing", "summary"],
                                 rows, table_id="statistics"))
    elif run.statistics_uri:
        parts.append(f"<p>No feature statistics in {html.escape(run.statistics_uri)}.</p>")
    else:
        parts.append("<p>No statistics: the run stopped before StatisticsGen.</p>")
    parts.append("</section>")

    parts.append('<section id="section-lineage"><h2>Lineage</h2>')
    parts.append(_table_html(["role", "type", "artifact id", "uri"],
                             [list(map(str, row)) for row in run.lineage], table_id="lineage")
                 if run.lineage else "<p>No lineage: the run stopped before the Evaluator.</p>")
    parts.append("</section></body></html>")
    return "".join(parts)


def write_report(work_dir: str, out: str) -> str:
    """Writes the HTML report of `work_dir`'s last run to `out`; returns the
    text table for the terminal."""
    run = load_run(work_dir)
    summary_path = layout.summary_path(work_dir)
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
                    and metadata.node_id(store, event.execution_id) in SCHEMA_PRODUCERS):
                return schema
    return None


def export_schema(work_dir: str, out: str) -> str:
    """Copies the schema of the last run (inferred or imported) to `out`;
    returns the artifact URI it came from."""
    store = metadata.open_store(work_dir)
    schema = _data_schema(store)
    if schema is None:
        raise FileNotFoundError(f"no schema recorded in {layout.metadata_path(work_dir)}: "
                                "the last run stopped before SchemaGen")
    with open(os.path.join(schema.uri, "schema.pbtxt")) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(text)
    return schema.uri
