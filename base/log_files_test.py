"""Tests of finding and reading log files outside Beam."""
import gzip
import json
import os

import pytest

from mtrank.base import log_contract as lc
from mtrank.base import log_files

LINES = [b'{"a": 1}\n', b'{"b": "caf\xc3\xa9"}\n', b"not json\n", b"last line without newline"]


def _write_plain(path, lines=LINES):
    path.write_bytes(b"".join(lines))
    return str(path)


def _write_gzip(path, lines=LINES):
    with gzip.open(path, "wb") as f:
        f.write(b"".join(lines))
    return str(path)


def test_expand_glob_sorted_and_files_only(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x\n")
    (tmp_path / "d.jsonl").mkdir()  # a directory matching the glob is not a file
    files = log_files.expand_log_glob(str(tmp_path / "*.jsonl*"))
    assert files == [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.jsonl.gz")]


def test_expand_single_file(tmp_path):
    path = _write_plain(tmp_path / "one.jsonl")
    assert log_files.expand_log_glob(path) == [path]


def test_expand_directory_lists_its_files(tmp_path):
    (tmp_path / "z.jsonl").write_bytes(b"x\n")
    (tmp_path / "y.gz").write_bytes(b"x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.jsonl").write_bytes(b"x\n")
    files = log_files.expand_log_glob(str(tmp_path))
    assert files == [os.path.join(str(tmp_path), n) for n in ("y.gz", "z.jsonl")]


def test_expand_no_match_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no log files match"):
        log_files.expand_log_glob(str(tmp_path / "*.jsonl"))


def test_expand_empty_directory_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        log_files.expand_log_glob(str(tmp_path / "empty"))


def test_expand_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        log_files.expand_log_glob(str(tmp_path / "does-not-exist.jsonl"))


def test_read_plain_lines(tmp_path):
    path = _write_plain(tmp_path / "plain.jsonl")
    assert list(log_files.read_lines(path)) == LINES


def test_read_gzip_lines(tmp_path):
    path = _write_gzip(tmp_path / "logs.jsonl.gz")
    assert list(log_files.read_lines(path)) == LINES


def test_gzip_detected_by_magic_bytes_without_gz_extension(tmp_path):
    path = _write_gzip(tmp_path / "logs.jsonl")
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really compressed on disk
    assert list(log_files.read_lines(path)) == LINES


def test_plain_file_with_gz_extension_read_as_plain(tmp_path):
    path = _write_plain(tmp_path / "mislabelled.jsonl.gz")
    assert list(log_files.read_lines(path)) == LINES


def test_read_empty_and_one_byte_files(tmp_path):
    assert list(log_files.read_lines(_write_plain(tmp_path / "empty", []))) == []
    assert list(log_files.read_lines(_write_plain(tmp_path / "one", [b"\x1f"]))) == [b"\x1f"]
    assert list(log_files.read_lines(_write_gzip(tmp_path / "empty.gz", []))) == []


def test_read_lines_keeps_invalid_utf8_bytes(tmp_path):
    raw = [b"\xff\xfe bad\n", b"ok\n"]
    assert list(log_files.read_lines(_write_gzip(tmp_path / "bad.gz", raw))) == raw


def test_iter_log_lines_pairs_path_and_line_in_file_order(tmp_path):
    a = _write_gzip(tmp_path / "a.jsonl.gz", [b"1\n", b"2\n"])
    b = _write_plain(tmp_path / "b.jsonl", [b"3\n"])
    assert list(log_files.iter_log_lines(str(tmp_path / "*"))) == [
        (a, b"1\n"), (a, b"2\n"), (b, b"3\n")]


CSV_TEXT = (
    "type,ts,request_id,user_id,item_id,position,value,features.device,features.price,features.tags\n"
    'impression,2024-03-01T10:00:00Z,r1,u1,007,2,,mobile,3.5,"[""a"",""b""]"\n'
    "click,2024-03-01T10:00:05Z,r1,u1,007,,,,,\n"
    "dwell,2024-03-01T10:00:09Z,r1,u1,007,,12.5,,,\n"
    "impression,2024-03-01T10:00:00Z,r2,u1,008\n"
)


def _records(path):
    return [r if isinstance(r, lc.DeadLetter) else json.loads(r)
            for r in log_files.read_lines(str(path))]


@pytest.mark.parametrize("compress", [False, True])
def test_csv_rows_become_contract_events(tmp_path, compress):
    path = tmp_path / ("logs.csv.gz" if compress else "logs.csv")
    data = CSV_TEXT.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    impression, click, dwell, short_row = _records(path)
    # Ids stay strings ("007"); features, position and value are typed.
    assert impression == {
        "type": "impression", "ts": "2024-03-01T10:00:00Z", "request_id": "r1",
        "user_id": "u1", "item_id": "007", "position": 2,
        "features": {"device": "mobile", "price": 3.5, "tags": ["a", "b"]}}
    assert click == {"type": "click", "ts": "2024-03-01T10:00:05Z", "request_id": "r1",
                     "user_id": "u1", "item_id": "007"}
    assert dwell["value"] == 12.5
    assert isinstance(short_row, lc.DeadLetter) and "5 cells" in short_row.detail
    for event in (impression, click, dwell):
        assert isinstance(lc.parse_event(json.dumps(event)), lc.Event)


def test_parquet_rows_with_a_features_struct_become_contract_events(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "type": ["impression", "purchase"],
        "ts": pa.array([datetime.datetime(2024, 3, 1, 10, tzinfo=datetime.timezone.utc),
                        datetime.datetime(2024, 3, 1, 11, tzinfo=datetime.timezone.utc)],
                       type=pa.timestamp("us", tz="UTC")),
        "request_id": ["r1", "r1"], "user_id": ["u1", "u1"], "item_id": ["i1", "i1"],
        "position": [0, None], "value": [None, 9.99],
        "features": [{"device": "tablet", "hour": 10}, None],
    })
    path = tmp_path / "logs.parquet"
    pq.write_table(table, path)
    impression, purchase = _records(path)
    assert impression == {"type": "impression", "ts": "2024-03-01T10:00:00Z",
                          "request_id": "r1", "user_id": "u1", "item_id": "i1",
                          "position": 0, "features": {"device": "tablet", "hour": 10}}
    assert purchase["value"] == 9.99 and "features" not in purchase
    assert all(isinstance(lc.parse_event(json.dumps(e)), lc.Event)
               for e in (impression, purchase))


def test_unreadable_parquet_is_one_dead_letter(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    [dead] = _records(path)
    assert dead.reason == lc.UNREADABLE_FILE and dead.source == str(path)
