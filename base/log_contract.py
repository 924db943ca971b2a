"""Log contract v1: parsing and validating one JSON Lines event.

See docs/log-contract.md. Parsing never raises on bad input: a line is either
an `Event` or a `DeadLetter` with a reason, so the ingestion pipeline can
count and keep every line.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Any, Dict, Optional, Union

from mtrank.base import serving_contract

IMPRESSION = "impression"
REQUIRED_STRING_FIELDS = ("type", "ts", "request_id", "user_id", "item_id")

# Dead-letter reasons (also the keys of the run summary's `dead_letters`).
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
ORPHAN_FEEDBACK = "orphan_feedback"
FEEDBACK_BEFORE_IMPRESSION = "feedback_before_impression"
CONFLICTING_IMPRESSION = "conflicting_impression"
LINE_TOO_LONG = "line_too_long"
TRUNCATED_FILE = "truncated_file"
UNREADABLE_FILE = "unreadable_file"
DEAD_LETTER_REASONS = (
    NOT_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, ORPHAN_FEEDBACK,
    FEEDBACK_BEFORE_IMPRESSION, CONFLICTING_IMPRESSION, LINE_TOO_LONG, TRUNCATED_FILE,
    UNREADABLE_FILE,
)


@dataclasses.dataclass(frozen=True)
class Event:
    """A valid event. `ts` is microseconds since the epoch (UTC)."""

    type: str
    ts: int
    request_id: str
    user_id: str
    item_id: str
    position: Optional[int] = None
    features: Optional[Dict[str, Any]] = None
    value: Optional[float] = None

    @property
    def is_impression(self) -> bool:
        return self.type == IMPRESSION

    @property
    def key(self):
        """Feedback belongs to the impression with the same key."""
        return (self.request_id, self.item_id)

    @property
    def fingerprint(self) -> str:
        """Identical for the same event sent twice (at-least-once producers),
        whatever the JSON's key order or spacing."""
        return json.dumps([self.type, self.ts, self.request_id, self.user_id, self.item_id,
                           self.position, self.features, self.value], sort_keys=True)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A line that could not be used, kept with why and where it came from."""

    reason: str
    detail: str
    line: str
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"dead_letter_reason": self.reason, "detail": self.detail,
             "source": self.source, "line": self.line},
            ensure_ascii=False,
        )


_FRACTION = re.compile(r"\.(\d+)")


def parse_ts(value: str) -> int:
    """RFC 3339 timestamp -> microseconds since the epoch, UTC.

    A timestamp without an offset is ambiguous, so it is rejected.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # RFC 3339 allows any number of fraction digits; Python 3.10's parser
    # takes only 3 or 6, so normalise to microseconds.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    parsed = datetime.datetime.fromisoformat(text.replace("t", "T", 1))
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    delta = parsed - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _feature_problem(name: str, value) -> Optional[str]:
    # null means "not known for this impression": the feature's default is used.
    if value is None or isinstance(value, str) or _is_number(value):
        return None
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value) or all(_is_number(v) for v in value):
            return None
        return f"features.{name}: a list must hold only strings or only numbers"
    return f"features.{name}: expected string, number or list, got {type(value).__name__}"


def parse_event(line: Union[str, bytes], source: str = "") -> Union[Event, DeadLetter]:
    """Parses one log line into an Event, or a DeadLetter saying why not."""
    undecodable = None
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            # Kept (with replacement characters) so the dead letter shows it.
            undecodable, line = e, line.decode("utf-8", errors="replace")
    line = line.rstrip("\r\n")

    def dead(reason: str, detail: str) -> DeadLetter:
        return DeadLetter(reason, detail, line, source)

    if undecodable is not None:
        return dead(NOT_JSON, f"not UTF-8: {undecodable}")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:
        return dead(NOT_JSON, str(e)[:200])
    if not isinstance(obj, dict):
        return dead(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    for field in REQUIRED_STRING_FIELDS:
        if field not in obj or obj[field] is None:
            return dead(MISSING_FIELD, f"missing '{field}'")
        if not isinstance(obj[field], str):
            return dead(WRONG_TYPE, f"'{field}' must be a string")
        if not obj[field]:
            return dead(MISSING_FIELD, f"'{field}' is empty")
    try:
        ts = parse_ts(obj["ts"])
    except ValueError as e:
        return dead(WRONG_TYPE, f"'ts' is not RFC 3339: {e}")

    position = features = value = None
    if obj["type"] == IMPRESSION:
        position = obj.get("position")
        if position is not None and (
            not isinstance(position, int) or isinstance(position, bool)
            or not 0 <= position <= serving_contract.INT64_MAX
        ):
            return dead(WRONG_TYPE, "'position' must be an integer in [0, 2^63)")
        if "features" not in obj:
            return dead(MISSING_FIELD, "impression without 'features'")
        features = obj["features"]
        if not isinstance(features, dict):
            return dead(WRONG_TYPE, "'features' must be an object")
        for name, feature_value in features.items():
            problem = _feature_problem(name, feature_value)
            if problem:
                return dead(WRONG_TYPE, problem)
    else:
        value = obj.get("value")
        if value is not None:
            if not _is_number(value):
                return dead(WRONG_TYPE, "'value' must be a number")
            value = float(value)
    return Event(
        type=obj["type"], ts=ts, request_id=obj["request_id"], user_id=obj["user_id"],
        item_id=obj["item_id"], position=position, features=features, value=value,
    )
