"""Tests of the log simulator: the logs keep log contract v1 and behave like
the model they come from (position bias, feedback after clicks, truth that
predicts the clicks)."""
import collections
import datetime
import glob
import gzip
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mtrank.simulator import logs as simulator

IMPRESSIONS = 5000
DAYS = 3
REQUIRED = ("type", "ts", "request_id", "user_id", "item_id")
EXPECTED_FEATURES = {
    "device": str, "country": str, "hour": int, "user_segment": str, "user_age": int,
    "item_category": str, "item_price": float, "item_tags": list,
}


def _parse_ts(text):
    assert text.endswith("Z"), text
    parsed = datetime.datetime.fromisoformat(text[:-1] + "+00:00")
    assert parsed.utcoffset() == datetime.timedelta(0)
    return parsed


def _read_jsonl_gz(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _decompressed(out_dir):
    """File name -> decompressed bytes, for every file the simulator wrote."""
    contents = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*"))):
        with gzip.open(path, "rb") as f:
            contents[os.path.basename(path)] = f.read()
    return contents


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """One simulation shared by the tests: (summary, {file: events}, truth rows)."""
    out_dir = str(tmp_path_factory.mktemp("sim"))
    summary = simulator.simulate(out_dir, impressions=IMPRESSIONS, days=DAYS, seed=3)
    files = sorted(glob.glob(os.path.join(out_dir, simulator.EVENT_FILE_GLOB)))
    events = {path: _read_jsonl_gz(path) for path in files}
    truth = _read_jsonl_gz(os.path.join(out_dir, simulator.TRUTH_FILE_NAME))
    return summary, events, truth


def _all_events(events):
    return [event for file_events in events.values() for event in file_events]


def _impressions(events):
    return {(e["request_id"], e["item_id"]): e for e in _all_events(events)
            if e["type"] == "impression"}


def _feedback_keys(events, feedback_type):
    return [(e["request_id"], e["item_id"]) for e in _all_events(events)
            if e["type"] == feedback_type]


def test_every_line_keeps_the_contract(logs):
    _, events, _ = logs
    for path, file_events in events.items():
        file_date = os.path.basename(path)[len("events-"):-len(".jsonl.gz")]
        for event in file_events:
            for field in REQUIRED:
                assert isinstance(event[field], str) and event[field], (field, event)
            # Each event is in the file of its own (UTC) date.
            assert _parse_ts(event["ts"]).date().isoformat() == file_date
            if event["type"] == "impression":
                assert set(event) == set(REQUIRED) | {"position", "features"}
                assert type(event["position"]) is int and event["position"] >= 0
                features = event["features"]
                assert set(features) == set(EXPECTED_FEATURES)
                for name, kind in EXPECTED_FEATURES.items():
                    assert type(features[name]) is kind, (name, features[name])
                assert 1 <= len(features["item_tags"]) <= 4
                assert all(isinstance(tag, str) for tag in features["item_tags"])
                assert features["hour"] == _parse_ts(event["ts"]).hour
                assert features["device"] in ("mobile", "desktop", "tablet")
            else:
                assert event["type"] in simulator.FEEDBACK_TYPES
                assert set(event) <= set(REQUIRED) | {"value"}
                if "value" in event:
                    assert type(event["value"]) in (int, float)


def test_the_pipeline_parser_accepts_every_line(logs):
    from mtrank.base import log_contract

    summary, _, _ = logs
    for path in summary["files"]:
        with gzip.open(path, "rb") as f:
            for line in f:
                parsed = log_contract.parse_event(line, source=path)
                assert isinstance(parsed, log_contract.Event), parsed


def test_files_are_not_sorted_by_time(logs):
    _, events, _ = logs
    for file_events in events.values():
        if len(file_events) > 100:
            stamps = [e["ts"] for e in file_events]
            assert stamps != sorted(stamps)


def test_requests_show_5_to_10_distinct_items_at_positions_from_0(logs):
    _, events, _ = logs
    requests = collections.defaultdict(list)
    users = collections.defaultdict(set)
    for event in _impressions(events).values():
        requests[event["request_id"]].append((event["position"], event["item_id"]))
        users[event["request_id"]].add(event["user_id"])
    for request_id, shown in requests.items():
        assert 5 <= len(shown) <= 10
        assert sorted(p for p, _ in shown) == list(range(len(shown)))
        assert len({item for _, item in shown}) == len(shown)
        assert len(users[request_id]) == 1


def test_feedback_follows_its_impression_and_needs_a_click(logs):
    _, events, _ = logs
    impressions = _impressions(events)
    clicks = collections.Counter(_feedback_keys(events, "click"))
    assert clicks and max(clicks.values()) == 1
    for event in _all_events(events):
        if event["type"] == "impression":
            continue
        key = (event["request_id"], event["item_id"])
        assert key in impressions, event
        impression = impressions[key]
        assert event["user_id"] == impression["user_id"]
        assert _parse_ts(event["ts"]) >= _parse_ts(impression["ts"])
        if event["type"] != "click":
            assert key in clicks, event
    for feedback_type in ("purchase", "like", "dwell"):
        assert _feedback_keys(events, feedback_type), feedback_type


def test_feedback_delays(logs):
    _, events, _ = logs
    impressions = _impressions(events)
    click_ts = {(e["request_id"], e["item_id"]): _parse_ts(e["ts"])
                for e in _all_events(events) if e["type"] == "click"}
    limits = {"click": 120, "like": 300, "dwell": 600, "purchase": 6 * 3600}
    for event in _all_events(events):
        if event["type"] == "impression":
            continue
        key = (event["request_id"], event["item_id"])
        since = impressions[key] if event["type"] == "click" else None
        start = _parse_ts(since["ts"]) if since else click_ts[key]
        delay = (_parse_ts(event["ts"]) - start).total_seconds()
        assert 0 <= delay <= limits[event["type"]], (event, delay)
        if event["type"] == "dwell":
            assert abs(delay - event["value"]) < 0.01


def test_rates_are_calibrated(logs):
    summary, _, _ = logs
    assert 0.05 <= summary["feedback"]["click"] / IMPRESSIONS <= 0.10
    assert 0.005 <= summary["feedback"]["purchase"] / IMPRESSIONS <= 0.015
    # Dwell is emitted for most clicks.
    assert summary["feedback"]["dwell"] >= 0.8 * summary["feedback"]["click"]


def test_click_rate_falls_with_position(logs):
    _, events, _ = logs
    clicks = set(_feedback_keys(events, "click"))
    top, low = [], []
    for key, event in _impressions(events).items():
        if event["position"] == 0:
            top.append(key in clicks)
        elif event["position"] >= 5:
            low.append(key in clicks)
    assert len(top) > 300 and len(low) > 300
    assert np.mean(top) > 2 * np.mean(low), (np.mean(top), np.mean(low))


def test_truth_has_one_row_per_impression_and_predicts_clicks(logs):
    _, events, truth = logs
    impressions = _impressions(events)
    keys = [(row["request_id"], row["item_id"]) for row in truth]
    assert len(keys) == len(set(keys)) == len(impressions) == IMPRESSIONS
    assert set(keys) == set(impressions)
    for row in truth:
        assert row["ts"] == impressions[(row["request_id"], row["item_id"])]["ts"]
        assert 0 < row["p_click"] <= row["p_click_no_position"] < 1
        for p in ("p_purchase", "p_like", "p_dwell"):
            assert 0 <= row[p] <= row["p_click"]
            # The same share of the click probability, with or without position.
            assert row[f"{p}_no_position"] <= row["p_click_no_position"]
            assert row[p] * row["p_click_no_position"] == pytest.approx(
                row[f"{p}_no_position"] * row["p_click"], rel=1e-4, abs=1e-9)

    for feedback_type in ("click", "purchase"):
        happened = set(_feedback_keys(events, feedback_type))
        labels = [key in happened for key in keys]
        auc = roc_auc_score(labels, [row[f"p_{feedback_type}"] for row in truth])
        assert auc > 0.6, (feedback_type, auc)
    # Not only the position: the click probability without it predicts too.
    clicked = set(_feedback_keys(events, "click"))
    auc = roc_auc_score([key in clicked for key in keys],
                        [row["p_click_no_position"] for row in truth])
    assert auc > 0.6, auc


def test_summary_counts_match_the_files(logs):
    summary, events, truth = logs
    all_events = _all_events(events)
    assert summary["files"] == sorted(events)
    assert summary["impressions"] == len(truth)
    assert summary["events"] == len(all_events)
    counted = collections.Counter(e["type"] for e in all_events)
    assert counted.pop("impression") == summary["impressions"]
    assert set(summary["feedback"]) == set(simulator.FEEDBACK_TYPES)
    assert {t: c for t, c in summary["feedback"].items() if c} == dict(counted)
    # Impressions fall on the requested days; feedback may spill into one more.
    dates = [os.path.basename(p)[len("events-"):-len(".jsonl.gz")] for p in events]
    assert dates[:DAYS] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert len(dates) <= DAYS + 1
    for spill_over in list(events.values())[DAYS:]:
        assert all(e["type"] != "impression" for e in spill_over)


def test_same_seed_same_bytes_other_seed_other_logs(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        simulator.simulate(str(tmp_path / name), impressions=800, days=2, seed=seed)
        runs[name] = _decompressed(str(tmp_path / name))
    assert runs["a"] == runs["b"]
    assert simulator.TRUTH_FILE_NAME in runs["a"]
    # Whether feedback spills into a third day's file depends on the seed, so
    # only the files both runs wrote are compared.
    common = runs["a"].keys() & runs["c"].keys()
    assert {simulator.TRUTH_FILE_NAME, "events-2026-11-01.jsonl.gz"} <= common
    for name in common:
        assert runs["a"][name] != runs["c"][name], name


@pytest.mark.parametrize("impressions,days", [(1, 1), (7, 1), (13, 2), (101, 3)])
def test_small_sizes_give_exact_counts(tmp_path, impressions, days):
    summary = simulator.simulate(str(tmp_path), impressions=impressions, days=days, seed=1)
    lines = sum(len(_read_jsonl_gz(p)) for p in summary["files"])
    truth = _read_jsonl_gz(os.path.join(str(tmp_path), simulator.TRUTH_FILE_NAME))
    assert summary["impressions"] == len(truth) == impressions
    assert summary["events"] == lines == impressions + sum(summary["feedback"].values())


def test_rerun_replaces_old_event_files(tmp_path):
    first = simulator.simulate(str(tmp_path), impressions=300, days=4, seed=0)
    second = simulator.simulate(str(tmp_path), impressions=300, days=1, seed=0,
                                start_date="2027-01-01")
    assert len(first["files"]) >= 4
    assert sorted(glob.glob(str(tmp_path / simulator.EVENT_FILE_GLOB))) == second["files"]
    assert all("2027-01-0" in path for path in second["files"])


def test_rejects_empty_simulation(tmp_path):
    with pytest.raises(ValueError):
        simulator.simulate(str(tmp_path), impressions=0)
    with pytest.raises(ValueError):
        simulator.simulate(str(tmp_path), days=0)


def test_shuffled_feedback_loses_its_signal_and_keeps_the_rest(logs, tmp_path):
    _, events, truth = logs
    shuffled_summary = simulator.simulate(str(tmp_path), impressions=IMPRESSIONS, days=DAYS,
                                          seed=3, shuffle_feedback="click")
    shuffled = {os.path.basename(path): _read_jsonl_gz(path) for path in sorted(
        glob.glob(os.path.join(str(tmp_path), simulator.EVENT_FILE_GLOB)))}
    original = _all_events(events)
    moved = _all_events(shuffled)

    def others(all_events):
        return sorted(json.dumps(e, sort_keys=True) for e in all_events if e["type"] != "click")

    # Every other event is unchanged; clicks keep their number, one per impression.
    assert others(original) == others(moved)
    clicks = _feedback_keys({"": moved}, "click")
    assert len(clicks) == len(set(clicks)) == len(_feedback_keys(events, "click"))
    assert shuffled_summary["feedback"]["click"] == len(clicks)
    # Each click follows its (new) impression, and the truth no longer predicts them.
    impressions = _impressions(events)
    for event in moved:
        if event["type"] == "click":
            impression = impressions[(event["request_id"], event["item_id"])]
            assert _parse_ts(event["ts"]) > _parse_ts(impression["ts"])
    clicked = set(clicks)
    labels = [(row["request_id"], row["item_id"]) in clicked for row in truth]
    assert abs(roc_auc_score(labels, [row["p_click"] for row in truth]) - 0.5) < 0.05
    with pytest.raises(ValueError, match="shuffle_feedback: 'view'"):
        simulator.simulate(str(tmp_path), impressions=50, days=1, shuffle_feedback="view")
