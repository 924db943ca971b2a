"""The ingestion Beam pipeline: log lines in, labelled tf.Examples out.

Parse each line, convert impressions to the config's dtypes, group each
impression with its feedback by (request_id, item_id) (never by user, so a
heavy user does not become a hot key), label, and split: by time (the last
`split.eval_days` UTC days of impressions are eval) when reading a plain
glob; by a hash of the request (`split.eval_percent`) when ingesting one
span (day), whose impressions also take feedback from the following days'
partitions (see components/spans.py).
"""
from __future__ import annotations

import collections
import json
from typing import Dict, Iterator, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from mtrank.components import labelling, spans
from mtrank.base import counts, log_contract, log_files
from mtrank.base import config as config_lib

SPLITS = ("train", "eval")
# Record tags in the join, and the parse's outputs.
_IMPRESSION, _FEEDBACK = "impression", "feedback"
_LOOKAHEAD = "lookahead"  # feedback from the partitions after the span's
_KEYED, _DEAD = "keyed", "dead"


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

    def __init__(self, config_json: str, lookahead: bool = False):
        # A lookahead parser reads a later span's partition for its feedback
        # only: that span counts those lines, so nothing else is emitted.
        super().__init__(config_json)
        self._lookahead = lookahead
        self._to_impression = None

    def setup(self):
        super().setup()
        self._to_impression = labelling.ImpressionConverter(self._config)

    def start_bundle(self):
        super().start_bundle()
        self._last_ts = None

    def finish_bundle(self):
        yield from super().finish_bundle()
        if self._last_ts is not None:
            yield beam.pvalue.TaggedOutput(
                self.LAST_TS, GlobalWindows.windowed_value(self._last_ts))

    def _dead(self, dead_letter: log_contract.DeadLetter):
        self._counts[counts.dead_letter_outcome(dead_letter.reason)] += 1
        return beam.pvalue.TaggedOutput(_DEAD, dead_letter)

    def process(self, record: Union[Tuple[str, bytes], log_contract.DeadLetter]):
        self._counts[counts.LOOKAHEAD_PREFIX + counts.LINES_READ if self._lookahead
                     else counts.LINES_READ] += 1
        if isinstance(record, log_contract.DeadLetter):
            if not self._lookahead:
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
        if self._lookahead:
            if not isinstance(event, log_contract.DeadLetter) and not event.is_impression:
                yield _keyed(event.key, _LOOKAHEAD, labelling.Feedback.of(event, line, source))
            return
        if isinstance(event, log_contract.DeadLetter):
            yield self._dead(event)
            return
        if not event.is_impression:
            yield _keyed(event.key, _FEEDBACK, labelling.Feedback.of(event, line, source))
            return
        impression = self._to_impression(event, line, source)
        if isinstance(impression, log_contract.DeadLetter):
            yield self._dead(impression)
            return
        self._last_ts = max(self._last_ts or event.ts, event.ts)
        yield _keyed(event.key, _IMPRESSION, impression)


def _keyed(key, tag: str, record) -> beam.pvalue.TaggedOutput:
    # One output for every record kind, tagged inside: the records flow
    # straight into the next step (a shuffle, or the bucketed join's files)
    # with no Flatten in between, which the DirectRunner would hold in memory.
    # Plain tuples: Beam encodes them compactly, without pickling.
    return beam.pvalue.TaggedOutput(_KEYED, (key, (tag, tuple(record))))


class _JoinAndLabel(_CountingDoFn):
    """One (request_id, item_id) group -> a labelled example under its
    split's tag, dead letters, and counts."""

    def __init__(self, config_json: str, span_start_ts: Optional[int] = None):
        super().__init__(config_json)
        self._span_start_ts = span_start_ts

    def process(self, keyed_group, last_impression_ts: Optional[int] = None):
        key, grouped = keyed_group
        result = labelling.join_group(
            self._config, [labelling.Impression(*i) for i in grouped[_IMPRESSION]],
            [labelling.Feedback(*f) for f in grouped[_FEEDBACK]], key,
            lookahead_feedback=[labelling.Feedback(*f) for f in grouped[_LOOKAHEAD]],
            span_start_ts=self._span_start_ts)
        self._counts.update(result.outcomes)
        for dead_letter in result.dead_letters:
            yield beam.pvalue.TaggedOutput(_DEAD, dead_letter)
        if result.example_bytes is not None:
            if self._span_start_ts is not None:
                split = labelling.split_of_request(key[0], self._config.split.eval_percent)
            else:
                split = labelling.split_of(result.impression_ts, labelling.eval_start_day(
                    last_impression_ts, self._config.split.eval_days))
            self._counts[counts.split_count_key(split)] += 1
            yield beam.pvalue.TaggedOutput(split, result.example_bytes)


def _counts_to_json(outcome_counts) -> str:
    return json.dumps(dict(sorted(outcome_counts)), sort_keys=True)


class ParseLogs(beam.PTransform):
    """Reads and parses contract-v1 logs matching `input_glob`, or with
    `span_input` one span's partition (plus its lookahead partitions'
    feedback).

    Returns a dict: "keyed", a list of PCollections of ((request_id,
    item_id), (tag, record)) for the join (the span's own lines, and its
    lookahead's feedback); and PCollections "dead_letters" (DeadLetter),
    "counts" ((outcome, n) pairs, summed later) and "last_ts" (the latest
    impression time, for the time split).
    """

    def __init__(self, input_glob: str, config: config_lib.Config,
                 span_input: Optional[spans.SpanInput] = None):
        super().__init__()
        self._input_glob = span_input.own_glob if span_input else input_glob
        self._config = config
        self._span_input = span_input

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
            _KEYED, _DEAD, _CountingDoFn.COUNTS, _ParseLine.LAST_TS)
        keyed = [parsed[_KEYED]]
        count_streams = [parsed[_CountingDoFn.COUNTS]]
        if self._span_input:
            lookahead = (
                pipeline
                | "LookaheadGlobs" >> beam.Create(self._span_input.lookahead_globs)
                | "MatchLookahead" >> fileio.MatchAll()
                | "ReadLookahead" >> beam.FlatMap(_read_file)
                | "ParseLookahead" >> beam.ParDo(_ParseLine(config_json, lookahead=True))
                .with_outputs(_KEYED, _CountingDoFn.COUNTS))
            keyed.append(lookahead[_KEYED])
            count_streams.append(lookahead[_CountingDoFn.COUNTS])
        return {
            "keyed": keyed,
            "dead_letters": parsed[_DEAD],
            "counts": count_streams | "ParseCounts" >> beam.Flatten(),
            "last_ts": parsed[_ParseLine.LAST_TS],
        }


def _regroup(keyed_group):
    """(key, [(tag, record)]) -> (key, {tag: [records]}), CoGroupByKey's shape."""
    key, tagged = keyed_group
    grouped = {_IMPRESSION: [], _FEEDBACK: [], _LOOKAHEAD: []}
    for tag, record in tagged:
        grouped[tag].append(record)
    return key, grouped


class JoinAndSplit(beam.PTransform):
    """Groups ParseLogs' keyed records by (request_id, item_id), labels and
    splits: by time relative to `last_ts` (a PCollection of candidates, or
    one known value), or with `span_start_ts` by request.

    Returns a dict of PCollections: "train" and "eval" (serialized
    tf.Examples), "dead_letters" (DeadLetter) and "counts" ((outcome, n)).
    """

    def __init__(self, config: config_lib.Config, last_ts=None,
                 span_start_ts: Optional[int] = None):
        super().__init__()
        self._config = config
        self._last_ts = last_ts
        self._span_start_ts = span_start_ts

    def expand(self, keyed) -> Dict[str, beam.PCollection]:
        join = _JoinAndLabel(self._config.to_json(), self._span_start_ts)
        side_inputs = ()
        if self._span_start_ts is None:
            last_ts = self._last_ts
            if isinstance(last_ts, beam.PCollection):
                # No impressions at all: the join meets only orphans and never
                # needs the value.
                last_ts = beam.pvalue.AsSingleton(
                    last_ts | "LastImpressionTs" >> beam.CombineGlobally(max)
                    .without_defaults(), default_value=None)
            side_inputs = (last_ts,)
        joined = (
            keyed
            | "GroupByImpressionKey" >> beam.GroupByKey()
            | "Regroup" >> beam.Map(_regroup)
            | "JoinLabelSplit" >> beam.ParDo(join, *side_inputs)
            .with_outputs(_DEAD, _CountingDoFn.COUNTS, *SPLITS))
        result = {split: joined[split] for split in SPLITS}
        result["dead_letters"] = joined[_DEAD]
        result["counts"] = joined[_CountingDoFn.COUNTS]
        return result


def sum_counts(outcome_counts) -> beam.PCollection:
    """(outcome, n) pairs -> one JSON object of their sums."""
    return (outcome_counts
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsToList" >> beam.combiners.ToList()
            | "CountsToJson" >> beam.Map(_counts_to_json))


class LogsToExamples(beam.PTransform):
    """ParseLogs then JoinAndSplit in one Beam pipeline: what a distributed
    runner (Dataflow, Flink, Spark) runs, its shuffle spilling to disk.

    Returns a dict of PCollections: "train" and "eval" (serialized
    tf.Examples), "dead_letters" (JSON lines with `dead_letter_reason`) and
    "counts" (one JSON object: outcome -> count, plus lines_read and
    examples.<split>). Every line read is counted under exactly one outcome;
    `lookahead.*` counts describe lines that their own span counts.
    """

    def __init__(self, input_glob: str, config: config_lib.Config,
                 span_input: Optional[spans.SpanInput] = None):
        super().__init__()
        self._input_glob = input_glob
        self._config = config
        self._span_input = span_input

    def expand(self, pipeline) -> Dict[str, beam.PCollection]:
        parsed = pipeline | "ParseLogs" >> ParseLogs(
            self._input_glob, self._config, self._span_input)
        joined = (parsed["keyed"] | "AllKeyed" >> beam.Flatten()) | "JoinAndSplit" >> JoinAndSplit(
            self._config, last_ts=parsed["last_ts"],
            span_start_ts=self._span_input.start_ts_us if self._span_input else None)
        result = {split: joined[split] for split in SPLITS}
        result["dead_letters"] = (
            (parsed["dead_letters"], joined["dead_letters"])
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetterJson" >> beam.Map(log_contract.DeadLetter.to_json))
        result["counts"] = sum_counts(
            (parsed["counts"], joined["counts"]) | "AllCounts" >> beam.Flatten())
        return result
