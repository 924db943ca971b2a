"""Runs the ingestion Beam pipeline (components/ingest.py, DirectRunner), in one
pipeline or in the bucketed join's passes, and checks that its counts account
for every line read: shared by the ingestion unit tests and the tests of
ingesting the simulator's logs."""
from __future__ import annotations

import base64
import collections
import glob
import gzip
import json
import os
from typing import Optional

import apache_beam as beam

from mtrank.base import config as config_lib
from mtrank.base.counts import LINES_READ
from mtrank.components import bucketed_join, ingest, spans


def _write_outputs(outputs, out_dir: str, name: str) -> None:
    """Writes one pipeline's (or one pass's) outputs as `{output}-{name}*` text
    files: examples base64-encoded, dead letters and counts as JSON lines."""
    for split in ingest.SPLITS:
        if split in outputs:
            (outputs[split]
             | f"B64{split}" >> beam.Map(lambda b: base64.b64encode(b).decode())
             | f"Write{split}" >> beam.io.WriteToText(os.path.join(out_dir, f"{split}-{name}")))
    outputs["dead_letters"] | "WriteDead" >> beam.io.WriteToText(
        os.path.join(out_dir, f"dead-{name}"))
    outputs["counts"] | "WriteCounts" >> beam.io.WriteToText(
        os.path.join(out_dir, f"counts-{name}"))


def _read_outputs(out_dir: str) -> dict:
    """What _write_outputs wrote under out_dir, every pass together: {"train",
    "eval": [bytes], "dead_letters": [dict], "counts": dict (summed), "count_records":
    how many counts records the passes wrote}."""

    def lines(output):
        result = []
        for path in sorted(glob.glob(os.path.join(out_dir, f"{output}-*"))):
            with open(path, encoding="utf-8") as f:
                result.extend(line.rstrip("\n") for line in f)
        return result

    count_records = [json.loads(line) for line in lines("counts")]
    counts = collections.Counter()
    for record in count_records:
        counts.update(record)
    return {
        "train": [base64.b64decode(x) for x in lines("train")],
        "eval": [base64.b64decode(x) for x in lines("eval")],
        "dead_letters": [json.loads(x) for x in lines("dead")],
        "counts": dict(counts),
        "count_records": len(count_records),
    }


def run_ingestion(input_glob: str, out_dir: str, config: config_lib.Config,
                  span_input: Optional[spans.SpanInput] = None) -> dict:
    """Runs LogsToExamples in one pipeline; returns {"train", "eval": [bytes],
    "dead_letters": [dict], "counts": dict}."""
    with beam.Pipeline() as p:
        _write_outputs(p | ingest.LogsToExamples(input_glob, config, span_input), out_dir, "all")
    outputs = _read_outputs(out_dir)
    assert outputs.pop("count_records") == 1  # one pipeline counts once
    return outputs


def file_line_count(pattern: str) -> int:
    """Newline-terminated lines in the files of `pattern`, gzip or plain."""
    total = 0
    for path in glob.glob(pattern):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            total += f.read().count(b"\n")
    return total


def assert_lines_conserved(counts: dict, dead_letters: list) -> None:
    """Every line read has exactly one outcome, every impression is in one
    split, and the dead letters written are the ones counted."""
    outcomes = {k: v for k, v in counts.items()
                if k != LINES_READ and not k.startswith(("examples.", "lookahead."))}
    assert sum(outcomes.values()) == counts[LINES_READ]
    assert counts.get("examples.train", 0) + counts.get("examples.eval", 0) == counts["impressions"]
    dead = collections.Counter(d["dead_letter_reason"] for d in dead_letters)
    assert {f"dead_letter.{r}": n for r, n in dead.items()} == {
        k: v for k, v in counts.items() if k.startswith("dead_letter.")}


def run_bucketed(input_glob: str, out_dir: str, max_pass_records: int,
                 config: config_lib.Config, span_input: Optional[spans.SpanInput] = None):
    """Like run_ingestion, through bucketed_join.run; returns (passes, outputs)
    with the passes' counts summed."""
    scratch = os.path.join(out_dir, "scratch")
    passes = bucketed_join.run(beam.Pipeline, input_glob, config, span_input,
                               lambda outputs, name: _write_outputs(outputs, out_dir, name),
                               scratch, max_pass_records)["passes"]
    assert not os.path.exists(scratch)  # the buckets are removed
    outputs = _read_outputs(out_dir)
    del outputs["count_records"]
    return passes, outputs


def assert_same_ingestion(bucketed: dict, reference: dict) -> None:
    """The same examples byte for byte, the same counts and dead letters."""
    for split in ingest.SPLITS:
        assert sorted(bucketed[split]) == sorted(reference[split])
    assert bucketed["counts"] == reference["counts"]
    assert (sorted(json.dumps(d, sort_keys=True) for d in bucketed["dead_letters"])
            == sorted(json.dumps(d, sort_keys=True) for d in reference["dead_letters"]))
