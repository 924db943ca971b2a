"""The one config that every stage of mtrank reads.

A YAML file declares the model name, the input (interaction logs, or
already-labelled CSV or TFRecord files), the features (how each raw impression
feature becomes model input), the tasks (which feedback, or which column,
labels which output), the split and the training settings. Loading validates
it and names the offending field; `infer_config` builds one from logs.

Adding a task or a feature is an edit of this file's YAML and nothing else:
ExampleGen labels examples from `tasks`, Transform and the model read
`features`, the Evaluator takes its bounds from `tasks[*].eval`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

# Names the pipeline itself writes into every example; features may not reuse them.
USER_ID = "user_id"
ITEM_ID = "item_id"
REQUEST_ID = "request_id"
POSITION = "position"
IMPRESSION_TS = "impression_ts"
SPLIT_KEY = "split_key"  # tabular input: the seeded hash ExampleGen splits by
RESERVED_NAMES = frozenset({REQUEST_ID, POSITION, IMPRESSION_TS, SPLIT_KEY})

INPUT_FORMATS = ("logs", "csv", "tfrecord")
TABULAR_FORMATS = ("csv", "tfrecord")
SPLIT_NAMES = ("train", "eval", "test")

FEATURE_KINDS = ("categorical", "numeric", "multivalent")
CATEGORICAL_ENCODINGS = ("hashing", "vocabulary")
NORMALIZATIONS = ("none", "batch", "layer")
NUMERIC_TRANSFORMS = ("zscore", "log", "buckets", "piecewise_linear", "periodic")
DTYPES = ("string", "int64", "float")
TASK_TYPES = ("binary", "regression")
# Model architectures by name (trainer/architectures.py registers one module each).
ARCHITECTURES = ("shared_bottom", "mmoe", "cgc", "ple")
LOSS_WEIGHTINGS = ("fixed", "uncertainty", "gradnorm", "dwa")
POSITION_FORMS = ("product", "additive")
LR_SCHEDULES = ("constant", "cosine")


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
    transform: for numeric values: zscore, log (log1p then z-score),
      buckets (quantile buckets, embedded) or piecewise_linear (the
      piecewise-linear encoding over `num_buckets` quantile bins of Gorishniy
      et al. 2022, then a ReLU layer of `embedding_dim` units) or periodic
      (z-scored, then sin and cos of `num_frequencies` learned frequencies
      initialised from N(0, `frequency_scale`), then a ReLU layer of
      `embedding_dim` units: their "PLR" embedding).
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
    num_frequencies: int = 16
    frequency_scale: float = 1.0
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
            if self.transform in ("buckets", "piecewise_linear"):
                fields.update(num_buckets=self.num_buckets, embedding_dim=self.embedding_dim)
            if self.transform == "periodic":
                fields.update(num_frequencies=self.num_frequencies,
                              frequency_scale=self.frequency_scale,
                              embedding_dim=self.embedding_dim)
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


# Task fields that apply to one input format only.
_TASK_FIELDS_BY_FORMAT = {
    "logs": ("feedback", "label_window_s"),
    "csv": ("label_column", "positive_values"),
    "tfrecord": (),
}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One model output.

    From logs, labelled by one feedback type: a binary task's label is 1 if
    feedback of type `feedback` arrived within `label_window_s` seconds after
    the impression; a regression task's label is the sum of those events'
    `value`s.

    From CSV, labelled by the column `label_column`: a binary task's label is
    1 if the column's value is one of `positive_values`, a regression task's
    label is the column's number. TFRecord input already holds the label as
    the feature `<name>_label`.
    """

    name: str
    feedback: Optional[str] = None
    label_column: Optional[str] = None
    positive_values: Optional[List[str]] = None
    type: str = "binary"
    label_window_s: int = 3600
    loss_weight: float = 1.0
    condition: Optional[str] = None
    depends_on: Optional[str] = None
    eval: EvalBounds = dataclasses.field(default_factory=EvalBounds)

    @property
    def label_key(self) -> str:
        return f"{self.name}_label"

    @property
    def parent(self) -> Optional[str]:
        """The binary task this one is defined under (condition or depends_on)."""
        return self.condition or self.depends_on

    @property
    def conditional_output(self) -> Optional[str]:
        """ESMM (depends_on): the served name of P(this | parent), beside the
        task's own output P(parent and this)."""
        return f"{self.name}_given_{self.depends_on}" if self.depends_on else None

    def relevant_fields(self, input_format: str) -> Dict[str, Any]:
        """The fields that apply to this task on `input_format`, for the YAML
        a user edits: only this type's eval bounds, only this format's label
        fields."""
        fields = dataclasses.asdict(self)
        for other_format, names in _TASK_FIELDS_BY_FORMAT.items():
            if other_format != input_format:
                for name in names:
                    fields.pop(name)
        for optional in ("positive_values", "condition", "depends_on"):
            if fields.get(optional) is None:
                fields.pop(optional, None)
        fields["eval"] = {k: v for k, v in fields["eval"].items()
                          if k.startswith("max_mse") == (self.type == "regression")}
        return fields


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How logs input is split into train and eval.

    From a plain glob of log files, by time: the last `eval_days` calendar
    days (UTC) are evaluation. From daily partitions (a glob with
    {YYYY}-{MM}-{DD}), one span (day) is ingested a run and split by a hash of
    the request: `eval_percent` of each day's requests are evaluation;
    training reads the last `window_spans` ingested spans, and the Evaluator
    the newest span's evaluation requests.
    """

    eval_days: int = 1
    eval_percent: int = 15
    window_spans: int = 14


@dataclasses.dataclass(frozen=True)
class InputSplitConfig:
    """Tabular input: percentages of the rows in each split (a split of 0 is
    left out), assigned by a hash of the row and `seed`, so the same rows
    land in the same split on every run."""

    train: int = 80
    eval: int = 20
    test: int = 0
    seed: int = 0

    def percentages(self) -> Dict[str, int]:
        """{split name: percentage} of the non-empty splits, in order."""
        return {name: getattr(self, name) for name in SPLIT_NAMES if getattr(self, name)}


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What the pipeline reads.

    logs: interaction logs (JSON Lines, the log contract); tasks name their
      feedback and the split is by time (`split`).
    csv: one labelled example per row. `column_names` names the columns in
      order when the files have no header line (otherwise the first line of
      each file is the header). Fields are separated by `delimiter` (spaces
      around a field are removed, so ", " and "," read alike); an empty field
      or one of `missing_values` is missing and becomes the feature's
      default. `exclude_columns` are never features.
    tfrecord: gzipped or plain TFRecord files of tf.Example, already holding
      each task's label as the feature `<task>_label`.
    Both tabular formats are split by `split` (percentages and a seed).
    """

    format: str = "logs"
    column_names: Optional[List[str]] = None
    delimiter: str = ","
    missing_values: List[str] = dataclasses.field(default_factory=list)
    exclude_columns: List[str] = dataclasses.field(default_factory=list)
    split: InputSplitConfig = dataclasses.field(default_factory=InputSplitConfig)

    @property
    def is_tabular(self) -> bool:
        return self.format in TABULAR_FORMATS

    def relevant_fields(self) -> Dict[str, Any]:
        """The fields that apply to this format, for the YAML a user edits."""
        fields = dataclasses.asdict(self)
        if self.format == "logs":
            return {"format": self.format}
        if self.format == "tfrecord":
            return {"format": self.format, "split": fields["split"]}
        if self.column_names is None:
            fields.pop("column_names")
        return fields


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Trainer settings. `bottom_units` is the shared bottom, `tower_units`
    each task's tower.

    By default training makes `epochs` passes over the train split and keeps
    the weights of the epoch with the lowest eval loss (early stopping after
    `early_stopping_patience` epochs without improvement): the number of
    steps then follows the data size. `train_steps` / `eval_steps` fix the
    step counts instead (the train data repeats as needed).

    `gpus` / `gpu_type` are the Trainer's accelerators where the pipeline runs
    on a cluster (Kubeflow, Vertex AI); locally every visible GPU is used.
    `mixed_precision` computes in float16 (variables stay float32) where the
    Trainer has a GPU; on CPU it is ignored (logged).

    `lr_schedule`: `constant` keeps `learning_rate`; `cosine` decays it to 0
    over the whole run (`epochs` passes, or `train_steps`). Either starts
    with `warmup_steps` steps rising linearly from 0. `weight_decay` > 0
    trains with AdamW (decoupled weight decay of that rate) instead of Adam.
    `ema_momentum` > 0 evaluates, keeps and exports an exponential moving
    average of the weights over training steps (trainer/weight_averaging.py).

    Training resumes from the last finished epoch when the same training (the
    same config and input artifacts) is run again after an interruption: its
    checkpoint is kept under `checkpoint_dir` (default: beside the Trainer's
    model_run directories) until the run finishes.
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
    gpus: int = 0
    gpu_type: str = "NVIDIA_TESLA_T4"
    mixed_precision: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    ema_momentum: float = 0.0
    checkpoint_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What the Trainer builds (docs/config.md#model).

    architecture: shared_bottom (one MLP of `training.bottom_units` shared by
      every task), mmoe (`num_experts` expert MLPs, one softmax gate per
      task), cgc (`num_experts` shared plus `task_experts` per-task experts,
      gated per task) or ple (`extraction_layers` stacked CGC levels).
    cross_layers: DCN-v2 cross layers on the embedded features before the
      bottom or the experts (`cross_projection_dim`: low-rank size, or full).
    ensemble_size: independently initialised copies of the whole network
      (embeddings to towers), each trained on its own loss; served outputs
      are their mean. Training and serving cost grow with it.
    dropout: after every hidden layer, in training only.
    normalization: none, batch or layer normalisation of every hidden
      layer's pre-activations (bottom, experts and towers).
    loss_weighting: fixed (tasks[].loss_weight), uncertainty (learned
      log-variances), gradnorm (balances gradient norms, `gradnorm_alpha`) or
      dwa (weights from the tasks' loss ratios over the last two epochs,
      `dwa_temperature`). Under every choice tasks[].loss_weight scales the
      task's loss first.
    position_tasks: binary tasks given a position-bias tower fed `position`
      in training only (served scores are position-free); `position_form`:
      product (PAL, P = P(seen | position) x P(task | seen)) or additive (a
      position logit added to the task logit); positions at or beyond
      `max_position` share one bucket.
    """

    architecture: str = "shared_bottom"
    num_experts: int = 4
    task_experts: int = 1
    extraction_layers: int = 2
    cross_layers: int = 0
    cross_projection_dim: Optional[int] = None
    ensemble_size: int = 1
    dropout: float = 0.0
    normalization: str = "none"
    loss_weighting: str = "fixed"
    gradnorm_alpha: float = 1.5
    dwa_temperature: float = 2.0
    position_tasks: List[str] = dataclasses.field(default_factory=list)
    position_form: str = "product"
    max_position: int = 20

    def relevant_fields(self) -> Dict[str, Any]:
        """The fields that apply to this architecture and weighting."""
        fields = dataclasses.asdict(self)
        for field, (decider, choices) in _MODEL_FIELDS_APPLY_TO.items():
            if fields[decider] not in choices:
                del fields[field]
        return fields


# ModelConfig fields that apply only to some choices: (deciding field, choices).
_MODEL_FIELDS_APPLY_TO = {
    "num_experts": ("architecture", ("mmoe", "cgc", "ple")),
    "task_experts": ("architecture", ("cgc", "ple")),
    "extraction_layers": ("architecture", ("ple",)),
    "gradnorm_alpha": ("loss_weighting", ("gradnorm",)),
    "dwa_temperature": ("loss_weighting", ("dwa",)),
}


SCORE_FORMS = ("weighted_product", "weighted_sum")
# The fused output every scoring signature adds; FUSED_SCORE_OUTPUT when the
# model already has an output named SCORE_OUTPUT (a task called "score").
SCORE_OUTPUT = "score"
FUSED_SCORE_OUTPUT = "fused_score"


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """The fused ranking score `score` that serving returns beside the
    per-task outputs, one number per candidate to sort by.

    weighted_product: the product of output ** weight (for probabilities:
      p(click)^1 * p(purchase)^2 ranks by a weighted geometric mean).
    weighted_sum: the sum of weight * output.
    weights: {model output name: weight >= 0}; unset, every binary task
      weighs 1.
    The output is named `score` (`fused_score` if a task is named score).
    """

    form: str = "weighted_product"
    weights: Optional[Dict[str, float]] = None


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """What the exported model serves besides the per-task outputs."""

    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Checks beyond each task's bounds (docs/validation.md).

    slices: lists of categorical features the Evaluator slices the eval split
      by, besides overall (e.g. [[device], [country]]). Each task's bounds
      apply to every slice with at least `min_slice_size` eval examples;
      smaller slices are evaluated and reported but do not decide blessing.
    schema: a curated schema (text proto) imported instead of the one
      SchemaGen infers; `mtrank run --schema` overrides it.
    drift: {feature: threshold}: the largest distance allowed between this
      run's train statistics and the previous run's (L-infinity for
      categorical features, Jensen-Shannon divergence for numeric ones).
    skew: {feature: threshold}: the same distances between the train split
      and the eval split, the most recent data and the closest to what
      serving sees.
    """

    slices: List[List[str]] = dataclasses.field(default_factory=list)
    min_slice_size: int = 200
    schema: Optional[str] = None
    drift: Dict[str, float] = dataclasses.field(default_factory=dict)
    skew: Dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Config:
    model_name: str
    features: List[FeatureConfig]
    tasks: List[TaskConfig]
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)

    def feature(self, name: str) -> FeatureConfig:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def label_keys(self) -> List[str]:
        return [task.label_key for task in self.tasks]

    @property
    def output_names(self) -> List[str]:
        """Every served output: one per task, and P(task | parent) for ESMM tasks."""
        names = [task.name for task in self.tasks]
        return names + [t.conditional_output for t in self.tasks if t.depends_on]

    @property
    def max_label_window_s(self) -> int:
        return max(task.label_window_s for task in self.tasks)

    def to_dict(self) -> Dict[str, Any]:
        """The fields that apply to this config's input format (what
        `config_from_dict` accepts back): logs configs have no `input`
        section, tabular ones no time `split` and no feedback fields."""
        raw = dataclasses.asdict(self)
        raw["tasks"] = [task.relevant_fields(self.input.format) for task in self.tasks]
        raw["model"] = self.model.relevant_fields()
        if self.input.is_tabular:
            del raw["split"]
            raw["input"] = self.input.relevant_fields()
        else:
            del raw["input"]
        if self.serving == ServingConfig():
            del raw["serving"]
        if self.validation == ValidationConfig():
            del raw["validation"]
        return raw

    def to_json(self) -> str:
        """Compact form passed to TFX components as an execution property."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        """The config as a user edits it: each feature lists only the fields
        that matter for its kind (the others keep their defaults)."""
        raw = self.to_dict()
        raw["features"] = [f.relevant_fields() for f in self.features]
        if "input" in raw:  # the input first: it says how to read everything below
            raw = {"model_name": raw.pop("model_name"), "input": raw.pop("input"), **raw}
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


def _named_entry(cls, raw: Dict[str, Any], where: str, section: str,
                 required: Tuple[str, ...]) -> Tuple[str, str]:
    """Checks an entry of `features` or `tasks` for its fields and a valid
    name; returns the name and the path later errors use (`tasks[click]`)."""
    _check_fields(cls, raw, where)
    for field in ("name",) + required:
        if field not in raw:
            raise ConfigError(f"{where}: missing required field '{field}'")
    name = _expect(raw["name"], str, f"{where}.name")
    where = f"{section}[{name}]"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name: must match {_NAME_RE.pattern}")
    return name, where


def _feature_from_dict(raw: Dict[str, Any], where: str) -> FeatureConfig:
    name, where = _named_entry(FeatureConfig, raw, where, "features", ("kind", "dtype"))
    if name in RESERVED_NAMES:
        raise ConfigError(f"{where}.name: '{name}' is reserved by the pipeline")
    feature = FeatureConfig(**raw)
    _one_of(feature.kind, FEATURE_KINDS, f"{where}.kind")
    _one_of(feature.dtype, DTYPES, f"{where}.dtype")
    _one_of(feature.encoding, CATEGORICAL_ENCODINGS, f"{where}.encoding")
    _one_of(feature.transform, NUMERIC_TRANSFORMS, f"{where}.transform")
    for field in ("hash_buckets", "vocab_size", "embedding_dim", "num_buckets",
                  "num_frequencies", "max_len"):
        _positive(getattr(feature, field), f"{where}.{field}")
    _positive(feature.frequency_scale, f"{where}.frequency_scale", (int, float))
    if feature.kind == "numeric" and not feature.is_numeric_value:
        raise ConfigError(f"{where}: a numeric feature needs dtype int64 or float")
    if feature.kind == "multivalent" and feature.dtype == "float":
        raise ConfigError(f"{where}: a multivalent feature holds ids: dtype string or int64")
    return feature


_LABEL_HINTS = {
    "logs": "tasks from logs name their feedback",
    "csv": "tasks from csv name a label_column",
    "tfrecord": "tfrecord input holds each label as the feature <task>_label",
}


def _stripped_strings(value, where: str) -> List[str]:
    """A list of strings compared with CSV fields, which are read without the
    spaces around them."""
    _expect(value, list, where)
    for i, item in enumerate(value):
        _expect(item, str, f"{where}[{i}]")
        if item != item.strip():
            raise ConfigError(f"{where}[{i}]: {item!r} has spaces around it; CSV fields are "
                              "compared with those removed")
    return value


def _task_from_dict(raw: Dict[str, Any], where: str, input_format: str = "logs") -> TaskConfig:
    label_source = _TASK_FIELDS_BY_FORMAT[input_format][:1]  # feedback / label_column / none
    name, where = _named_entry(TaskConfig, raw, where, "tasks", label_source)
    for field in label_source:
        _expect(raw[field], str, f"{where}.{field}")
    for other_format, fields in _TASK_FIELDS_BY_FORMAT.items():
        for field in fields:
            if other_format != input_format and field in raw:
                raise ConfigError(f"{where}.{field}: does not apply to {input_format} input "
                                  f"({_LABEL_HINTS[input_format]})")
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
    if input_format == "csv":
        if task_type == "binary":
            if "positive_values" not in raw:
                raise ConfigError(f"{where}: a binary task on csv input needs positive_values "
                                  f"(the label is 1 if {raw['label_column']} is one of them)")
            if not _stripped_strings(raw["positive_values"], f"{where}.positive_values"):
                raise ConfigError(f"{where}.positive_values: at least one value is needed")
        elif "positive_values" in raw:
            raise ConfigError(f"{where}.positive_values: does not apply to a regression task "
                              "(its label is the column's number)")
    bounds = dataclasses.replace(EvalBounds(**eval_raw), **{key: None for key in other})
    task = TaskConfig(**raw, eval=bounds)
    if input_format == "logs":
        _positive(task.label_window_s, f"{where}.label_window_s")
    _expect(task.loss_weight, (int, float), f"{where}.loss_weight")
    if task.loss_weight < 0:
        raise ConfigError(f"{where}.loss_weight: must be >= 0")
    for field in ("condition", "depends_on"):
        if getattr(task, field) is not None:
            _expect(getattr(task, field), str, f"{where}.{field}")
    return task


def _check_task_links(tasks: List[TaskConfig]) -> None:
    """condition / depends_on name another binary task, without cycles, and
    ESMM outputs do not clash with task names."""
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        where = f"tasks[{task.name}]"
        if task.condition and task.depends_on:
            raise ConfigError(f"{where}: set condition (a loss masked to the parent's positives) "
                              "or depends_on (an ESMM product over all impressions), not both")
        if not task.parent:
            continue
        field = f"{where}.{'condition' if task.condition else 'depends_on'}"
        parent = by_name.get(task.parent)
        if parent is None:
            raise ConfigError(f"{field}: no task '{task.parent}'; tasks: {sorted(by_name)}")
        if parent.type != "binary":
            raise ConfigError(f"{field}: '{parent.name}' is a {parent.type} task; the parent "
                              "must be binary (its label 1 marks the sub-population)")
        if task.depends_on and task.type != "binary":
            raise ConfigError(f"{field}: only a binary task can depend on another (its "
                              "probability is the parent's times its own)")
        chain = [task.name]
        while by_name[chain[-1]].parent:
            chain.append(by_name[chain[-1]].parent)
            if chain[-1] == task.name:
                raise ConfigError(f"{field}: cycle {' -> '.join(chain)}")
        if task.conditional_output in by_name:
            raise ConfigError(f"{field}: its output '{task.conditional_output}' (P({task.name} "
                              f"| {task.depends_on})) clashes with the task of that name")


def _model_from_dict(raw, tasks: List[TaskConfig], input_config: InputConfig) -> ModelConfig:
    raw = {} if raw is None else raw
    _check_fields(ModelConfig, raw, "model")
    model = ModelConfig(**raw)
    _one_of(model.architecture, ARCHITECTURES, "model.architecture")
    _one_of(model.loss_weighting, LOSS_WEIGHTINGS, "model.loss_weighting")
    _one_of(model.position_form, POSITION_FORMS, "model.position_form")
    for field, (decider, choices) in _MODEL_FIELDS_APPLY_TO.items():
        if field in raw and getattr(model, decider) not in choices:
            raise ConfigError(f"model.{field}: applies to {decider} {' / '.join(choices)}, "
                              f"not {getattr(model, decider)}")
    for field in ("num_experts", "task_experts", "extraction_layers", "ensemble_size",
                  "max_position"):
        _positive(getattr(model, field), f"model.{field}")
    if _expect(model.cross_layers, int, "model.cross_layers") < 0:
        raise ConfigError(f"model.cross_layers: must be >= 0, got {model.cross_layers}")
    if model.cross_projection_dim is not None:
        _positive(model.cross_projection_dim, "model.cross_projection_dim")
    if not 0 <= _expect(model.dropout, (int, float), "model.dropout") < 1:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {model.dropout}")
    _one_of(model.normalization, NORMALIZATIONS, "model.normalization")
    if _expect(model.gradnorm_alpha, (int, float), "model.gradnorm_alpha") < 0:
        raise ConfigError(f"model.gradnorm_alpha: must be >= 0, got {model.gradnorm_alpha}")
    _positive(model.dwa_temperature, "model.dwa_temperature", (int, float))
    if model.loss_weighting != "fixed":
        for task in tasks:
            if task.loss_weight == 0:
                raise ConfigError(f"tasks[{task.name}].loss_weight: must be > 0 with "
                                  f"model.loss_weighting {model.loss_weighting} (it scales the "
                                  "loss the weighting balances)")
    by_name = {t.name: t for t in tasks}
    for i, name in enumerate(_expect(model.position_tasks, list, "model.position_tasks")):
        where = f"model.position_tasks[{i}]"
        if _expect(name, str, where) not in by_name:
            raise ConfigError(f"{where}: no task {name!r}; tasks: {sorted(by_name)}")
        if by_name[name].type != "binary":
            raise ConfigError(f"{where}: '{name}' is a regression task; a position tower "
                              "models P(seen | position) for binary tasks")
    if len(set(model.position_tasks)) != len(model.position_tasks):
        raise ConfigError(f"model.position_tasks: repeated task in {model.position_tasks}")
    if model.position_tasks and input_config.format != "logs":
        raise ConfigError(f"model.position_tasks: {input_config.format} input has no "
                          "'position'; position towers need logs input")
    return model


def _input_split_from_dict(raw, where: str) -> InputSplitConfig:
    raw = {} if raw is None else raw
    _check_fields(InputSplitConfig, raw, where)
    split = InputSplitConfig(**raw)
    _expect(split.seed, int, f"{where}.seed")
    for name in SPLIT_NAMES:
        if _expect(getattr(split, name), int, f"{where}.{name}") < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(split, name)}")
    for name in ("train", "eval"):
        if not getattr(split, name):
            raise ConfigError(f"{where}.{name}: must be > 0 (the Trainer trains on train and "
                              "validates on eval, the Evaluator evaluates eval)")
    total = sum(getattr(split, name) for name in SPLIT_NAMES)
    if total != 100:
        raise ConfigError(f"{where}: train + eval + test must be 100 (percent), got {total}")
    return split


# The input fields that apply to each format.
_INPUT_FIELDS_BY_FORMAT = {
    "logs": ("format",),
    "csv": tuple(f.name for f in dataclasses.fields(InputConfig)),
    "tfrecord": ("format", "split"),
}


def _input_from_dict(raw) -> InputConfig:
    if raw is None:
        return InputConfig()
    _check_fields(InputConfig, raw, "input")
    input_format = _one_of(raw.get("format", "logs"), INPUT_FORMATS, "input.format")
    for field in raw:
        if field not in _INPUT_FIELDS_BY_FORMAT[input_format]:
            raise ConfigError(f"input.{field}: does not apply to {input_format} input")
    raw = dict(raw)
    split = _input_split_from_dict(raw.pop("split", None), "input.split")
    config = InputConfig(**raw, split=split)
    if config.column_names is not None:
        if not _stripped_strings(config.column_names, "input.column_names"):
            raise ConfigError("input.column_names: at least one column is needed "
                              "(or leave it out to read each file's header line)")
        repeated = sorted({c for c in config.column_names if config.column_names.count(c) > 1})
        if repeated:
            raise ConfigError(f"input.column_names: names must be unique; repeated: {repeated}")
    delimiter = _expect(config.delimiter, str, "input.delimiter")
    if (len(delimiter) != 1 and len(delimiter.strip()) != 1) or delimiter.strip() == '"':
        raise ConfigError("input.delimiter: must be one character other than '\"', optionally "
                          f"with spaces around it (',' or ', '), got {delimiter!r}")
    _stripped_strings(config.missing_values, "input.missing_values")
    _stripped_strings(config.exclude_columns, "input.exclude_columns")
    return config


def _check_csv_columns(config: Config) -> None:
    """Labels and excluded columns are never features; with column_names,
    every column the config names must be one of them."""
    label_columns = {t.label_column: t.name for t in config.tasks}
    for feature in config.features:
        where = f"features[{feature.name}]"
        if feature.kind == "multivalent":
            raise ConfigError(f"{where}: a multivalent feature cannot be read from csv input "
                              "(one value per column)")
        if feature.name in label_columns:
            raise ConfigError(f"{where}: column '{feature.name}' is the label of task "
                              f"{label_columns[feature.name]}, never a feature")
        if feature.name in config.input.exclude_columns:
            raise ConfigError(f"{where}: column '{feature.name}' is in input.exclude_columns")
    columns = config.input.column_names
    if columns is None:
        return  # the header is checked when the files are read
    for feature in config.features:
        if feature.name not in columns:
            raise ConfigError(f"features[{feature.name}]: no column '{feature.name}' in "
                              "input.column_names")
    for task in config.tasks:
        if task.label_column not in columns:
            raise ConfigError(f"tasks[{task.name}].label_column: no column "
                              f"'{task.label_column}' in input.column_names")
    unknown = [c for c in config.input.exclude_columns if c not in columns]
    if unknown:
        raise ConfigError(f"input.exclude_columns: no such column(s) {unknown} in "
                          "input.column_names")


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
        elif field.name in ("seed", "gpus", "warmup_steps"):
            _expect(value, int, f"{where}.{field.name}")
            if value < 0:
                raise ConfigError(f"{where}.{field.name}: must be >= 0, got {value!r}")
        elif field.name in ("gpu_type", "checkpoint_dir"):
            _expect(value, str, f"{where}.{field.name}")
        elif field.name == "mixed_precision":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{field.name}: expected true or false, got {value!r}")
        elif field.name == "lr_schedule":
            _one_of(value, LR_SCHEDULES, f"{where}.{field.name}")
        elif field.name == "weight_decay":
            _expect(value, (int, float), f"{where}.{field.name}")
            if value < 0:
                raise ConfigError(f"{where}.{field.name}: must be >= 0, got {value!r}")
        elif field.name == "ema_momentum":
            _expect(value, (int, float), f"{where}.{field.name}")
            if not 0 <= value < 1:
                raise ConfigError(f"{where}.{field.name}: must be in [0, 1), got {value!r}")
        else:
            _positive(value, f"{where}.{field.name}")
    return section


def _serving_from_dict(raw, tasks: List[TaskConfig]) -> ServingConfig:
    raw = {} if raw is None else raw
    _check_fields(ServingConfig, raw, "serving")
    score_raw = raw.get("score") or {}
    _check_fields(ScoreConfig, score_raw, "serving.score")
    score = ScoreConfig(**score_raw)
    _one_of(score.form, SCORE_FORMS, "serving.score.form")
    binary = [t.name for t in tasks if t.type == "binary"]
    if score.weights is None:
        if score.form == "weighted_product" and not binary:
            raise ConfigError("serving.score: weighted_product needs probabilities and there is "
                              "no binary task; set weights or form: weighted_sum")
        return ServingConfig(score=score)
    _expect(score.weights, dict, "serving.score.weights")
    if not score.weights:
        raise ConfigError("serving.score.weights: name at least one output")
    regression = {t.name for t in tasks if t.type == "regression"}
    for name, weight in score.weights.items():
        where = f"serving.score.weights.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}: an output name must match {_NAME_RE.pattern}")
        if _expect(weight, (int, float), where) < 0:
            raise ConfigError(f"{where}: must be >= 0, got {weight!r}")
        if score.form == "weighted_product" and name in regression:
            raise ConfigError(f"{where}: task {name} is a regression; a weighted_product "
                              "multiplies probabilities (use form: weighted_sum)")
    if not any(score.weights.values()):
        raise ConfigError("serving.score.weights: at least one weight must be > 0")
    return ServingConfig(score=score)


def _check_score_weights(config: Config) -> None:
    weights = config.serving.score.weights or {}
    for name in weights:
        if name not in config.output_names:
            raise ConfigError(f"serving.score.weights.{name}: not an output of the model; "
                              f"outputs: {config.output_names}")


def _validation_from_dict(raw, features: List[FeatureConfig],
                          tasks: List[TaskConfig]) -> ValidationConfig:
    if raw is None:
        return ValidationConfig()
    _check_fields(ValidationConfig, raw, "validation")
    validation = ValidationConfig(**raw)
    categorical = {f.name for f in features if f.kind == "categorical"}
    for i, keys in enumerate(_expect(validation.slices, list, "validation.slices")):
        where = f"validation.slices[{i}]"
        if not _expect(keys, list, where):
            raise ConfigError(f"{where}: name at least one feature (the overall slice is "
                              "always evaluated)")
        for key in keys:
            if key not in categorical:
                raise ConfigError(f"{where}: {key!r} is not a categorical feature; slices are "
                                  f"taken by one of {sorted(categorical)}")
    _positive(validation.min_slice_size, "validation.min_slice_size")
    if validation.schema is not None:
        _expect(validation.schema, str, "validation.schema")
    checkable = {f.name for f in features} | {t.label_key for t in tasks}
    for section in ("drift", "skew"):
        for name, threshold in _expect(getattr(validation, section), dict,
                                       f"validation.{section}").items():
            where = f"validation.{section}.{name}"
            if name not in checkable:
                raise ConfigError(f"{where}: no feature or label named {name!r}; known: "
                                  f"{sorted(checkable)}")
            _positive(threshold, where, (int, float))
            if threshold > 1:
                raise ConfigError(f"{where}: a distance between distributions is at most 1, "
                                  f"got {threshold!r}")
    return validation


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
    input_config = _input_from_dict(raw.get("input"))
    if input_config.is_tabular and "split" in raw:
        raise ConfigError(f"split: the time split applies to logs input; {input_config.format} "
                          "input is split by input.split")
    features = [_feature_from_dict(f, f"features[{i}]") for i, f in enumerate(features_raw)]
    tasks = [_task_from_dict(t, f"tasks[{i}]", input_config.format)
             for i, t in enumerate(tasks_raw)]
    for kind, names in (("feature", [f.name for f in features]), ("task", [t.name for t in tasks])):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{kind} names must be unique; repeated: {duplicates}")
    _check_task_links(tasks)
    clashes = sorted({f.name for f in features} & {t.label_key for t in tasks})
    if clashes:
        raise ConfigError(f"feature names clash with task label keys: {clashes}")
    if not any(t.eval.min_auc is not None or t.eval.max_mse is not None for t in tasks):
        # With no blessed model yet, change bounds have nothing to compare
        # to, and TFMA never blesses a model that meets no bound at all.
        raise ConfigError("tasks: at least one task needs an absolute bound (eval.min_auc or "
                          "eval.max_mse), or no first model can be blessed")
    config = Config(
        model_name=model_name,
        features=features,
        tasks=tasks,
        split=_section(SplitConfig, raw.get("split"), "split"),
        training=_section(TrainingConfig, raw.get("training"), "training"),
        model=_model_from_dict(raw.get("model"), tasks, input_config),
        input=input_config,
        serving=_serving_from_dict(raw.get("serving"), tasks),
        validation=_validation_from_dict(raw.get("validation"), features, tasks),
    )
    _check_score_weights(config)
    if config.split.eval_percent >= 100:
        raise ConfigError(f"split.eval_percent: must be below 100, got {config.split.eval_percent}")
    if config.input.format == "csv":
        _check_csv_columns(config)
    return config


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
