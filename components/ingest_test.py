"""End-to-end tests of the ingestion Beam pipeline (DirectRunner) over a small
mix of gzip and plain JSON Lines files holding every kind of line."""
import collections
import glob
import gzip
import json
import os
import random

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from mtrank.components import ingest
from mtrank.base.counts import LINES_READ
from mtrank.base import log_contract as lc
from mtrank.base import config as config_lib
from mtrank_testing.ingest_util import assert_lines_conserved, file_line_count, run_ingestion

CONFIG = config_lib.config_from_dict({
    "model_name": "m",
    "features": [
        {"name": "user_id", "kind": "categorical", "dtype": "string"},
        {"name": "item_id", "kind": "categorical", "dtype": "string"},
        {"name": "country", "kind": "categorical", "dtype": "string"},
        {"name": "price", "kind": "numeric", "dtype": "float"},
        {"name": "age", "kind": "numeric", "dtype": "int64"},
        {"name": "tags", "kind": "multivalent", "dtype": "string"},
    ],
    "tasks": [
        {"name": "click", "feedback": "click", "label_window_s": 3600},
        {"name": "revenue", "feedback": "purchase", "type": "regression",
         "label_window_s": 86400},
    ],
    "split": {"eval_days": 1},
})

FEATS = {"country": "DE", "price": 1.5, "age": 30, "tags": ["a"]}


def _imp(rid, iid, ts, position=None, features=None, user="u1"):
    event = {"type": "impression", "ts": ts, "request_id": rid, "user_id": user,
             "item_id": iid, "features": dict(FEATS) if features is None else features}
    if position is not None:
        event["position"] = position
    return json.dumps(event).encode()


def _fb(type_, rid, iid, ts, value=None):
    event = {"type": type_, "ts": ts, "request_id": rid, "user_id": "u1", "item_id": iid}
    if value is not None:
        event["value"] = value
    return json.dumps(event).encode()


# Three UTC days: 2024-03-01 (train), 03-02 (train), 03-03 (eval, the last day).
# Each line is (bytes, expected outcome).
GZ_LINES = [
    (_imp("r1", "i1", "2024-03-01T10:00:00Z", position=0,
          features={"country": "FR", "price": 2, "age": 41.0, "tags": ["x", "y"]}),
     "impressions"),
    (_fb("click", "r1", "i1", "2024-03-01T10:05:00Z"), "feedback_merged"),
    # 12:00 at +02:00 is 10:00 UTC on day 2.
    (_imp("r2", "i2", "2024-03-02T12:00:00+02:00", position=3), "impressions"),
    # Two hours after r2: outside the one-hour click window.
    (_fb("click", "r2", "i2", "2024-03-02T12:00:00Z"), "feedback_late"),
    (_fb("like", "r2", "i2", "2024-03-02T10:01:00Z"), "feedback_unused_type"),
    # Local day 3 but UTC day 2 (23:30Z): train.
    (_imp("r3", "i3", "2024-03-03T00:30:00+01:00", position=1), "impressions"),
    # The later duplicate of r4/i4 (the earliest is in the plain file).
    (_imp("r4", "i4", "2024-03-03T00:10:00Z", position=9), "dead_letter.conflicting_impression"),
    (_fb("click", "r9", "i9", "2024-03-02T08:00:00Z"), "dead_letter.orphan_feedback"),
    (b"hello, not json", "dead_letter.not_json"),
    (b'{"type": "impression", "ts": "2024-03-01T10:00:00Z", "request_id"',
     "dead_letter.not_json"),
    (b"\xff\xfe\xfd not utf-8", "dead_letter.not_json"),
]
PLAIN_LINES = [
    (_fb("purchase", "r1", "i1", "2024-03-01T11:00:00Z", value=10.5), "feedback_merged"),
    (_fb("purchase", "r1", "i1", "2024-03-01T20:00:00Z", value=4.25), "feedback_merged"),
    # More than a day after r1: outside the purchase window.
    (_fb("purchase", "r1", "i1", "2024-03-02T10:00:01Z", value=99.0), "feedback_late"),
    (b"[1, 2, 3]", "dead_letter.not_object"),
    (b'{"type": "click", "ts": "2024-03-01T10:00:00Z", "user_id": "u", "item_id": "i"}',
     "dead_letter.missing_field"),
    (_imp("r7", "i7", "2024-03-01T10:00:00Z", position=-1), "dead_letter.wrong_type"),
    # Valid by the contract, wrong for the config (price must be a number).
    (_imp("r5", "i5", "2024-03-02T09:00:00Z", features=dict(FEATS, price="cheap")),
     "dead_letter.wrong_type"),
    # Its impression was dead-lettered, so it is an orphan.
    (_fb("click", "r5", "i5", "2024-03-02T09:01:00Z"), "dead_letter.orphan_feedback"),
    (_imp("r4", "i4", "2024-03-03T00:00:00Z", position=7), "impressions"),
    # Last impression, last microsecond of day 3; null and missing features.
    (_imp("r6", "i6", "2024-03-03T23:59:59.999999Z",
          features={"country": None, "price": None, "tags": None}), "impressions"),
    # Feedback before its impression: no window starts before the impression.
    (_fb("click", "r6", "i6", "2024-03-03T23:00:00Z"), "dead_letter.feedback_before_impression"),
    # At-least-once delivery: the same click again, from another file, counts once.
    (_fb("click", "r1", "i1", "2024-03-01T10:05:00Z"), "duplicates"),
    (_imp("r8", "i8", "2024-03-01T00:00:00Z"), "impressions"),
    # The same impression again, its JSON keys in another order: a duplicate.
    (json.dumps(dict(reversed(list(json.loads(_imp("r8", "i8", "2024-03-01T00:00:00Z"))
                                   .items())))).encode(), "duplicates"),
    (b"", "dead_letter.not_json"),  # a blank line is a line too
    (_fb("click", "r8", "i8", "2024-03-01T00:59:59Z"), "feedback_merged"),
]
TRAIN_REQUESTS = {"r1", "r2", "r3", "r8"}
EVAL_REQUESTS = {"r4", "r6"}


def _write_logs(directory, gz_lines=GZ_LINES, plain_lines=PLAIN_LINES):
    os.makedirs(directory, exist_ok=True)
    with gzip.open(os.path.join(directory, "part-0.jsonl.gz"), "wb") as f:
        f.write(b"".join(line + b"\n" for line, _ in gz_lines))
    with open(os.path.join(directory, "part-1.jsonl"), "wb") as f:
        f.write(b"".join(line + b"\n" for line, _ in plain_lines))
    return os.path.join(directory, "part-*")


def _run(input_glob, out_dir):
    """The ingestion of these tests' logs, with this module's config."""
    return run_ingestion(input_glob, out_dir, CONFIG)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return _write_logs(str(tmp_path_factory.mktemp("logs")))


@pytest.fixture(scope="module")
def run(logs, tmp_path_factory):
    return _run(logs, str(tmp_path_factory.mktemp("out")))


def _examples(run, split):
    return [tf.train.Example.FromString(b) for b in run[split]]


def _by_request(run):
    by_request = {}
    for split in ingest.SPLITS:
        for example in _examples(run, split):
            rid = example.features.feature["request_id"].bytes_list.value[0].decode()
            assert rid not in by_request
            by_request[rid] = (split, example)
    return by_request


def test_lines_read_equals_file_line_count(run, logs):
    assert run["counts"]["lines_read"] == file_line_count(logs)
    assert run["counts"]["lines_read"] == len(GZ_LINES) + len(PLAIN_LINES)


def test_outcome_counts_add_up_to_lines_read(run):
    counts = run["counts"]
    outcomes = {k: v for k, v in counts.items()
                if k != LINES_READ and not k.startswith("examples.")}
    assert sum(outcomes.values()) == counts["lines_read"]


def test_each_outcome_counted_as_expected(run):
    expected = collections.Counter(o for _, o in GZ_LINES + PLAIN_LINES)
    expected["lines_read"] = len(GZ_LINES) + len(PLAIN_LINES)
    expected["examples.train"] = len(TRAIN_REQUESTS)
    expected["examples.eval"] = len(EVAL_REQUESTS)
    assert run["counts"] == dict(expected)
    # Every dead-letter reason the parser and join can produce is exercised
    # (the file-level ones by the fuzz test below).
    file_level = {lc.LINE_TOO_LONG, lc.TRUNCATED_FILE, lc.UNREADABLE_FILE}
    assert ({f"dead_letter.{r}" for r in set(lc.DEAD_LETTER_REASONS) - file_level}
            <= set(run["counts"]))


def test_split_counts_add_up_to_impressions(run):
    counts = run["counts"]
    assert counts["examples.train"] + counts["examples.eval"] == counts["impressions"]
    assert counts["examples.train"] == len(run["train"])
    assert counts["examples.eval"] == len(run["eval"])


def test_eval_holds_exactly_the_last_utc_day(run):
    by_request = _by_request(run)
    assert {r for r, (s, _) in by_request.items() if s == "train"} == TRAIN_REQUESTS
    assert {r for r, (s, _) in by_request.items() if s == "eval"} == EVAL_REQUESTS
    last_day = max(e.features.feature["impression_ts"].int64_list.value[0]
                   for _, e in by_request.values()) // (86400 * 10**6)
    for split, example in by_request.values():
        day = example.features.feature["impression_ts"].int64_list.value[0] // (86400 * 10**6)
        assert (split == "eval") == (day == last_day)


def test_labels_and_features_of_known_examples(run):
    by_request = _by_request(run)

    def f(rid, key):
        feature = by_request[rid][1].features.feature[key]
        return list(getattr(feature, feature.WhichOneof("kind")).value)

    # r1: clicked within the hour; purchases 10.5 + 4.25 within the day (99 too late).
    assert f("r1", "click_label") == [1.0]
    assert f("r1", "revenue_label") == [pytest.approx(14.75)]
    assert f("r1", "country") == [b"FR"]
    assert f("r1", "price") == [2.0]
    assert f("r1", "age") == [41]
    assert f("r1", "tags") == [b"x", b"y"]
    assert f("r1", "position") == [0]
    # r2: its click came after two hours.
    assert f("r2", "click_label") == [0.0]
    assert f("r2", "revenue_label") == [0.0]
    assert f("r2", "impression_ts") == [1709373600 * 10**6]  # 2024-03-02T10:00:00Z
    # r8: clicked one second before the window closed.
    assert f("r8", "click_label") == [1.0]
    assert "position" not in by_request["r8"][1].features.feature
    # r6: click before the impression is not a label; nulls become defaults.
    assert f("r6", "click_label") == [0.0]
    assert f("r6", "country") == [b""]
    assert f("r6", "price") == [0.0]
    assert f("r6", "age") == [0]
    assert f("r6", "tags") == []
    assert f("r6", "impression_ts") == [1709510399999999]  # 2024-03-03T23:59:59.999999Z
    # r4: the earliest impression (position 7, plain file) was kept.
    assert f("r4", "position") == [7]
    assert f("r4", "user_id") == [b"u1"] and f("r4", "item_id") == [b"i4"]


def test_dead_letters_have_reason_source_and_line(run, logs):
    gz_path, plain_path = sorted(glob.glob(logs))
    dead = run["dead_letters"]
    expected_reasons = collections.Counter(
        o[len("dead_letter."):] for _, o in GZ_LINES + PLAIN_LINES
        if o.startswith("dead_letter."))
    assert collections.Counter(d["dead_letter_reason"] for d in dead) == expected_reasons

    expected = set()
    for path, lines in ((gz_path, GZ_LINES), (plain_path, PLAIN_LINES)):
        for line, outcome in lines:
            if outcome.startswith("dead_letter."):
                expected.add((outcome[len("dead_letter."):],
                              os.path.basename(path),
                              line.decode("utf-8", errors="replace")))
    got = {(d["dead_letter_reason"], os.path.basename(d["source"]), d["line"]) for d in dead}
    assert got == expected
    assert all(d["detail"] for d in dead)


def test_duplicate_dead_letter_is_the_later_impression(run):
    [duplicate] = [d for d in run["dead_letters"]
                   if d["dead_letter_reason"] == lc.CONFLICTING_IMPRESSION]
    assert json.loads(duplicate["line"])["position"] == 9
    assert duplicate["source"].endswith("part-0.jsonl.gz")


def _canonical(serialized):
    """Serialized examples as a sorted list of deterministic serializations
    (protobuf map order is otherwise arbitrary)."""
    return sorted(tf.train.Example.FromString(b).SerializeToString(deterministic=True)
                  for b in serialized)


@pytest.fixture(scope="module")
def run_again(logs, tmp_path_factory):
    return _run(logs, str(tmp_path_factory.mktemp("again")))


def test_deterministic_across_runs(run, run_again):
    for split in ingest.SPLITS:
        assert run[split]
        assert _canonical(run_again[split]) == _canonical(run[split])
    assert run_again["counts"] == run["counts"]
    assert (sorted(json.dumps(d, sort_keys=True) for d in run_again["dead_letters"])
            == sorted(json.dumps(d, sort_keys=True) for d in run["dead_letters"]))


def test_serialized_bytes_deterministic_across_runs(run, run_again):
    for split in ingest.SPLITS:
        assert sorted(run_again[split]) == sorted(run[split])


def test_independent_of_line_order_and_file_layout(run, tmp_path):
    # The same events shuffled and swapped between the gzip and plain file.
    lines = GZ_LINES + PLAIN_LINES
    shuffled = random.Random(7).sample(lines, len(lines))
    logs = _write_logs(str(tmp_path / "logs"), shuffled[:10], shuffled[10:])
    other = _run(logs, str(tmp_path / "out"))
    for split in ingest.SPLITS:
        assert _canonical(other[split]) == _canonical(run[split])
    assert other["counts"] == run["counts"]


def test_with_test_pipeline_and_assert_that(tmp_path):
    logs = _write_logs(str(tmp_path), [
        (_imp("a", "1", "2024-03-01T10:00:00Z"), "impressions"),
        (_imp("b", "2", "2024-03-02T10:00:00Z"), "impressions"),
        (_fb("click", "b", "2", "2024-03-02T10:00:30Z"), "feedback_merged"),
    ], [(b"{", "dead_letter.not_json")])
    with test_pipeline.TestPipeline() as p:
        outputs = p | ingest.LogsToExamples(logs, CONFIG)
        labels = lambda split: outputs[split] | f"Labels{split}" >> beam.Map(
            lambda b: (tf.train.Example.FromString(b).features.feature["request_id"]
                       .bytes_list.value[0],
                       tf.train.Example.FromString(b).features.feature["click_label"]
                       .float_list.value[0]))
        assert_that(labels("train"), equal_to([(b"a", 0.0)]), label="train")
        assert_that(labels("eval"), equal_to([(b"b", 1.0)]), label="eval")
        assert_that(outputs["dead_letters"] | beam.Map(
            lambda d: json.loads(d)["dead_letter_reason"]),
            equal_to(["not_json"]), label="dead")
        assert_that(outputs["counts"] | beam.Map(json.loads), equal_to([{
            "lines_read": 4, "impressions": 2, "feedback_merged": 1,
            "dead_letter.not_json": 1, "examples.train": 1, "examples.eval": 1,
        }]), label="counts")


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "logs.jsonl"  # gzip inside, no .gz in the name
    with gzip.open(path, "wb") as f:
        f.write(_imp("a", "1", "2024-03-01T10:00:00Z") + b"\n")
    counts = _run(str(path), str(tmp_path / "out"))["counts"]
    assert counts == {"lines_read": 1, "impressions": 1, "examples.eval": 1}


def test_truncated_gzip_keeps_what_came_before_and_says_so(tmp_path):
    lines = [_imp(f"r{i}", "i", "2024-03-01T10:00:00Z") for i in range(2000)]
    whole = gzip.compress(b"".join(l + b"\n" for l in lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    result = _run(str(path), str(tmp_path / "out"))
    counts = result["counts"]
    [truncated] = [d for d in result["dead_letters"]
                   if d["dead_letter_reason"] == lc.TRUNCATED_FILE]
    assert truncated["source"] == str(path)
    # The lines before the cut became examples; the cut-off rest is one dead
    # letter (its lines cannot be counted).
    assert 0 < counts["impressions"] < len(lines)
    assert counts[LINES_READ] == counts["impressions"] + sum(
        v for k, v in counts.items() if k.startswith("dead_letter."))
    assert_lines_conserved(counts, result["dead_letters"])


def test_json_csv_and_parquet_mix_in_one_run(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    logs = tmp_path / "logs"
    logs.mkdir()
    # Impression r1 in JSON Lines; its click in CSV; its purchase in Parquet.
    (logs / "a.jsonl.gz").write_bytes(gzip.compress(
        _imp("r1", "i1", "2024-03-01T10:00:00Z", position=0) + b"\n"
        + _imp("r2", "i2", "2024-03-02T10:00:00Z") + b"\n"))
    (logs / "b.csv").write_text(
        "type,ts,request_id,user_id,item_id,features.country,features.price,features.tags\n"
        "click,2024-03-01T10:00:30Z,r1,u1,i1,,,\n"
        'impression,2024-03-02T11:00:00Z,r3,u1,i3,FR,2,"[""x""]"\n')
    pq.write_table(pa.table({
        "type": ["purchase"], "ts": ["2024-03-01T10:30:00Z"], "request_id": ["r1"],
        "user_id": ["u1"], "item_id": ["i1"], "value": [12.0]}), logs / "c.parquet")
    result = _run(str(logs / "*"), str(tmp_path / "out"))
    assert result["counts"] == {"lines_read": 5, "impressions": 3, "feedback_merged": 2,
                                "examples.train": 1, "examples.eval": 2}
    [train] = [tf.train.Example.FromString(b) for b in result["train"]]
    labels = {k: v.float_list.value[0] for k, v in train.features.feature.items()
              if k.endswith("_label")}
    assert labels["click_label"] == 1.0 and labels["revenue_label"] == 12.0
    by_request = {tf.train.Example.FromString(b).features.feature["request_id"].bytes_list
                  .value[0]: tf.train.Example.FromString(b) for b in result["eval"]}
    assert by_request[b"r3"].features.feature["price"].float_list.value[0] == 2.0


def test_feedback_only_logs_are_all_orphans(tmp_path):
    path = tmp_path / "only-feedback.jsonl"
    path.write_bytes(_fb("click", "r1", "i1", "2024-03-01T10:00:00Z") + b"\n")
    result = _run(str(path), str(tmp_path / "out"))
    assert result["counts"] == {"lines_read": 1, "dead_letter.orphan_feedback": 1}
    assert result["train"] == result["eval"] == []
