"""Turns one impression and its feedback into a labelled tf.Example.

These are the pure functions the ingestion Beam pipeline maps over; they know
the config (which features, which tasks and windows) and nothing of Beam.

Every log line ends as exactly one outcome, so counts add up to lines read:
an impression in an example, a feedback event merged into a label, a late
feedback event (after its task's window), a feedback event of a type no task
uses, a duplicate (the same event again), feedback that labelled the previous
day's impression (when ingesting one span), or a dead letter with a reason.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, Iterable, List, NamedTuple, Optional, Union

import tensorflow as tf

from mtrank.base import counts, log_contract
from mtrank.base import config as config_lib
from mtrank.base import examples, serving_contract

SECONDS_PER_DAY = 86400
MICROS = 1_000_000


def _fingerprint(item: Union["Impression", "Feedback"]) -> str:
    """The event's identity, whatever its JSON key order or spacing. Only
    groups with several events need it, so it is computed there, from the
    line, rather than for every line."""
    return log_contract.parse_event(item.line).fingerprint


class Impression(NamedTuple):
    """A valid impression, compact for the join: its features already in the
    config's dtypes, serialized as a tf.Example, and the raw line kept only
    for dead letters."""

    ts: int
    request_id: str
    position: Optional[int]
    features_example: bytes
    line: str
    source: str

    @property
    def features(self) -> Dict[str, list]:
        """The converted features, {name: values} (for inspection)."""
        return examples.example_values(tf.train.Example.FromString(self.features_example))


class Feedback(NamedTuple):
    """A feedback event, compact for the join."""

    type: str
    ts: int
    value: Optional[float]
    line: str
    source: str

    @classmethod
    def of(cls, event: log_contract.Event, line: str, source: str = "") -> "Feedback":
        return cls(event.type, event.ts, event.value, line, source)


def raw_feature(event: log_contract.Event, name: str):
    """The raw value of a config feature: ids are top-level fields of the
    event, everything else is under `features`."""
    if name == config_lib.USER_ID:
        return event.user_id
    if name == config_lib.ITEM_ID:
        return event.item_id
    return event.features.get(name)


class ImpressionConverter:
    """Converts impressions' features to one config's dtypes: the per-line
    hot path of ingestion, so what depends only on the config is looked up
    once, and values already of the exact type skip the general conversion."""

    _EXACT_TYPES = {"string": str, "int64": int, "float": float}

    def __init__(self, config: config_lib.Config):
        self._features = [(f, examples.VALUE_LISTS[f.dtype], self._EXACT_TYPES[f.dtype])
                          for f in config.features]

    def __call__(self, event: log_contract.Event, line: str,
                 source: str = "") -> Union[Impression, log_contract.DeadLetter]:
        example = tf.train.Example()
        feature_map = example.features.feature
        try:
            for feature, list_name, exact_type in self._features:
                value = raw_feature(event, feature.name)
                values = getattr(feature_map[feature.name], list_name)
                if feature.is_scalar and type(value) is exact_type and (
                        exact_type is not int
                        or serving_contract.INT64_MIN <= value <= serving_contract.INT64_MAX):
                    values.value.append(value.encode("utf-8") if exact_type is str else value)
                else:
                    examples.set_feature(feature_map, feature.name, feature.dtype,
                                         examples.feature_values(feature, value))
        except ValueError as e:
            return log_contract.DeadLetter(log_contract.WRONG_TYPE, str(e), line, source)
        return Impression(event.ts, event.request_id, event.position,
                          example.SerializeToString(deterministic=True), line, source)


@dataclasses.dataclass
class JoinResult:
    """What one (request_id, item_id) group produced."""

    example_bytes: Optional[bytes] = None  # the serialized labelled tf.Example
    impression_ts: Optional[int] = None
    outcomes: List[str] = dataclasses.field(default_factory=list)
    dead_letters: List[log_contract.DeadLetter] = dataclasses.field(default_factory=list)

    @property
    def example(self) -> Optional[tf.train.Example]:
        """The labelled example, parsed (for inspection)."""
        return None if self.example_bytes is None else tf.train.Example.FromString(
            self.example_bytes)


def _dead(result: JoinResult, reason: str, detail: str, line: str, source: str = "") -> None:
    result.dead_letters.append(log_contract.DeadLetter(reason, detail, line, source))
    result.outcomes.append(counts.dead_letter_outcome(reason))


def _count_repeats_once(items: list, result: JoinResult) -> list:
    """The items with exact repeats of an event removed (the first kept),
    each removed repeat counted as a duplicate."""
    if len(items) < 2:
        return list(items)
    seen, unique = set(), []
    for item in items:
        fingerprint = _fingerprint(item)
        if fingerprint in seen:
            result.outcomes.append(counts.DUPLICATES)
        else:
            seen.add(fingerprint)
            unique.append(item)
    return unique


def join_group(config: config_lib.Config, impressions: Iterable[Impression],
               feedback: Iterable[Feedback], key=("?", "?"),
               lookahead_feedback: Iterable[Feedback] = (),
               span_start_ts: Optional[int] = None) -> JoinResult:
    """Labels one impression with the feedback sharing its key.

    An event repeated exactly (at-least-once delivery) counts once;
    its repeats are counted as duplicates. Of several different impressions
    with one key, the earliest is kept (ties broken by the line, so the
    result does not depend on input order) and the others are dead-lettered
    as conflicting. `key` is the group's (request_id, item_id), for messages.

    When one span (day) is ingested, `lookahead_feedback` comes from the
    following days' partitions: it labels this span's impression, but its
    lines are counted by their own span, so its outcomes here are prefixed
    `lookahead.` and it never makes a dead letter. Feedback of this span with
    no impression here, early enough in the day (before `span_start_ts` plus
    its longest window), labelled the previous span's impression.
    """
    result = JoinResult()
    impressions = _count_repeats_once(sorted(impressions, key=lambda i: (i.ts, i.line)), result)
    feedback = _count_repeats_once(sorted(feedback, key=lambda f: (f.ts, f.line)), result)
    if not impressions:  # lookahead feedback then belongs to a later span
        for event in feedback:
            if span_start_ts is not None and (
                    event.ts - span_start_ts) / MICROS <= _longest_window_s(config, event.type):
                result.outcomes.append(counts.FEEDBACK_PREVIOUS_SPAN)
                continue
            _dead(result, log_contract.ORPHAN_FEEDBACK,
                  f"no impression with request_id={key[0]!r} item_id={key[1]!r}",
                  event.line, event.source)
        return result
    lookahead = sorted(lookahead_feedback, key=lambda f: (f.ts, f.line))
    if lookahead and len(feedback) + len(lookahead) > 1:
        # Repeats among the later partitions, or of this span's events, are
        # counted by their own span.
        counted_here = {_fingerprint(f) for f in feedback}
        unique_lookahead = []
        for event in lookahead:
            fingerprint = _fingerprint(event)
            if fingerprint not in counted_here:
                counted_here.add(fingerprint)
                unique_lookahead.append(event)
        lookahead = unique_lookahead
    kept, conflicting_ones = impressions[0], impressions[1:]
    for conflicting in conflicting_ones:
        _dead(result, log_contract.CONFLICTING_IMPRESSION,
              "a different impression with the same (request_id, item_id) came first",
              conflicting.line, conflicting.source)

    labels = {task.name: 0.0 for task in config.tasks}
    tasks_by_feedback: Dict[str, List[config_lib.TaskConfig]] = {}
    for task in config.tasks:
        tasks_by_feedback.setdefault(task.feedback, []).append(task)
    from_lookahead = {id(event) for event in lookahead}
    for event in feedback + lookahead:
        prefix = counts.LOOKAHEAD_PREFIX if id(event) in from_lookahead else ""
        tasks = tasks_by_feedback.get(event.type)
        if not tasks:
            result.outcomes.append(prefix + counts.FEEDBACK_UNUSED_TYPE)
            continue
        delay_s = (event.ts - kept.ts) / MICROS
        if delay_s < 0:
            if prefix:
                result.outcomes.append(prefix + counts.dead_letter_outcome(
                    log_contract.FEEDBACK_BEFORE_IMPRESSION))
            else:
                _dead(result, log_contract.FEEDBACK_BEFORE_IMPRESSION,
                      f"{-delay_s:.3f} s before its impression", event.line, event.source)
            continue
        merged = False
        for task in tasks:
            if delay_s <= task.label_window_s:
                merged = True
                if task.type == "binary":
                    labels[task.name] = 1.0
                else:
                    labels[task.name] += event.value if event.value is not None else 1.0
        result.outcomes.append(
            prefix + (counts.FEEDBACK_MERGED if merged else counts.FEEDBACK_LATE))

    joined = tf.train.Example()
    feature_map = joined.features.feature
    for task in config.tasks:
        feature_map[task.label_key].float_list.value.append(labels[task.name])
    feature_map[config_lib.REQUEST_ID].bytes_list.value.append(kept.request_id.encode())
    feature_map[config_lib.IMPRESSION_TS].int64_list.value.append(kept.ts)
    if kept.position is not None:
        feature_map[config_lib.POSITION].int64_list.value.append(kept.position)
    # Serialized protos concatenate into their merge, so appending the
    # joined fields to the impression's serialized features makes the whole
    # example without parsing and re-serializing them (the join's largest
    # cost). Deterministic: the same input gives the same bytes.
    result.example_bytes = kept.features_example + joined.SerializeToString(deterministic=True)
    result.impression_ts = kept.ts
    result.outcomes.append(counts.EXAMPLE)
    return result


def _longest_window_s(config: config_lib.Config, feedback_type: str) -> int:
    return max((t.label_window_s for t in config.tasks if t.feedback == feedback_type), default=0)


def split_of_request(request_id: str, eval_percent: int) -> str:
    """Span mode: a seeded hash of the request (all its items alike) puts
    `eval_percent` of each day's requests in eval."""
    bucket = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return "eval" if bucket % 100 < eval_percent else "train"


def eval_start_day(last_impression_ts: int, eval_days: int) -> int:
    """First UTC day (days since the epoch) of the eval split."""
    return last_impression_ts // (SECONDS_PER_DAY * MICROS) - eval_days + 1


def split_of(impression_ts: int, first_eval_day: int) -> str:
    return "eval" if impression_ts // (SECONDS_PER_DAY * MICROS) >= first_eval_day else "train"
