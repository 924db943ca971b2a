"""The bucketed join must give exactly what one ingestion pipeline gives (on
fuzzed simulated logs: tests/ingest_simulated_logs_test.py)."""
import datetime

import pytest

from mtrank.components import bucketed_join, spans
from mtrank.components.ingest_test import CONFIG, _fb, _imp, _write_logs  # the reference logs
from mtrank_testing.ingest_util import assert_same_ingestion, run_bucketed, run_ingestion


def test_passes_give_the_one_pipeline_result(tmp_path):
    logs = _write_logs(str(tmp_path / "logs"))
    reference = run_ingestion(logs, str(tmp_path / "one"), CONFIG)
    passes, bucketed = run_bucketed(logs, str(tmp_path / "passes"), max_pass_records=4,
                                    config=CONFIG)
    assert passes > 3  # really several passes
    assert_same_ingestion(bucketed, reference)


def test_passes_with_a_span_and_its_lookahead(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "2024-03-01.jsonl").write_bytes(b"\n".join([
        _imp("r1", "i1", "2024-03-01T23:59:00Z"), _imp("r2", "i2", "2024-03-01T10:00:00Z"),
        _fb("click", "r2", "i2", "2024-03-01T10:01:00Z")]) + b"\n")
    (logs / "2024-03-02.jsonl").write_bytes(
        _fb("click", "r1", "i1", "2024-03-02T00:01:00Z") + b"\n")
    pattern = str(logs / "{YYYY}-{MM}-{DD}.jsonl")
    span_input = spans.SpanInput.of(pattern, spans.span_of_date(datetime.date(2024, 3, 1)), 1)
    reference = run_ingestion(pattern, str(tmp_path / "one"), CONFIG, span_input=span_input)
    _, bucketed = run_bucketed(pattern, str(tmp_path / "passes"), max_pass_records=1,
                               config=CONFIG, span_input=span_input)
    assert_same_ingestion(bucketed, reference)
    assert bucketed["counts"]["lookahead.feedback_merged"] == 1


@pytest.mark.parametrize("counts, limit, expected", [
    ({0: 5, 1: 5, 2: 5}, 10, [[0, 1], [2]]),
    ({0: 5, 3: 20, 7: 1}, 10, [[0], [3], [7]]),  # an oversized bucket is a pass alone
    ({1: 1, 2: 1}, 100, [[1, 2]]),
    ({}, 10, []),
])
def test_plan_passes_packs_buckets_in_order(counts, limit, expected):
    assert bucketed_join.plan_passes(counts, limit) == expected


def test_a_key_always_lands_in_the_same_bucket():
    assert bucketed_join.bucket_of(("r1", "i1")) == bucketed_join.bucket_of(("r1", "i1"))
    buckets = {bucketed_join.bucket_of((f"r{i}", "i")) for i in range(2000)}
    assert buckets == set(range(bucketed_join.NUM_BUCKETS))


def test_used_on_the_direct_runner_for_large_inputs_only(tmp_path, monkeypatch):
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"x" * 1000)
    monkeypatch.setattr(bucketed_join, "MIN_INPUT_BYTES", 1000)
    assert bucketed_join.should_use([str(path)], [])
    assert bucketed_join.should_use([str(path)], ["--runner=DirectRunner"])
    assert not bucketed_join.should_use([str(path)], ["--runner=DataflowRunner"])
    monkeypatch.setattr(bucketed_join, "MIN_INPUT_BYTES", 1001)
    assert not bucketed_join.should_use([str(path)], [])
