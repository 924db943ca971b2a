"""Turns one already-labelled row (a CSV line, or a tf.Example from a TFRecord
file) into the example the pipeline trains on.

These are the pure functions the tabular ExampleGens map over; they know the
config (which columns are features, which label which task) and nothing of
Beam. A row either becomes one example or one dead letter with a reason:

- CSV: the features in their config dtypes (an empty field or one of
  `input.missing_values` becomes the feature's default, converted exactly as
  for logs by `examples.feature_values`) and each task's label as the float
  feature `<task>_label`; every other column is left out.
- tf.Example: kept as it is, once each task's `<task>_label` is checked.

Each example also gets `split_key`, a hash of the input row and the split
seed, by which ExampleGen assigns the split: the same rows land in the same
split on every run, whichever features the config picks.
"""
from __future__ import annotations

import csv
import hashlib
import math
from typing import List, Optional, Sequence, Union

import tensorflow as tf

from mtrank.base import examples, log_contract
from mtrank.base import config as config_lib

# Dead-letter reasons of tabular rows.
NOT_UTF8 = "not_utf8"
NOT_CSV = "not_csv"
WRONG_COLUMN_COUNT = "wrong_column_count"
WRONG_TYPE = log_contract.WRONG_TYPE
MISSING_LABEL = "missing_label"

DeadLetter = log_contract.DeadLetter


def split_fields(line: str, delimiter: str) -> List[str]:
    """The fields of one CSV line, without the spaces around each. A
    delimiter with spaces around it (", ") splits at its one other character;
    quoted fields ("a, b") may hold it."""
    separator = delimiter.strip() or delimiter
    try:
        fields = next(csv.reader([line], delimiter=separator, skipinitialspace=True), [])
    except csv.Error as e:
        raise ValueError(str(e)) from e
    return [field.strip() for field in fields]


def parse_number(text: str, where: str) -> Union[int, float]:
    """A CSV field as a number: an int if it is written as one, else a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {text!r}")
    return value


def feature_from_text(feature: config_lib.FeatureConfig, text: Optional[str]) -> list:
    """One feature's value, from its field's text (None when missing)."""
    value = text
    if text is not None and feature.is_numeric_value:
        value = parse_number(text, f"features.{feature.name}")
    return examples.feature_values(feature, value)


def label_from_text(task: config_lib.TaskConfig, text: str) -> float:
    if task.type == "binary":
        return 1.0 if text in task.positive_values else 0.0
    return float(parse_number(text, f"tasks.{task.name}.label_column {task.label_column}"))


def split_key(seed: int, row: bytes) -> int:
    """A signed 64-bit hash of the seed and the input row."""
    digest = hashlib.sha256(b"%d:" % seed + row).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _with_split_key(example: tf.train.Example, seed: int, row: bytes) -> tf.train.Example:
    example.features.feature[config_lib.SPLIT_KEY].int64_list.value[:] = [split_key(seed, row)]
    return example


def csv_row_to_example(config: config_lib.Config, columns: Sequence[str], raw: bytes,
                       source: str = "") -> Union[tf.train.Example, DeadLetter]:
    """One CSV line (without its line break) as a labelled example, or why not.

    `columns` are the file's column names, in order.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DeadLetter(NOT_UTF8, str(e), raw.decode("utf-8", errors="replace"), source)
    line = line.rstrip("\r\n")
    try:
        fields = split_fields(line, config.input.delimiter)
    except ValueError as e:
        return DeadLetter(NOT_CSV, str(e), line, source)
    if len(fields) != len(columns):
        return DeadLetter(WRONG_COLUMN_COUNT,
                          f"{len(fields)} fields, expected {len(columns)}", line, source)
    missing = set(config.input.missing_values) | {""}
    row = {column: None if field in missing else field for column, field in zip(columns, fields)}
    example = tf.train.Example()
    feature_map = example.features.feature
    try:
        for feature in config.features:
            examples.set_feature(feature_map, feature.name, feature.dtype,
                                  feature_from_text(feature, row[feature.name]))
        for task in config.tasks:
            text = row[task.label_column]
            if text is None:
                return DeadLetter(MISSING_LABEL, f"tasks.{task.name}: column "
                                  f"{task.label_column} is missing", line, source)
            examples.set_feature(feature_map, task.label_key, "float",
                                  [label_from_text(task, text)])
    except ValueError as e:
        return DeadLetter(WRONG_TYPE, str(e), line, source)
    return _with_split_key(example, config.input.split.seed, line.encode("utf-8"))


def labelled_example(config: config_lib.Config, example: tf.train.Example,
                     source: str = "") -> Union[tf.train.Example, DeadLetter]:
    """A tf.Example read from TFRecord, with its split key, if it holds one
    number as each task's `<task>_label`; otherwise why not."""
    features = example.features.feature
    for task in config.tasks:
        label = features.get(task.label_key)
        kind = label.WhichOneof("kind") if label is not None else None
        values = getattr(label, kind).value if kind else []
        if not values:
            return DeadLetter(MISSING_LABEL, f"no {task.label_key} feature",
                              _describe(example), source)
        if kind == "bytes_list" or len(values) != 1:
            return DeadLetter(WRONG_TYPE, f"{task.label_key}: expected one number, got "
                              f"{len(values)} value(s) in a {kind}", _describe(example), source)
    row = example.SerializeToString(deterministic=True)
    keyed = tf.train.Example()
    keyed.CopyFrom(example)
    return _with_split_key(keyed, config.input.split.seed, row)


def _describe(example: tf.train.Example) -> str:
    return f"tf.Example with features {sorted(example.features.feature)}"
