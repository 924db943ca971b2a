"""Daily log partitions as TFX spans.

A log glob with date placeholders, e.g. `logs/{YYYY}-{MM}-{DD}/*.jsonl.gz`
or `logs/events-{YYYY}-{MM}-{DD}.jsonl.gz`, names one partition a day. A
span is one day, numbered as TFX numbers date spans: days since 1970-01-01.

Feedback arrives after its impression, so the impressions of day D are
labelled with the feedback of day D and of the next `lookahead_days` days
(enough to cover the longest label window). Span D is complete, and can be
ingested, once those later partitions exist.
"""
from __future__ import annotations

import datetime
import math
import re
from typing import Dict, List, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems
from tfx.dsl.components.common import resolver

PLACEHOLDERS = ("{YYYY}", "{MM}", "{DD}")
_EPOCH = datetime.date(1970, 1, 1)
SECONDS_PER_DAY = 86400


def is_span_pattern(glob: str) -> bool:
    """Whether `glob` names daily partitions (all three placeholders)."""
    return all(p in glob for p in PLACEHOLDERS)


def check_span_pattern(glob: str) -> None:
    present = [p for p in PLACEHOLDERS if p in glob]
    if present and len(present) != len(PLACEHOLDERS):
        raise ValueError(f"{glob!r}: a span pattern needs all of {', '.join(PLACEHOLDERS)}; "
                         f"it has only {', '.join(present)}")


def span_of_date(date: datetime.date) -> int:
    return (date - _EPOCH).days


def date_of_span(span: int) -> datetime.date:
    return _EPOCH + datetime.timedelta(days=span)


def span_glob(pattern: str, span: int) -> str:
    """The glob of one span's partition."""
    date = date_of_span(span)
    return (pattern.replace("{YYYY}", f"{date.year:04d}")
            .replace("{MM}", f"{date.month:02d}").replace("{DD}", f"{date.day:02d}"))


def any_span_glob(pattern: str) -> str:
    """A plain glob matching every partition of `pattern`."""
    for placeholder in PLACEHOLDERS:
        pattern = pattern.replace(placeholder, "*")
    return pattern


def lookahead_days(max_label_window_s: int) -> int:
    """Later partitions whose feedback can still label a day's impressions:
    an impression at 23:59 is labelled until 23:59 plus the longest window."""
    return max(1, math.ceil(max_label_window_s / SECONDS_PER_DAY))


def _date_regex(pattern: str) -> "re.Pattern":
    """Matches the paths of `pattern`'s partitions, capturing the date."""
    parts = re.split(r"(\{YYYY\}|\{MM\}|\{DD\})", pattern)
    groups = {"{YYYY}": r"(?P<y>\d{4})", "{MM}": r"(?P<m>\d{2})", "{DD}": r"(?P<d>\d{2})"}
    regex = "".join(groups.get(part) or _glob_to_regex(part) for part in parts)
    return re.compile(regex + r"$")


def _glob_to_regex(text: str) -> str:
    out = []
    for char in text:
        out.append({"*": r"[^/]*", "?": r"[^/]"}.get(char) or re.escape(char))
    return "".join(out)


def list_spans(pattern: str) -> Dict[int, List[str]]:
    """{span: its files} for every partition present, by listing the files
    the pattern matches with any date."""
    date_regex = _date_regex(pattern)
    spans: Dict[int, List[str]] = {}
    for match in FileSystems.match([any_span_glob(pattern)])[0].metadata_list:
        found = date_regex.search(match.path)
        if not found:
            continue
        try:
            date = datetime.date(int(found["y"]), int(found["m"]), int(found["d"]))
        except ValueError:  # e.g. 2026-02-30: not a partition
            continue
        spans.setdefault(span_of_date(date), []).append(match.path)
    return {span: sorted(paths) for span, paths in sorted(spans.items())}


class SpanInput(NamedTuple):
    """What ingesting one span reads: its own partition, whose every line is
    counted, and the later partitions it takes feedback from."""

    span: int
    own_glob: str
    lookahead_globs: List[str]
    start_ts_us: int  # the span's first microsecond (UTC midnight)

    @classmethod
    def of(cls, pattern: str, span: int, lookahead: int) -> "SpanInput":
        return cls(span, span_glob(pattern, span),
                   [span_glob(pattern, span + d) for d in range(1, lookahead + 1)],
                   span * SECONDS_PER_DAY * 1_000_000)


def latest_complete_span(pattern: str, lookahead: int,
                         requested: Optional[int] = None) -> int:
    """The newest span whose lookahead partitions all exist, or `requested`
    after checking it is complete. Raises ValueError naming what is missing."""
    spans = list_spans(pattern)
    if not spans:
        raise ValueError(f"no daily partition matches {pattern!r}")
    present = set(spans)
    if requested is not None:
        if requested not in present:
            raise ValueError(f"span {date_of_span(requested)} ({requested}): no partition "
                             f"{span_glob(pattern, requested)!r}")
        candidates = [requested]
    else:
        candidates = sorted(present, reverse=True)
    for span in candidates:
        if all(span + d in present for d in range(1, lookahead + 1)):
            return span
    newest = candidates[0]
    missing = [str(date_of_span(newest + d)) for d in range(1, lookahead + 1)
               if newest + d not in present]
    raise ValueError(
        f"no complete span under {pattern!r}: span {date_of_span(newest)} waits for the "
        f"partition(s) of {', '.join(missing)} ({lookahead} day(s) of lookahead cover the "
        "longest label window)")


class LatestSpansStrategy(resolver.ResolverStrategy):
    """Resolves the training window: of the Examples artifacts of the last
    `num_spans` spans, the newest one per span (a span ingested again, e.g.
    after late logs arrived, replaces its earlier artifact rather than
    doubling its examples). Newest span first."""

    def __init__(self, num_spans: int):
        self._num_spans = num_spans

    def resolve_artifacts(self, store, input_dict):
        del store
        result = {}
        for key, artifacts in input_dict.items():
            newest_per_span = {}
            for artifact in artifacts:
                span = artifact.span
                if span not in newest_per_span or artifact.id > newest_per_span[span].id:
                    newest_per_span[span] = artifact
            window = sorted(newest_per_span, reverse=True)[:self._num_spans]
            result[key] = [newest_per_span[span] for span in window]
        return result if all(result.values()) else None
