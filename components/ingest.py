"""The ingestion Beam pipeline: log lines in, labelled tf.Examples out.

Parse each line, convert impressions to the config's dtypes, group each
impression with its feedback by (request_id, item_id) (never by user, so a
heavy user does not become a hot key), label, and split by time: the last
`split.eval_days` UTC days of impressions are eval.
"""
from __future__ import annotations

import collections
import json
from typing import Dict, Iterator, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from components import labelling, log_contract, log_files
from pipeline import config as config_lib

SPLITS = ("train", "eval")
_IMPRESSION, _FEEDBACK, _DEAD = "impression", "feedback", "dead"
LINES_READ = "lines_read"


def _read_file(metadata) -> Iterator:
    """(source, line bytes) for each line of one file, or a dead letter.

    Each file is read whole by one worker (a gzip stream cannot be split);
    daily partitions give the pipeline many files to spread.
    """
    path = metadata.path
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        for record in log_files.read_records(raw, path):
            yield record if isinstance(record, log_contract.DeadLetter) else (path, record)


class _CountingDoFn(beam.DoFn):
    """A DoFn that counts outcomes per bundle and emits the totals once at
    the bundle's end: a handful of elements per bundle instead of one per
    line through the counting combine."""

    COUNTS = "counts"

    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config = None
        self._counts = None

    def setup(self):
        self._config = config_lib.config_from_json(self._config_json)

    def start_bundle(self):
        self._counts = collections.Counter()

    def finish_bundle(self):
        for outcome, count in self._counts.items():
            yield beam.pvalue.TaggedOutput(
                self.COUNTS, GlobalWindows.windowed_value((outcome, count)))


class _ParseLine(_CountingDoFn):
    """(source file, raw line) -> impression or feedback keyed by
    (request_id, item_id), or a dead letter; also the latest impression
    time seen, for the time split."""

    LAST_TS = "last_ts"

    def start_bundle(self):
        super().start_bundle()
        self._last_ts = None

    def finish_bundle(self):
        yield from super().finish_bundle()
        if self._last_ts is not None:
            yield beam.pvalue.TaggedOutput(
                self.LAST_TS, GlobalWindows.windowed_value(self._last_ts))

    def _dead(self, dead_letter: log_contract.DeadLetter):
        self._counts[labelling.dead_letter_outcome(dead_letter.reason)] += 1
        return beam.pvalue.TaggedOutput(_DEAD, dead_letter)

    def process(self, record: Union[Tuple[str, bytes], log_contract.DeadLetter]):
        self._counts[LINES_READ] += 1
        if isinstance(record, log_contract.DeadLetter):
            yield self._dead(record)
            return
        source, raw = record
        # Decoded once here; bytes that are not UTF-8 go to the parser as they
        # are, which dead-letters them.
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            line = None
        event = log_contract.parse_event(raw if line is None else line, source)
        if isinstance(event, log_contract.DeadLetter):
            yield self._dead(event)
            return
        if not event.is_impression:
            # Plain tuples: Beam encodes them compactly, without pickling.
            yield beam.pvalue.TaggedOutput(
                _FEEDBACK, (event.key, tuple(labelling.Feedback.of(event, line, source))))
            return
        impression = labelling.to_impression(self._config, event, line, source)
        if isinstance(impression, log_contract.DeadLetter):
            yield self._dead(impression)
            return
        self._last_ts = max(self._last_ts or event.ts, event.ts)
        yield beam.pvalue.TaggedOutput(_IMPRESSION, (event.key, tuple(impression)))


class _JoinAndLabel(_CountingDoFn):
    """One (request_id, item_id) group -> a labelled example under its
    split's tag, dead letters, and counts."""

    def process(self, keyed_group, last_impression_ts: int):
        key, grouped = keyed_group
        result = labelling.join_group(
            self._config, [labelling.Impression(*i) for i in grouped[_IMPRESSION]],
            [labelling.Feedback(*f) for f in grouped[_FEEDBACK]], key)
        self._counts.update(result.outcomes)
        for dead_letter in result.dead_letters:
            yield beam.pvalue.TaggedOutput(_DEAD, dead_letter)
        if result.example is not None:
            split = labelling.split_of(result.impression_ts, labelling.eval_start_day(
                last_impression_ts, self._config.split.eval_days))
            self._counts[split_count_key(split)] += 1
            # Deterministic: the same input gives the same bytes on every run.
            yield beam.pvalue.TaggedOutput(
                split, result.example.SerializeToString(deterministic=True))


def split_count_key(split: str) -> str:
    """Counts key of the number of examples in a split."""
    return f"examples.{split}"


def _counts_to_json(outcome_counts) -> str:
    return json.dumps(dict(sorted(outcome_counts)), sort_keys=True)


class LogsToExamples(beam.PTransform):
    """Reads contract-v1 logs matching `input_glob`.

    Returns a dict of PCollections: "train" and "eval" (serialized
    tf.Examples), "dead_letters" (JSON lines with `dead_letter_reason`) and
    "counts" (one JSON object: outcome -> count, plus lines_read and
    examples.<split>). Every line read is counted under exactly one outcome.
    """

    def __init__(self, input_glob: str, config: config_lib.Config):
        super().__init__()
        self._input_glob = input_glob
        self._config = config

    def expand(self, pipeline) -> Dict[str, beam.PCollection]:
        config_json = self._config.to_json()
        # Bytes, not str: a line that is not UTF-8 must reach the dead letters,
        # not fail the read. (No reshuffle after reading: the grouping by key
        # already spreads the work, and on the DirectRunner a reshuffle would
        # hold every line in memory once more.)
        lines = (
            pipeline
            | "MatchFiles" >> fileio.MatchFiles(self._input_glob)
            | "ReadFiles" >> beam.FlatMap(_read_file))
        parsed = lines | "Parse" >> beam.ParDo(_ParseLine(config_json)).with_outputs(
            _IMPRESSION, _FEEDBACK, _DEAD, _CountingDoFn.COUNTS, _ParseLine.LAST_TS)
        last_impression_ts = (
            parsed[_ParseLine.LAST_TS]
            | "LastImpressionTs" >> beam.CombineGlobally(max).without_defaults())
        joined = (
            {_IMPRESSION: parsed[_IMPRESSION], _FEEDBACK: parsed[_FEEDBACK]}
            | "GroupByImpressionKey" >> beam.CoGroupByKey()
            | "JoinLabelSplit" >> beam.ParDo(
                # No impressions at all: the join meets only orphans and
                # never needs the value.
                _JoinAndLabel(config_json),
                beam.pvalue.AsSingleton(last_impression_ts, default_value=None)
            ).with_outputs(_DEAD, _CountingDoFn.COUNTS, *SPLITS))
        result = {split: joined[split] for split in SPLITS}
        result["dead_letters"] = (
            (parsed[_DEAD], joined[_DEAD])
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetterJson" >> beam.Map(log_contract.DeadLetter.to_json))
        result["counts"] = (
            (parsed[_CountingDoFn.COUNTS], joined[_CountingDoFn.COUNTS])
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsToList" >> beam.combiners.ToList()
            | "CountsToJson" >> beam.Map(_counts_to_json))
        return result
