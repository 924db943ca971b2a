"""Tests of daily partitions as spans: listing, completeness, the window."""
import datetime

import pytest
from tfx.types import standard_artifacts

from mtrank.components import spans

PATTERN_DIR = "logs/{YYYY}-{MM}-{DD}/*.jsonl.gz"


def _span(text: str) -> int:
    return spans.span_of_date(datetime.date.fromisoformat(text))


@pytest.fixture
def partitions(tmp_path):
    """Days 03-01, 03-02, 03-03 and 03-05 (03-04 missing), a non-date
    folder and an impossible date."""
    for day in ("2026-03-01", "2026-03-02", "2026-03-03", "2026-03-05", "2026-02-30", "latest"):
        folder = tmp_path / "logs" / day
        folder.mkdir(parents=True)
        (folder / "part-0.jsonl.gz").write_bytes(b"")
        (folder / "part-1.jsonl.gz").write_bytes(b"")
    (tmp_path / "logs" / "2026-03-01" / "notes.txt").write_text("not a log file")
    return str(tmp_path / PATTERN_DIR)


def test_span_numbers_are_days_since_the_epoch():
    assert spans.span_of_date(datetime.date(1970, 1, 2)) == 1
    assert spans.date_of_span(_span("2026-03-01")) == datetime.date(2026, 3, 1)


def test_span_glob_fills_in_the_date():
    assert spans.span_glob(PATTERN_DIR, _span("2026-03-09")) == "logs/2026-03-09/*.jsonl.gz"


def test_list_spans_finds_each_day_and_only_matching_files(partitions):
    found = spans.list_spans(partitions)
    assert sorted(found) == [_span(d) for d in ("2026-03-01", "2026-03-02", "2026-03-03",
                                                "2026-03-05")]
    assert [p.rsplit("/", 1)[1] for p in found[_span("2026-03-01")]] == [
        "part-0.jsonl.gz", "part-1.jsonl.gz"]


@pytest.mark.parametrize("window_s,days", [(300, 1), (86400, 1), (86401, 2), (3 * 86400, 3)])
def test_lookahead_covers_the_longest_window(window_s, days):
    assert spans.lookahead_days(window_s) == days


def test_newest_complete_span_has_its_lookahead_days(partitions):
    # 03-05 has no 03-06 yet, 03-03 no 03-04: 03-02 is the newest complete.
    assert spans.latest_complete_span(partitions, 1) == _span("2026-03-02")
    assert spans.latest_complete_span(partitions, 2) == _span("2026-03-01")


def test_requested_span_must_be_complete(partitions):
    assert spans.latest_complete_span(partitions, 1, _span("2026-03-01")) == _span("2026-03-01")
    with pytest.raises(ValueError, match="2026-03-03 waits for the partition.* of 2026-03-04"):
        spans.latest_complete_span(partitions, 1, _span("2026-03-03"))
    with pytest.raises(ValueError, match="no partition"):
        spans.latest_complete_span(partitions, 1, _span("2026-03-04"))


def test_no_partitions_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no daily partition matches"):
        spans.latest_complete_span(str(tmp_path / PATTERN_DIR), 1)


def test_a_pattern_needs_all_three_placeholders():
    assert spans.is_span_pattern(PATTERN_DIR)
    assert not spans.is_span_pattern("logs/*.jsonl.gz")
    spans.check_span_pattern("logs/*.jsonl.gz")
    with pytest.raises(ValueError, match="only {YYYY}, {MM}"):
        spans.check_span_pattern("logs/{YYYY}-{MM}/*.jsonl.gz")


def _examples(artifact_id: int, span: int):
    artifact = standard_artifacts.Examples()
    artifact.id = artifact_id
    artifact.span = span
    return artifact


def test_window_keeps_the_last_spans_and_the_newest_artifact_of_each():
    artifacts = [_examples(1, 10), _examples(2, 11), _examples(3, 12), _examples(4, 11),
                 _examples(5, 13)]
    resolved = spans.LatestSpansStrategy(num_spans=3).resolve_artifacts(
        None, {"examples": artifacts})["examples"]
    # Span 11 was ingested twice: its newer artifact (4) replaces the older.
    assert [(a.span, a.id) for a in resolved] == [(13, 5), (12, 3), (11, 4)]


def test_window_with_nothing_ingested_resolves_nothing():
    assert spans.LatestSpansStrategy(num_spans=3).resolve_artifacts(
        None, {"examples": []}) is None
