"""Tests of CSV rows and imported tf.Examples -> labelled examples."""
import pytest
import tensorflow as tf

from mtrank.components import tabular
from mtrank.base import config as config_lib

CONFIG = config_lib.config_from_dict({
    "model_name": "m",
    "input": {
        "format": "csv",
        "column_names": ["age", "job", "weight", "hours", "income", "status", "score"],
        "delimiter": ", ",
        "missing_values": ["?"],
        "exclude_columns": ["weight"],
        "split": {"train": 70, "eval": 15, "test": 15, "seed": 3},
    },
    "features": [
        {"name": "age", "kind": "numeric", "dtype": "int64"},
        {"name": "job", "kind": "categorical", "dtype": "string", "encoding": "vocabulary"},
        {"name": "hours", "kind": "numeric", "dtype": "float"},
    ],
    "tasks": [
        {"name": "rich", "label_column": "income", "positive_values": ["50000+.", "100000+."]},
        {"name": "single", "label_column": "status", "positive_values": ["Never married"]},
        {"name": "score", "label_column": "score", "type": "regression",
         "eval": {"max_mse": 10.0}},
    ],
})
COLUMNS = CONFIG.input.column_names
LINE = b"38, Private, 1032.38, 40, 50000+., Married, 2.5"


def _convert(line: bytes, config=CONFIG, columns=COLUMNS):
    return tabular.csv_row_to_example(config, columns, line, "census.csv")


def _values(example: tf.train.Example) -> dict:
    result = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        result[name] = [v.decode() if isinstance(v, bytes) else v for v in values]
    return result


def test_row_becomes_features_in_their_dtypes_and_float_labels():
    values = _values(_convert(LINE))
    split_key = values.pop(config_lib.SPLIT_KEY)
    assert values == {
        "age": [38], "job": ["Private"], "hours": [40.0],
        "rich_label": [1.0], "single_label": [0.0], "score_label": [2.5],
    }
    assert len(split_key) == 1


def test_excluded_and_label_columns_are_not_features():
    names = set(_convert(LINE).features.feature)
    assert not names & {"weight", "income", "status", "score"}


def test_label_is_one_only_for_a_positive_value():
    rich = _values(_convert(b"38, Private, 1, 40, 100000+., Never married, 0"))
    assert rich["rich_label"] == [1.0] and rich["single_label"] == [1.0]
    poor = _values(_convert(b"38, Private, 1, 40, - 50000., Widowed, 0"))
    assert poor["rich_label"] == [0.0] and poor["single_label"] == [0.0]
    # The value is compared without the spaces around it, never in part.
    assert _values(_convert(b"38, Private, 1, 40,   50000+.  , Married, 0"))["rich_label"] == [1.0]
    assert _values(_convert(b"38, Private, 1, 40, 50000, Married, 0"))["rich_label"] == [0.0]


def test_missing_values_become_the_feature_default():
    values = _values(_convert(b"?, ?, ?, , 50000+., Married, 1"))
    assert (values["age"], values["job"], values["hours"]) == ([0], [""], [0.0])


def test_plain_comma_delimiter_and_quoted_fields():
    config = config_lib.config_from_dict(dict(
        CONFIG.to_dict(), input=dict(CONFIG.to_dict()["input"], delimiter=",")))
    values = _values(_convert(b'38,"Sales, retail",1,40.5,50000+.,Married,3', config))
    assert values["job"] == ["Sales, retail"] and values["hours"] == [40.5]


def test_numbers_convert_as_for_logs():
    values = _values(_convert(b"38.0, Private, 1, 40, 50000+., Married, 1e1"))
    assert values["age"] == [38] and values["score_label"] == [10.0]


@pytest.mark.parametrize("line, reason, detail", [
    (b"38, Private, 1, 40, 50000+., Married", "wrong_column_count", "6 fields, expected 7"),
    (b"38, Private, 1, 40, 50000+., Married, 1, extra", "wrong_column_count", "8 fields"),
    (b"", "wrong_column_count", "0 fields"),
    (b"thirty, Private, 1, 40, 50000+., Married, 1", "wrong_type", "features.age"),
    (b"38.5, Private, 1, 40, 50000+., Married, 1", "wrong_type", "features.age"),
    (b"38, Private, 1, nan, 50000+., Married, 1", "wrong_type", "features.hours"),
    (b"38, Private, 1, 40, 50000+., Married, high", "wrong_type", "tasks.score"),
    (b"38, Private, 1, 40, ?, Married, 1", "missing_label", "tasks.rich"),
    (b"38, Private, 1, 40, 50000+., Married, ", "missing_label", "tasks.score"),
    (b"38, Priv\xff, 1, 40, 50000+., Married, 1", "not_utf8", ""),
    (b"38, Private, 1, 4\x000, 50000+., Married, 1", "not_csv", ""),
])
def test_malformed_rows_are_dead_letters(line, reason, detail):
    dead = _convert(line)
    assert isinstance(dead, tabular.DeadLetter), dead
    assert dead.reason == reason and detail in dead.detail, dead
    assert dead.source == "census.csv" and dead.line == line.decode("utf-8", errors="replace")


def test_split_key_depends_on_the_row_and_the_seed_only():
    key = _values(_convert(LINE))[config_lib.SPLIT_KEY]
    assert _values(_convert(LINE))[config_lib.SPLIT_KEY] == key
    assert _values(_convert(LINE.replace(b"38", b"39")))[config_lib.SPLIT_KEY] != key
    reseeded = config_lib.config_from_dict(dict(CONFIG.to_dict(), input=dict(
        CONFIG.to_dict()["input"], split={"train": 70, "eval": 15, "test": 15, "seed": 4})))
    assert _values(_convert(LINE, reseeded))[config_lib.SPLIT_KEY] != key
    assert tabular.split_key(3, LINE) == key[0]


def test_split_fields_strips_spaces_around_the_delimiter():
    assert tabular.split_fields(" a ,b,  c d ", ",") == ["a", "b", "c d"]
    assert tabular.split_fields("a, b, c", ", ") == ["a", "b", "c"]
    assert tabular.split_fields("a\t b", "\t") == ["a", "b"]


# --- tf.Examples from TFRecord ----------------------------------------------

TFRECORD_CONFIG = config_lib.config_from_dict({
    "model_name": "m",
    "input": {"format": "tfrecord", "split": {"seed": 1}},
    "features": [{"name": "age", "kind": "numeric", "dtype": "int64"}],
    "tasks": [{"name": "rich"}, {"name": "score", "type": "regression",
                                 "eval": {"max_mse": 1.0}}],
})


def _example(**features) -> tf.train.Example:
    example = tf.train.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if values and isinstance(values[0], bytes):
            feature.bytes_list.value[:] = values
        elif values and isinstance(values[0], int):
            feature.int64_list.value[:] = values
        else:
            feature.float_list.value[:] = values
    return example


def test_labelled_tf_example_is_kept_with_a_split_key():
    original = _example(age=[3], rich_label=[1.0], score_label=[2])
    example = tabular.labelled_example(TFRECORD_CONFIG, original)
    values = _values(example)
    assert values.pop(config_lib.SPLIT_KEY) == [
        tabular.split_key(1, original.SerializeToString(deterministic=True))]
    assert values == {"age": [3], "rich_label": [1.0], "score_label": [2]}
    assert config_lib.SPLIT_KEY not in original.features.feature  # the input is not changed


@pytest.mark.parametrize("features, reason", [
    ({"age": [3], "score_label": [1.0]}, "missing_label"),
    ({"age": [3], "rich_label": [], "score_label": [1.0]}, "missing_label"),
    ({"age": [3], "rich_label": [b"yes"], "score_label": [1.0]}, "wrong_type"),
    ({"age": [3], "rich_label": [1.0, 0.0], "score_label": [1.0]}, "wrong_type"),
])
def test_tf_example_without_one_numeric_label_is_a_dead_letter(features, reason):
    dead = tabular.labelled_example(TFRECORD_CONFIG, _example(**features))
    assert isinstance(dead, tabular.DeadLetter) and dead.reason == reason
    assert "rich_label" in dead.detail
