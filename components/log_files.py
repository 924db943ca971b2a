"""Finding and reading log files (JSON Lines, plain or gzip) outside Beam."""
from __future__ import annotations

import glob
import gzip
import os
from typing import Iterator, List, Tuple


def expand_log_glob(pattern: str) -> List[str]:
    """Sorted files matching `pattern` (a glob, a file or a directory)."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"no log files match {pattern!r}")
    return files


def read_lines(path: str) -> Iterator[bytes]:
    """Raw lines of a log file; gzip is recognised by its magic bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        yield from f


def iter_log_lines(pattern: str) -> Iterator[Tuple[str, bytes]]:
    for path in expand_log_glob(pattern):
        for line in read_lines(path):
            yield path, line
