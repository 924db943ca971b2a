"""Tests of log contract v1 parsing: valid events and every dead-letter reason."""
import calendar
import datetime
import json

import pytest

from mtrank.base import log_contract as lc

# 2024-03-01T12:00:00Z, computed independently of the code under test.
NOON_UTC_S = calendar.timegm((2024, 3, 1, 12, 0, 0))
MICROS = 1_000_000


def _impression(**overrides):
    event = {
        "type": "impression", "ts": "2024-03-01T12:00:00Z", "request_id": "r1",
        "user_id": "u1", "item_id": "i1", "position": 2,
        "features": {"country": "DE", "price": 9.5, "age": 31, "tags": ["a", "b"]},
    }
    event.update(overrides)
    return event


def _feedback(**overrides):
    event = {"type": "click", "ts": "2024-03-01T12:01:00Z", "request_id": "r1",
             "user_id": "u1", "item_id": "i1"}
    event.update(overrides)
    return event


def _without(event, field):
    event = dict(event)
    del event[field]
    return event


def _line(obj):
    return json.dumps(obj)


def _parse(obj, source="logs/a.jsonl"):
    return lc.parse_event(_line(obj), source)


def _assert_dead(result, reason, detail_contains=None):
    assert isinstance(result, lc.DeadLetter), result
    assert result.reason == reason, (result.reason, result.detail)
    if detail_contains is not None:
        assert detail_contains in result.detail, result.detail


# --- valid events -----------------------------------------------------------


def test_valid_impression():
    event = _parse(_impression())
    assert isinstance(event, lc.Event)
    assert event.is_impression
    assert event.type == "impression"
    assert event.ts == NOON_UTC_S * MICROS
    assert (event.request_id, event.user_id, event.item_id) == ("r1", "u1", "i1")
    assert event.position == 2
    assert event.features == {"country": "DE", "price": 9.5, "age": 31, "tags": ["a", "b"]}
    assert event.value is None
    assert event.key == ("r1", "i1")


def test_valid_impression_position_optional_and_zero_allowed():
    assert _parse(_without(_impression(), "position")).position is None
    assert _parse(_impression(position=0)).position == 0
    assert _parse(_impression(position=None)).position is None


def test_valid_feedback_with_and_without_value():
    event = _parse(_feedback())
    assert isinstance(event, lc.Event)
    assert not event.is_impression
    assert event.ts == (NOON_UTC_S + 60) * MICROS
    assert event.value is None
    assert event.features is None
    assert event.key == ("r1", "i1")

    purchase = _parse(_feedback(type="purchase", value=3))
    assert purchase.value == 3.0 and isinstance(purchase.value, float)


def test_feedback_needs_no_features():
    event = _parse(_feedback())
    assert isinstance(event, lc.Event)


def test_bytes_line_with_trailing_newline():
    event = lc.parse_event((_line(_impression()) + "\r\n").encode("utf-8"))
    assert isinstance(event, lc.Event)
    assert event.ts == NOON_UTC_S * MICROS


@pytest.mark.parametrize("ts, expected_s, expected_extra_us", [
    ("2024-03-01T12:00:00Z", NOON_UTC_S, 0),
    ("2024-03-01T12:00:00z", NOON_UTC_S, 0),
    ("2024-03-01t12:00:00Z", NOON_UTC_S, 0),
    ("2024-03-01T12:00:00+00:00", NOON_UTC_S, 0),
    # 14:00 at +02:00 is 12:00 UTC.
    ("2024-03-01T14:00:00+02:00", NOON_UTC_S, 0),
    # 07:00 at -05:00 is 12:00 UTC.
    ("2024-03-01T07:00:00-05:00", NOON_UTC_S, 0),
    # Crosses a UTC day boundary: 01:30 on the 2nd at +13:30 is 12:00 on the 1st.
    ("2024-03-02T01:30:00+13:30", NOON_UTC_S, 0),
    ("2024-03-01T12:00:00.123Z", NOON_UTC_S, 123_000),
    ("2024-03-01T12:00:00.123456Z", NOON_UTC_S, 123_456),
    ("2024-03-01T14:00:00.000001+02:00", NOON_UTC_S, 1),
    ("1970-01-01T00:00:00Z", 0, 0),
    # Before the epoch: negative micros.
    ("1969-12-31T23:59:59.500000Z", -1, 500_000),
])
def test_ts_to_epoch_micros(ts, expected_s, expected_extra_us):
    event = _parse(_impression(ts=ts))
    assert isinstance(event, lc.Event), event
    assert event.ts == expected_s * MICROS + expected_extra_us


def test_ts_matches_datetime_timestamp_for_offsets():
    # Cross-check against datetime's own UTC conversion.
    for ts in ("2023-07-15T23:45:10.250000+05:45", "2020-02-29T00:00:00-11:00"):
        expected = datetime.datetime.fromisoformat(ts).timestamp()
        assert _parse(_impression(ts=ts)).ts == round(expected * MICROS)


@pytest.mark.parametrize("ts, expected_extra_us", [
    ("2024-03-01T12:00:00.5Z", 500_000),
    ("2024-03-01T12:00:00.12Z", 120_000),
    ("2024-03-01T12:00:00.123456789Z", 123_456),
])
def test_ts_any_number_of_fractional_digits(ts, expected_extra_us):
    event = _parse(_impression(ts=ts))
    assert isinstance(event, lc.Event), event
    assert event.ts == NOON_UTC_S * MICROS + expected_extra_us


# --- not_json ---------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "hello world",
    "",
    '{"type": "impression", "ts": "2024-03-01T12:00:00Z", "request_id"',
    _line(_impression())[:-1],
    b"\xff\xfe\xfd\xfc",
    b"\x1f\x8b\x08\x00garbage",
])
def test_not_json(line):
    result = lc.parse_event(line, "src.jsonl")
    _assert_dead(result, lc.NOT_JSON)
    assert result.source == "src.jsonl"


def test_invalid_utf8_inside_a_json_string_is_not_json():
    raw = _line(_impression(item_id="ITEM")).encode("utf-8").replace(b"ITEM", b"i\xff\xfe")
    result = lc.parse_event(raw)
    _assert_dead(result, lc.NOT_JSON)


def test_deeply_nested_json_is_a_dead_letter_not_a_crash():
    result = lc.parse_event("[" * 100_000 + "]" * 100_000)
    assert isinstance(result, lc.DeadLetter)
    assert result.reason in (lc.NOT_JSON, lc.NOT_OBJECT)


# --- not_object -------------------------------------------------------------


@pytest.mark.parametrize("line", ["[1, 2, 3]", "42", '"impression"', "null", "true",
                                  _line([_impression()])])
def test_not_object(line):
    _assert_dead(lc.parse_event(line), lc.NOT_OBJECT)


# --- missing_field ----------------------------------------------------------


@pytest.mark.parametrize("field", lc.REQUIRED_STRING_FIELDS)
@pytest.mark.parametrize("make", [_impression, _feedback])
def test_missing_required_field(make, field):
    _assert_dead(_parse(_without(make(), field)), lc.MISSING_FIELD, field)


@pytest.mark.parametrize("field", lc.REQUIRED_STRING_FIELDS)
def test_null_required_field_is_missing(field):
    _assert_dead(_parse(_impression(**{field: None})), lc.MISSING_FIELD, field)


@pytest.mark.parametrize("field", lc.REQUIRED_STRING_FIELDS)
def test_empty_required_field_is_missing(field):
    _assert_dead(_parse(_feedback(**{field: ""})), lc.MISSING_FIELD, field)


def test_impression_without_features():
    _assert_dead(_parse(_without(_impression(), "features")), lc.MISSING_FIELD, "features")


# --- wrong_type -------------------------------------------------------------


@pytest.mark.parametrize("field", ["request_id", "user_id", "item_id", "type", "ts"])
@pytest.mark.parametrize("value", [123, 1.5, ["r1"], {"id": "r1"}, True])
def test_non_string_required_field(field, value):
    _assert_dead(_parse(_impression(**{field: value})), lc.WRONG_TYPE, field)


@pytest.mark.parametrize("ts", [
    "yesterday",
    "2024-13-01T12:00:00Z",
    "2024-03-01T25:00:00Z",
    "01/03/2024 12:00",
    "2024-03-01T12:00:00+02",
])
def test_bad_ts(ts):
    _assert_dead(_parse(_impression(ts=ts)), lc.WRONG_TYPE, "ts")


@pytest.mark.parametrize("ts", ["2024-03-01T12:00:00", "2024-03-01T12:00:00.250", "2024-03-01"])
def test_ts_without_offset_is_rejected(ts):
    _assert_dead(_parse(_feedback(ts=ts)), lc.WRONG_TYPE, "ts")


@pytest.mark.parametrize("position", [-1, True, False, 1.0, 2.5, "3", [1]])
def test_bad_position(position):
    _assert_dead(_parse(_impression(position=position)), lc.WRONG_TYPE, "position")


def test_position_beyond_int64_is_wrong_type():
    _assert_dead(_parse(_impression(position=2 ** 63)), lc.WRONG_TYPE, "position")


@pytest.mark.parametrize("features", [[], ["a"], "country=DE", 3])
def test_features_not_an_object(features):
    _assert_dead(_parse(_impression(features=features)), lc.WRONG_TYPE, "features")


@pytest.mark.parametrize("value", [
    {"nested": 1},  # dict
    True,  # bool is not a number
    False,
    ["a", 1],  # mixed list
    [1, "a"],
    [1, None],
    [["a"]],
    [True, False],  # list of bools
])
def test_bad_feature_value_names_the_feature(value):
    result = _parse(_impression(features={"country": "DE", "weird": value}))
    _assert_dead(result, lc.WRONG_TYPE, "features.weird")


@pytest.mark.parametrize("value", ["3", True, [1], {"v": 1}])
def test_non_numeric_feedback_value(value):
    _assert_dead(_parse(_feedback(value=value)), lc.WRONG_TYPE, "value")


def test_null_feature_values_accepted():
    event = _parse(_impression(features={"country": None, "tags": None, "price": 1}))
    assert isinstance(event, lc.Event)
    assert event.features == {"country": None, "tags": None, "price": 1}


def test_empty_feature_list_and_object_accepted():
    assert _parse(_impression(features={})).features == {}
    assert _parse(_impression(features={"tags": []})).features == {"tags": []}


def test_numeric_lists_may_mix_int_and_float():
    assert _parse(_impression(features={"xs": [1, 2.5]})).features == {"xs": [1, 2.5]}


def test_first_problem_is_reported_in_field_order():
    # type is checked before ts, so a missing type wins over a bad ts.
    result = _parse(_without(_impression(ts="nonsense"), "type"))
    _assert_dead(result, lc.MISSING_FIELD, "type")


# --- DeadLetter -------------------------------------------------------------


def test_dead_letter_to_json_round_trips_reason_line_and_source():
    line = '{"type": "impression", "note": "caf\u00e9 \u2603"'
    result = lc.parse_event(line + "\n", "gs://bucket/logs/day1.jsonl.gz")
    assert isinstance(result, lc.DeadLetter)
    decoded = json.loads(result.to_json())
    assert decoded["dead_letter_reason"] == lc.NOT_JSON
    assert decoded["line"] == line  # newline stripped, text intact
    assert decoded["source"] == "gs://bucket/logs/day1.jsonl.gz"
    assert decoded["detail"] == result.detail and decoded["detail"]
    # Non-ASCII is kept readable rather than escaped.
    assert "\u2603" in result.to_json()


@pytest.mark.parametrize("obj, reason", [
    ([1], lc.NOT_OBJECT),
    (_without(_impression(), "user_id"), lc.MISSING_FIELD),
    (_impression(position=-3), lc.WRONG_TYPE),
])
def test_dead_letter_keeps_the_original_line(obj, reason):
    line = _line(obj)
    result = lc.parse_event(line, "f")
    _assert_dead(result, reason)
    decoded = json.loads(result.to_json())
    assert decoded["line"] == line
    assert decoded["dead_letter_reason"] == reason
    assert json.loads(decoded["line"]) == obj


def test_dead_letter_reasons_are_distinct():
    assert len(set(lc.DEAD_LETTER_REASONS)) == len(lc.DEAD_LETTER_REASONS) == 10
