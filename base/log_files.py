"""Finding and reading log files: JSON Lines (plain or gzip), CSV and Parquet.

`read_records` is the one reader: the ingestion pipeline runs it on files
opened through Beam's file systems (local, gs://, ...), the CLI's inference
and client on local files. It never raises on bad content: a line over
MAX_LINE_BYTES, a truncated gzip member or a corrupt file becomes a dead
letter, and every line before it is still read.

CSV (`*.csv`, `*.csv.gz`) and Parquet (`*.parquet`) rows are turned into the
JSON line of the same event (docs/log-contract.md, "Other formats"), so one
parser validates every format.
"""
from __future__ import annotations

import csv
import datetime
import glob
import gzip
import io
import json
import os
import zlib
from typing import BinaryIO, Iterator, List, Tuple, Union

from mtrank.base import log_contract

GZIP_MAGIC = b"\x1f\x8b"
# A log line longer than this is not an event anyone meant to send; it is
# dead-lettered (with its start) instead of being held in memory whole.
MAX_LINE_BYTES = 1 << 20
_PREVIEW_BYTES = 1000
_CHUNK_BYTES = 1 << 16


def expand_log_glob(pattern: str) -> List[str]:
    """Sorted files matching `pattern` (a glob, a file or a directory)."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"no log files match {pattern!r}")
    return files


def _skip_rest_of_line(stream) -> int:
    skipped = 0
    while True:
        chunk = stream.readline(_CHUNK_BYTES)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


FEATURE_COLUMN_PREFIX = "features."
_TYPED_CSV_FIELDS = ("position", "value")


def _row_to_event(row: dict) -> dict:
    """A CSV or Parquet row as a contract-v1 event object.

    Columns named like the event's fields map to them; `features.NAME`
    columns become the impression's features. Empty cells and nulls are
    absent values.
    """
    event, features = {}, {}
    for column, value in row.items():
        if value is None or value == "":
            continue
        if isinstance(value, datetime.datetime):
            value = value.isoformat().replace("+00:00", "Z")
        if column.startswith(FEATURE_COLUMN_PREFIX):
            features[column[len(FEATURE_COLUMN_PREFIX):]] = value
        else:
            event[column] = value
    if event.get("type") == log_contract.IMPRESSION:
        event["features"] = features
    return event


def _csv_cell(text: str):
    """A CSV cell's value: JSON numbers and arrays are numbers and lists (CSV
    has no types), anything else is the string itself."""
    if text[:1] in "-0123456789[":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _csv_records(stream, source: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        if len(row) != len(header):
            yield log_contract.DeadLetter(
                log_contract.WRONG_TYPE,
                f"CSV row {reader.line_num} has {len(row)} cells, the header {len(header)}",
                ",".join(row)[:_PREVIEW_BYTES], source)
            continue
        # Ids, type and ts stay strings; features, position and value are typed.
        values = {column: _csv_cell(cell) if column.startswith(FEATURE_COLUMN_PREFIX)
                  or column in _TYPED_CSV_FIELDS else cell
                  for column, cell in zip(header, row)}
        yield json.dumps(_row_to_event(values)).encode()


def _parquet_records(raw: BinaryIO, source: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(raw)
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            flat = {}
            for column, value in row.items():
                # A `features` struct column holds the features by name.
                if column == "features" and isinstance(value, dict):
                    flat.update({FEATURE_COLUMN_PREFIX + k: v for k, v in value.items()})
                else:
                    flat[column] = value
            yield json.dumps(_row_to_event(flat)).encode()


def read_records(raw: BinaryIO, source: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    """Events of an open binary log file as JSON lines, or dead letters for
    what cannot be read. Gzip (also several concatenated members) is
    recognised by its magic bytes, not by the file name; CSV and Parquet by
    their extension."""
    name = source.lower()
    if name.endswith(".parquet"):
        try:
            yield from _parquet_records(raw, source)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for bad files
            yield log_contract.DeadLetter(
                log_contract.UNREADABLE_FILE, f"not readable as Parquet: {e}", "", source)
        return
    gzipped = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
    if name.endswith((".csv", ".csv.gz")):
        try:
            yield from _csv_records(stream, source)
        except (EOFError, OSError, zlib.error, csv.Error) as e:
            yield log_contract.DeadLetter(
                log_contract.TRUNCATED_FILE if isinstance(e, EOFError)
                else log_contract.UNREADABLE_FILE, f"CSV unreadable: {e}", "", source)
        return
    line_number = 0
    try:
        while True:
            line = stream.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            line_number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                length = len(line) + _skip_rest_of_line(stream)
                yield log_contract.DeadLetter(
                    log_contract.LINE_TOO_LONG,
                    f"line {line_number} has {length} bytes (limit {MAX_LINE_BYTES})",
                    line[:_PREVIEW_BYTES].decode("utf-8", errors="replace"), source)
                continue
            yield line
    except EOFError as e:
        yield log_contract.DeadLetter(
            log_contract.TRUNCATED_FILE,
            f"gzip stream ends early after line {line_number}: {e}", "", source)
    except (OSError, zlib.error) as e:
        yield log_contract.DeadLetter(
            log_contract.UNREADABLE_FILE, f"unreadable after line {line_number}: {e}", "",
            source)


def read_lines(path: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    """`read_records` of a local file."""
    with open(path, "rb") as f:
        yield from read_records(f, path)


def iter_log_lines(pattern: str) -> Iterator[Tuple[str, Union[bytes, log_contract.DeadLetter]]]:
    for path in expand_log_glob(pattern):
        for record in read_lines(path):
            yield path, record


def parse_record(record: Union[bytes, log_contract.DeadLetter], path: str
                 ) -> Union[log_contract.Event, log_contract.DeadLetter]:
    """A record of `iter_log_lines`, parsed: an Event or a DeadLetter."""
    if isinstance(record, log_contract.DeadLetter):
        return record
    return log_contract.parse_event(record, path)


def iter_events(pattern: str) -> Iterator[Union[log_contract.Event, log_contract.DeadLetter]]:
    """Every line of the matching files, parsed: an Event or a DeadLetter."""
    for path, record in iter_log_lines(pattern):
        yield parse_record(record, path)
