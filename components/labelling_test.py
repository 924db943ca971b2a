"""Tests of the pure labelling functions: dtype conversion, the impression /
feedback join, and the time split."""
import calendar
import datetime
import json
import random

import pytest

from mtrank.components import labelling
from mtrank.base import counts
from mtrank.base import log_contract as lc
from mtrank.base import config as config_lib

MICROS = 1_000_000
DAY_US = 86400 * MICROS
T0_S = calendar.timegm((2024, 3, 1, 12, 0, 0))
T0 = T0_S * MICROS

CLICK_WINDOW_S = 600
PURCHASE_WINDOW_S = 86400


def _config(**overrides):
    raw = {
        "model_name": "m",
        "features": [
            {"name": "user_id", "kind": "categorical", "dtype": "string"},
            {"name": "item_id", "kind": "categorical", "dtype": "string"},
            {"name": "country", "kind": "categorical", "dtype": "string",
             "encoding": "vocabulary"},
            {"name": "price", "kind": "numeric", "dtype": "float"},
            {"name": "age", "kind": "numeric", "dtype": "int64"},
            {"name": "tags", "kind": "multivalent", "dtype": "string"},
            {"name": "cats", "kind": "multivalent", "dtype": "int64"},
        ],
        "tasks": [
            {"name": "click", "feedback": "click", "label_window_s": CLICK_WINDOW_S},
            {"name": "revenue", "feedback": "purchase", "type": "regression",
             "label_window_s": PURCHASE_WINDOW_S},
        ],
    }
    raw.update(overrides)
    return config_lib.config_from_dict(raw)


CONFIG = _config()
FEATURES = {"country": "DE", "price": 9.5, "age": 31, "tags": ["a", "b"], "cats": [3, 4]}


def _impression_event(ts=T0, request_id="r1", item_id="i1", position=1, features=None):
    return lc.Event(type="impression", ts=ts, request_id=request_id, user_id="u1",
                    item_id=item_id, position=position,
                    features=dict(FEATURES) if features is None else features)


def _line(event: lc.Event, note=None) -> str:
    """The event's log line; `note`, an extra field the contract ignores,
    tells the test's lines apart in dead letters."""
    obj = {"type": event.type, "ts": datetime.datetime.fromtimestamp(
        event.ts / MICROS, datetime.timezone.utc).isoformat(),
        "request_id": event.request_id, "user_id": event.user_id, "item_id": event.item_id}
    if event.is_impression:
        obj.update(position=event.position, features=event.features)
    elif event.value is not None:
        obj["value"] = event.value
    if note is not None:
        obj["note"] = note
    return json.dumps(obj)


def _note(line: str):
    return json.loads(line).get("note")


def _impression(ts=T0, line=None, source="a.jsonl", config=CONFIG, **kwargs):
    event = _impression_event(ts=ts, **kwargs)
    result = labelling.ImpressionConverter(config)(event, _line(event, line), source)
    assert isinstance(result, labelling.Impression), result
    return result


def _feedback(type_="click", delay_s=60.0, value=None, request_id="r1", item_id="i1",
              source="b.jsonl", line=None):
    ts = T0 + int(delay_s * MICROS)
    event = lc.Event(type=type_, ts=ts, request_id=request_id, user_id="u1",
                     item_id=item_id, value=value)
    return labelling.Feedback.of(event, _line(event, line), source)


def _values(example, key):
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    return kind, list(getattr(feature, kind).value)


def _label(result, task):
    kind, values = _values(result.example, f"{task}_label")
    assert kind == "float_list"
    assert len(values) == 1
    return values[0]


# --- ImpressionConverter ----------------------------------------------------


def test_impression_converter_converts_every_config_feature():
    imp = _impression(features={"country": "FR", "price": 2, "age": 4.0, "tags": "t",
                                "extra_not_in_config": "ignored"})
    assert imp.features == {
        "user_id": [b"u1"], "item_id": [b"i1"], "country": [b"FR"], "price": [2.0],
        "age": [4], "tags": [b"t"], "cats": [],
    }
    assert json.loads(imp.line)["type"] == "impression" and imp.source == "a.jsonl"


def test_impression_converter_missing_features_get_defaults():
    imp = _impression(features={})
    assert imp.features["country"] == [b""]
    assert imp.features["price"] == [0.0]
    assert imp.features["age"] == [0]
    assert imp.features["tags"] == [] and imp.features["cats"] == []


@pytest.mark.parametrize("name, value", [
    ("age", 2.5), ("price", "cheap"), ("country", 7), ("tags", [1, 2]), ("age", [1]),
])
def test_impression_converter_dead_letter_names_the_feature(name, value):
    features = dict(FEATURES, **{name: value})
    event = _impression_event(features=features)
    result = labelling.ImpressionConverter(CONFIG)(event, "the raw line", "src.jsonl")
    assert isinstance(result, lc.DeadLetter)
    assert result.reason == lc.WRONG_TYPE
    assert f"features.{name}" in result.detail
    assert result.line == "the raw line"
    assert result.source == "src.jsonl"


@pytest.mark.parametrize("value", [2 ** 63, -(2 ** 63) - 1, 1e30])
def test_int64_out_of_range_is_a_dead_letter_not_a_crash(value):
    event = _impression_event(features=dict(FEATURES, age=value))
    result = labelling.ImpressionConverter(CONFIG)(event, "line", "src")
    if isinstance(result, labelling.Impression):
        labelling.join_group(CONFIG, [result], [])  # must not raise
    assert isinstance(result, lc.DeadLetter)
    assert result.reason == lc.WRONG_TYPE and "features.age" in result.detail


# --- join_group: labels -----------------------------------------------------


def test_binary_label_1_when_feedback_within_window():
    result = labelling.join_group(CONFIG, [_impression()], [_feedback(delay_s=CLICK_WINDOW_S - 1)])
    assert _label(result, "click") == 1.0
    assert _label(result, "revenue") == 0.0
    assert result.outcomes.count(counts.FEEDBACK_MERGED) == 1
    assert result.dead_letters == []


def test_binary_label_0_when_feedback_outside_window():
    result = labelling.join_group(CONFIG, [_impression()], [_feedback(delay_s=CLICK_WINDOW_S + 1)])
    assert _label(result, "click") == 0.0
    assert result.outcomes.count(counts.FEEDBACK_LATE) == 1
    assert counts.FEEDBACK_MERGED not in result.outcomes


def test_feedback_at_impression_time_is_within_window():
    result = labelling.join_group(CONFIG, [_impression()], [_feedback(delay_s=0)])
    assert _label(result, "click") == 1.0


def test_feedback_before_impression_is_dead_lettered():
    result = labelling.join_group(CONFIG, [_impression()], [_feedback(delay_s=-1)])
    assert _label(result, "click") == 0.0
    assert [d.reason for d in result.dead_letters] == [lc.FEEDBACK_BEFORE_IMPRESSION]
    assert counts.FEEDBACK_LATE not in result.outcomes


def test_exact_repeats_count_once_as_duplicates():
    impression = _impression()
    click = _feedback(delay_s=5)
    result = labelling.join_group(CONFIG, [impression, impression], [click, click, click])
    assert _label(result, "click") == 1.0
    assert result.outcomes.count(counts.DUPLICATES) == 3
    assert result.outcomes.count(counts.FEEDBACK_MERGED) == 1
    assert result.outcomes.count(counts.EXAMPLE) == 1
    assert not result.dead_letters


def test_several_clicks_give_binary_label_one_not_a_count():
    fb = [_feedback(delay_s=s, line=f"c{s}") for s in (1, 2, 3)]
    result = labelling.join_group(CONFIG, [_impression()], fb)
    assert _label(result, "click") == 1.0
    assert result.outcomes.count(counts.FEEDBACK_MERGED) == 3


def test_regression_sums_values_within_window():
    fb = [
        _feedback("purchase", delay_s=10, value=10.5, line="p1"),
        _feedback("purchase", delay_s=3600, value=4.25, line="p2"),
        _feedback("purchase", delay_s=PURCHASE_WINDOW_S + 5, value=100.0, line="p3"),  # too late
    ]
    result = labelling.join_group(CONFIG, [_impression()], fb)
    assert _label(result, "revenue") == pytest.approx(14.75)
    assert _label(result, "click") == 0.0
    assert result.outcomes.count(counts.FEEDBACK_MERGED) == 2
    assert result.outcomes.count(counts.FEEDBACK_LATE) == 1


def test_regression_feedback_without_value_counts_one():
    fb = [_feedback("purchase", delay_s=10, line="p1"),
          _feedback("purchase", delay_s=20, value=2.0, line="p2")]
    result = labelling.join_group(CONFIG, [_impression()], fb)
    assert _label(result, "revenue") == 3.0


def test_one_feedback_type_can_label_several_tasks():
    config = _config(tasks=[
        {"name": "quick", "feedback": "click", "label_window_s": 60},
        {"name": "slow", "feedback": "click", "label_window_s": 3600},
    ])
    imp = _impression(config=config)
    result = labelling.join_group(config, [imp], [_feedback(delay_s=120)])
    assert _label(result, "quick") == 0.0
    assert _label(result, "slow") == 1.0
    # One event, one outcome: merged into at least one task.
    assert result.outcomes.count(counts.FEEDBACK_MERGED) == 1
    assert counts.FEEDBACK_LATE not in result.outcomes


def test_unused_feedback_type():
    result = labelling.join_group(CONFIG, [_impression()], [_feedback("like", delay_s=5)])
    assert result.outcomes.count(counts.FEEDBACK_UNUSED_TYPE) == 1
    assert _label(result, "click") == 0.0 and _label(result, "revenue") == 0.0
    assert result.dead_letters == []


def test_feedback_window_is_measured_from_the_kept_impression():
    early = _impression(ts=T0, line="early")
    late = _impression(ts=T0 + 2 * CLICK_WINDOW_S * MICROS, line="late")
    # 60 s after the late impression, 2*window+60 s after the early (kept) one.
    fb = _feedback(delay_s=2 * CLICK_WINDOW_S + 60)
    result = labelling.join_group(CONFIG, [late, early], [fb])
    assert _label(result, "click") == 0.0
    assert counts.FEEDBACK_LATE in result.outcomes


# --- join_group: orphans and duplicates -------------------------------------


def test_orphan_feedback_is_dead_lettered_with_source():
    fb = [_feedback(delay_s=1, line="orphan-1", source="x.jsonl"),
          _feedback("like", delay_s=2, line="orphan-2", source="y.jsonl.gz")]
    result = labelling.join_group(CONFIG, [], fb, ("r1", "i1"))
    assert result.example is None and result.impression_ts is None
    assert result.outcomes == [counts.dead_letter_outcome(lc.ORPHAN_FEEDBACK)] * 2
    assert sorted((d.reason, _note(d.line), d.source) for d in result.dead_letters) == [
        (lc.ORPHAN_FEEDBACK, "orphan-1", "x.jsonl"),
        (lc.ORPHAN_FEEDBACK, "orphan-2", "y.jsonl.gz"),
    ]
    assert all("r1" in d.detail and "i1" in d.detail for d in result.dead_letters)


@pytest.mark.parametrize("seed", range(4))
def test_duplicate_impressions_keep_earliest_regardless_of_order(seed):
    imps = [
        _impression(ts=T0 + 5 * MICROS, line="second", position=2, source="s2"),
        _impression(ts=T0, line="first", position=7, source="s1"),
        _impression(ts=T0 + 9 * MICROS, line="third", position=3, source="s3"),
    ]
    random.Random(seed).shuffle(imps)
    result = labelling.join_group(CONFIG, imps, [])
    assert result.impression_ts == T0
    assert _values(result.example, "position") == ("int64_list", [7])
    assert sorted((d.reason, _note(d.line), d.source) for d in result.dead_letters) == [
        (lc.CONFLICTING_IMPRESSION, "second", "s2"),
        (lc.CONFLICTING_IMPRESSION, "third", "s3"),
    ]
    assert result.outcomes.count(counts.dead_letter_outcome(lc.CONFLICTING_IMPRESSION)) == 2
    assert result.outcomes.count(counts.EXAMPLE) == 1


def test_duplicate_impressions_with_equal_ts_break_ties_by_line():
    a = _impression(line="line-a", position=1)
    b = _impression(line="line-b", position=2)
    for order in ([a, b], [b, a]):
        result = labelling.join_group(CONFIG, order, [])
        assert _values(result.example, "position") == ("int64_list", [1])
        assert [_note(d.line) for d in result.dead_letters] == ["line-b"]


# --- join_group: example contents -------------------------------------------


def test_example_has_every_feature_label_and_metadata():
    result = labelling.join_group(CONFIG, [_impression(position=4)],
                                  [_feedback(delay_s=30)])
    example = result.example
    keys = set(example.features.feature)
    expected = ({f.name for f in CONFIG.features} | set(CONFIG.label_keys)
                | {"request_id", "impression_ts", "position"})
    assert keys == expected
    assert _values(example, "request_id") == ("bytes_list", [b"r1"])
    assert _values(example, "impression_ts") == ("int64_list", [T0])
    assert _values(example, "position") == ("int64_list", [4])
    assert _values(example, "country") == ("bytes_list", [b"DE"])
    assert _values(example, "price") == ("float_list", [9.5])
    assert _values(example, "age") == ("int64_list", [31])
    assert _values(example, "tags") == ("bytes_list", [b"a", b"b"])
    assert _values(example, "cats") == ("int64_list", [3, 4])
    assert _values(example, "user_id") == ("bytes_list", [b"u1"])
    assert result.impression_ts == T0


def test_position_only_when_present_and_zero_kept():
    without = labelling.join_group(CONFIG, [_impression(position=None)], [])
    assert "position" not in without.example.features.feature
    zero = labelling.join_group(CONFIG, [_impression(position=0)], [])
    assert _values(zero.example, "position") == ("int64_list", [0])


def test_empty_lists_keep_their_dtype():
    result = labelling.join_group(CONFIG, [_impression(features={})], [])
    assert _values(result.example, "tags") == ("bytes_list", [])
    assert _values(result.example, "cats") == ("int64_list", [])
    assert _values(result.example, "price") == ("float_list", [0.0])
    assert _values(result.example, "age") == ("int64_list", [0])


def test_example_bytes_parse_in_tensorflow_as_one_example():
    # The bytes are the features' serialization followed by the joined
    # fields': TensorFlow's own parser must see one example holding both.
    import tensorflow as tf

    result = labelling.join_group(CONFIG, [_impression()], [_feedback(delay_s=1)])
    parsed = tf.io.parse_example([result.example_bytes], {
        "click_label": tf.io.FixedLenFeature([], tf.float32),
        "country": tf.io.FixedLenFeature([], tf.string),
        "tags": tf.io.VarLenFeature(tf.string),
        "impression_ts": tf.io.FixedLenFeature([], tf.int64)})
    assert parsed["click_label"].numpy().tolist() == [1.0]
    assert parsed["country"].numpy().tolist() == [b"DE"]
    assert parsed["tags"].values.numpy().tolist() == [b"a", b"b"]
    assert parsed["impression_ts"].numpy().tolist() == [T0]
    assert tf.train.Example.FromString(result.example_bytes) == result.example


# --- join_group: one span and its lookahead ---------------------------------


def test_lookahead_feedback_labels_but_is_counted_by_its_own_span():
    own = _feedback(delay_s=5, line="own")
    result = labelling.join_group(
        CONFIG, [_impression()], [own],
        lookahead_feedback=[_feedback(delay_s=5, line="own"),  # the same event again
                            _feedback("purchase", delay_s=60, value=3.0, line="next-day"),
                            _feedback(delay_s=-5, line="early")],
        span_start_ts=T0)
    assert _label(result, "revenue") == 3.0
    assert sorted(result.outcomes) == sorted([
        counts.EXAMPLE, counts.FEEDBACK_MERGED,
        counts.LOOKAHEAD_PREFIX + counts.FEEDBACK_MERGED,
        counts.LOOKAHEAD_PREFIX + counts.dead_letter_outcome(lc.FEEDBACK_BEFORE_IMPRESSION)])
    assert result.dead_letters == []  # the later span dead-letters its own lines


def test_without_an_impression_early_feedback_belongs_to_the_previous_span():
    day_start = T0 + 60 * MICROS  # the span starts a minute after the impression
    early = _feedback(delay_s=60 + CLICK_WINDOW_S - 1, line="early")
    late = _feedback(delay_s=60 + CLICK_WINDOW_S + 1, line="late")
    result = labelling.join_group(CONFIG, [], [early, late], ("r1", "i1"),
                                  lookahead_feedback=[_feedback(delay_s=99999)],
                                  span_start_ts=day_start)
    assert sorted(result.outcomes) == sorted([
        counts.FEEDBACK_PREVIOUS_SPAN, counts.dead_letter_outcome(lc.ORPHAN_FEEDBACK)])
    assert [_note(d.line) for d in result.dead_letters] == ["late"]


# --- conservation -----------------------------------------------------------


@pytest.mark.parametrize("impressions, feedback", [
    (0, 3), (1, 0), (1, 5), (3, 4),
])
def test_outcomes_count_equals_input_events(impressions, feedback):
    imps = [_impression(ts=T0 + i * MICROS, line=f"imp{i}") for i in range(impressions)]
    types = ["click", "purchase", "like"]
    delays = [5, -5, PURCHASE_WINDOW_S * 2, 100, 7]
    fb = [_feedback(types[j % 3], delay_s=delays[j], value=1.0, line=f"fb{j}")
          for j in range(feedback)]
    result = labelling.join_group(CONFIG, imps, fb)
    assert len(result.outcomes) == impressions + feedback
    assert len(result.dead_letters) == sum(
        o.startswith(counts.DEAD_LETTER_PREFIX) for o in result.outcomes)
    assert result.outcomes.count(counts.EXAMPLE) == (1 if impressions else 0)
    assert (result.example is not None) == bool(impressions)


# --- time split -------------------------------------------------------------


def _day_start(y, m, d):
    return calendar.timegm((y, m, d, 0, 0, 0)) * MICROS


def test_eval_start_day_and_split_at_day_boundaries():
    last = _day_start(2024, 3, 3) + 5 * 3600 * MICROS  # 2024-03-03T05:00Z
    first_eval = labelling.eval_start_day(last, 1)
    assert first_eval == _day_start(2024, 3, 3) // DAY_US
    assert labelling.split_of(_day_start(2024, 3, 3), first_eval) == "eval"
    assert labelling.split_of(_day_start(2024, 3, 3) - 1, first_eval) == "train"
    assert labelling.split_of(last, first_eval) == "eval"
    assert labelling.split_of(_day_start(2024, 3, 1), first_eval) == "train"


def test_eval_days_two_includes_the_previous_day():
    last = _day_start(2024, 3, 3)  # exactly midnight: the day has begun
    first_eval = labelling.eval_start_day(last, 2)
    assert first_eval == _day_start(2024, 3, 2) // DAY_US
    assert labelling.split_of(_day_start(2024, 3, 2), first_eval) == "eval"
    assert labelling.split_of(_day_start(2024, 3, 2) - 1, first_eval) == "train"


def test_last_microsecond_of_a_day_is_still_that_day():
    last = _day_start(2024, 3, 4) - 1  # 2024-03-03T23:59:59.999999Z
    first_eval = labelling.eval_start_day(last, 1)
    assert first_eval == _day_start(2024, 3, 3) // DAY_US
    assert labelling.split_of(_day_start(2024, 3, 3), first_eval) == "eval"
    assert labelling.split_of(_day_start(2024, 3, 3) - 1, first_eval) == "train"


def test_dead_letter_outcome_names():
    assert counts.dead_letter_outcome(lc.ORPHAN_FEEDBACK) == "dead_letter.orphan_feedback"
    assert json.loads(lc.DeadLetter("r", "d", "l", "s").to_json())["dead_letter_reason"] == "r"
