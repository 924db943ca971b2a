"""Tests of finding and reading log files outside Beam."""
import gzip
import os

import pytest

from components import log_files

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
