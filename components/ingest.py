"""The ingestion Beam pipeline: log lines in, labelled tf.Examples out.

Parse each line, convert impressions to the config's dtypes, group each
impression with its feedback by (request_id, item_id) (never by user, so a
heavy user does not become a hot key), label, and split by time: the last
`split.eval_days` UTC days of impressions are eval.
"""
from __future__ import annotations

import json
from typing import Dict, Iterator, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

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


class _ParseLine(beam.DoFn):
    """(source file, raw line) -> impression or feedback keyed by
    (request_id, item_id), or a dead letter."""

    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config = None

    def setup(self):
        self._config = config_lib.config_from_json(self._config_json)

    def process(self, record: Union[Tuple[str, bytes], log_contract.DeadLetter]):
        if isinstance(record, log_contract.DeadLetter):
            yield beam.pvalue.TaggedOutput(_DEAD, record)
            return
        source, raw = record
        event = log_contract.parse_event(raw, source)
        if isinstance(event, log_contract.DeadLetter):
            yield beam.pvalue.TaggedOutput(_DEAD, event)
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not event.is_impression:
            # Plain tuples: Beam encodes them compactly, without pickling.
            yield beam.pvalue.TaggedOutput(
                _FEEDBACK, (event.key, tuple(labelling.Feedback.of(event, line, source))))
            return
        impression = labelling.to_impression(self._config, event, line, source)
        if isinstance(impression, log_contract.DeadLetter):
            yield beam.pvalue.TaggedOutput(_DEAD, impression)
            return
        yield beam.pvalue.TaggedOutput(_IMPRESSION, (event.key, tuple(impression)))


class _JoinAndLabel(beam.DoFn):
    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config = None

    def setup(self):
        self._config = config_lib.config_from_json(self._config_json)

    def process(self, keyed_group):
        key, grouped = keyed_group
        result = labelling.join_group(
            self._config, [labelling.Impression(*i) for i in grouped[_IMPRESSION]],
            [labelling.Feedback(*f) for f in grouped[_FEEDBACK]], key)
        for outcome in result.outcomes:
            yield beam.pvalue.TaggedOutput("outcomes", outcome)
        for dead_letter in result.dead_letters:
            yield beam.pvalue.TaggedOutput(_DEAD, dead_letter)
        if result.example is not None:
            # Deterministic: the same input gives the same bytes on every run.
            yield (result.impression_ts, result.example.SerializeToString(deterministic=True))


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
            _IMPRESSION, _FEEDBACK, _DEAD)
        joined = (
            {_IMPRESSION: parsed[_IMPRESSION], _FEEDBACK: parsed[_FEEDBACK]}
            | "GroupByImpressionKey" >> beam.CoGroupByKey()
            | "JoinAndLabel" >> beam.ParDo(_JoinAndLabel(config_json)).with_outputs(
                "outcomes", _DEAD, main="examples"))

        last_ts = (
            joined.examples
            | "ImpressionTs" >> beam.Map(lambda ts_example: ts_example[0])
            | "LastImpressionTs" >> beam.CombineGlobally(max).without_defaults())
        eval_days = self._config.split.eval_days
        partitioned = joined.examples | "SplitByTime" >> beam.Partition(
            lambda ts_example, _, last: SPLITS.index(labelling.split_of(
                ts_example[0], labelling.eval_start_day(last, eval_days))),
            len(SPLITS), beam.pvalue.AsSingleton(last_ts))

        dead_letters = (
            (parsed[_DEAD], joined[_DEAD])
            | "AllDeadLetters" >> beam.Flatten())
        split_outcomes = tuple(
            partitioned[i] | f"{split}Counted" >> beam.Map(lambda _, s=split: split_count_key(s))
            for i, split in enumerate(SPLITS))
        outcomes = (
            (
                lines | "LineRead" >> beam.Map(lambda _: LINES_READ),
                parsed[_DEAD] | "ParseDeadOutcome" >> beam.Map(
                    lambda d: labelling.dead_letter_outcome(d.reason)),
                joined.outcomes,
            ) + split_outcomes
            | "AllOutcomes" >> beam.Flatten()
            | "CountOutcomes" >> beam.combiners.Count.PerElement()
            | "CountsToList" >> beam.combiners.ToList()
            | "CountsToJson" >> beam.Map(_counts_to_json))
        result = {
            split: partitioned[i] | f"{split}Bytes" >> beam.Map(lambda ts_example: ts_example[1])
            for i, split in enumerate(SPLITS)
        }
        result["dead_letters"] = dead_letters | "DeadLetterJson" >> beam.Map(
            log_contract.DeadLetter.to_json)
        result["counts"] = outcomes
        return result
