"""Tests of config loading and validation: every error names its field."""
import copy
import json
import os
import subprocess
import sys

import jsonschema
import pydantic
import pytest
import yaml

from mtrank.base import config as config_lib
from mtrank.base.config import ConfigError

VALID_YAML = """\
model_name: shop_ranker
features:
  - {name: user_id, kind: categorical, dtype: string, hash_buckets: 4096, embedding_dim: 16}
  - {name: item_id, kind: categorical, dtype: string}
  - {name: country, kind: categorical, dtype: string, encoding: vocabulary, vocab_size: 50}
  - {name: price, kind: numeric, dtype: float, transform: log}
  - {name: age, kind: numeric, dtype: int64, transform: buckets, num_buckets: 5}
  - {name: tags, kind: multivalent, dtype: string, max_len: 4}
tasks:
  - name: click
    feedback: click
    label_window_s: 1800
  - name: revenue
    feedback: purchase
    type: regression
    label_window_s: 86400
    loss_weight: 0.5
    eval: {min_auc: null, max_auc_drop: null, max_mse: 100.0, max_mse_increase: 5}
split: {eval_days: 2}
training:
  train_steps: 10
  batch_size: 32
  learning_rate: 0.01
  bottom_units: [32, 16]
  tower_units: [8]
  seed: 3
"""


def _raw():
    return yaml.safe_load(VALID_YAML)


def _error(raw):
    with pytest.raises(ConfigError) as info:
        config_lib.config_from_dict(raw)
    return str(info.value)


def _with_feature(**fields):
    raw = _raw()
    raw["features"][3] = dict(raw["features"][3], **fields)  # the "price" feature
    return raw


def _with_task(**fields):
    raw = _raw()
    raw["tasks"][0] = dict(raw["tasks"][0], **fields)  # the "click" task
    return raw


# --- valid configs ----------------------------------------------------------


def test_valid_yaml_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(VALID_YAML)
    config = config_lib.load_config(str(path))
    assert config.model_name == "shop_ranker"
    assert [f.name for f in config.features] == [
        "user_id", "item_id", "country", "price", "age", "tags"]
    assert config.feature("user_id").hash_buckets == 4096
    assert config.feature("user_id").embedding_dim == 16
    assert config.feature("item_id").hash_buckets == config_lib.FeatureConfig(
        name="x", kind="categorical", dtype="string").hash_buckets  # the default
    assert config.feature("country").encoding == "vocabulary"
    assert config.feature("price").transform == "log"
    assert config.feature("age").num_buckets == 5
    assert config.feature("tags").max_len == 4 and not config.feature("tags").is_scalar
    click, revenue = config.tasks
    assert (click.name, click.feedback, click.type, click.label_window_s) == (
        "click", "click", "binary", 1800)
    assert click.eval == config_lib.EvalBounds()
    assert revenue.type == "regression" and revenue.loss_weight == 0.5
    assert revenue.eval.max_mse == 100.0 and revenue.eval.min_auc is None
    assert config.label_keys == ["click_label", "revenue_label"]
    assert config.max_label_window_s == 86400
    assert config.split.eval_days == 2
    assert config.training.bottom_units == [32, 16]
    # Fields the YAML leaves out keep their defaults.
    assert config.training.eval_steps == config_lib.TrainingConfig().eval_steps
    assert config.training.train_steps == 10
    assert config.training.seed == 3


def test_feature_lookup_of_unknown_name_raises_key_error():
    config = config_lib.config_from_dict(_raw())
    with pytest.raises(KeyError):
        config.feature("nope")


def test_minimal_config_gets_defaults():
    config = config_lib.config_from_dict({
        "model_name": "m",
        "features": [{"name": "f", "kind": "numeric", "dtype": "float"}],
        "tasks": [{"name": "t", "feedback": "click"}],
    })
    assert config.split == config_lib.SplitConfig()
    assert config.training == config_lib.TrainingConfig()
    assert config.tasks[0].type == "binary"


def test_default_values_by_dtype():
    def feature(kind, dtype):
        return config_lib.FeatureConfig(name="a", kind=kind, dtype=dtype)

    assert feature("categorical", "string").default_value == ""
    assert feature("numeric", "int64").default_value == 0
    assert feature("numeric", "float").default_value == 0.0


def test_dict_round_trip():
    config = config_lib.config_from_dict(_raw())
    assert config_lib.config_from_dict(config.to_dict()) == config


def test_json_round_trip():
    config = config_lib.config_from_dict(_raw())
    text = config.to_json()
    json.loads(text)  # plain JSON
    assert config_lib.config_from_json(text) == config


def test_yaml_save_and_load_round_trip(tmp_path):
    config = config_lib.config_from_dict(_raw())
    path = str(tmp_path / "saved.yaml")
    config_lib.save_config(config, path)
    assert config_lib.load_config(path) == config


def test_round_trip_detects_a_difference():
    # Guards the round-trip tests: equality is not vacuous.
    a = config_lib.config_from_dict(_raw())
    b = config_lib.config_from_dict(_with_task(label_window_s=1801))
    assert a != b


def test_validation_does_not_mutate_input():
    raw = _raw()
    before = copy.deepcopy(raw)
    config_lib.config_from_dict(raw)
    assert raw == before


# --- errors name the field --------------------------------------------------


def _set(path, value, delete=False, raw=None):
    """A valid raw config (`raw`, default the logs one) with `path` (a tuple
    of keys / indices) set or deleted."""
    raw = _raw() if raw is None else raw
    node = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


# Each expected line names the field's path, what is allowed and the bad value.
@pytest.mark.parametrize("path, value, expected", [
    # Unknown fields.
    (("colour",), "red", "config: unknown field 'colour'; known: ['model_name', 'features', "),
    (("features", 3, "bucketz"), 3, "features[price]: unknown field 'bucketz'; known: ['name', "),
    (("tasks", 1, "windw"), 3, "tasks[revenue]: unknown field 'windw'; known: ['name', "),
    (("tasks", 1, "eval", "min_aucc"), 0.5, "tasks[revenue].eval: unknown field 'min_aucc'; "
                                            "known: ['min_auc', 'max_auc_drop', 'max_mse', "
                                            "'max_mse_increase']"),
    (("split", "eval_weeks"), 1, "split: unknown field 'eval_weeks'; known: ['eval_days', "
                                 "'eval_percent', 'window_spans']"),
    (("training", "num_epochs"), 1, "training: unknown field 'num_epochs'; known: ['epochs', "),
    # Bad choices.
    (("features", 3, "kind"), "dense", "features[price].kind: must be 'categorical', 'numeric' "
                                       "or 'multivalent' (got 'dense')"),
    (("features", 3, "dtype"), "double", "features[price].dtype: must be 'string', 'int64' or "
                                         "'float' (got 'double')"),
    (("features", 2, "encoding"), "onehot", "features[country].encoding: must be 'hashing' or "
                                            "'vocabulary' (got 'onehot')"),
    (("features", 3, "transform"), "sqrt", "features[price].transform: must be 'zscore', 'log', "
                                           "'buckets', 'piecewise_linear' or 'periodic' "
                                           "(got 'sqrt')"),
    (("tasks", 0, "type"), "multiclass", "tasks[click].type: must be 'binary' or 'regression' "
                                         "(got 'multiclass')"),
    # Non-positive sizes.
    (("features", 0, "hash_buckets"), 0, "features[user_id].hash_buckets: must be > 0 (got 0)"),
    (("features", 2, "vocab_size"), -5, "features[country].vocab_size: must be > 0 (got -5)"),
    (("features", 0, "embedding_dim"), 0, "features[user_id].embedding_dim: must be > 0 (got 0)"),
    (("features", 4, "num_buckets"), 0, "features[age].num_buckets: must be > 0 (got 0)"),
    (("features", 5, "max_len"), -1, "features[tags].max_len: must be > 0 (got -1)"),
    (("tasks", 0, "label_window_s"), 0, "tasks[click].label_window_s: must be > 0 (got 0)"),
    (("split", "eval_days"), 0, "split.eval_days: must be > 0 (got 0)"),
    (("split", "eval_percent"), 0, "split.eval_percent: must be > 0 (got 0)"),
    (("split", "eval_percent"), 100, "split.eval_percent: must be < 100 (got 100)"),
    (("split", "window_spans"), 0, "split.window_spans: must be > 0 (got 0)"),
    (("training", "train_steps"), -1, "training.train_steps: must be > 0 (got -1)"),
    (("training", "batch_size"), 0, "training.batch_size: must be > 0 (got 0)"),
    (("training", "learning_rate"), 0.0, "training.learning_rate: must be > 0.0 (got 0.0)"),
    (("training", "bottom_units"), [32, 0], "training.bottom_units[1]: must be > 0 (got 0)"),
    (("training", "tower_units"), [-8], "training.tower_units[0]: must be > 0 (got -8)"),
    # Wrong types, bool where an int is expected.
    (("features", 0, "hash_buckets"), True, "features[user_id].hash_buckets: expected int "
                                            "(got True)"),
    (("features", 0, "hash_buckets"), "1000", "features[user_id].hash_buckets: expected int "
                                              "(got '1000')"),
    (("features", 0, "embedding_dim"), 8.0, "features[user_id].embedding_dim: expected int "
                                            "(got 8.0)"),
    (("tasks", 0, "label_window_s"), True, "tasks[click].label_window_s: expected int "
                                           "(got True)"),
    (("split", "eval_days"), True, "split.eval_days: expected int (got True)"),
    (("training", "batch_size"), False, "training.batch_size: expected int (got False)"),
    (("training", "learning_rate"), True, "training.learning_rate: expected a number "
                                          "(got True)"),
    (("training", "learning_rate"), "fast", "training.learning_rate: expected a number "
                                            "(got 'fast')"),
    (("training", "bottom_units"), [32, True], "training.bottom_units[1]: expected int "
                                               "(got True)"),
    (("tasks", 0, "loss_weight"), "heavy", "tasks[click].loss_weight: expected a number "
                                           "(got 'heavy')"),
    (("tasks", 0, "loss_weight"), True, "tasks[click].loss_weight: expected a number "
                                        "(got True)"),
    (("tasks", 0, "loss_weight"), -0.5, "tasks[click].loss_weight: must be >= 0.0 (got -0.5)"),
    (("tasks", 1, "eval", "max_mse"), "big", "tasks[revenue].eval.max_mse: expected a number "
                                             "(got 'big')"),
    (("tasks", 1, "eval", "min_auc"), True, "tasks[revenue].eval.min_auc: expected a number "
                                            "(got True)"),
    (("tasks", 0, "feedback"), 5, "tasks[click].feedback: expected str (got 5)"),
    (("features", 3, "name"), 5, "features[3].name: expected str (got 5)"),
    (("tasks", 0, "name"), ["click"], "tasks[0].name: expected str (got ['click'])"),
    (("model_name",), 7, "model_name: expected str (got 7)"),
    (("model_name",), "has space", "model_name: must match ^[A-Za-z][A-Za-z0-9_]*$ "
                                   "(got 'has space')"),
    (("features", 3, "name"), "bad-name", "features[bad-name].name: must match "
                                          "^[A-Za-z][A-Za-z0-9_]*$ (got 'bad-name')"),
    (("tasks", 0, "name"), "1click", "tasks[1click].name: must match ^[A-Za-z][A-Za-z0-9_]*$ "
                                     "(got '1click')"),
    (("features",), {"name": "x"}, "features: expected list (got {'name': 'x'})"),
    (("tasks",), "click", "tasks: expected list (got 'click')"),
    (("features",), [], "features: needs at least 1 item(s) (got [])"),
    (("tasks",), [], "tasks: needs at least 1 item(s) (got [])"),
    (("features", 3), "price", "features[3]: expected a mapping (got 'price')"),
    (("split",), 5, "split: expected a mapping (got 5)"),
    (("tasks", 0, "eval"), [0.5], "tasks[click].eval: expected a mapping (got [0.5])"),
    # Reserved names.
    (("features", 3, "name"), "position", "features[position].name: 'position' is reserved by "
                                          "the pipeline (reserved: ['impression_ts', "
                                          "'position', 'request_id', 'split_key'])"),
    (("features", 3, "name"), "request_id", "features[request_id].name: 'request_id' is "
                                            "reserved"),
    (("features", 3, "name"), "impression_ts", "features[impression_ts].name: 'impression_ts' "
                                               "is reserved"),
    # Kind / dtype combinations.
    (("features", 3, "dtype"), "string", "features[price]: a numeric feature needs dtype int64 "
                                         "or float (got 'string')"),
    (("features", 5, "dtype"), "float", "features[tags]: a multivalent feature holds ids: dtype "
                                        "string or int64 (got 'float')"),
])
def test_error_names_the_field(path, value, expected):
    message = _error(_set(path, value))
    assert expected in message, message


@pytest.mark.parametrize("path, expected", [
    (("model_name",), "config: missing required field 'model_name'"),
    (("features",), "config: missing required field 'features'"),
    (("tasks",), "config: missing required field 'tasks'"),
    (("features", 3, "name"), "features[3]: missing required field 'name'"),
    (("features", 3, "kind"), "features[price]: missing required field 'kind'"),
    (("features", 3, "dtype"), "features[price]: missing required field 'dtype'"),
    (("tasks", 1, "name"), "tasks[1]: missing required field 'name'"),
    (("tasks", 1, "feedback"), "tasks[revenue]: missing required field 'feedback'"),
])
def test_missing_required_field(path, expected):
    message = _error(_set(path, None, delete=True))
    assert expected in message, message


def test_every_problem_is_reported_on_its_own_line():
    raw = _set(("features", 3, "kind"), "dense")
    raw["training"] = {"batch_size": 0, "colour": "red"}
    assert _error(raw).splitlines() == [
        "features[price].kind: must be 'categorical', 'numeric' or 'multivalent' (got 'dense')",
        "training.batch_size: must be > 0 (got 0)",
        "training: unknown field 'colour'; known: ['epochs', 'early_stopping_patience', "
        "'validation_interval_steps', 'train_steps', 'eval_steps', 'batch_size', "
        "'learning_rate', 'bottom_units', "
        "'tower_units', 'seed', 'gpus', 'gpu_type', 'mixed_precision', 'lr_schedule', "
        "'warmup_steps', 'weight_decay', 'lazy_adam', 'ema_momentum', 'checkpoint_dir']"]


def test_duplicate_feature_names():
    raw = _raw()
    raw["features"].append({"name": "price", "kind": "numeric", "dtype": "int64"})
    assert "features: names must be unique; repeated: ['price']" in _error(raw)


def test_duplicate_task_names():
    raw = _raw()
    raw["tasks"].append({"name": "click", "feedback": "like"})
    assert "tasks: names must be unique; repeated: ['click']" in _error(raw)


def test_feature_clashing_with_a_label_key():
    raw = _raw()
    raw["features"].append({"name": "click_label", "kind": "numeric", "dtype": "float"})
    assert "features: names clash with task label keys: ['click_label']" in _error(raw)


def test_optional_step_counts_may_be_null():
    config = config_lib.config_from_dict(
        _set(("training",), {"train_steps": None, "eval_steps": None}))
    assert config.training.train_steps is None and config.training.eval_steps is None
    assert "training.train_steps: must be > 0 (got 0)" in _error(
        _set(("training", "train_steps"), 0))
    # Only fields whose default is null may be null.
    assert "training.batch_size: expected int (got None)" in _error(
        _set(("training", "batch_size"), None))


def test_top_level_not_a_mapping():
    assert "config: expected a mapping (got ['model_name', 'm'])" in _error(["model_name", "m"])


@pytest.mark.parametrize("field, value, expected", [
    ("bottom_units", 128, "expected list (got 128)"),
    ("tower_units", 64, "expected list (got 64)"),
    ("seed", "abc", "expected int (got 'abc')"),
    ("seed", 1.5, "expected int (got 1.5)"),
])
def test_training_field_types_are_checked(field, value, expected):
    assert f"training.{field}: {expected}" in _error(_set(("training", field), value))


# --- load_config ------------------------------------------------------------


def _load_error(path) -> str:
    """The ConfigError message of loading `path`, which must name the file."""
    with pytest.raises(ConfigError) as info:
        config_lib.load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


def test_load_config_prefixes_the_path(tmp_path):
    raw = _set(("features", 3, "kind"), "dense")
    raw["split"] = {"eval_days": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert _load_error(path).splitlines() == [
        f"{path}: features[price].kind: must be 'categorical', 'numeric' or 'multivalent' "
        "(got 'dense')",
        f"{path}: split.eval_days: must be > 0 (got 0)"]


def test_load_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_name: m\nfeatures: [unclosed\n")
    assert "not valid YAML" in _load_error(path)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert "missing required field 'model_name'" in _load_error(path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        config_lib.load_config(str(tmp_path / "nope.yaml"))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- tabular input ----------------------------------------------------------

TABULAR_YAML = """\
model_name: census
input:
  format: csv
  column_names: [age, job, weight, income, status, score]
  delimiter: ", "
  missing_values: ["?"]
  exclude_columns: [weight]
  split: {train: 70, eval: 15, test: 15, seed: 7}
features:
  - {name: age, kind: numeric, dtype: int64}
  - {name: job, kind: categorical, dtype: string, encoding: vocabulary}
tasks:
  - {name: rich, label_column: income, positive_values: ["50000+."], eval: {min_auc: 0.8}}
  - {name: single, label_column: status, positive_values: ["Never married", "Single"]}
  - {name: score, label_column: score, type: regression, eval: {max_mse: 4}}
"""


def _tabular():
    return yaml.safe_load(TABULAR_YAML)


def _tabular_set(path, value, delete=False):
    return _set(path, value, delete, raw=_tabular())


def test_logs_is_the_default_input_format():
    config = config_lib.config_from_dict(_raw())
    assert config.input == config_lib.InputConfig() and config.input.format == "logs"
    assert not config.input.is_tabular
    # A logs config's YAML and JSON have no input section.
    assert "input" not in yaml.safe_load(config.to_yaml()) and "input" not in config.to_dict()


def test_csv_config_loads():
    config = config_lib.config_from_dict(_tabular())
    assert config.input.format == "csv" and config.input.is_tabular
    assert config.input.column_names == ["age", "job", "weight", "income", "status", "score"]
    assert config.input.delimiter == ", " and config.input.missing_values == ["?"]
    assert config.input.split == config_lib.InputSplitConfig(
        train=70, eval=15, test=15, seed=7)
    assert config.input.split.percentages() == {"train": 70, "eval": 15, "test": 15}
    rich, single, score = config.tasks
    assert (rich.label_column, rich.positive_values, rich.feedback) == (
        "income", ["50000+."], None)
    assert single.positive_values == ["Never married", "Single"]
    assert score.type == "regression" and score.positive_values is None
    assert config.label_keys == ["rich_label", "single_label", "score_label"]


def test_csv_input_defaults():
    raw = _tabular()
    raw["input"] = {"format": "csv"}
    config = config_lib.config_from_dict(raw)
    assert config.input.column_names is None  # read from each file's header
    assert config.input.delimiter == "," and config.input.missing_values == []
    assert config.input.split.percentages() == {"train": 80, "eval": 20}


def test_tabular_round_trips_and_yaml_shows_only_what_applies(tmp_path):
    config = config_lib.config_from_dict(_tabular())
    assert config_lib.config_from_json(config.to_json()) == config
    path = str(tmp_path / "saved.yaml")
    config_lib.save_config(config, path)
    assert config_lib.load_config(path) == config
    saved = yaml.safe_load(config.to_yaml())
    assert list(saved)[:2] == ["model_name", "input"] and "split" not in saved
    for task in saved["tasks"]:
        assert not {"feedback", "label_window_s"} & set(task)
    assert "positive_values" not in saved["tasks"][2]


def test_tfrecord_config_needs_no_label_fields():
    config = config_lib.config_from_dict({
        "model_name": "m",
        "input": {"format": "tfrecord", "split": {"train": 60, "eval": 40}},
        "features": [{"name": "age", "kind": "numeric", "dtype": "float"}],
        "tasks": [{"name": "rich"}],
    })
    assert config.tasks[0].label_key == "rich_label"
    assert config_lib.config_from_json(config.to_json()) == config
    assert yaml.safe_load(config.to_yaml())["input"] == {
        "format": "tfrecord", "split": {"train": 60, "eval": 40, "test": 0, "seed": 0}}


@pytest.mark.parametrize("path, value, expected", [
    (("input", "format"), "parquet", "input.format: must be 'logs', 'csv' or 'tfrecord' "
                                     "(got 'parquet')"),
    (("input", "colums"), [], "input: unknown field 'colums'; known: ['format', "
                              "'column_names', 'delimiter', 'missing_values', "
                              "'exclude_columns', 'split']"),
    (("input", "delimiter"), "ab", "input.delimiter: must be one character other than '\"', "
                                   "with or without spaces around it, as ',' or ', ' "
                                   "(got 'ab')"),
    (("input", "delimiter"), "", "input.delimiter: must be one character other than '\"', "
                                 "with or without spaces around it, as ',' or ', ' (got '')"),
    (("input", "delimiter"), '"', "input.delimiter: must be one character other than '\"', "
                                  "with or without spaces around it, as ',' or ', ' "
                                  "(got '\"')"),
    (("input", "delimiter"), 1, "input.delimiter: expected str (got 1)"),
    (("input", "column_names"), "age,job", "input.column_names: expected list (got 'age,job')"),
    (("input", "column_names"), [], "input.column_names: needs at least 1 item(s) (got [])"),
    (("input", "column_names"), ["age", "job", "age", "income", "status", "score"],
     "input.column_names: names must be unique; repeated: ['age']"),
    (("input", "column_names"), ["age", 3], "input.column_names[1]: expected str (got 3)"),
    (("input", "missing_values"), ["? "], "input.missing_values[0]: '? ' has spaces around it; "
                                          "CSV fields are compared with those removed"),
    (("input", "missing_values"), "?", "input.missing_values: expected list (got '?')"),
    (("input", "exclude_columns"), ["wieght"],
     "input.exclude_columns: no such column(s) ['wieght'] in input.column_names"),
    (("input", "split", "train"), 60, "input.split: train + eval + test must be 100 percent "
                                      "(got 90)"),
    (("input", "split", "eval"), 0, "input.split.eval: must be > 0 (got 0)"),
    (("input", "split", "test"), -5, "input.split.test: must be >= 0 (got -5)"),
    (("input", "split", "train"), 70.0, "input.split.train: expected int (got 70.0)"),
    (("input", "split", "seed"), "zero", "input.split.seed: expected int (got 'zero')"),
    (("input", "split", "valid"), 10, "input.split: unknown field 'valid'; known: ['train', "
                                      "'eval', 'test', 'seed']"),
    (("input",), "csv", "input: expected a mapping (got 'csv')"),
    (("split",), {"eval_days": 1}, "split: the time split applies to logs input; csv input is "
                                   "split by input.split"),
    (("tasks", 0, "feedback"), "click", "tasks[rich].feedback: does not apply to csv input "
                                        "(tasks from csv name a label_column)"),
    (("tasks", 0, "label_window_s"), 60, "tasks[rich].label_window_s: does not apply to csv "
                                         "input (tasks from csv name a label_column)"),
    (("tasks", 0, "label_column"), 5, "tasks[rich].label_column: expected str (got 5)"),
    (("tasks", 0, "label_column"), "incme", "tasks[rich].label_column: no column 'incme' in "
                                            "input.column_names"),
    (("tasks", 0, "positive_values"), [], "tasks[rich].positive_values: needs at least 1 "
                                          "item(s) (got [])"),
    (("tasks", 0, "positive_values"), [1], "tasks[rich].positive_values[0]: expected str "
                                           "(got 1)"),
    (("tasks", 0, "positive_values"), "50000+.", "tasks[rich].positive_values: expected list "
                                                 "(got '50000+.')"),
    (("tasks", 2, "positive_values"), ["1"], "tasks[score].positive_values: does not apply "
                                             "to a regression task (its label is the column's "
                                             "number)"),
    (("features", 1, "name"), "income", "features[income]: column 'income' is the label of "
                                        "task rich, never a feature"),
    (("features", 1, "name"), "weight", "features[weight]: column 'weight' is in "
                                        "input.exclude_columns"),
    (("features", 1, "name"), "salary", "features[salary]: no column 'salary' in "
                                        "input.column_names"),
    (("features", 1, "kind"), "multivalent", "features[job]: a multivalent feature cannot be "
                                             "read from csv input (one value per column)"),
    (("features", 1, "name"), "split_key", "features[split_key].name: 'split_key' is reserved "
                                           "by the pipeline (reserved: ['impression_ts', "
                                           "'position', 'request_id', 'split_key'])"),
])
def test_tabular_error_names_the_field(path, value, expected):
    message = _error(_tabular_set(path, value))
    assert expected in message, message


@pytest.mark.parametrize("path, expected", [
    (("tasks", 0, "label_column"), "tasks[rich]: missing required field 'label_column'"),
    (("tasks", 0, "positive_values"), "tasks[rich]: a binary task on csv input needs "
                                      "positive_values (the label is 1 if income is one of "
                                      "them)"),
])
def test_tabular_missing_field(path, expected):
    message = _error(_tabular_set(path, None, delete=True))
    assert expected in message, message


@pytest.mark.parametrize("input_raw, task, expected", [
    ({"format": "logs", "delimiter": ","}, {"name": "t", "feedback": "click"},
     "input.delimiter: does not apply to logs input"),
    ({"format": "tfrecord", "column_names": ["a"]}, {"name": "t"},
     "input.column_names: does not apply to tfrecord input"),
    ({"format": "tfrecord"}, {"name": "t", "label_column": "a"},
     "tasks[t].label_column: does not apply to tfrecord input (tfrecord input holds each "
     "label as the feature <task>_label)"),
    ({"format": "tfrecord"}, {"name": "t", "feedback": "click"},
     "tasks[t].feedback: does not apply to tfrecord input"),
    ({"format": "logs"}, {"name": "t", "feedback": "click", "positive_values": ["1"]},
     "tasks[t].positive_values: does not apply to logs input (tasks from logs name their "
     "feedback)"),
    ({"format": "logs"}, {"name": "t"}, "tasks[t]: missing required field 'feedback'"),
])
def test_fields_of_other_formats_are_rejected(input_raw, task, expected):
    message = _error({
        "model_name": "m", "input": input_raw,
        "features": [{"name": "a", "kind": "numeric", "dtype": "float"}], "tasks": [task]})
    assert expected in message, message


def test_shipped_census_config_is_valid():
    config = config_lib.load_config(CENSUS_YAML)
    assert len(config.input.column_names) == 42
    assert [(t.name, t.label_column, t.positive_values) for t in config.tasks] == [
        ("income", "income_50k", ["50000+."]), ("marital", "marital_stat", ["Never married"])]
    # Every column but the labels and instance_weight is a feature.
    assert [f.name for f in config.features] == [
        c for c in config.input.column_names
        if c not in ("income_50k", "marital_stat", "instance_weight")]


# --- model section, conditional and ESMM tasks --------------------------------


def _with_purchase(**fields):
    raw = _raw()
    raw["tasks"].append({"name": "purchase", "feedback": "purchase", **fields})
    return raw


def test_model_defaults_and_round_trip_show_only_what_applies(tmp_path):
    config = config_lib.config_from_dict(_raw())
    assert config.model.architecture == "shared_bottom"
    assert config.model.loss_weighting == "fixed" and config.model.position_tasks == []
    raw = _raw()
    raw["model"] = {"architecture": "ple", "extraction_layers": 3, "loss_weighting": "dwa",
                    "dwa_temperature": 1.5, "position_tasks": ["click"], "dropout": 0.1,
                    "normalization": "layer"}
    config = config_lib.config_from_dict(raw)
    shown = config.to_dict()["model"]
    assert shown["extraction_layers"] == 3 and shown["dwa_temperature"] == 1.5
    assert shown["normalization"] == "layer"
    assert "gradnorm_alpha" not in shown
    assert "gradnorm_alpha" not in config_lib.config_from_dict(_raw()).to_dict()["model"]
    assert "num_experts" not in config_lib.config_from_dict(_raw()).to_dict()["model"]
    path = tmp_path / "c.yaml"
    config_lib.save_config(config, str(path))
    assert config_lib.load_config(str(path)) == config


def test_funnel_tasks_load_and_name_their_outputs():
    config = config_lib.config_from_dict(_with_purchase(depends_on="click"))
    assert config.output_names == ["click", "revenue", "purchase", "purchase_given_click"]
    assert config.tasks[2].parent == "click"
    assert config_lib.config_from_json(config.to_json()) == config
    conditional = config_lib.config_from_dict(_with_purchase(condition="click"))
    assert conditional.output_names == ["click", "revenue", "purchase"]
    assert "condition" not in config.to_dict()["tasks"][2]


@pytest.mark.parametrize("fields, expected", [
    ({"depends_on": "basket"}, "tasks[purchase].depends_on: no task 'basket'; tasks: "
                               "['click', 'purchase', 'revenue']"),
    ({"condition": "revenue"}, "tasks[purchase].condition: 'revenue' is a regression task; "
                               "the parent must be binary"),
    ({"depends_on": "purchase"}, "tasks[purchase].depends_on: cycle purchase -> purchase"),
    ({"condition": "click", "depends_on": "click"}, "tasks[purchase]: set condition"),
    ({"condition": 3}, "tasks[purchase].condition: expected str (got 3)"),
    ({"depends_on": "click", "type": "regression",
      "eval": {"min_auc": None, "max_auc_drop": None, "max_mse": 1.0}},
     "tasks[purchase].depends_on: only a binary task"),
])
def test_funnel_task_errors(fields, expected):
    message = _error(_with_purchase(**fields))
    assert expected in message, message


def test_funnel_cycle_and_output_clash():
    raw = _with_purchase(depends_on="click")
    raw["tasks"][0]["condition"] = "purchase"
    assert "tasks[click].condition: cycle click -> purchase -> click" in _error(raw)
    raw = _with_purchase(depends_on="click")
    raw["tasks"].append({"name": "purchase_given_click", "feedback": "x"})
    assert ("tasks[purchase].depends_on: its output 'purchase_given_click' (P(purchase | "
            "click)) clashes with the task of that name") in _error(raw)


def test_a_cycle_above_a_task_is_reported_once_not_followed_forever():
    # revenue_share, listed first, hangs below the cycle click -> purchase -> click.
    raw = _with_purchase(condition="click")
    raw["tasks"][0]["condition"] = "purchase"
    raw["tasks"][1] = {"name": "revenue_share", "feedback": "x", "condition": "click"}
    raw["tasks"].insert(0, raw["tasks"].pop(1))
    assert _error(raw).splitlines() == ["tasks[click].condition: cycle click -> purchase -> click"]


@pytest.mark.parametrize("model, expected", [
    ({"architecture": "transformer"}, "model.architecture: must be 'shared_bottom', 'mmoe', "
                                      "'cgc' or 'ple' (got 'transformer')"),
    ({"loss_weighting": "magic"}, "model.loss_weighting: must be 'fixed', 'uncertainty', "
                                  "'gradnorm' or 'dwa' (got 'magic')"),
    ({"num_experts": 4}, "model.num_experts: applies to architecture mmoe / cgc / ple, not "
                         "shared_bottom"),
    ({"architecture": "cgc", "extraction_layers": 2}, "model.extraction_layers: applies to "
                                                      "architecture ple, not cgc"),
    ({"gradnorm_alpha": 1.0}, "model.gradnorm_alpha: applies to loss_weighting gradnorm, not "
                              "fixed"),
    ({"architecture": "mmoe", "num_experts": 0}, "model.num_experts: must be > 0 (got 0)"),
    ({"cross_layers": -1}, "model.cross_layers: must be >= 0 (got -1)"),
    ({"cross_projection_dim": 0}, "model.cross_projection_dim: must be > 0 (got 0)"),
    ({"ensemble_size": 0}, "model.ensemble_size: must be > 0 (got 0)"),
    ({"dropout": 1.0}, "model.dropout: must be < 1.0 (got 1.0)"),
    ({"dropout": -0.1}, "model.dropout: must be >= 0.0 (got -0.1)"),
    ({"dropout": "some"}, "model.dropout: expected a number (got 'some')"),
    ({"normalization": "group"}, "model.normalization: must be 'none', 'batch' or 'layer' "
                                 "(got 'group')"),
    ({"loss_weighting": "dwa", "dwa_temperature": 0}, "model.dwa_temperature: must be > 0.0 "
                                                      "(got 0)"),
    ({"position_tasks": ["clicks"]}, "model.position_tasks[0]: no task 'clicks'; tasks: "
                                     "['click', 'revenue']"),
    ({"position_tasks": ["revenue"]}, "model.position_tasks[0]: 'revenue' is a regression task; "
                                      "a position tower models P(seen | position) for binary "
                                      "tasks"),
    ({"position_tasks": ["click", "click"]}, "model.position_tasks: repeated task(s) ['click']"),
    ({"position_tasks": [{"name": "click"}]}, "model.position_tasks[0]: expected str "
                                              "(got {'name': 'click'})"),
    ({"position_tasks": "click"}, "model.position_tasks: expected list (got 'click')"),
    ({"position_form": "sum"}, "model.position_form: must be 'product' or 'additive' "
                               "(got 'sum')"),
    ({"max_position": 0}, "model.max_position: must be > 0 (got 0)"),
    ({"expert_count": 3}, "model: unknown field 'expert_count'; known: ['architecture', "),
])
def test_model_errors_name_the_field(model, expected):
    message = _error(_set(("model",), model))
    assert expected in message, message


def test_dynamic_weighting_needs_positive_loss_weights():
    raw = _with_task(loss_weight=0.0)
    raw["model"] = {"loss_weighting": "uncertainty"}
    assert ("tasks[click].loss_weight: must be > 0 with model.loss_weighting uncertainty, as "
            "it scales the loss the weighting balances (got 0.0)") in _error(raw)


def test_position_towers_need_logs_input():
    raw = {"model_name": "m", "input": {"format": "tfrecord"},
           "features": [{"name": "a", "kind": "numeric", "dtype": "float"}],
           "tasks": [{"name": "t"}], "model": {"position_tasks": ["t"]}}
    assert ("model.position_tasks: tfrecord input has no 'position'; position towers need "
            "logs input") in _error(raw)


def _with_validation(validation):
    raw = _raw()
    raw["validation"] = validation
    return raw


def test_validation_section_round_trips():
    validation = {"slices": [["country"], ["country", "item_id"]], "min_slice_size": 50,
                  "schema": "schemas/shop.pbtxt", "drift": {"country": 0.1, "price": 0.2},
                  "skew": {"click_label": 0.05}}
    config = config_lib.config_from_dict(_with_validation(validation))
    assert config.validation == config_lib.ValidationConfig(**validation)
    assert config_lib.config_from_json(config.to_json()) == config
    # The default section is left out of the YAML a user edits.
    assert "validation" not in config_lib.config_from_dict(_raw()).to_dict()


@pytest.mark.parametrize("validation, expected", [
    ({"slices": [["price"]]}, "validation.slices[0]: 'price' is not a categorical feature; "
                              "slices are taken by one of ['country', 'item_id', 'user_id']"),
    ({"slices": [[]]}, "validation.slices[0]: needs at least 1 item(s) (got [])"),
    ({"slices": ["country"]}, "validation.slices[0]: expected list (got 'country')"),
    ({"min_slice_size": 0}, "validation.min_slice_size: must be > 0 (got 0)"),
    ({"drift": {"colour": 0.1}}, "validation.drift.colour: no feature or label named 'colour'; "
                                 "known: ['age', 'click_label', 'country', "),
    ({"skew": {"country": 1.5}}, "validation.skew.country: must be <= 1.0 (got 1.5)"),
    ({"skew": {"country": 0}}, "validation.skew.country: must be > 0.0 (got 0)"),
    ({"schema": 3}, "validation.schema: expected str (got 3)"),
    ({"slice": [["country"]]}, "validation: unknown field 'slice'; known: ['slices', "),
])
def test_validation_errors_name_the_field(validation, expected):
    message = _error(_with_validation(validation))
    assert expected in message, message


# --- serving section ------------------------------------------------------------


def test_serving_score_defaults_and_round_trip():
    config = config_lib.config_from_dict(_raw())
    assert config.serving.score == config_lib.ScoreConfig(
        form="weighted_product", weights=None)
    assert "serving" not in config.to_dict()  # the default is not written out
    raw = _raw()
    raw["serving"] = {"score": {"form": "weighted_sum", "weights": {"click": 1.0,
                                                                    "revenue": 0.5}}}
    config = config_lib.config_from_dict(raw)
    assert config.serving.score.weights == {"click": 1.0, "revenue": 0.5}
    assert config_lib.config_from_json(config.to_json()) == config


@pytest.mark.parametrize("score, expected", [
    ({"form": "max"}, "serving.score.form: must be 'weighted_product' or 'weighted_sum' "
                      "(got 'max')"),
    ({"weights": {"click": -1}}, "serving.score.weights.click: must be >= 0.0 (got -1)"),
    ({"weights": {"click": "high"}}, "serving.score.weights.click: expected a number "
                                     "(got 'high')"),
    ({"weights": {"click-through": 1.0}}, "serving.score.weights.click-through: must match "
                                          "^[A-Za-z][A-Za-z0-9_]*$ (got 'click-through')"),
    ({"weights": {"click": 0}}, "serving.score.weights: at least one weight must be > 0 "
                                "(got {'click': 0.0})"),
    ({"weights": {}}, "serving.score.weights: needs at least 1 item(s) (got {})"),
    ({"weights": {"purchase": 1.0}}, "serving.score.weights.purchase: not an output of the "
                                     "model; outputs: ['click', 'revenue']"),
    ({"weights": {"revenue": 1.0}}, "serving.score.weights.revenue: task revenue is a "
                                    "regression; a weighted_product multiplies probabilities "
                                    "(use form: weighted_sum)"),
    ({"bias": 1.0}, "serving.score: unknown field 'bias'; known: ['form', 'weights']"),
])
def test_serving_score_errors_name_the_field(score, expected):
    raw = _raw()
    raw["serving"] = {"score": score}
    message = _error(raw)
    assert expected in message, message


def test_weighted_product_without_weights_needs_a_binary_task():
    raw = _raw()
    raw["tasks"] = [raw["tasks"][1]]  # revenue, a regression
    assert ("serving.score: weighted_product needs probabilities and there is no binary task; "
            "set weights or form: weighted_sum") in _error(raw)
    raw["serving"] = {"score": {"form": "weighted_sum"}}
    assert config_lib.config_from_dict(raw).serving.score.form == "weighted_sum"


@pytest.mark.parametrize("field, value, expected", [
    ("lr_schedule", "step", "training.lr_schedule: must be 'constant' or 'cosine' "
                            "(got 'step')"),
    ("warmup_steps", -1, "training.warmup_steps: must be >= 0 (got -1)"),
    ("warmup_steps", 1.5, "training.warmup_steps: expected int (got 1.5)"),
    ("weight_decay", -0.1, "training.weight_decay: must be >= 0.0 (got -0.1)"),
    ("weight_decay", "0.1", "training.weight_decay: expected a number (got '0.1')"),
    ("ema_momentum", 1, "training.ema_momentum: must be < 1.0 (got 1)"),
    ("mixed_precision", "yes", "training.mixed_precision: expected true or false (got 'yes')"),
    ("checkpoint_dir", 3, "training.checkpoint_dir: expected str (got 3)"),
])
def test_training_schedule_precision_and_checkpoint_errors(field, value, expected):
    raw = _raw()
    raw["training"] = {field: value}
    assert expected in _error(raw)


def test_lazy_adam_is_not_combined_with_adamw():
    raw = _raw()
    raw["training"] = {"lazy_adam": True, "weight_decay": 0.01}
    assert _error(raw) == ("training.lazy_adam: applies to Adam, not to AdamW "
                           "(weight_decay above 0)")
    raw["training"] = {"lazy_adam": True}
    assert config_lib.config_from_dict(raw).training.lazy_adam


def test_piecewise_linear_feature_keeps_its_bins_and_width():
    raw = _with_feature(transform="piecewise_linear", num_buckets=24, embedding_dim=6)
    fields = config_lib.config_from_dict(raw).feature("price").relevant_fields()
    assert (fields["transform"], fields["num_buckets"], fields["embedding_dim"]) == (
        "piecewise_linear", 24, 6)
    assert "features[price].num_buckets: must be > 0 (got 0)" in _error(_with_feature(
        transform="piecewise_linear", num_buckets=0))


def test_periodic_feature_keeps_its_frequencies_and_width():
    raw = _with_feature(transform="periodic", num_frequencies=12, frequency_scale=0.5,
                        embedding_dim=6)
    fields = config_lib.config_from_dict(raw).feature("price").relevant_fields()
    assert (fields["transform"], fields["num_frequencies"], fields["frequency_scale"],
            fields["embedding_dim"]) == ("periodic", 12, 0.5, 6)
    assert "num_buckets" not in fields
    assert "num_frequencies" not in config_lib.config_from_dict(
        _with_feature(transform="zscore")).feature("price").relevant_fields()
    assert "features[price].num_frequencies: must be > 0 (got 0)" in _error(_with_feature(
        transform="periodic", num_frequencies=0))
    assert "features[price].frequency_scale: must be > 0.0 (got 0.0)" in _error(_with_feature(
        transform="periodic", frequency_scale=0.0))
    assert "features[price].frequency_scale: expected a number (got 'wide')" in _error(
        _with_feature(transform="periodic", frequency_scale="wide"))


def test_training_schedule_precision_and_checkpoint_round_trip():
    raw = _raw()
    raw["training"] = {"lr_schedule": "cosine", "warmup_steps": 100, "mixed_precision": True,
                       "checkpoint_dir": "/tmp/ckpt", "weight_decay": 0.01}
    config = config_lib.config_from_dict(raw)
    assert (config.training.lr_schedule, config.training.warmup_steps,
            config.training.mixed_precision, config.training.checkpoint_dir,
            config.training.weight_decay) == ("cosine", 100, True, "/tmp/ckpt", 0.01)
    assert config_lib.config_from_json(config.to_json()) == config
    defaults = config_lib.config_from_dict(_raw()).training
    assert (defaults.lr_schedule, defaults.warmup_steps, defaults.mixed_precision,
            defaults.checkpoint_dir, defaults.weight_decay) == ("constant", 0, False, None, 0.0)


def test_config_objects_are_frozen():
    config = config_lib.config_from_dict(_raw())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.training.batch_size = 1
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.model_name = "other"


def test_direct_construction_validates_each_section():
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        config_lib.FeatureConfig(name="a", kind="numeric", dtype="float", embedding_dim=0)
    # The type decides the bounds' defaults, as from YAML.
    assert config_lib.TaskConfig(name="t", type="regression").eval == config_lib.EvalBounds(
        min_auc=None, max_auc_drop=None)


# --- JSON Schema ------------------------------------------------------------

CENSUS_YAML = os.path.join(os.path.dirname(__file__), "..", "pipeline", "configs",
                           "census.yaml")


def _schema_errors(raw):
    """The messages of the JSON Schema validation of a parsed config."""
    validator = jsonschema.Draft202012Validator(config_lib.json_schema())
    return [e.message for e in validator.iter_errors(raw)]


@pytest.mark.parametrize("raw", [
    yaml.safe_load(VALID_YAML), yaml.safe_load(TABULAR_YAML),
    yaml.safe_load(open(CENSUS_YAML).read()),
], ids=["logs", "csv", "census"])
def test_json_schema_accepts_valid_configs(raw):
    jsonschema.Draft202012Validator.check_schema(config_lib.json_schema())
    assert _schema_errors(raw) == []


@pytest.mark.parametrize("path, value, expected", [
    (("features", 3, "kind"), "dense", "'dense' is not one of"),
    (("features", 3, "bucketz"), 3, "'bucketz' was unexpected"),
    (("training", "batch_size"), 0, "0 is less than or equal to the minimum of 0"),
    (("training", "batch_size"), True, "True is not of type 'integer'"),
    (("model_name",), "has space", "'has space' does not match"),
    (("tasks", 0, "loss_weight"), -0.5, "-0.5 is less than the minimum of 0"),
])
def test_json_schema_rejects_what_validation_rejects(path, value, expected):
    errors = _schema_errors(_set(path, value))
    assert any(expected in e for e in errors), errors
    with pytest.raises(ConfigError):
        config_lib.config_from_dict(_set(path, value))


def test_json_schema_describes_every_field_and_gives_its_default():
    schema = config_lib.json_schema()
    sections = dict(schema["$defs"], Config=schema)
    assert sorted(sections) == sorted(
        ["Config", "FeatureConfig", "TaskConfig", "EvalBounds", "SplitConfig",
         "InputSplitConfig", "InputConfig", "TrainingConfig", "ModelConfig", "ScoreConfig",
         "ServingConfig", "ValidationConfig"])
    for name, section in sections.items():
        for field, spec in section["properties"].items():
            # A section's field may leave its description to the section's own.
            referenced = sections.get(spec.get("$ref", "").split("/")[-1], {})
            assert spec.get("description") or referenced.get("description"), (
                f"{name}.{field} has no description")
    assert sections["FeatureConfig"]["properties"]["hash_buckets"]["default"] == 1000
    assert sections["FeatureConfig"]["required"] == ["name", "kind", "dtype"]


def test_importing_the_config_does_not_import_tensorflow():
    # The CLI validates a config before TensorFlow loads (seconds later).
    code = ("import sys; import mtrank.base.config; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_user_item_dot_needs_user_and_item_ids_as_categorical_features():
    raw = _raw()
    raw["model"] = {"user_item_dot": True, "fm_interaction": True, "embedding_l2": 1e-4,
                    "embedding_dropout": 0.1, "embedding_learning_rate_multiplier": 0.3}
    assert config_lib.config_from_dict(raw).model.user_item_dot
    raw["features"] = [f for f in raw["features"] if f["name"] != "item_id"]
    assert _error(raw) == (
        "model.user_item_dot: needs ['item_id'] as categorical feature(s) (the dot product is "
        "of the user's and the item's id embeddings); categorical features: "
        "['country', 'user_id']")


def test_id_regularisers_are_off_by_default_and_bounded():
    model = config_lib.ModelConfig()
    assert (model.user_item_dot, model.fm_interaction, model.embedding_l2,
            model.embedding_dropout, model.embedding_learning_rate_multiplier) == (
                False, False, 0.0, 0.0, 1.0)
    raw = _raw()
    raw["model"] = {"embedding_dropout": 1.0, "embedding_learning_rate_multiplier": 0.0,
                    "embedding_l2": -1.0}
    assert _error(raw).splitlines() == [
        "model.embedding_l2: must be >= 0.0 (got -1.0)",
        "model.embedding_dropout: must be < 1.0 (got 1.0)",
        "model.embedding_learning_rate_multiplier: must be > 0.0 (got 0.0)"]
