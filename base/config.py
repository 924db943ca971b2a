"""The one config that every stage of mtrank reads.

A YAML file declares the model name, the input (interaction logs, or
already-labelled CSV or TFRecord files), the features (how each raw impression
feature becomes model input), the tasks (which feedback, or which column,
labels which output), the split and the training settings. Loading validates
it and names the offending field; `infer_config` builds one from logs.

Adding a task or a feature is an edit of this file's YAML and nothing else:
ExampleGen labels examples from `tasks`, Transform and the model read
`features`, the Evaluator takes its bounds from `tasks[*].eval`.

The sections are pydantic models: the field types and constraints below are
the validation, and `json_schema()` exports them for editors. Each field's
docstring is its description in that schema. Checks that span sections (a
task's fields on the input format, names that must refer to each other) are
`Config`'s model validators.
"""
import functools
import json
import reprlib
import warnings
from typing import Annotated, Any, Dict, Iterator, List, Literal, Optional, Tuple, get_args

import pydantic
import yaml
from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from mtrank.base import serving_contract

# Names the pipeline itself writes into every example; features may not reuse them.
USER_ID = "user_id"
ITEM_ID = "item_id"
REQUEST_ID = "request_id"
POSITION = "position"
IMPRESSION_TS = "impression_ts"
SPLIT_KEY = "split_key"  # tabular input: the seeded hash ExampleGen splits by
RESERVED_NAMES = frozenset({REQUEST_ID, POSITION, IMPRESSION_TS, SPLIT_KEY})

InputFormat = Literal["logs", "csv", "tfrecord"]
FeatureKind = Literal["categorical", "numeric", "multivalent"]
Encoding = Literal["hashing", "vocabulary"]
Normalization = Literal["none", "batch", "layer"]
NumericTransform = Literal["zscore", "log", "buckets", "piecewise_linear", "periodic"]
Dtype = Literal["string", "int64", "float"]
TaskType = Literal["binary", "regression"]
# Model architectures by name (trainer/architectures.py registers one module each).
Architecture = Literal["shared_bottom", "mmoe", "cgc", "ple"]
LossWeighting = Literal["fixed", "uncertainty", "gradnorm", "dwa"]
PositionForm = Literal["product", "additive"]
LrSchedule = Literal["constant", "cosine"]
ScoreForm = Literal["weighted_product", "weighted_sum"]

TABULAR_FORMATS = ("csv", "tfrecord")
SPLIT_NAMES = ("train", "eval", "test")
ARCHITECTURES = get_args(Architecture)
LOSS_WEIGHTINGS = get_args(LossWeighting)


class ConfigError(ValueError):
    """A config that cannot be used; each line names a field, its value and
    what is allowed."""


class _Problems(ValueError):
    """Problems a model validator finds in fields below its model, each as
    (path under the model, message), so that each line names its field."""

    def __init__(self, problems: List[Tuple[tuple, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _check(generator):
    """An after-validator from a generator of (path under the model, message)."""
    @functools.wraps(generator)
    def validate(self):
        problems = list(generator(self))
        if problems:
            raise _Problems(problems)
        return self
    return model_validator(mode="after")(validate)


def _no_spaces_around(value: str) -> str:
    # CSV fields are read without the spaces around them: such a value never matches.
    if value != value.strip():
        raise ValueError(f"{value!r} has spaces around it; CSV fields are compared with "
                         "those removed")
    return value


Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
CsvValue = Annotated[str, AfterValidator(_no_spaces_around)]


class _Section(pydantic.BaseModel):
    # strict: YAML's true is not 1 and "1000" is not a number (an int is a
    # valid float). frozen: every stage reads the same config. Each field's
    # docstring is its description in the JSON Schema.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data):
        """`split:` with nothing under it is the default section."""
        return {} if data is None else data


class FeatureConfig(_Section):
    """One model input, read from the impression (or its user_id / item_id)."""

    name: Name
    """The impression feature's name (user_id and item_id: the event's ids)."""
    kind: FeatureKind
    """categorical (one id), numeric (one number), multivalent (a list of ids, mean-pooled)."""
    dtype: Dtype
    """How the value is stored in tf.Example."""
    encoding: Encoding = "hashing"
    """Ids: hashing into hash_buckets, or a vocabulary of the vocab_size most frequent values."""
    hash_buckets: PositiveInt = 1000
    """Size of the hashed id space."""
    vocab_size: PositiveInt = 1000
    """Size of the vocabulary (plus one out-of-vocabulary id)."""
    embedding_dim: PositiveInt = 8
    """Embedding width for ids, buckets, piecewise_linear and periodic numbers."""
    transform: NumericTransform = "zscore"
    """Numbers: zscore, log (log1p, then z-score), buckets (quantiles, embedded),
    piecewise_linear or periodic (Gorishniy et al. 2022; docs/config.md)."""
    num_buckets: PositiveInt = 10
    """Quantile bins of transform buckets or piecewise_linear."""
    num_frequencies: PositiveInt = 16
    """Learned frequencies of transform periodic."""
    frequency_scale: PositiveFloat = 1.0
    """Standard deviation of the normal distribution the periodic frequencies start from."""
    max_len: PositiveInt = 8
    """Multivalent lists are truncated to this many values."""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved by the pipeline (reserved: "
                             f"{sorted(RESERVED_NAMES)})")
        return name

    @model_validator(mode="after")
    def _dtype_fits_kind(self):
        if self.kind == "numeric" and not self.is_numeric_value:
            raise ValueError(f"a numeric feature needs dtype int64 or float (got {self.dtype!r})")
        if self.kind == "multivalent" and self.dtype == "float":
            raise ValueError("a multivalent feature holds ids: dtype string or int64 (got 'float')")
        return self

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
        return serving_contract.DTYPE_DEFAULTS[self.dtype]


# Each task type's blessing bounds: (absolute, change).
_BOUNDS = {"binary": ("min_auc", "max_auc_drop"), "regression": ("max_mse", "max_mse_increase")}


class EvalBounds(_Section):
    """Blessing bounds for one task; the other task type's bounds are null."""

    min_auc: Optional[float] = 0.5
    """Binary tasks: the lowest AUC blessed (regression tasks: null)."""
    max_auc_drop: Optional[float] = 0.02
    """Binary tasks: the largest AUC drop against the last blessed model (regression: null)."""
    max_mse: Optional[float] = None
    """Regression tasks: the largest MSE blessed."""
    max_mse_increase: Optional[float] = None
    """Regression tasks: the largest MSE increase against the last blessed model."""


# Task fields that apply to one input format only; the first names the label.
_TASK_FIELDS_BY_FORMAT = {
    "logs": ("feedback", "label_window_s"),
    "csv": ("label_column", "positive_values"),
    "tfrecord": (),
}
_LABEL_HINTS = {
    "logs": "tasks from logs name their feedback",
    "csv": "tasks from csv name a label_column",
    "tfrecord": "tfrecord input holds each label as the feature <task>_label",
}


class TaskConfig(_Section):
    """One model output. TFRecord input holds its label as the feature `<name>_label`."""

    name: Name
    """The output's name."""
    feedback: Optional[str] = None
    """Logs input (required there): the feedback type that labels this task."""
    label_column: Optional[str] = None
    """CSV input (required there): the column that labels this task."""
    positive_values: Optional[Annotated[List[CsvValue], Field(min_length=1)]] = None
    """CSV input, binary tasks (required there): the label is 1 if label_column is one."""
    type: TaskType = "binary"
    """binary: 1 if such feedback came in label_window_s; regression: the sum of its values."""
    label_window_s: PositiveInt = 3600
    """Logs input: seconds after the impression within which feedback counts."""
    loss_weight: NonNegativeFloat = 1.0
    """Scales the task's loss (under every model.loss_weighting)."""
    condition: Optional[str] = None
    """A binary parent task: this task is defined on the parent's positives only."""
    depends_on: Optional[str] = None
    """A binary parent task (ESMM): the output is P(parent) x P(this | parent)."""
    eval: EvalBounds = EvalBounds()
    """Blessing bounds (min_auc / max_auc_drop, or for regression max_mse / max_mse_increase)."""

    @model_validator(mode="before")
    @classmethod
    def _regression_has_no_auc_bounds(cls, data):
        # Unset, they would be the binary defaults: bounds that look as if they applied.
        if isinstance(data, dict) and data.get("type") == "regression":
            eval_raw = data.get("eval") or {}
            if isinstance(eval_raw, dict):
                data = {**data, "eval": {"min_auc": None, "max_auc_drop": None, **eval_raw}}
        return data

    @_check
    def _fields_fit_type(self):
        other = "regression" if self.type == "binary" else "binary"
        for key in _BOUNDS[other]:
            if getattr(self.eval, key) is not None:
                yield ("eval", key), (f"does not apply to a {self.type} task, which uses "
                                      f"{' / '.join(_BOUNDS[self.type])} "
                                      f"(got {getattr(self.eval, key)!r})")
        if self.type == "regression" and self.positive_values is not None:
            yield ("positive_values",), ("does not apply to a regression task (its label is "
                                         "the column's number)")
        if self.condition and self.depends_on:
            yield (), ("set condition (a loss masked to the parent's positives) or depends_on "
                       "(an ESMM product over all impressions), not both")
        if self.depends_on and self.type != "binary":
            yield ("depends_on",), ("only a binary task can depend on another (its probability "
                                    "is the parent's times its own)")

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
        fields = self.model_dump()
        for other_format, names in _TASK_FIELDS_BY_FORMAT.items():
            if other_format != input_format:
                for name in names:
                    fields.pop(name)
        for optional in ("positive_values", "condition", "depends_on"):
            if fields.get(optional) is None:
                fields.pop(optional, None)
        fields["eval"] = {k: fields["eval"][k] for k in _BOUNDS[self.type]}
        return fields


class SplitConfig(_Section):
    """How logs input is split into train and eval: a plain glob of log files
    by time; daily partitions (a glob with {YYYY}-{MM}-{DD}), a day a run."""

    eval_days: PositiveInt = 1
    """Plain glob: the last N calendar days (UTC) of impressions are the eval split."""
    eval_percent: Annotated[int, Field(gt=0, lt=100)] = 15
    """Daily partitions: the eval share of each day's requests, in percent."""
    window_spans: PositiveInt = 14
    """Daily partitions: training reads the last N ingested spans."""


class InputSplitConfig(_Section):
    """Tabular input: percentages of the rows in each split (a split of 0 is
    left out), by a hash of the row and `seed`: the same split every run."""

    train: PositiveInt = 80
    """Percent of the rows the Trainer trains on."""
    eval: PositiveInt = 20
    """Percent of the rows the Trainer validates on and the Evaluator evaluates."""
    test: NonNegativeInt = 0
    """Percent of the rows carried for benchmarks only."""
    seed: int = 0
    """Seeds the row hash: another seed, another split."""

    @model_validator(mode="after")
    def _sums_to_100(self):
        total = self.train + self.eval + self.test
        if total != 100:
            raise ValueError(f"train + eval + test must be 100 percent (got {total})")
        return self

    def percentages(self) -> Dict[str, int]:
        """{split name: percentage} of the non-empty splits, in order."""
        return {name: getattr(self, name) for name in SPLIT_NAMES if getattr(self, name)}


# The input fields that apply to each format (csv: all).
_INPUT_FIELDS_BY_FORMAT = {"logs": ("format",), "tfrecord": ("format", "split")}


class InputConfig(_Section):
    """What the pipeline reads: logs (JSON Lines, the log contract), csv (a
    labelled example per row) or tfrecord (tf.Example with `<task>_label`)."""

    format: InputFormat = "logs"
    """logs, csv or tfrecord."""
    column_names: Optional[Annotated[List[CsvValue], Field(min_length=1)]] = None
    """CSV: the columns in order, for files without a header line (unset: the header)."""
    delimiter: str = ","
    """CSV: one character; spaces around a field are removed, so ", " and "," read alike."""
    missing_values: List[CsvValue] = []
    """CSV: values that are missing (as is an empty field): the feature's default."""
    exclude_columns: List[CsvValue] = []
    """CSV: columns that are never features."""
    split: InputSplitConfig = InputSplitConfig()
    """csv and tfrecord: percentages of the rows in each split."""

    @field_validator("column_names")
    @classmethod
    def _unique(cls, names: Optional[List[str]]) -> Optional[List[str]]:
        repeated = sorted({c for c in names or () if names.count(c) > 1})
        if repeated:
            raise ValueError(f"names must be unique; repeated: {repeated}")
        return names

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, delimiter: str) -> str:
        if (len(delimiter) != 1 and len(delimiter.strip()) != 1) or delimiter.strip() == '"':
            raise ValueError("must be one character other than '\"', with or without spaces "
                             f"around it, as ',' or ', ' (got {delimiter!r})")
        return delimiter

    @_check
    def _fields_fit_format(self):
        applies = _INPUT_FIELDS_BY_FORMAT.get(self.format, type(self).model_fields)
        for field in sorted(self.model_fields_set - set(applies)):
            yield (field,), f"does not apply to {self.format} input"

    @property
    def is_tabular(self) -> bool:
        return self.format in TABULAR_FORMATS

    def relevant_fields(self) -> Dict[str, Any]:
        """The fields that apply to this format, for the YAML a user edits."""
        fields = self.model_dump()
        if self.format != "csv":
            return {k: v for k, v in fields.items() if k in _INPUT_FIELDS_BY_FORMAT[self.format]}
        if self.column_names is None:
            fields.pop("column_names")
        return fields


class TrainingConfig(_Section):
    """Trainer settings (docs/config.md#training)."""

    epochs: PositiveInt = 5
    """Passes over the train split; the validation point with the lowest mean eval loss is kept."""
    early_stopping_patience: PositiveInt = 1
    """Passes over the train split without improvement of the mean eval loss before training stops."""
    validation_interval_steps: Optional[PositiveInt] = None
    """Train steps between validations (unset: once per pass over the train split)."""
    train_steps: Optional[PositiveInt] = None
    """Train for this many steps instead of epochs (the train data repeats as needed)."""
    eval_steps: Optional[PositiveInt] = None
    """Evaluate this many steps instead of the whole eval split."""
    batch_size: PositiveInt = 256
    """Examples per step, per replica."""
    learning_rate: PositiveFloat = 0.002
    """The optimizer's (peak) learning rate."""
    bottom_units: List[PositiveInt] = [256, 128]
    """Hidden layers of the shared bottom, or of each expert (model.architecture)."""
    tower_units: List[PositiveInt] = [64]
    """Hidden layers of each task's tower."""
    seed: NonNegativeInt = 0
    """Seeds initialisation and shuffling."""
    gpus: NonNegativeInt = 0
    """The Trainer's GPUs on a cluster (Kubeflow, Vertex AI); locally every visible GPU."""
    gpu_type: str = "NVIDIA_TESLA_T4"
    """The accelerator type on a cluster."""
    mixed_precision: bool = False
    """Compute in float16 (variables stay float32) on a GPU; ignored (logged) on CPU."""
    lr_schedule: LrSchedule = "constant"
    """constant keeps learning_rate; cosine decays it to 0 over the whole run."""
    warmup_steps: NonNegativeInt = 0
    """Steps rising linearly from 0 to learning_rate first."""
    weight_decay: NonNegativeFloat = 0.0
    """Above 0: AdamW with this decoupled weight decay instead of Adam."""
    lazy_adam: bool = False
    """Adam that updates only the embedding rows each batch looks up (LazyAdam); not with weight_decay."""
    ema_momentum: Fraction = 0.0
    """Above 0: evaluate, keep and export an exponential moving average of the weights."""
    checkpoint_dir: Optional[str] = None
    """Where a run keeps its resume checkpoint (unset: beside the model_run directories)."""

    @_check
    def _one_optimizer(self):
        if self.lazy_adam and self.weight_decay:
            yield ("lazy_adam",), "applies to Adam, not to AdamW (weight_decay above 0)"


# ModelConfig fields that apply only to some choices: (deciding field, choices).
_MODEL_FIELDS_APPLY_TO = {
    "num_experts": ("architecture", ("mmoe", "cgc", "ple")),
    "task_experts": ("architecture", ("cgc", "ple")),
    "extraction_layers": ("architecture", ("ple",)),
    "gradnorm_alpha": ("loss_weighting", ("gradnorm",)),
    "dwa_temperature": ("loss_weighting", ("dwa",)),
}


class ModelConfig(_Section):
    """What the Trainer builds (docs/config.md#model). A field that does not
    apply to the chosen architecture or loss weighting is an error, so a
    config never carries settings that do nothing."""

    architecture: Architecture = "shared_bottom"
    """shared_bottom (one MLP shared by every task), mmoe, cgc or ple (stacked CGC levels)."""
    num_experts: PositiveInt = 4
    """mmoe: experts shared by all tasks; cgc and ple: shared experts per level."""
    task_experts: PositiveInt = 1
    """cgc and ple: each task's own experts per level."""
    extraction_layers: PositiveInt = 2
    """ple: levels."""
    cross_layers: NonNegativeInt = 0
    """DCN-v2 cross layers on the embedded features before the bottom or the experts."""
    cross_projection_dim: Optional[PositiveInt] = None
    """Low-rank size of the cross layers (unset: full rank)."""
    ensemble_size: PositiveInt = 1
    """Independent copies of the network, each trained on its own loss; outputs are the mean."""
    dropout: Fraction = 0.0
    """Dropout rate after every hidden layer, in training only."""
    normalization: Normalization = "none"
    """none, batch or layer normalisation of every hidden layer's pre-activations."""
    loss_weighting: LossWeighting = "fixed"
    """fixed (tasks[].loss_weight), uncertainty, gradnorm or dwa (docs/config.md#model)."""
    gradnorm_alpha: NonNegativeFloat = 1.5
    """gradnorm: how strongly slower tasks are favoured."""
    dwa_temperature: PositiveFloat = 2.0
    """dwa: softmax temperature (higher: weights closer to equal)."""
    position_tasks: List[str] = []
    """Binary tasks given a position-bias tower in training (logs input only)."""
    position_form: PositionForm = "product"
    """product (PAL: P(seen | position) x P(task | seen)) or additive (a position logit)."""
    max_position: PositiveInt = 20
    """Positions at or beyond max_position - 1 share one bucket."""
    user_item_dot: bool = False
    """The user_id . item_id embedding dot product, beside the cross layers and in every logit."""
    fm_interaction: bool = False
    """The factorization-machine pairwise term over all features, likewise."""
    embedding_l2: NonNegativeFloat = 0.0
    """L2 on the id embedding rows each example looks up (frequent ids get more of it)."""
    embedding_dropout: Fraction = 0.0
    """Dropout on the looked-up id embeddings, in training only."""
    embedding_learning_rate_multiplier: PositiveFloat = 1.0
    """The id embedding tables' learning rate over training.learning_rate (Adam / AdamW)."""

    @_check
    def _fields_fit_choices(self):
        for field, (decider, choices) in _MODEL_FIELDS_APPLY_TO.items():
            if field in self.model_fields_set and getattr(self, decider) not in choices:
                yield (field,), (f"applies to {decider} {' / '.join(choices)}, not "
                                 f"{getattr(self, decider)}")
        repeated = sorted({t for t in self.position_tasks if self.position_tasks.count(t) > 1})
        if repeated:
            yield ("position_tasks",), f"repeated task(s) {repeated}"

    def relevant_fields(self) -> Dict[str, Any]:
        """The fields that apply to this architecture and loss weighting."""
        fields = self.model_dump()
        for field, (decider, choices) in _MODEL_FIELDS_APPLY_TO.items():
            if fields[decider] not in choices:
                del fields[field]
        return fields


class ScoreConfig(_Section):
    """The fused ranking score `score` (`fused_score` if a task is named
    score) that serving returns beside the per-task outputs."""

    form: ScoreForm = "weighted_product"
    """weighted_product: the product of output ** weight; weighted_sum: of weight * output."""
    weights: Optional[Annotated[Dict[Name, NonNegativeFloat], Field(min_length=1)]] = None
    """{model output: weight}, at least one above 0 (unset: every binary task weighs 1)."""

    @_check
    def _some_weight(self):
        if self.weights and not any(self.weights.values()):
            yield ("weights",), f"at least one weight must be > 0 (got {self.weights})"


class ServingConfig(_Section):
    """What the exported model serves besides the per-task outputs."""

    score: ScoreConfig = ScoreConfig()
    """The fused ranking score."""


# The YAML key is `schema`; the field shadows BaseModel.schema, pydantic v1's
# JSON Schema method, which this project never calls.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class ValidationConfig(_Section):
        """Checks beyond each task's bounds (docs/validation.md)."""

        slices: List[Annotated[List[str], Field(min_length=1)]] = []
        """Lists of categorical features to slice the eval split by, besides overall."""
        min_slice_size: PositiveInt = 200
        """Eval examples a slice needs before its bounds decide blessing."""
        schema: Optional[str] = None
        """A curated schema (text proto) imported instead of the one SchemaGen infers."""
        drift: Dict[str, Annotated[float, Field(gt=0, le=1)]] = {}
        """{feature or label key: threshold}: the largest distance of this run's train
        statistics from the previous run's (docs/validation.md)."""
        skew: Dict[str, Annotated[float, Field(gt=0, le=1)]] = {}
        """{feature or label key: threshold}: the same distances between train and eval."""


class Config(_Section):
    """An mtrank config (docs/config.md)."""

    model_name: Name
    """The served model's name and the TFX pipeline name."""
    features: Annotated[List[FeatureConfig], Field(min_length=1)]
    """The model inputs."""
    tasks: Annotated[List[TaskConfig], Field(min_length=1)]
    """The model outputs and their labels."""
    split: SplitConfig = SplitConfig()
    """Logs input: the split into train and eval."""
    training: TrainingConfig = TrainingConfig()
    """Trainer settings."""
    model: ModelConfig = ModelConfig()
    """What the Trainer builds."""
    input: InputConfig = InputConfig()
    """What the pipeline reads (default: logs)."""
    serving: ServingConfig = ServingConfig()
    """The fused ranking score served beside the per-task outputs."""
    validation: ValidationConfig = ValidationConfig()
    """Slices, a curated schema, drift and skew checks."""

    # The checks across sections run in this order, each once the one before passed.

    @_check
    def _fields_fit_input_format(self):
        fmt = self.input.format
        if self.input.is_tabular and "split" in self.model_fields_set:
            yield ("split",), (f"the time split applies to logs input; {fmt} input is split "
                               "by input.split")
        other_formats_fields = {field for other, fields in _TASK_FIELDS_BY_FORMAT.items()
                                if other != fmt for field in fields}
        for i, task in enumerate(self.tasks):
            for field in sorted(other_formats_fields & task.model_fields_set):
                yield ("tasks", i, field), f"does not apply to {fmt} input ({_LABEL_HINTS[fmt]})"
            for field in _TASK_FIELDS_BY_FORMAT[fmt][:1]:
                if getattr(task, field) is None:
                    yield ("tasks", i), f"missing required field '{field}'"
            if fmt == "csv" and task.type == "binary" and task.positive_values is None:
                yield ("tasks", i), ("a binary task on csv input needs positive_values (the "
                                     f"label is 1 if {task.label_column} is one of them)")
        for i, feature in enumerate(self.features):
            if fmt == "csv" and feature.kind == "multivalent":
                yield ("features", i), ("a multivalent feature cannot be read from csv input "
                                        "(one value per column)")
        if self.model.position_tasks and fmt != "logs":
            yield ("model", "position_tasks"), (f"{fmt} input has no 'position'; position "
                                                "towers need logs input")

    @_check
    def _names_are_unique(self):
        for section in ("features", "tasks"):
            names = [entry.name for entry in getattr(self, section)]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                yield (section,), f"names must be unique; repeated: {repeated}"
        clashes = sorted({f.name for f in self.features} & set(self.label_keys))
        if clashes:
            yield ("features",), f"names clash with task label keys: {clashes}"

    @_check
    def _tasks_link(self):
        """condition / depends_on name another binary task, and ESMM outputs
        do not clash with task names."""
        by_name = {t.name: t for t in self.tasks}
        for i, task in enumerate(self.tasks):
            where = ("tasks", i, "condition" if task.condition else "depends_on")
            parent = by_name.get(task.parent)
            if task.parent and parent is None:
                yield where, f"no task '{task.parent}'; tasks: {sorted(by_name)}"
            elif task.parent and parent.type != "binary":
                yield where, (f"'{parent.name}' is a {parent.type} task; the parent must be "
                              "binary (its label 1 marks the sub-population)")
            if task.conditional_output in by_name:
                yield where, (f"its output '{task.conditional_output}' (P({task.name} | "
                              f"{task.depends_on})) clashes with the task of that name")

    @_check
    def _tasks_have_no_cycle_and_can_be_blessed(self):
        by_name = {t.name: t for t in self.tasks}
        for i, task in enumerate(self.tasks):
            chain = [task.name]  # up the parents, to a root or a task seen before
            while by_name[chain[-1]].parent and by_name[chain[-1]].parent not in chain:
                chain.append(by_name[chain[-1]].parent)
            if by_name[chain[-1]].parent == task.name:
                yield (("tasks", i, "condition" if task.condition else "depends_on"),
                       f"cycle {' -> '.join(chain + [task.name])}")
                return  # the other tasks of the cycle would repeat it
        if not any(t.eval.min_auc is not None or t.eval.max_mse is not None for t in self.tasks):
            # With no blessed model yet, change bounds have nothing to compare
            # to, and TFMA never blesses a model that meets no bound at all.
            yield ("tasks",), ("at least one task needs an absolute bound (eval.min_auc or "
                               "eval.max_mse), or no first model can be blessed")

    @_check
    def _names_refer_to_tasks_and_features(self):
        if self.model.loss_weighting != "fixed":
            for i, task in enumerate(self.tasks):
                if task.loss_weight == 0:
                    yield ("tasks", i, "loss_weight"), (
                        f"must be > 0 with model.loss_weighting {self.model.loss_weighting}, as "
                        "it scales the loss the weighting balances (got 0.0)")
        types = {t.name: t.type for t in self.tasks}
        for i, name in enumerate(self.model.position_tasks):
            if name not in types:
                yield ("model", "position_tasks", i), f"no task {name!r}; tasks: {sorted(types)}"
            elif types[name] != "binary":
                yield ("model", "position_tasks", i), (f"'{name}' is a regression task; a "
                                                       "position tower models P(seen | "
                                                       "position) for binary tasks")
        score = self.serving.score
        if score.form == "weighted_product" and not score.weights and "binary" not in (
                types.values()):
            yield ("serving", "score"), ("weighted_product needs probabilities and there is "
                                         "no binary task; set weights or form: weighted_sum")
        for name in score.weights or {}:
            if name not in self.output_names:
                yield ("serving", "score", "weights", name), (
                    f"not an output of the model; outputs: {self.output_names}")
            elif score.form == "weighted_product" and types.get(name) == "regression":
                yield ("serving", "score", "weights", name), (
                    f"task {name} is a regression; a weighted_product multiplies "
                    "probabilities (use form: weighted_sum)")
        categorical = sorted(f.name for f in self.features if f.kind == "categorical")
        if self.model.user_item_dot:
            missing = [name for name in (USER_ID, ITEM_ID) if name not in categorical]
            if missing:
                yield ("model", "user_item_dot"), (
                    f"needs {missing} as categorical feature(s) (the dot product is of the "
                    f"user's and the item's id embeddings); categorical features: {categorical}")
        if self.model.fm_interaction and len(self.features) < 2:
            yield ("model", "fm_interaction"), ("needs at least two features (it is the sum of "
                                                "their pairwise interactions)")
        for i, keys in enumerate(self.validation.slices):
            for key in keys:
                if key not in categorical:
                    yield ("validation", "slices", i), (f"{key!r} is not a categorical "
                                                        "feature; slices are taken by one of "
                                                        f"{categorical}")
        checkable = sorted({f.name for f in self.features} | set(self.label_keys))
        for section in ("drift", "skew"):
            for name in getattr(self.validation, section):
                if name not in checkable:
                    yield ("validation", section, name), (f"no feature or label named {name!r}; "
                                                          f"known: {checkable}")

    @_check
    def _csv_columns_exist(self):
        """Labels and excluded columns are never features; with column_names,
        every column the config names must be one of them (without, the
        header is checked when the files are read)."""
        if self.input.format != "csv":
            return
        label_columns = {t.label_column: t.name for t in self.tasks}
        columns = self.input.column_names
        for i, name in enumerate(f.name for f in self.features):
            if name in label_columns:
                yield ("features", i), (f"column '{name}' is the label of task "
                                        f"{label_columns[name]}, never a feature")
            elif name in self.input.exclude_columns:
                yield ("features", i), f"column '{name}' is in input.exclude_columns"
            elif columns is not None and name not in columns:
                yield ("features", i), f"no column '{name}' in input.column_names"
        if columns is None:
            return
        for i, task in enumerate(self.tasks):
            if task.label_column not in columns:
                yield ("tasks", i, "label_column"), (f"no column '{task.label_column}' in "
                                                     "input.column_names")
        unknown = [c for c in self.input.exclude_columns if c not in columns]
        if unknown:
            yield ("input", "exclude_columns"), (f"no such column(s) {unknown} in "
                                                 "input.column_names")

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
        raw = self.model_dump()
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


def json_schema() -> Dict[str, Any]:
    """The JSON Schema of a config file, for editors (`mtrank config-schema`).
    It holds every field's type, constraints, default and description; the
    checks across fields (docs/config.md) are `config_from_dict`'s alone."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Config.model_json_schema(), "title": "mtrank config"}


def _path(loc: tuple, raw: Any) -> str:
    """`features[price].kind` for pydantic's ('features', 3, 'kind'): a
    feature or task that has a name is named by it, as the user knows it."""
    path, node = "", raw
    for key in loc:
        if isinstance(key, int):
            entry = node[key] if isinstance(node, list) and key < len(node) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            named = path in ("features", "tasks") and isinstance(name, str)
            path += f"[{name if named else key}]"
            node = entry
        elif key != "[key]":  # pydantic's mark of an error in a mapping's key
            path += f".{key}" if path else key
            node = node.get(key) if isinstance(node, dict) else None
    return path or "config"


def _section_at(loc: tuple) -> type:
    """The model whose fields `loc` (a path of field names and indices) reaches."""
    section = Config
    for key in loc:
        if isinstance(key, str) and key in section.model_fields:
            section = next(_sections_in(section.model_fields[key].annotation), section)
    return section


def _sections_in(annotation) -> Iterator[type]:
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        yield annotation
    for arg in get_args(annotation):
        yield from _sections_in(arg)


# What a pydantic error type says is allowed; {names} are the error's ctx.
_MESSAGES = {
    "int_type": "expected int", "float_type": "expected a number", "string_type": "expected str",
    "bool_type": "expected true or false", "list_type": "expected list",
    "dict_type": "expected a mapping", "model_type": "expected a mapping",
    "literal_error": "must be {expected}", "string_pattern_mismatch": "must match {pattern}",
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "too_short": "needs at least {min_length} item(s)",
}


def _problem_lines(error: Dict[str, Any], raw: Any) -> Iterator[str]:
    """One `path: message (got VALUE)` line per problem of a pydantic error."""
    loc, kind = error["loc"], error["type"]
    if kind == "missing":
        yield f"{_path(loc[:-1], raw)}: missing required field '{loc[-1]}'"
    elif kind == "extra_forbidden":
        known = list(_section_at(loc[:-1]).model_fields)
        yield f"{_path(loc[:-1], raw)}: unknown field '{loc[-1]}'; known: {known}"
    elif isinstance(error.get("ctx", {}).get("error"), _Problems):
        for relative, message in error["ctx"]["error"].problems:
            yield f"{_path(loc + relative, raw)}: {message}"
    elif "error" in error.get("ctx", {}):  # a validator's ValueError names its value
        yield f"{_path(loc, raw)}: {error['ctx']['error']}"
    else:
        message = _MESSAGES.get(kind, error["msg"]).format(**error.get("ctx", {}))
        yield f"{_path(loc, raw)}: {message} (got {reprlib.repr(error['input'])})"


def config_from_dict(raw: Dict[str, Any]) -> Config:
    """Validates a parsed config; raises ConfigError naming the bad fields,
    one line each."""
    try:
        return Config.model_validate(raw)
    except pydantic.ValidationError as e:
        lines = [line for error in e.errors() for line in _problem_lines(error, raw)]
        raise ConfigError("\n".join(lines)) from None


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
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from e


def config_from_json(text: str) -> Config:
    return config_from_dict(json.loads(text))


def save_config(config: Config, path: str) -> None:
    with open(path, "w") as f:
        f.write(config.to_yaml())
