"""Ingestion in bounded memory on the DirectRunner.

A distributed runner (Dataflow, Flink, Spark) spills its shuffle to disk; the
DirectRunner keeps every element of a GroupByKey in memory, so one pipeline
over all the logs needs memory in proportion to the input. Here the join runs
in passes instead:

1. one pipeline parses every line (as `ingest.ParseLogs` always does) and
   appends each keyed record to one of `NUM_BUCKETS` files, chosen by a stable
   hash of its (request_id, item_id) key; dead letters and counts are written
   as usual. Nothing is grouped, so memory does not grow with the input.
2. buckets are packed into passes of at most `max_pass_records` records
   (from the counts of step 1); one pipeline per pass groups, labels and
   splits its buckets (`ingest.JoinAndSplit`). A key's records all sit in one
   bucket, so each pass joins completely.

The examples are the same as one pipeline's (tests check it); memory follows
the pass size, not the input size, at the price of writing and reading the
parsed records once more.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import uuid
import zlib
from typing import Callable, Dict, Iterator, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from mtrank.components import ingest, spans
from mtrank.base import log_contract
from mtrank.base import config as config_lib

NUM_BUCKETS = 64
# The one-pipeline join held about 4.4 KB a line at 250k lines (1.7 GB peak
# RSS, benchmarks/ingest.py): passes of this size stay near that.
DEFAULT_MAX_PASS_RECORDS = 250_000
# Smaller inputs take the one-pipeline path: the passes cost more than they
# save there.
MIN_INPUT_BYTES = 16 * 1024 * 1024


def bucket_of(key) -> int:
    """A stable bucket of a (request_id, item_id) key (Python's hash() is
    salted per process)."""
    return zlib.crc32(f"{key[0]}\x00{key[1]}".encode("utf-8")) % NUM_BUCKETS


# Records are pickled in batches: one pickle call per record cost as much
# as parsing the line.
_BATCH = 1000


class _WriteBuckets(beam.DoFn):
    """Appends keyed records to their bucket's file, one file per bucket and
    bundle, in pickled batches; emits (bucket, records written)."""

    def __init__(self, directory: str):
        self._directory = directory
        self._files = self._batches = self._counts = None

    def start_bundle(self):
        self._files, self._batches = {}, collections.defaultdict(list)
        self._counts = collections.Counter()

    def process(self, keyed_record):
        bucket = bucket_of(keyed_record[0])
        batch = self._batches[bucket]
        batch.append(keyed_record)
        if len(batch) >= _BATCH:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        out = self._files.get(bucket)
        if out is None:
            out = self._files[bucket] = FileSystems.create(os.path.join(
                self._directory, f"bucket-{bucket:03d}-{uuid.uuid4().hex}.pickle"))
        batch = self._batches.pop(bucket)
        pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
        self._counts[bucket] += len(batch)

    def finish_bundle(self):
        for bucket in list(self._batches):
            self._flush(bucket)
        for out in self._files.values():
            out.close()
        for bucket, count in self._counts.items():
            yield GlobalWindows.windowed_value((bucket, count))


def _read_bucket_file(path: str) -> Iterator:
    with FileSystems.open(path) as f:
        while True:
            try:
                yield from pickle.load(f)
            except EOFError:
                return


def plan_passes(records_per_bucket: Dict[int, int], max_pass_records: int) -> List[List[int]]:
    """Buckets packed in order into passes of at most `max_pass_records`
    records (a bucket larger than that is a pass of its own)."""
    passes, current, size = [], [], 0
    for bucket in sorted(records_per_bucket):
        count = records_per_bucket[bucket]
        if current and size + count > max_pass_records:
            passes.append(current)
            current, size = [], 0
        current.append(bucket)
        size += count
    if current:
        passes.append(current)
    return passes


def should_use(input_paths: List[str], beam_pipeline_args: List[str]) -> bool:
    """The bucketed join is for the DirectRunner on inputs past MIN_INPUT_BYTES."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(beam_pipeline_args).view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct", "SwitchingDirectRunner"):
        return False
    sizes = FileSystems.match(input_paths)
    return sum(m.size_in_bytes for result in sizes for m in result.metadata_list) >= (
        MIN_INPUT_BYTES)


def _write_json(value, path: str) -> None:
    with FileSystems.create(path) as f:
        f.write(json.dumps(value, sort_keys=True).encode("utf-8"))


def _read_json(pattern: str):
    [match] = FileSystems.match([pattern])[0].metadata_list
    with FileSystems.open(match.path) as f:
        return json.loads(f.read().decode("utf-8"))


def run(make_pipeline: Callable[[], beam.Pipeline], input_glob: str,
        config: config_lib.Config, span_input: Optional[spans.SpanInput],
        write_outputs: Callable[[Dict[str, beam.PCollection], str], None],
        scratch_dir: str, max_pass_records: int = DEFAULT_MAX_PASS_RECORDS) -> dict:
    """Runs the ingestion as a parse pipeline and join passes.

    `write_outputs(outputs, name)` adds the writes of one pipeline's outputs
    ("train", "eval", "dead_letters" as JSON lines, "counts" as one JSON
    object); `name` tells the pipelines' files apart. Returns the summed
    counts and {"passes": n}. `scratch_dir` holds the buckets; it is removed
    at the end.
    """
    buckets_dir = os.path.join(scratch_dir, "buckets")
    with make_pipeline() as pipeline:
        parsed = pipeline | "ParseLogs" >> ingest.ParseLogs(input_glob, config, span_input)
        bucket_counts = ([keyed | f"WriteBuckets{i}" >> beam.ParDo(_WriteBuckets(buckets_dir))
                          for i, keyed in enumerate(parsed["keyed"])]
                         | "AllBucketCounts" >> beam.Flatten()
                         | "SumBucketCounts" >> beam.CombinePerKey(sum)
                         | "BucketCountsToList" >> beam.combiners.ToList())
        bucket_counts | "WriteBucketCounts" >> beam.Map(
            lambda pairs: _write_json(dict(pairs), os.path.join(scratch_dir, "buckets.json")))
        (parsed["last_ts"]
         | "LastImpressionTs" >> beam.CombineGlobally(max).without_defaults()
         | "WriteLastTs" >> beam.Map(_write_json, os.path.join(scratch_dir, "last_ts.json")))
        write_outputs({
            "dead_letters": parsed["dead_letters"]
            | "DeadLetterJson" >> beam.Map(log_contract.DeadLetter.to_json),
            "counts": ingest.sum_counts(parsed["counts"]),
        }, "parse")

    records_per_bucket = {int(b): n for b, n in _read_json(
        os.path.join(scratch_dir, "buckets.json")).items()}
    last_ts_files = FileSystems.match([os.path.join(scratch_dir, "last_ts.json")])[0]
    last_ts = (_read_json(os.path.join(scratch_dir, "last_ts.json"))
               if last_ts_files.metadata_list else None)
    passes = plan_passes(records_per_bucket, max_pass_records)
    for number, buckets in enumerate(passes):
        files = [m.path for b in buckets for m in FileSystems.match(
            [os.path.join(buckets_dir, f"bucket-{b:03d}-*")])[0].metadata_list]
        with make_pipeline() as pipeline:
            joined = (
                pipeline
                | "BucketFiles" >> beam.Create(files)
                | "ReadBuckets" >> beam.FlatMap(_read_bucket_file)
                | "JoinAndSplit" >> ingest.JoinAndSplit(
                    config, last_ts=last_ts,
                    span_start_ts=span_input.start_ts_us if span_input else None))
            outputs = {split: joined[split] for split in ingest.SPLITS}
            outputs["dead_letters"] = joined["dead_letters"] | "DeadLetterJson" >> beam.Map(
                log_contract.DeadLetter.to_json)
            outputs["counts"] = ingest.sum_counts(joined["counts"])
            write_outputs(outputs, f"join-{number}")
        FileSystems.delete(files)
    FileSystems.delete([scratch_dir])
    return {"passes": len(passes)}
