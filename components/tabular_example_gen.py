"""ExampleGens for already-labelled tabular input: TFX's FileBasedExampleGen
with our executors.

- csv: `CsvExecutor` reads the lines itself (the config's delimiter, header
  or column names, missing values) and converts each row with
  `components.tabular`.
- tfrecord: `TFRecordExecutor` is ImportExampleGen's executor, checking that
  each tf.Example holds every task's `<task>_label`.

Both output Examples split by ExampleGen's hash buckets (`input.split`
percentages, over each row's seeded `split_key`), and record the ingestion
counts in the Examples artifact's `ingest_counts` custom property, in the
shape LogExampleGen writes them: `lines_read` (rows read; records for
TFRecord), `impressions` (rows that became examples), `examples.<split>` and
`dead_letter.<reason>` for rows left out. The rows left out are written, as
JSON lines with their reason, beside the splits in the Examples artifact
(`<uri>/dead_letters/`, its `dead_letters_uri` custom property).
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Dict, List, Tuple

import apache_beam as beam
from absl import logging
from apache_beam.io.filesystems import FileSystems
from google.protobuf import any_pb2, wrappers_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from mtrank.components import tabular
from mtrank.base import counts
from mtrank.base import config as config_lib

# The component id of each format's ExampleGen.
COMPONENT_IDS = {"csv": "CsvExampleGen", "tfrecord": "ImportExampleGen"}
# Where the Beam pipeline writes its counts: an exec property only the
# executor sets (as ExampleGen's own executors pass `_beam_pipeline_args`).
_COUNTS_DIR = "_mtrank_counts_dir"
_DEAD_LETTERS_DIR = "_mtrank_dead_letters_dir"
DEAD_LETTERS_PROPERTY = "dead_letters_uri"
_DEAD = "dead"
_DEAD_LETTERS_LOGGED = 5


def custom_config(config: config_lib.Config) -> example_gen_pb2.CustomConfig:
    """The config, as ExampleGen's custom_config passes it to the executor."""
    packed = any_pb2.Any()
    packed.Pack(wrappers_pb2.StringValue(value=config.to_json()))
    return example_gen_pb2.CustomConfig(custom_config=packed)


def config_from_exec_properties(exec_properties: Dict[str, Any]) -> config_lib.Config:
    custom = exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY]
    if isinstance(custom, str):
        custom = proto_utils.json_to_proto(custom, example_gen_pb2.CustomConfig())
    text = wrappers_pb2.StringValue()
    custom.custom_config.Unpack(text)
    return config_lib.config_from_json(text.value)


def output_config(split: config_lib.InputSplitConfig) -> example_gen_pb2.Output:
    """The split percentages as hash buckets in lowest terms (70/15/15 is
    14/3/3 of 20), assigned by each example's split_key."""
    percentages = split.percentages()
    divisor = functools.reduce(math.gcd, percentages.values())
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=share // divisor)
                for name, share in percentages.items()],
        partition_feature_name=config_lib.SPLIT_KEY))


def input_base_and_pattern(input_glob: str) -> Tuple[str, str]:
    """ExampleGen's input_base (a directory) and the file pattern in it."""
    # Decided without touching remote storage: building (or compiling) the
    # pipeline must work offline. A remote directory is written with a
    # trailing slash.
    if input_glob.endswith("/") or ("://" not in input_glob and os.path.isdir(input_glob)):
        return input_glob.rstrip("/") or "/", "*"
    return os.path.dirname(input_glob) or ".", os.path.basename(input_glob)


def example_gen(input_glob: str, config: config_lib.Config) -> FileBasedExampleGen:
    """The ExampleGen for `config.input.format` csv or tfrecord."""
    executor = {"csv": CsvExecutor, "tfrecord": TFRecordExecutor}[config.input.format]
    input_base, pattern = input_base_and_pattern(input_glob)
    return FileBasedExampleGen(
        input_base=input_base,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="single_split", pattern=pattern)]),
        output_config=output_config(config.input.split),
        custom_config=custom_config(config),
        custom_executor_spec=executor_spec.BeamExecutorSpec(executor),
    ).with_id(COMPONENT_IDS[config.input.format])


def read_header(file_pattern: str, delimiter: str) -> List[str]:
    """The column names from the first line of the files, which must agree."""
    paths = sorted(m.path for m in FileSystems.match([file_pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(f"no file matches {file_pattern!r}")
    headers = {}
    for path in paths:
        with FileSystems.open(path) as f:  # decompressed by the file extension
            headers[path] = tabular.split_fields(
                f.readline().decode("utf-8").rstrip("\r\n"), delimiter)
    first = headers[paths[0]]
    for path, header in headers.items():
        if header != first:
            raise ValueError(f"{path}: its header {header} differs from that of {paths[0]}")
    return first


def _check_header(config: config_lib.Config, columns: List[str], file_pattern: str) -> None:
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    needed = [f.name for f in config.features] + [t.label_column for t in config.tasks]
    absent = [name for name in needed if name not in columns]
    if repeated or absent:
        raise ValueError(f"{file_pattern}: the header {columns} "
                         + (f"repeats {repeated}" if repeated else f"has no column(s) {absent}")
                         + " (or set input.column_names for files without a header)")


def _log_dead_letters(sample: List[tabular.DeadLetter]) -> None:
    for dead in sample:
        logging.warning("dead letter %s: %s: %.300s", dead.reason, dead.detail, dead.line)


class _WriteCounts(beam.PTransform):
    """Outcome names in, one JSON object {outcome: count} written to `path`."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, outcomes):
        return (
            outcomes
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToList" >> beam.combiners.ToList()
            | "ToJson" >> beam.Map(lambda pairs: json.dumps(dict(sorted(pairs))))
            | "Write" >> beam.io.WriteToText(self._path, shard_name_template=""))


class _Convert(beam.DoFn):
    """A row -> an example, or a dead letter (tagged `_DEAD`), by `convert(config, row, *args)`."""

    def __init__(self, convert, config_json: str, *args):
        self._convert, self._config_json, self._args = convert, config_json, args
        self._config = None

    def setup(self):
        self._config = config_lib.config_from_json(self._config_json)

    def process(self, row):
        result = self._convert(self._config, row, *self._args)
        if isinstance(result, tabular.DeadLetter):
            yield beam.pvalue.TaggedOutput(_DEAD, result)
        else:
            yield result


class _RowsToExamples(beam.PTransform):
    """Converts rows, counts the outcomes to `<counts_dir>/rows.json`, writes
    the dead letters to `dead_letters_dir` and logs a few; returns the
    examples."""

    def __init__(self, config: config_lib.Config, counts_dir: str, dead_letters_dir: str,
                 convert, *args):
        super().__init__()
        self._config, self._counts_dir, self._dead_letters_dir = (
            config, counts_dir, dead_letters_dir)
        self._convert, self._args = convert, args

    def expand(self, rows):
        converted = rows | "Convert" >> beam.ParDo(
            _Convert(self._convert, self._config.to_json(), *self._args)).with_outputs(
                _DEAD, main="examples")
        dead = converted[_DEAD]
        (
            (
                rows | "RowRead" >> beam.Map(lambda _: counts.LINES_READ),
                converted.examples | "ExampleMade" >> beam.Map(lambda _: counts.EXAMPLE),
                dead | "DeadOutcome" >> beam.Map(
                    lambda d: counts.dead_letter_outcome(d.reason)),
            )
            | "Outcomes" >> beam.Flatten()
            | "WriteCounts" >> _WriteCounts(os.path.join(self._counts_dir, "rows.json")))
        _ = (dead
             | "DeadLetterJson" >> beam.Map(tabular.DeadLetter.to_json)
             | "WriteDeadLetters" >> beam.io.WriteToText(
                 os.path.join(self._dead_letters_dir, "dead_letters"),
                 file_name_suffix=".jsonl"))
        _ = (dead
             | "SampleDeadLetters" >> beam.combiners.Sample.FixedSizeGlobally(
                 _DEAD_LETTERS_LOGGED)
             | "LogDeadLetters" >> beam.Map(_log_dead_letters))
        return converted.examples


def _csv_row(config: config_lib.Config, filename_and_line: Tuple[str, bytes],
             columns: List[str]):
    filename, line = filename_and_line
    return tabular.csv_row_to_example(config, columns, line, filename)


class _CsvToExamples(beam.PTransform):
    """ExampleGen's input transform: the CSV files of one input split to
    tf.Examples."""

    def __init__(self, exec_properties: Dict[str, Any], split_pattern: str):
        super().__init__()
        self._exec_properties, self._split_pattern = exec_properties, split_pattern

    def expand(self, pipeline):
        config = config_from_exec_properties(self._exec_properties)
        file_pattern = os.path.join(
            self._exec_properties[standard_component_specs.INPUT_BASE_KEY], self._split_pattern)
        columns = config.input.column_names
        if columns is None:
            columns = read_header(file_pattern, config.input.delimiter)
            _check_header(config, columns, file_pattern)
        logging.info("Reading CSV %s with columns %s.", file_pattern, columns)
        # Bytes, so that a line that is not UTF-8 is a dead letter, not a
        # failed read. Compression follows the file extension.
        lines = pipeline | "ReadLines" >> beam.io.ReadFromTextWithFilename(
            file_pattern, coder=beam.coders.BytesCoder(),
            skip_header_lines=0 if config.input.column_names else 1)
        return lines | "RowsToExamples" >> _RowsToExamples(
            config, self._exec_properties[_COUNTS_DIR],
            self._exec_properties[_DEAD_LETTERS_DIR], _csv_row, list(columns))


class _CountingExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Counts rows, dead letters and each split's examples (the conversion
    writes `rows.json`, this writes `splits.json`), checks that no split is
    empty, and records the counts on the Examples artifact."""

    def GenerateExamplesByBeam(self, pipeline, exec_properties):
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        (
            [examples | f"Count[{name}]" >> beam.Map(lambda _, n=name: counts.split_count_key(n))
             for name, examples in splits.items()]
            | "SplitOutcomes" >> beam.Flatten()
            | "WriteSplitCounts" >> _WriteCounts(
                os.path.join(exec_properties[_COUNTS_DIR], "splits.json")))
        return splits

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        counts_dir = os.path.join(self._get_tmp_dir(), "ingest_counts")
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        # Beside the Split-* folders, which are all that readers of the
        # Examples look at.
        dead_letters_dir = os.path.join(examples.uri, "dead_letters")
        exec_properties = dict(exec_properties, **{
            _COUNTS_DIR: counts_dir, _DEAD_LETTERS_DIR: dead_letters_dir})
        super().Do(input_dict, output_dict, exec_properties)
        examples.set_string_custom_property(DEAD_LETTERS_PROPERTY, dead_letters_dir)

        ingest_counts = {}
        for path in sorted(fileio.glob(os.path.join(counts_dir, "*.json"))):
            ingest_counts.update(json.loads(io_utils.read_string_file(path)))
        empty = [split for split in artifact_utils.decode_split_names(examples.split_names)
                 if not ingest_counts.get(counts.split_count_key(split))]
        if empty:
            raise ValueError(
                f"split(s) {empty} got no examples from "
                f"{exec_properties[standard_component_specs.INPUT_BASE_KEY]}; "
                "too few rows for the input.split percentages? Counts: "
                + json.dumps(ingest_counts, sort_keys=True))
        examples.set_string_custom_property(counts.COUNTS_PROPERTY,
                                            json.dumps(ingest_counts, sort_keys=True))


class CsvExecutor(_CountingExecutor):
    """FileBasedExampleGen executor for CSV files (config.input.format csv)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _CsvToExamples


class TFRecordExecutor(_CountingExecutor, import_executor.Executor):
    """ImportExampleGen's executor for TFRecord files of tf.Example, keeping
    only examples that hold every task's label."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        import_records = super().GetInputSourceToExamplePTransform()

        def checked_examples(exec_properties: Dict[str, Any], split_pattern: str):
            return _CheckedImport(import_records(exec_properties, split_pattern),
                                  config_from_exec_properties(exec_properties),
                                  exec_properties[_COUNTS_DIR],
                                  exec_properties[_DEAD_LETTERS_DIR])

        return checked_examples


class _CheckedImport(beam.PTransform):
    def __init__(self, import_records: beam.PTransform, config: config_lib.Config,
                 counts_dir: str, dead_letters_dir: str):
        super().__init__()
        self._import_records, self._config = import_records, config
        self._counts_dir, self._dead_letters_dir = counts_dir, dead_letters_dir

    def expand(self, pipeline):
        return (pipeline
                | "ImportRecords" >> self._import_records
                | "RowsToExamples" >> _RowsToExamples(
                    self._config, self._counts_dir, self._dead_letters_dir,
                    tabular.labelled_example))
