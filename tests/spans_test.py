"""Daily partitions through the real pipeline (LocalDagRunner, SQLite MLMD):
each run ingests one new span, and the training window is the newest
artifacts of the last `split.window_spans` spans, earlier ones reused from
ML Metadata rather than read again."""
import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from mtrank.components import spans
from mtrank.pipeline import config_inference, local_runner
from mtrank.reporting import metadata
from mtrank.simulator import logs as simulator

DAYS = 4  # with one day of lookahead, the first three are complete


@pytest.fixture(scope="module")
def partitions(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("logs"))
    simulator.simulate(out, impressions=1600, days=DAYS, seed=5)
    pattern = os.path.join(out, "events-{YYYY}-{MM}-{DD}.jsonl.gz")
    config = config_inference.infer_config(pattern)
    config = config.model_copy(update={"split": config.split.model_copy(
        update={"window_spans": 2})})
    return pattern, config, sorted(spans.list_spans(pattern))


def _executions(work_dir, pipeline_name, node_id):
    """[({input artifact ids}, {output artifact ids})] of one pipeline
    node's executions, oldest first, and the store."""
    store = metadata.open_store(work_dir)
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    result = []
    for execution in sorted(store.get_executions_by_context(context.id), key=lambda e: e.id):
        events = store.get_events_by_execution_ids([execution.id])
        is_output = {e.artifact_id: e.type in (metadata_store_pb2.Event.OUTPUT,
                                               metadata_store_pb2.Event.DECLARED_OUTPUT)
                     for e in events}
        result.append(({a for a, out in is_output.items() if not out},
                       {a for a, out in is_output.items() if out}))
    return store, result


def test_each_run_ingests_one_span_and_the_window_rolls(partitions, tmp_path):
    pattern, config, days = partitions
    work_dir = str(tmp_path / "work")
    complete = days[:-1]
    summaries = [local_runner.run(pattern, work_dir, config, span=span,
                                  to_component="span_window_resolver") for span in complete]
    assert [s["error"] for s in summaries] == [None] * len(complete)

    store, ingestions = _executions(work_dir, config.model_name, "LogExampleGen")
    examples_by_run = []
    for _, outputs in ingestions:
        [examples] = [a for a in store.get_artifacts_by_id(list(outputs))
                      if a.uri.split(os.sep)[-2] == "examples"]
        examples_by_run.append(examples)
    # One new span a run, each read from its own partition only.
    assert [a.properties["span"].int_value for a in examples_by_run] == complete
    for summary, span in zip(summaries, complete):
        assert summary["lines_read"] == _line_count(spans.span_glob(pattern, span))

    _, windows = _executions(work_dir, config.model_name, "span_window_resolver")
    ids = [a.id for a in examples_by_run]
    # The window holds the last two spans: earlier runs' artifacts, not new copies.
    assert [inputs for inputs, _ in windows] == [{ids[0]}, {ids[0], ids[1]}, {ids[1], ids[2]}]


def test_a_day_without_its_lookahead_is_not_ingested(partitions, tmp_path):
    pattern, config, days = partitions
    summary = local_runner.run(pattern, str(tmp_path / "work"), config, span=days[-1],
                               to_component="LogExampleGen")
    assert "waits for the partition" in summary["error"]


def _line_count(pattern):
    import glob
    import gzip

    return sum(gzip.open(p, "rb").read().count(b"\n") for p in glob.glob(pattern))
