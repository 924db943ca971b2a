"""The bucketed join must give exactly what one ingestion pipeline gives."""
import base64
import datetime
import glob
import json
import os

import apache_beam as beam
import pytest

from mtrank.components import bucketed_join, ingest, spans
from mtrank.components.ingest_test import (  # the one-pipeline reference and its logs
    _conservation_holds, _fuzzed_lines, _run, _write_logs)


def _run_bucketed(input_glob, out_dir, max_pass_records, config=None, span_input=None):
    """Like ingest_test._run, through bucketed_join.run."""
    from mtrank.components.ingest_test import CONFIG

    def write_outputs(outputs, name):
        for split in ingest.SPLITS:
            if split in outputs:
                (outputs[split]
                 | f"B64{split}" >> beam.Map(lambda b: base64.b64encode(b).decode())
                 | f"Write{split}" >> beam.io.WriteToText(os.path.join(out_dir, f"{split}-{name}")))
        outputs["dead_letters"] | "WriteDead" >> beam.io.WriteToText(
            os.path.join(out_dir, f"dead-{name}"))
        outputs["counts"] | "WriteCounts" >> beam.io.WriteToText(
            os.path.join(out_dir, f"counts-{name}"))

    scratch = os.path.join(out_dir, "scratch")
    passes = bucketed_join.run(beam.Pipeline, input_glob, config or CONFIG, span_input,
                               write_outputs, scratch, max_pass_records)["passes"]
    assert not os.path.exists(scratch)  # the buckets are removed

    def lines(prefix):
        result = []
        for path in sorted(glob.glob(os.path.join(out_dir, prefix + "*"))):
            with open(path, encoding="utf-8") as f:
                result.extend(line.rstrip("\n") for line in f)
        return result

    counts = {}
    for line in lines("counts-"):
        for key, value in json.loads(line).items():
            counts[key] = counts.get(key, 0) + value
    return passes, {
        "train": [base64.b64decode(x) for x in lines("train-")],
        "eval": [base64.b64decode(x) for x in lines("eval-")],
        "dead_letters": [json.loads(x) for x in lines("dead-")],
        "counts": counts,
    }


def _assert_same(bucketed, reference):
    for split in ingest.SPLITS:
        assert sorted(bucketed[split]) == sorted(reference[split])  # byte for byte
    assert bucketed["counts"] == reference["counts"]
    assert (sorted(json.dumps(d, sort_keys=True) for d in bucketed["dead_letters"])
            == sorted(json.dumps(d, sort_keys=True) for d in reference["dead_letters"]))


def test_passes_give_the_one_pipeline_result(tmp_path):
    logs = _write_logs(str(tmp_path / "logs"))
    reference = _run(logs, str(tmp_path / "one"))
    passes, bucketed = _run_bucketed(logs, str(tmp_path / "passes"), max_pass_records=4)
    assert passes > 3  # really several passes
    _assert_same(bucketed, reference)


def test_passes_on_fuzzed_logs_conserve_every_line(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_bytes(b"".join(l + b"\n" for l in _fuzzed_lines(3, tmp_path)))
    reference = _run(str(logs / "*"), str(tmp_path / "one"))
    passes, bucketed = _run_bucketed(str(logs / "*"), str(tmp_path / "passes"),
                                     max_pass_records=50)
    assert passes > 1
    _assert_same(bucketed, reference)
    _conservation_holds(bucketed["counts"], bucketed["dead_letters"])


def test_passes_with_a_span_and_its_lookahead(tmp_path):
    from mtrank.components.ingest_test import _fb, _imp

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "2024-03-01.jsonl").write_bytes(b"\n".join([
        _imp("r1", "i1", "2024-03-01T23:59:00Z"), _imp("r2", "i2", "2024-03-01T10:00:00Z"),
        _fb("click", "r2", "i2", "2024-03-01T10:01:00Z")]) + b"\n")
    (logs / "2024-03-02.jsonl").write_bytes(
        _fb("click", "r1", "i1", "2024-03-02T00:01:00Z") + b"\n")
    pattern = str(logs / "{YYYY}-{MM}-{DD}.jsonl")
    span_input = spans.SpanInput.of(pattern, spans.span_of_date(datetime.date(2024, 3, 1)), 1)
    reference = _run(pattern, str(tmp_path / "one"), span_input=span_input)
    _, bucketed = _run_bucketed(pattern, str(tmp_path / "passes"), max_pass_records=1,
                                span_input=span_input)
    _assert_same(bucketed, reference)
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
