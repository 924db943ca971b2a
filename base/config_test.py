"""Tests of config loading and validation: every error names its field."""
import copy
import json

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
        "x", "categorical", "string").hash_buckets  # the default
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
    assert config_lib.FeatureConfig("a", "categorical", "string").default_value == ""
    assert config_lib.FeatureConfig("a", "numeric", "int64").default_value == 0
    assert config_lib.FeatureConfig("a", "numeric", "float").default_value == 0.0


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


@pytest.mark.parametrize("path, value, expected", [
    # Unknown fields.
    (("colour",), "red", "config: unknown field(s) ['colour']"),
    (("features", 3, "bucketz"), 3, "features[3]: unknown field(s) ['bucketz']"),
    (("tasks", 1, "windw"), 3, "tasks[1]: unknown field(s) ['windw']"),
    (("tasks", 1, "eval", "min_aucc"), 0.5, "tasks[revenue].eval: unknown field(s) ['min_aucc']"),
    (("split", "eval_weeks"), 1, "split: unknown field(s) ['eval_weeks']"),
    (("training", "num_epochs"), 1, "training: unknown field(s) ['num_epochs']"),
    # Bad choices.
    (("features", 3, "kind"), "dense", "features[price].kind"),
    (("features", 3, "dtype"), "double", "features[price].dtype"),
    (("features", 2, "encoding"), "onehot", "features[country].encoding"),
    (("features", 3, "transform"), "sqrt", "features[price].transform"),
    (("tasks", 0, "type"), "multiclass", "tasks[click].type"),
    # Non-positive sizes.
    (("features", 0, "hash_buckets"), 0, "features[user_id].hash_buckets"),
    (("features", 2, "vocab_size"), -5, "features[country].vocab_size"),
    (("features", 0, "embedding_dim"), 0, "features[user_id].embedding_dim"),
    (("features", 4, "num_buckets"), 0, "features[age].num_buckets"),
    (("features", 5, "max_len"), -1, "features[tags].max_len"),
    (("tasks", 0, "label_window_s"), 0, "tasks[click].label_window_s"),
    (("split", "eval_days"), 0, "split.eval_days"),
    (("split", "eval_percent"), 0, "split.eval_percent"),
    (("split", "eval_percent"), 100, "split.eval_percent: must be below 100"),
    (("split", "window_spans"), 0, "split.window_spans"),
    (("training", "train_steps"), -1, "training.train_steps"),
    (("training", "batch_size"), 0, "training.batch_size"),
    (("training", "learning_rate"), 0.0, "training.learning_rate"),
    (("training", "bottom_units"), [32, 0], "training.bottom_units[1]"),
    (("training", "tower_units"), [-8], "training.tower_units[0]"),
    # Wrong types, bool where an int is expected.
    (("features", 0, "hash_buckets"), True, "features[user_id].hash_buckets"),
    (("features", 0, "hash_buckets"), "1000", "features[user_id].hash_buckets"),
    (("features", 0, "embedding_dim"), 8.0, "features[user_id].embedding_dim"),
    (("tasks", 0, "label_window_s"), True, "tasks[click].label_window_s"),
    (("split", "eval_days"), True, "split.eval_days"),
    (("training", "batch_size"), False, "training.batch_size"),
    (("training", "learning_rate"), True, "training.learning_rate"),
    (("training", "learning_rate"), "fast", "training.learning_rate"),
    (("training", "bottom_units"), [32, True], "training.bottom_units[1]"),
    (("tasks", 0, "loss_weight"), "heavy", "tasks[click].loss_weight"),
    (("tasks", 0, "loss_weight"), True, "tasks[click].loss_weight"),
    (("tasks", 0, "loss_weight"), -0.5, "tasks[click].loss_weight"),
    (("tasks", 1, "eval", "max_mse"), "big", "tasks[revenue].eval.max_mse"),
    (("tasks", 1, "eval", "min_auc"), True, "tasks[revenue].eval.min_auc"),
    (("tasks", 0, "feedback"), 5, "tasks[click].feedback"),
    (("features", 3, "name"), 5, "features[3].name"),
    (("tasks", 0, "name"), ["click"], "tasks[0].name"),
    (("model_name",), 7, "model_name"),
    (("model_name",), "has space", "model_name"),
    (("features", 3, "name"), "bad-name", "features[bad-name].name"),
    (("tasks", 0, "name"), "1click", "tasks[1click].name"),
    (("features",), {"name": "x"}, "features"),
    (("tasks",), "click", "tasks"),
    (("features",), [], "features"),
    (("tasks",), [], "tasks"),
    (("features", 3), "price", "features[3]: expected a mapping"),
    (("split",), 5, "split: expected a mapping"),
    (("tasks", 0, "eval"), [0.5], "tasks[click].eval: expected a mapping"),
    # Reserved names.
    (("features", 3, "name"), "position", "features[position].name"),
    (("features", 3, "name"), "request_id", "features[request_id].name"),
    (("features", 3, "name"), "impression_ts", "features[impression_ts].name"),
    # Kind / dtype combinations.
    (("features", 3, "dtype"), "string", "features[price]: a numeric feature"),
    (("features", 5, "dtype"), "float", "features[tags]: a multivalent feature"),
])
def test_error_names_the_field(path, value, expected):
    message = _error(_set(path, value))
    assert expected in message, message


@pytest.mark.parametrize("path, expected", [
    (("model_name",), "config: missing required field 'model_name'"),
    (("features",), "config: missing required field 'features'"),
    (("tasks",), "config: missing required field 'tasks'"),
    (("features", 3, "name"), "features[3]: missing required field 'name'"),
    (("features", 3, "kind"), "features[3]: missing required field 'kind'"),
    (("features", 3, "dtype"), "features[3]: missing required field 'dtype'"),
    (("tasks", 1, "name"), "tasks[1]: missing required field 'name'"),
    (("tasks", 1, "feedback"), "tasks[1]: missing required field 'feedback'"),
])
def test_missing_required_field(path, expected):
    message = _error(_set(path, None, delete=True))
    assert expected in message, message


def test_duplicate_feature_names():
    raw = _raw()
    raw["features"].append({"name": "price", "kind": "numeric", "dtype": "int64"})
    message = _error(raw)
    assert "feature names must be unique" in message and "price" in message


def test_duplicate_task_names():
    raw = _raw()
    raw["tasks"].append({"name": "click", "feedback": "like"})
    message = _error(raw)
    assert "task names must be unique" in message and "click" in message


def test_feature_clashing_with_a_label_key():
    raw = _raw()
    raw["features"].append({"name": "click_label", "kind": "numeric", "dtype": "float"})
    message = _error(raw)
    assert "click_label" in message


def test_optional_step_counts_may_be_null():
    config = config_lib.config_from_dict(
        _set(("training",), {"train_steps": None, "eval_steps": None}))
    assert config.training.train_steps is None and config.training.eval_steps is None
    assert "training.train_steps" in _error(_set(("training", "train_steps"), 0))
    # Only fields whose default is null may be null.
    assert "training.batch_size" in _error(_set(("training", "batch_size"), None))


def test_top_level_not_a_mapping():
    assert "config: expected a mapping" in _error(["model_name", "m"])


@pytest.mark.parametrize("field, value", [
    ("bottom_units", 128), ("tower_units", 64), ("seed", "abc"), ("seed", 1.5),
])
def test_training_field_types_are_checked(field, value):
    assert f"training.{field}" in _error(_set(("training", field), value))


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
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "features[price].kind" in _load_error(path)


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
    assert config.input.split == config_lib.InputSplitConfig(70, 15, 15, seed=7)
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
    (("input", "format"), "parquet", "input.format: must be one of"),
    (("input", "colums"), [], "input: unknown field(s) ['colums']"),
    (("input", "delimiter"), "ab", "input.delimiter: must be one character"),
    (("input", "delimiter"), "", "input.delimiter"),
    (("input", "delimiter"), '"', "input.delimiter"),
    (("input", "delimiter"), 1, "input.delimiter: expected str"),
    (("input", "column_names"), "age,job", "input.column_names: expected list"),
    (("input", "column_names"), [], "input.column_names: at least one column"),
    (("input", "column_names"), ["age", "job", "age", "income", "status", "score"],
     "input.column_names: names must be unique; repeated: ['age']"),
    (("input", "column_names"), ["age", 3], "input.column_names[1]: expected str"),
    (("input", "missing_values"), ["? "], "input.missing_values[0]: '? ' has spaces"),
    (("input", "missing_values"), "?", "input.missing_values: expected list"),
    (("input", "exclude_columns"), ["wieght"],
     "input.exclude_columns: no such column(s) ['wieght']"),
    (("input", "split", "train"), 60, "input.split: train + eval + test must be 100"),
    (("input", "split", "eval"), 0, "input.split.eval: must be > 0"),
    (("input", "split", "test"), -5, "input.split.test: must be >= 0"),
    (("input", "split", "train"), 70.0, "input.split.train: expected int"),
    (("input", "split", "seed"), "zero", "input.split.seed: expected int"),
    (("input", "split", "valid"), 10, "input.split: unknown field(s) ['valid']"),
    (("input",), "csv", "input: expected a mapping"),
    (("split",), {"eval_days": 1}, "split: the time split applies to logs input"),
    (("tasks", 0, "feedback"), "click", "tasks[rich].feedback: does not apply to csv input"),
    (("tasks", 0, "label_window_s"), 60, "tasks[rich].label_window_s: does not apply"),
    (("tasks", 0, "label_column"), 5, "tasks[rich].label_column: expected str"),
    (("tasks", 0, "label_column"), "incme", "tasks[rich].label_column: no column 'incme'"),
    (("tasks", 0, "positive_values"), [], "tasks[rich].positive_values: at least one"),
    (("tasks", 0, "positive_values"), [1], "tasks[rich].positive_values[0]: expected str"),
    (("tasks", 0, "positive_values"), "50000+.", "tasks[rich].positive_values: expected list"),
    (("tasks", 2, "positive_values"), ["1"], "tasks[score].positive_values: does not apply "
                                             "to a regression task"),
    (("features", 1, "name"), "income", "features[income]: column 'income' is the label of "
                                        "task rich"),
    (("features", 1, "name"), "weight", "features[weight]: column 'weight' is in "
                                        "input.exclude_columns"),
    (("features", 1, "name"), "salary", "features[salary]: no column 'salary'"),
    (("features", 1, "kind"), "multivalent", "features[job]: a multivalent feature cannot"),
    (("features", 1, "name"), "split_key", "features[split_key].name: 'split_key' is reserved"),
])
def test_tabular_error_names_the_field(path, value, expected):
    message = _error(_tabular_set(path, value))
    assert expected in message, message


@pytest.mark.parametrize("path, expected", [
    (("tasks", 0, "label_column"), "tasks[0]: missing required field 'label_column'"),
    (("tasks", 0, "positive_values"), "tasks[rich]: a binary task on csv input needs "
                                      "positive_values"),
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
     "tasks[t].label_column: does not apply to tfrecord input"),
    ({"format": "tfrecord"}, {"name": "t", "feedback": "click"},
     "tasks[t].feedback: does not apply to tfrecord input"),
    ({"format": "logs"}, {"name": "t", "feedback": "click", "positive_values": ["1"]},
     "tasks[t].positive_values: does not apply to logs input"),
    ({"format": "logs"}, {"name": "t"}, "tasks[0]: missing required field 'feedback'"),
])
def test_fields_of_other_formats_are_rejected(input_raw, task, expected):
    message = _error({
        "model_name": "m", "input": input_raw,
        "features": [{"name": "a", "kind": "numeric", "dtype": "float"}], "tasks": [task]})
    assert expected in message, message


def test_shipped_census_config_is_valid():
    import os

    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "pipeline", "configs",
                                                 "census.yaml"))
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
    ({"depends_on": "basket"}, "tasks[purchase].depends_on: no task 'basket'"),
    ({"condition": "revenue"}, "tasks[purchase].condition: 'revenue' is a regression task"),
    ({"depends_on": "purchase"}, "tasks[purchase].depends_on: cycle purchase -> purchase"),
    ({"condition": "click", "depends_on": "click"}, "tasks[purchase]: set condition"),
    ({"condition": 3}, "tasks[purchase].condition: expected str"),
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
    assert "clashes with the task of that name" in _error(raw)


@pytest.mark.parametrize("model, expected", [
    ({"architecture": "transformer"}, "model.architecture: must be one of"),
    ({"loss_weighting": "magic"}, "model.loss_weighting: must be one of"),
    ({"num_experts": 4}, "model.num_experts: applies to architecture mmoe / cgc / ple, not "
                         "shared_bottom"),
    ({"architecture": "cgc", "extraction_layers": 2}, "model.extraction_layers: applies to"),
    ({"gradnorm_alpha": 1.0}, "model.gradnorm_alpha: applies to loss_weighting gradnorm"),
    ({"architecture": "mmoe", "num_experts": 0}, "model.num_experts: must be > 0"),
    ({"cross_layers": -1}, "model.cross_layers: must be >= 0"),
    ({"cross_projection_dim": 0}, "model.cross_projection_dim: must be > 0"),
    ({"ensemble_size": 0}, "model.ensemble_size: must be > 0"),
    ({"dropout": 1.0}, "model.dropout: must be in [0, 1)"),
    ({"dropout": "some"}, "model.dropout: expected"),
    ({"normalization": "group"}, "model.normalization: must be one of"),
    ({"loss_weighting": "dwa", "dwa_temperature": 0}, "model.dwa_temperature: must be > 0"),
    ({"position_tasks": ["clicks"]}, "model.position_tasks[0]: no task 'clicks'"),
    ({"position_tasks": ["revenue"]}, "model.position_tasks[0]: 'revenue' is a regression"),
    ({"position_tasks": ["click", "click"]}, "model.position_tasks: repeated"),
    ({"position_tasks": [{"name": "click"}]}, "model.position_tasks[0]: expected str"),
    ({"position_tasks": "click"}, "model.position_tasks: expected list"),
    ({"position_form": "sum"}, "model.position_form: must be one of"),
    ({"max_position": 0}, "model.max_position: must be > 0"),
    ({"expert_count": 3}, "model: unknown field(s) ['expert_count']"),
])
def test_model_errors_name_the_field(model, expected):
    message = _error(_set(("model",), model))
    assert expected in message, message


def test_dynamic_weighting_needs_positive_loss_weights():
    raw = _with_task(loss_weight=0.0)
    raw["model"] = {"loss_weighting": "uncertainty"}
    assert "tasks[click].loss_weight: must be > 0 with model.loss_weighting uncertainty" in (
        _error(raw))


def test_position_towers_need_logs_input():
    raw = {"model_name": "m", "input": {"format": "tfrecord"},
           "features": [{"name": "a", "kind": "numeric", "dtype": "float"}],
           "tasks": [{"name": "t"}], "model": {"position_tasks": ["t"]}}
    assert "model.position_tasks: tfrecord input has no 'position'" in _error(raw)


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
    ({"slices": [["price"]]}, r"validation.slices\[0\]: 'price' is not a categorical feature"),
    ({"slices": [[]]}, r"validation.slices\[0\]: name at least one feature"),
    ({"slices": ["country"]}, r"validation.slices\[0\]: expected list"),
    ({"min_slice_size": 0}, r"validation.min_slice_size: must be > 0"),
    ({"drift": {"colour": 0.1}}, r"validation.drift.colour: no feature or label named 'colour'"),
    ({"skew": {"country": 1.5}}, r"validation.skew.country: a distance between distributions"),
    ({"skew": {"country": 0}}, r"validation.skew.country: must be > 0"),
    ({"schema": 3}, r"validation.schema: expected str"),
    ({"slice": [["country"]]}, r"validation: unknown field\(s\) \['slice'\]"),
])
def test_validation_errors_name_the_field(validation, expected):
    with pytest.raises(ConfigError, match=expected):
        config_lib.config_from_dict(_with_validation(validation))


# --- serving section ------------------------------------------------------------


def test_serving_score_defaults_and_round_trip():
    config = config_lib.config_from_dict(_raw())
    assert config.serving.score == config_lib.ScoreConfig("weighted_product", None)
    assert "serving" not in config.to_dict()  # the default is not written out
    raw = _raw()
    raw["serving"] = {"score": {"form": "weighted_sum", "weights": {"click": 1.0,
                                                                    "revenue": 0.5}}}
    config = config_lib.config_from_dict(raw)
    assert config.serving.score.weights == {"click": 1.0, "revenue": 0.5}
    assert config_lib.config_from_json(config.to_json()) == config


@pytest.mark.parametrize("score, expected", [
    ({"form": "max"}, "serving.score.form: must be one of"),
    ({"weights": {"click": -1}}, "serving.score.weights.click: must be >= 0"),
    ({"weights": {"click": "high"}}, "serving.score.weights.click: expected"),
    ({"weights": {"click": 0}}, "serving.score.weights: at least one weight must be > 0"),
    ({"weights": {}}, "serving.score.weights: name at least one output"),
    ({"weights": {"purchase": 1.0}}, "serving.score.weights.purchase: not an output"),
    ({"weights": {"revenue": 1.0}}, "serving.score.weights.revenue: task revenue is a "
                                    "regression"),
    ({"bias": 1.0}, "serving.score: unknown field(s) ['bias']"),
])
def test_serving_score_errors_name_the_field(score, expected):
    raw = _raw()
    raw["serving"] = {"score": score}
    assert expected in _error(raw)


@pytest.mark.parametrize("field, value, expected", [
    ("lr_schedule", "step", "training.lr_schedule: must be one of ['constant', 'cosine']"),
    ("warmup_steps", -1, "training.warmup_steps: must be >= 0"),
    ("warmup_steps", 1.5, "training.warmup_steps: expected int"),
    ("weight_decay", -0.1, "training.weight_decay: must be >= 0"),
    ("weight_decay", "0.1", "training.weight_decay: expected int/float"),
    ("mixed_precision", "yes", "training.mixed_precision: expected true or false"),
    ("checkpoint_dir", 3, "training.checkpoint_dir: expected str"),
])
def test_training_schedule_precision_and_checkpoint_errors(field, value, expected):
    raw = _raw()
    raw["training"] = {field: value}
    assert expected in _error(raw)


def test_piecewise_linear_feature_keeps_its_bins_and_width():
    raw = _with_feature(transform="piecewise_linear", num_buckets=24, embedding_dim=6)
    fields = config_lib.config_from_dict(raw).feature("price").relevant_fields()
    assert (fields["transform"], fields["num_buckets"], fields["embedding_dim"]) == (
        "piecewise_linear", 24, 6)
    assert "features[price].num_buckets" in _error(_with_feature(
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
    assert "features[price].num_frequencies: must be > 0" in _error(_with_feature(
        transform="periodic", num_frequencies=0))
    assert "features[price].frequency_scale: must be > 0" in _error(_with_feature(
        transform="periodic", frequency_scale=0.0))
    assert "features[price].frequency_scale: expected int/float" in _error(_with_feature(
        transform="periodic", frequency_scale="wide"))


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
