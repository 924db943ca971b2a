"""The simulator's logs through the ingestion Beam pipeline (DirectRunner):
fuzzed, every line still has exactly one outcome; in daily partitions, each
span ingested alone gives the examples one ingestion of every day gives."""
import datetime
import gzip
import json
import os
import random

import pytest
import tensorflow as tf

from mtrank.base import log_files
from mtrank.base.counts import LINES_READ
from mtrank.components import spans
from mtrank.pipeline import config_inference
from mtrank.simulator import logs as simulator
from mtrank_testing.ingest_util import (assert_lines_conserved, assert_same_ingestion,
                                        file_line_count, run_bucketed, run_ingestion)


def _fuzzed_lines(seed: int, clean_dir) -> list:
    """Simulated log lines, a fraction of them broken in every way a
    producer or a disk can break them."""
    lines = [line.rstrip(b"\n") for path in sorted(clean_dir.glob("events-*"))
             for line in gzip.open(path).read().splitlines()]
    rng = random.Random(seed)
    fuzzed = []
    for line in lines:
        event = json.loads(line)
        roll = rng.random()
        if roll < 0.03:
            fuzzed.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))))
        elif roll < 0.06:
            event.pop(rng.choice(["type", "ts", "request_id", "user_id", "item_id"]))
            fuzzed.append(json.dumps(event).encode())
        elif roll < 0.09:
            event[rng.choice(["ts", "user_id", "item_id"])] = rng.choice([7, None, [], {}])
            fuzzed.append(json.dumps(event).encode())
        elif roll < 0.11:
            fuzzed.append(line[: rng.randrange(1, len(line))])  # truncated JSON
        elif roll < 0.14:
            fuzzed += [line, line]  # delivered twice
        elif roll < 0.16 and event["type"] != "impression":
            event["request_id"] = "orphan-" + event["request_id"]
            fuzzed.append(json.dumps(event).encode())
        else:
            fuzzed.append(line)
    fuzzed.insert(rng.randrange(len(fuzzed)), b'{"pad": "' + b"x" * (log_files.MAX_LINE_BYTES + 10) + b'"}')
    return fuzzed


@pytest.mark.parametrize("seed", [1, 2])
def test_conservation_on_fuzzed_logs(tmp_path, seed):
    clean = tmp_path / "clean"
    simulator.simulate(str(clean), impressions=300, days=3, seed=seed)
    config = config_inference.infer_config(str(clean / "events-*"))
    lines = _fuzzed_lines(seed, clean)
    third = len(lines) // 3
    logs = tmp_path / "logs"
    logs.mkdir()
    # A plain file, and a gzip file of two concatenated members.
    parts = [b"".join(l + b"\n" for l in part)
             for part in (lines[:third], lines[third:2 * third], lines[2 * third:])]
    (logs / "a.jsonl").write_bytes(parts[0])
    with open(logs / "b.jsonl.gz", "wb") as f:
        f.write(gzip.compress(parts[1]) + gzip.compress(parts[2]))
    result = run_ingestion(str(logs / "*"), str(tmp_path / "out"), config)
    counts = result["counts"]
    # Intact files: every physical line (garbage may hold newlines) is read,
    # and each has exactly one outcome.
    assert counts[LINES_READ] == sum(part.count(b"\n") for part in parts)
    assert_lines_conserved(counts, result["dead_letters"])
    assert counts["dead_letter.line_too_long"] == 1
    assert counts["duplicates"] > 0 and counts["dead_letter.orphan_feedback"] > 0
    assert counts["impressions"] > 0


# Daily partitions: each span ingested alone must give the examples that one
# ingestion of every day gives, with each line counted by its own span.
SPAN_LOGS_DAYS = 4


def test_bucketed_passes_on_fuzzed_logs_conserve_every_line(tmp_path):
    clean = tmp_path / "clean"
    simulator.simulate(str(clean), impressions=300, days=3, seed=3)
    config = config_inference.infer_config(str(clean / "events-*"))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_bytes(b"".join(l + b"\n" for l in _fuzzed_lines(3, clean)))
    reference = run_ingestion(str(logs / "*"), str(tmp_path / "one"), config)
    passes, bucketed = run_bucketed(str(logs / "*"), str(tmp_path / "passes"),
                                    max_pass_records=50, config=config)
    assert passes > 1
    assert_same_ingestion(bucketed, reference)
    assert_lines_conserved(bucketed["counts"], bucketed["dead_letters"])


@pytest.fixture(scope="module")
def span_logs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("span_logs"))
    simulator.simulate(out, impressions=1500, days=SPAN_LOGS_DAYS, seed=3)
    pattern = os.path.join(out, "events-{YYYY}-{MM}-{DD}*")
    config = config_inference.infer_config(pattern)
    # A click a minute after midnight on the impression of a minute before,
    # in the next day's partition, at every day boundary.
    days = [spans.date_of_span(s) for s in spans.list_spans(pattern)]
    features = {f.name: f.default_value if f.is_scalar else [] for f in config.features
                if f.name not in ("user_id", "item_id")}
    for day, next_day in zip(days, days[1:]):
        event = {"request_id": f"late-{day}", "user_id": "u1", "item_id": "i1"}
        impression = dict(event, type="impression", ts=f"{day}T23:59:00Z", position=0,
                          features=features)
        click = dict(event, type="click", ts=f"{next_day}T00:01:00Z")
        with open(os.path.join(out, f"events-{day}-extra.jsonl"), "a") as f:
            f.write(json.dumps(impression) + "\n")
        with open(os.path.join(out, f"events-{next_day}-extra.jsonl"), "a") as f:
            f.write(json.dumps(click) + "\n")
    return pattern, config


def _by_key(serialized):
    by_key = {}
    for b in serialized:
        example = tf.train.Example.FromString(b)
        f = example.features.feature
        by_key[(f["request_id"].bytes_list.value[0], f["item_id"].bytes_list.value[0])] = (
            example.SerializeToString(deterministic=True))
    return by_key


def _impression_day(serialized: bytes) -> str:
    ts = tf.train.Example.FromString(serialized).features.feature[
        "impression_ts"].int64_list.value[0]
    return datetime.datetime.fromtimestamp(ts / 1e6, datetime.timezone.utc).date().isoformat()


def test_spans_give_the_examples_of_one_whole_ingestion(span_logs, tmp_path):
    pattern, config = span_logs
    whole = run_ingestion(spans.any_span_glob(pattern), str(tmp_path / "whole"), config)
    whole_examples = _by_key(whole["train"] + whole["eval"])
    lookahead = spans.lookahead_days(config.max_label_window_s)
    complete = sorted(spans.list_spans(pattern))[:-lookahead]
    assert len(complete) == SPAN_LOGS_DAYS - lookahead
    from_spans = {}
    for span in complete:
        span_input = spans.SpanInput.of(pattern, span, lookahead)
        result = run_ingestion(pattern, str(tmp_path / str(span)), config, span_input)
        counts = result["counts"]
        # Every line of the span's own partition, and none of the lookahead's,
        # is counted once.
        assert counts[LINES_READ] == file_line_count(span_input.own_glob)
        assert counts["lookahead.lines_read"] == sum(
            file_line_count(g) for g in span_input.lookahead_globs)
        assert_lines_conserved(counts, result["dead_letters"])
        assert counts["lookahead.feedback_merged"] > 0  # feedback after midnight
        if span != complete[0]:
            assert counts["feedback_previous_span"] > 0
        examples = _by_key(result["train"] + result["eval"])
        assert len(result["eval"]) / len(examples) == pytest.approx(
            config.split.eval_percent / 100, abs=0.06)
        from_spans.update(examples)
    # The same examples, labels included, as the whole ingestion gave for the
    # impressions of those days.
    days = {spans.date_of_span(s).isoformat() for s in complete}
    expected = {key: ex for key, ex in whole_examples.items()
                if _impression_day(ex) in days}
    assert from_spans == expected
