"""The report over a real TFMA evaluation (predictions, sliced, gated) and
the ML Metadata of the run around it, rendered in headless Chromium.
Baselines (a second model) need served models in TFMA: tests/e2e_test.py
reports on a real second run."""
import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import standard_artifacts

from mtrank.components import data_gate, eval_config
from mtrank.reporting import metadata, report
from mtrank_testing import browser as chromium
from mtrank_testing import trainer_util as tu

TASKS = [{"name": "click", "feedback": "click", "eval": {"min_auc": 0.6, "max_auc_drop": None}},
         {"name": "dwell", "feedback": "dwell", "type": "regression", "eval": {"max_mse": 1.0}}]


def _frame() -> pd.DataFrame:
    """Category a: click predicted well. b: no signal. tiny: 10 examples,
    predicted wrong."""
    rng = np.random.default_rng(1)
    category = np.array(["a"] * 200 + ["b"] * 190 + ["tiny"] * 10)
    label = (rng.random(len(category)) < 0.4).astype(float)
    noise = 0.2 * rng.random(len(category))
    candidate = np.select([category == "a", category == "b"], [0.8, 0.0], -1.0)
    dwell = rng.random(len(category)) * 3
    return pd.DataFrame({
        "category": category, "click_label": label, "dwell_label": dwell,
        "click": np.clip(0.5 + candidate * (label - 0.5) + noise, 0, 1),
        "dwell": dwell + 0.1})


def _write_examples(frame: pd.DataFrame, path: str) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for row in frame.to_dict("records"):
            feature = {"category": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[row.pop("category").encode()]))}
            feature.update({k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                            for k, v in row.items()})
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A TFMA output as the SlicedEvaluator writes it, the statistics and
    anomalies of the data, and the ML Metadata of the run that made them
    (the Evaluator did not bless the candidate; the Pusher did not push)."""
    root = tmp_path_factory.mktemp("report")
    frame = _frame()
    data = str(root / "examples.tfrecord")
    _write_examples(frame, data)
    config = eval_config.make_eval_config(tu.small_config(
        tasks=TASKS, validation={"slices": [["category"]], "min_slice_size": 50}))
    # Predictions are columns here, not served models' outputs.
    model_spec = config.model_specs[0]
    model_spec.ClearField("signature_name")
    model_spec.prediction_keys.update({"click": "click", "dwell": "dwell"})
    sizes = {(("category", v),): int((frame.category == v).sum()) for v in ("a", "b", "tiny")}
    gated, gating = eval_config.gate_slices(config, sizes, 50)
    output = str(root / "evaluation")
    tfma.run_model_analysis(eval_config=gated, data_location=data, output_path=output)
    with open(os.path.join(output, "slice_gating.json"), "w") as f:
        json.dump({**gating, "min_slice_size": 50}, f)
    statistics = {"train": frame.iloc[:300], "eval": frame.iloc[300:]}
    for split, rows in statistics.items():
        _write_statistics(rows, root / "statistics" / f"Split-{split}")
    # Transform's statistics of the transformed data: one file, no splits.
    _write_statistics(frame, root / "post_transform_stats")
    for split, problems in (("train", {}), ("eval", {"category": "Unexpected string values "
                                                                  "(toaster)"})):
        anomalies = anomalies_pb2.Anomalies()
        for feature, description in problems.items():
            anomalies.anomaly_info[feature].description = description
        (root / "anomalies" / f"Split-{split}").mkdir(parents=True)
        (root / "anomalies" / f"Split-{split}" / data_gate.ANOMALIES_FILE).write_bytes(
            anomalies.SerializeToString())
    work_dir = root / "work"
    work_dir.mkdir()
    _record_run(str(work_dir), root)
    run = report.load_run(str(work_dir))
    return {"root": root, "work_dir": work_dir, "evaluation": report.load_evaluation(output),
            "run": run}


def _write_statistics(frame: pd.DataFrame, directory) -> None:
    directory.mkdir(parents=True)
    stats = tfdv.generate_statistics_from_dataframe(frame[["category", "click_label"]])
    (directory / report.STATISTICS_FILE).write_bytes(stats.SerializeToString())


def _record_run(work_dir: str, root) -> None:
    """The ML Metadata a pipeline run of these artifacts records: one
    execution per component in the run's context and its node's, with
    input and output events by key. Transform's statistics come after
    StatisticsGen's, as in a run."""
    store = metadata.open_store(work_dir, create=True)
    run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
    node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
    run_context = metadata_store_pb2.Context(type_id=run_type, name="run-1")
    [run_context.id] = store.put_contexts([run_context])

    def artifact(cls, path, split_names=None, **custom):
        tfx_artifact = cls()
        tfx_artifact.uri = str(root / path)
        if split_names:
            tfx_artifact.split_names = json.dumps(split_names)
        for name, value in custom.items():
            tfx_artifact.set_int_custom_property(name, value)
        proto = tfx_artifact.mlmd_artifact
        proto.type_id = store.put_artifact_type(tfx_artifact.artifact_type)
        return proto

    def record(node, inputs, outputs):
        node_context = metadata_store_pb2.Context(type_id=node_type, name=f"mtrank.{node}")
        [node_context.id] = store.put_contexts([node_context])
        pairs = []
        for kind, artifacts in ((metadata_store_pb2.Event.INPUT, inputs),
                                (metadata_store_pb2.Event.OUTPUT, outputs)):
            for key, proto in artifacts.items():
                event = metadata_store_pb2.Event(type=kind)
                event.path.steps.add(key=key)
                pairs.append((proto, event))
        execution = metadata_store_pb2.Execution(
            type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(name=node)),
            last_known_state=metadata_store_pb2.Execution.COMPLETE)
        _, ids, _ = store.put_execution(execution, pairs, [run_context, node_context])
        for (proto, _), artifact_id in zip(pairs, ids):
            proto.id = artifact_id

    examples = artifact(standard_artifacts.Examples, "examples")
    record("LogExampleGen", {}, {"examples": examples})
    statistics = artifact(standard_artifacts.ExampleStatistics, "statistics", ["train", "eval"])
    record("StatisticsGen", {"examples": examples}, {"statistics": statistics})
    record("ExampleValidator", {"statistics": statistics}, {"anomalies": artifact(
        standard_artifacts.ExampleAnomalies, "anomalies", ["train", "eval"])})
    record("Transform", {"examples": examples}, {"post_transform_stats": artifact(
        standard_artifacts.ExampleStatistics, "post_transform_stats")})
    model = artifact(standard_artifacts.Model, "model")
    record("Trainer", {"examples": examples}, {"model": model})
    blessing = artifact(standard_artifacts.ModelBlessing, "blessing", blessed=0)
    record("Evaluator", {"examples": examples, "model": model}, {
        "evaluation": artifact(standard_artifacts.ModelEvaluation, "evaluation"),
        "blessing": blessing})
    record("Pusher", {"model": model, "model_blessing": blessing},
           {"pushed_model": artifact(standard_artifacts.PushedModel, "pushed", pushed=0)})


def _check(evaluation, task, slice_name, kind):
    found = [c for c in evaluation.checks
             if (c.task, c.slice, c.kind) == (task, slice_name, kind)]
    assert len(found) == 1, (task, slice_name, kind, evaluation.checks)
    return found[0]


def test_bounds_per_task_and_slice(evaluated):
    evaluation = evaluated["evaluation"]
    # Slice b fell below click's floor; a and overall did not.
    b_abs = _check(evaluation, "click", "category=b", "absolute")
    assert not b_abs.passed and b_abs.candidate < 0.6 and b_abs.baseline is None
    assert _check(evaluation, "click", "category=a", "absolute").passed
    assert _check(evaluation, "click", "overall", "absolute").passed
    assert not [c for c in evaluation.checks if c.kind == "change"]
    assert _check(evaluation, "dwell", "overall", "absolute").passed
    # The tiny slice is evaluated but carries no bound.
    assert ("click", "category=tiny") in evaluation.metrics
    assert not [c for c in evaluation.checks if c.slice == "category=tiny"]
    assert evaluation.gating["too_small"] == ["category=tiny"]


def test_plot_data_comes_from_tfma_plots(evaluated):
    evaluation = evaluated["evaluation"]
    plot = evaluation.plots[("click", "overall", "")]
    recall_precision = report.pr_points(plot)
    assert max(r for r, _ in recall_precision) == pytest.approx(1.0)
    assert ("click", "overall", report.BASELINE) not in evaluation.plots


def test_reliability_points_are_groups_of_equal_count_in_order_of_prediction(evaluated):
    points = report.reliability_points(evaluated["evaluation"].plots[("click", "overall", "")])
    assert sum(n for _, _, n in points) == pytest.approx(400)
    predictions = [p for p, _, _ in points]
    assert predictions == sorted(predictions) and all(0 <= y <= 1 for _, y, _ in points)
    # Ten groups of about 40 of the 400 eval examples (a bucket is not split:
    # the predictions clipped to exactly 1 make one bucket of their own).
    assert 8 <= len(points) <= report.RELIABILITY_POINTS
    assert sorted(n for _, _, n in points)[len(points) // 2] == pytest.approx(40, abs=4)


def test_counts_print_whole_and_rare_rates_keep_their_digits():
    assert report._fmt(6903.0, "example_count") == "6,903"
    assert report._fmt(0.57286, "auc") == "0.5729"
    assert report._fmt(0.00495, "mean_prediction") == "0.00495"
    assert report._fmt(0.0075, "mean_prediction") == "0.00750"  # as many digits as its column
    assert report._fmt(None, "auc") == report._fmt(float("nan"), "auc") == "-"


def test_statistics_come_from_statistics_gen_per_split(evaluated):
    # Transform's later statistics (no splits) are not the data's.
    run = evaluated["run"]
    assert run.statistics_uri == str(evaluated["root"] / "statistics")
    rows = report.statistics_rows(run.statistics_uri)
    by_split = {(split, feature): row for split, feature, *row in rows}
    assert set(by_split) == {(split, feature) for split in ("train", "eval")
                             for feature in ("category", "click_label")}
    assert by_split[("train", "category")][:3] == ["STRING", "300", "0"]
    assert by_split[("eval", "category")][3].startswith("2 unique; top b (90), tiny (10)")
    assert by_split[("eval", "click_label")][3].startswith("mean 0.")


def test_verdict_says_what_blocked_the_push(evaluated):
    evaluation, run = evaluated["evaluation"], evaluated["run"]
    assert (run.blessed, run.pushed) == (False, False)
    blessed, headline, details = report.verdict(evaluation, run)
    total = len(evaluation.checks)
    assert not blessed and headline == f"NOT blessed, so not pushed: 1 of {total} bounds failed"
    assert details[0].startswith("failed: click, slice category=b: auc 0.")
    assert details[0].endswith(", bound >= 0.6")
    assert "change bounds were not applied" in details[-1]


def test_verdict_of_a_blessed_model_names_its_push(evaluated):
    evaluation = evaluated["evaluation"]
    passing = report.Evaluation(metrics=evaluation.metrics, plots=evaluation.plots,
                                gating=evaluation.gating,
                                checks=[c for c in evaluation.checks if c.passed])
    pushed = report.RunArtifacts(
        evaluation_uri=None, statistics_uri=None, anomalies={}, lineage=[], blessed=True,
        pushed=True, pushed_version="17", pushed_destination="/serving/mtrank/17")
    assert report.verdict(passing, pushed)[1] == \
        "Blessed and pushed: version 17 to /serving/mtrank/17"
    stopped = dataclasses.replace(pushed, pushed=None, pushed_version=None,
                                  pushed_destination=None)
    assert report.verdict(passing, stopped)[1] == \
        "Blessed, but not pushed: the run stopped before the Pusher"


def test_text_table_names_failures(evaluated):
    text = report.text_table(evaluated["evaluation"], evaluated["run"], {})
    lines = [line for line in text.splitlines() if "category=b" in line and line.startswith("click")]
    assert len(lines) == 1 and lines[0].endswith("FAIL")
    assert "not gated (under 50 examples): category=tiny" in text
    assert "blessed: False: NOT blessed, so not pushed" in text
    assert "anomaly [eval] category: Unexpected string values (toaster)" in text


# Every section of the page, each with a table of at least one row.
SECTIONS_WITH_TABLES = ("section-bounds", "section-metrics", "section-anomalies",
                        "section-statistics", "section-lineage")


def test_report_of_a_run_renders_every_section_in_headless_chromium(evaluated):
    page = evaluated["root"] / "report.html"
    report.write_report(str(evaluated["work_dir"]), str(page))
    dom, screenshot = chromium.render(str(page), str(evaluated["root"]))
    assert chromium.empty_sections(dom) == []
    sections = chromium.sections(dom)
    assert set(sections) == {"section-verdict", *SECTIONS_WITH_TABLES}
    for name in SECTIONS_WITH_TABLES:
        assert sections[name]["tables"] and all(sections[name]["tables"]), (name, sections[name])
    assert "NOT blessed, so not pushed: 1 of" in dom
    for task in ("click", "dwell"):
        assert f"<h3>{task}</h3>" in dom
    assert dom.count('<tr class="fail">') == 1 and '<tr class="pass">' in dom
    # Counts are whole numbers: the overall slice's 400 eval examples.
    assert "<td>400</td>" in dom and "400.0000" not in dom
    assert "toaster" in dom and str(evaluated["root"] / "model") in dom
    # Reliability, PR and by-slice plots for click, by-slice for dwell, all decoded.
    assert 'data-images="4"' in dom and 'data-decoded="4"' in dom, dom[-400:]
    for kind in ("reliability", "pr", "by_slice"):
        assert f'alt="click {kind}"' in dom
    assert chromium.distinct_colours(screenshot) > 50


def test_an_empty_section_is_found():
    dom = ('<section id="filled"><h2>A</h2><p>text</p></section>'
           '<section id="heading-only"><h2>B</h2></section>'
           '<section id="no-rows"><h2>C</h2><table><thead><tr><th>x</th></tr></thead>'
           '<tbody></tbody></table></section>')
    assert chromium.empty_sections(dom) == ["heading-only: nothing under its heading",
                                            "no-rows: table 0 has no rows"]
