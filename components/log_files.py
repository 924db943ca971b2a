"""Finding and reading log files (JSON Lines, plain or gzip).

`read_records` is the one reader: the ingestion pipeline runs it on files
opened through Beam's file systems (local, gs://, ...), the CLI's inference
and client on local files. It never raises on bad content: a line over
MAX_LINE_BYTES, a truncated gzip member or a corrupt file becomes a dead
letter, and every line before it is still read.
"""
from __future__ import annotations

import glob
import gzip
import os
import zlib
from typing import BinaryIO, Iterator, List, Tuple, Union

from components import log_contract

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


def read_records(raw: BinaryIO, source: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    """Lines of an open binary log file, or dead letters for what cannot be
    read. Gzip (also several concatenated members) is recognised by its
    magic bytes, not by the file name."""
    head = raw.read(2)
    stream = raw
    if head == GZIP_MAGIC:
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    else:
        # Plain text: put the two bytes back in front of the rest.
        stream = _Prefixed(head, raw)
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


class _Prefixed:
    """A binary stream with some bytes already read put back in front."""

    def __init__(self, prefix: bytes, rest: BinaryIO):
        self._prefix, self._rest = prefix, rest

    def readline(self, limit: int) -> bytes:
        if not self._prefix:
            return self._rest.readline(limit)
        prefix, self._prefix = self._prefix, b""
        if b"\n" in prefix:
            newline = prefix.index(b"\n") + 1
            self._prefix = prefix[newline:]
            return prefix[:newline]
        return prefix + self._rest.readline(max(limit - len(prefix), 0))


def read_lines(path: str) -> Iterator[Union[bytes, log_contract.DeadLetter]]:
    """`read_records` of a local file."""
    with open(path, "rb") as f:
        yield from read_records(f, path)


def iter_log_lines(pattern: str) -> Iterator[Tuple[str, Union[bytes, log_contract.DeadLetter]]]:
    for path in expand_log_glob(pattern):
        for record in read_lines(path):
            yield path, record


def iter_events(pattern: str) -> Iterator[Union[log_contract.Event, log_contract.DeadLetter]]:
    """Every line of the matching files, parsed: an Event or a DeadLetter."""
    for path, record in iter_log_lines(pattern):
        if isinstance(record, log_contract.DeadLetter):
            yield record
        else:
            yield log_contract.parse_event(record, path)
