"""The one config that every stage of mtrank reads.

A YAML file declares the model name, the features (how each raw impression
feature becomes model input), the tasks (which feedback labels which output,
over which window), the split and the training settings. Loading validates it
and names the offending field; `infer_config` builds one from logs.

Adding a task or a feature is an edit of this file's YAML and nothing else:
ExampleGen labels examples from `tasks`, Transform and the model read
`features`, the Evaluator takes its bounds from `tasks[*].eval`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Optional

import yaml

# Names the pipeline itself writes into every example; features may not reuse them.
USER_ID = "user_id"
ITEM_ID = "item_id"
REQUEST_ID = "request_id"
POSITION = "position"
IMPRESSION_TS = "impression_ts"
RESERVED_NAMES = frozenset({REQUEST_ID, POSITION, IMPRESSION_TS})

FEATURE_KINDS = ("categorical", "numeric", "multivalent")
CATEGORICAL_ENCODINGS = ("hashing", "vocabulary")
NUMERIC_TRANSFORMS = ("zscore", "log", "buckets")
DTYPES = ("string", "int64", "float")
TASK_TYPES = ("binary", "regression")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """One model input, read from the impression (or its user_id / item_id).

    kind: categorical (one string or integer id), numeric (one number) or
      multivalent (a list of strings or numbers, embedded and mean-pooled).
    dtype: how the value is stored in tf.Example: string, int64 or float.
    encoding: for categorical and multivalent values, hashing into
      `hash_buckets` or a vocabulary of the `vocab_size` most frequent values.
    transform: for numeric values: zscore, log (log1p then z-score) or
      buckets (quantile buckets, embedded).
    max_len: multivalent lists are truncated to this many values.
    """

    name: str
    kind: str
    dtype: str
    encoding: str = "hashing"
    hash_buckets: int = 1000
    vocab_size: int = 1000
    embedding_dim: int = 8
    transform: str = "zscore"
    num_buckets: int = 10
    max_len: int = 8

    @property
    def is_numeric_value(self) -> bool:
        return self.dtype in ("int64", "float")

    @property
    def is_scalar(self) -> bool:
        return self.kind != "multivalent"

    def relevant_fields(self) -> Dict[str, Any]:
        """The fields that affect this feature, for the YAML a user edits."""
        fields = {"name": self.name, "kind": self.kind, "dtype": self.dtype}
        if self.kind == "numeric":
            fields["transform"] = self.transform
            if self.transform == "buckets":
                fields.update(num_buckets=self.num_buckets, embedding_dim=self.embedding_dim)
            return fields
        fields["encoding"] = self.encoding
        if self.encoding == "hashing":
            fields["hash_buckets"] = self.hash_buckets
        else:
            fields["vocab_size"] = self.vocab_size
        fields["embedding_dim"] = self.embedding_dim
        if self.kind == "multivalent":
            fields["max_len"] = self.max_len
        return fields

    @property
    def default_value(self):
        """What a missing value becomes, the same in training and serving."""
        return {"string": "", "int64": 0, "float": 0.0}[self.dtype]


@dataclasses.dataclass(frozen=True)
class EvalBounds:
    """Blessing bounds for one task: an absolute floor and the largest drop
    allowed against the last blessed model (AUC for binary tasks, negative
    MSE for regression tasks)."""

    min_auc: Optional[float] = 0.5
    max_auc_drop: Optional[float] = 0.02
    max_mse: Optional[float] = None
    max_mse_increase: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One model output, labelled by one feedback type.

    A binary task's label is 1 if feedback of type `feedback` arrived within
    `label_window_s` seconds after the impression. A regression task's label
    is the sum of those events' `value`s.
    """

    name: str
    feedback: str
    type: str = "binary"
    label_window_s: int = 3600
    loss_weight: float = 1.0
    eval: EvalBounds = dataclasses.field(default_factory=EvalBounds)

    @property
    def label_key(self) -> str:
        return f"{self.name}_label"


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Time split: the last `eval_days` calendar days (UTC) are evaluation."""

    eval_days: int = 1


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Trainer settings. `bottom_units` is the shared bottom, `tower_units`
    each task's tower.

    By default training makes `epochs` passes over the train split and keeps
    the weights of the epoch with the lowest eval loss (early stopping after
    `early_stopping_patience` epochs without improvement): the number of
    steps then follows the data size. `train_steps` / `eval_steps` fix the
    step counts instead (the train data repeats as needed).
    """

    epochs: int = 5
    early_stopping_patience: int = 1
    train_steps: Optional[int] = None
    eval_steps: Optional[int] = None
    batch_size: int = 256
    learning_rate: float = 0.002
    bottom_units: List[int] = dataclasses.field(default_factory=lambda: [256, 128])
    tower_units: List[int] = dataclasses.field(default_factory=lambda: [64])
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    model_name: str
    features: List[FeatureConfig]
    tasks: List[TaskConfig]
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def feature(self, name: str) -> FeatureConfig:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def label_keys(self) -> List[str]:
        return [task.label_key for task in self.tasks]

    @property
    def max_label_window_s(self) -> int:
        return max(task.label_window_s for task in self.tasks)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Compact form passed to TFX components as an execution property."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        """The config as a user edits it: each feature lists only the fields
        that matter for its kind (the others keep their defaults)."""
        raw = self.to_dict()
        raw["features"] = [f.relevant_fields() for f in self.features]
        for task in raw["tasks"]:
            task["eval"] = {k: v for k, v in task["eval"].items()
                            if k.startswith("max_mse") == (task["type"] == "regression")}
        return yaml.safe_dump(raw, sort_keys=False)


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _check_fields(cls, raw: Dict[str, Any], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _expect(value, types, where: str):
    if isinstance(value, bool) or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    return value


def _positive(value, where: str, types=int):
    _expect(value, types, where)
    if value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    return value


def _one_of(value, choices, where: str):
    if value not in choices:
        raise ConfigError(f"{where}: must be one of {list(choices)}, got {value!r}")
    return value


def _feature_from_dict(raw: Dict[str, Any], where: str) -> FeatureConfig:
    _check_fields(FeatureConfig, raw, where)
    for required in ("name", "kind", "dtype"):
        if required not in raw:
            raise ConfigError(f"{where}: missing required field '{required}'")
    name = _expect(raw["name"], str, f"{where}.name")
    where = f"features[{name}]"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name: must match {_NAME_RE.pattern}")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{where}.name: '{name}' is reserved by the pipeline")
    feature = FeatureConfig(**raw)
    _one_of(feature.kind, FEATURE_KINDS, f"{where}.kind")
    _one_of(feature.dtype, DTYPES, f"{where}.dtype")
    _one_of(feature.encoding, CATEGORICAL_ENCODINGS, f"{where}.encoding")
    _one_of(feature.transform, NUMERIC_TRANSFORMS, f"{where}.transform")
    for field in ("hash_buckets", "vocab_size", "embedding_dim", "num_buckets", "max_len"):
        _positive(getattr(feature, field), f"{where}.{field}")
    if feature.kind == "numeric" and not feature.is_numeric_value:
        raise ConfigError(f"{where}: a numeric feature needs dtype int64 or float")
    if feature.kind == "multivalent" and feature.dtype == "float":
        raise ConfigError(f"{where}: a multivalent feature holds ids: dtype string or int64")
    return feature


def _task_from_dict(raw: Dict[str, Any], where: str) -> TaskConfig:
    _check_fields(TaskConfig, raw, where)
    for required in ("name", "feedback"):
        if required not in raw:
            raise ConfigError(f"{where}: missing required field '{required}'")
    name = _expect(raw["name"], str, f"{where}.name")
    where = f"tasks[{name}]"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name: must match {_NAME_RE.pattern}")
    _expect(raw["feedback"], str, f"{where}.feedback")
    raw = dict(raw)
    eval_raw = raw.pop("eval", None) or {}
    _check_fields(EvalBounds, eval_raw, f"{where}.eval")
    for key, value in eval_raw.items():
        if value is not None:
            _expect(value, (int, float), f"{where}.eval.{key}")
    task_type = _one_of(raw.get("type", "binary"), TASK_TYPES, f"{where}.type")
    # Each type has its own bounds; the other type's are None (not defaults
    # that look as if they applied).
    own, other = (("min_auc", "max_auc_drop"), ("max_mse", "max_mse_increase"))[
        ::1 if task_type == "binary" else -1]
    for key in other:
        if eval_raw.get(key) is not None:
            raise ConfigError(f"{where}.eval.{key}: does not apply to a {task_type} task "
                              f"(use {' / '.join(own)})")
    bounds = dataclasses.replace(EvalBounds(**eval_raw), **{key: None for key in other})
    task = TaskConfig(**raw, eval=bounds)
    _positive(task.label_window_s, f"{where}.label_window_s")
    _expect(task.loss_weight, (int, float), f"{where}.loss_weight")
    if task.loss_weight < 0:
        raise ConfigError(f"{where}.loss_weight: must be >= 0")
    return task


def _section(cls, raw, where: str):
    raw = raw or {}
    _check_fields(cls, raw, where)
    section = cls(**raw)
    for field in dataclasses.fields(cls):
        value = getattr(section, field.name)
        if value is None and field.default is None:
            continue
        if field.default is dataclasses.MISSING:  # a list (default_factory)
            _expect(value, list, f"{where}.{field.name}")
            for i, unit in enumerate(value):
                _positive(unit, f"{where}.{field.name}[{i}]")
        elif field.name == "learning_rate":
            _positive(value, f"{where}.{field.name}", (int, float))
        elif field.name == "seed":
            _expect(value, int, f"{where}.{field.name}")
        else:
            _positive(value, f"{where}.{field.name}")
    return section


def config_from_dict(raw: Dict[str, Any]) -> Config:
    """Validates a parsed config; raises ConfigError naming the bad field."""
    _check_fields(Config, raw, "config")
    for required in ("model_name", "features", "tasks"):
        if required not in raw:
            raise ConfigError(f"config: missing required field '{required}'")
    model_name = _expect(raw["model_name"], str, "model_name")
    if not _NAME_RE.match(model_name):
        raise ConfigError(f"model_name: must match {_NAME_RE.pattern}")
    features_raw = _expect(raw["features"], list, "features")
    tasks_raw = _expect(raw["tasks"], list, "tasks")
    if not features_raw:
        raise ConfigError("features: at least one feature is needed")
    if not tasks_raw:
        raise ConfigError("tasks: at least one task is needed")
    features = [_feature_from_dict(f, f"features[{i}]") for i, f in enumerate(features_raw)]
    tasks = [_task_from_dict(t, f"tasks[{i}]") for i, t in enumerate(tasks_raw)]
    for kind, names in (("feature", [f.name for f in features]), ("task", [t.name for t in tasks])):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{kind} names must be unique; repeated: {duplicates}")
    clashes = sorted({f.name for f in features} & {t.label_key for t in tasks})
    if clashes:
        raise ConfigError(f"feature names clash with task label keys: {clashes}")
    if not any(t.eval.min_auc is not None or t.eval.max_mse is not None for t in tasks):
        # With no blessed model yet, change bounds have nothing to compare
        # to, and TFMA never blesses a model that meets no bound at all.
        raise ConfigError("tasks: at least one task needs an absolute bound (eval.min_auc or "
                          "eval.max_mse), or no first model can be blessed")
    return Config(
        model_name=model_name,
        features=features,
        tasks=tasks,
        split=_section(SplitConfig, raw.get("split"), "split"),
        training=_section(TrainingConfig, raw.get("training"), "training"),
    )


def load_config(path: str) -> Config:
    """Reads and validates a YAML config file."""
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return config_from_dict(raw if raw is not None else {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def config_from_json(text: str) -> Config:
    return config_from_dict(json.loads(text))


def save_config(config: Config, path: str) -> None:
    with open(path, "w") as f:
        f.write(config.to_yaml())
