"""Serving signatures of the exported SavedModel (serving contract v2).

Every scoring signature returns the model's outputs (one tensor per output of
the model's dict, keyed by name: the tasks, and whatever else the model
serves) plus `score` (`fused_score` if a task is named score), the fused
ranking score of the config's `serving.score`, one value per candidate.

  serving_default     `examples`: serialized tf.Examples (DT_STRING, [batch])
  predict_raw         one input per config feature, named after it, in its
                      dtype: scalars [batch], lists [batch, n] (values equal
                      to the feature's default, "" or 0, are padding)
  regress             TF Serving's Regress: `inputs` (serialized tf.Examples)
                      -> `outputs` = score
  classify            TF Serving's Classify: `inputs` -> `scores` [batch,
                      binary tasks] and `classes` (the task names)
  transform_features  `examples` -> the transformed features (debugging)

Beside the SavedModel, `assets.extra/` holds `mtrank_serving_spec.json` (the
tasks, every feature's dtype and shape, the score formula: a server uses it to
convert int64 sent for a float feature, or the reverse) and
`tf_serving_warmup_requests`, the PredictionLog records TF Serving (and our
server) replay before a version takes traffic. These names, and the dtype
names, are the serving contract's (base/serving_contract.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from mtrank.base import config as config_lib
from mtrank.base import examples as examples_lib
from mtrank.base import serving_contract as contract

# The TensorFlow dtype of each of the serving contract's dtype names.
TF_DTYPES = {"string": tf.string, "int64": tf.int64, "float": tf.float32}
# Warmup example values: every feature set, so every lookup table and op runs.
_WARMUP_VALUES = {"string": "warmup", "int64": 1, "float": 1.0}
_PROBABILITY_FLOOR = 1e-7  # keeps a weighted product of probabilities finite


@dataclasses.dataclass(frozen=True)
class RawFeature:
    """One raw model input as clients send it."""

    name: str
    dtype: str
    is_scalar: bool

    @property
    def default(self):
        return contract.DTYPE_DEFAULTS[self.dtype]


@dataclasses.dataclass(frozen=True)
class ScoreFormula:
    """The fused score, named `output`: combine(output ** / * weight) over
    the weighted outputs."""

    form: str
    weights: Mapping[str, float]
    output: str = contract.SCORE_OUTPUT

    def check_outputs(self, outputs: Sequence[str]) -> None:
        for name in self.weights:
            if name not in outputs:
                raise config_lib.ConfigError(
                    f"serving.score.weights.{name}: the model has no output '{name}'; "
                    f"outputs: {sorted(outputs)}")

    def __call__(self, outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        if self.form == "weighted_sum":
            return tf.add_n([weight * tf.cast(outputs[name], tf.float32)
                             for name, weight in sorted(self.weights.items())])
        log_score = tf.add_n([
            weight * tf.math.log(tf.maximum(tf.cast(outputs[name], tf.float32),
                                            _PROBABILITY_FLOOR))
            for name, weight in sorted(self.weights.items())])
        return tf.exp(log_score)


def raw_features(config: config_lib.Config) -> List[RawFeature]:
    return [RawFeature(f.name, f.dtype, f.is_scalar) for f in config.features]


def binary_tasks(config: config_lib.Config) -> List[str]:
    return [t.name for t in config.tasks if t.type == "binary"]


def score_formula(config: config_lib.Config) -> ScoreFormula:
    """The config's formula; unset weights weigh every binary task 1 (every
    task, for a weighted sum over regression tasks only)."""
    score = config.serving.score
    weights = score.weights or {name: 1.0 for name in binary_tasks(config)} or {
        t.name: 1.0 for t in config.tasks}
    return ScoreFormula(score.form, {k: float(v) for k, v in weights.items()},
                        contract.fused_score_output(config.output_names))


def raw_to_parsed(inputs: Mapping[str, tf.Tensor], features: Sequence[RawFeature]
                  ) -> Dict[str, tf.SparseTensor]:
    """Raw tensors -> what tf.io.parse_example gives for VarLen features.

    A scalar becomes a one-value row (equal to the default, it scores like a
    missing feature, since a missing one takes the default); a list drops its
    padding, values equal to the default.
    """
    parsed = {}
    for feature in features:
        value = inputs[feature.name]
        if feature.is_scalar:
            value = value[:, None]
        else:
            value = tf.ragged.boolean_mask(
                value, tf.not_equal(value, tf.cast(feature.default, value.dtype)))
        parsed[feature.name] = (tf.RaggedTensor.from_tensor(value)
                                if not isinstance(value, tf.RaggedTensor) else value).to_sparse()
    return parsed


def build_signatures(transform: Callable, predict: Callable, features: Sequence[RawFeature],
                     formula: ScoreFormula, probability_outputs: Sequence[str]
                     ) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Concrete functions for `tf.saved_model.save(..., signatures=...)`.

    `transform` maps parsed raw features (SparseTensors, as parse_example
    yields) to model inputs; `predict` maps those to the model's dict of
    outputs. `probability_outputs` are the classes of `classify`.
    """
    parse_spec = {f.name: tf.io.VarLenFeature(TF_DTYPES[f.dtype]) for f in features}

    def scored(parsed):
        outputs = dict(predict(transform(parsed)))
        formula.check_outputs(list(outputs))
        if formula.output in outputs:
            raise ValueError(f"the model has an output named '{formula.output}', which is the "
                             "fused score's name")
        outputs[formula.output] = formula(outputs)
        return outputs

    def scored_examples(serialized):
        return scored(tf.io.parse_example(serialized, parse_spec))

    examples_spec = tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)
    inputs_spec = tf.TensorSpec([None], tf.string, name=contract.TF_SERVING_INPUTS)
    raw_specs = {
        f.name: tf.TensorSpec([None] if f.is_scalar else [None, None], TF_DTYPES[f.dtype],
                              name=f.name)
        for f in features}

    @tf.function(input_signature=[examples_spec])
    def serve(examples):
        return scored_examples(examples)

    @tf.function(input_signature=[raw_specs])
    def predict_raw(raw):
        return scored(raw_to_parsed(raw, features))

    @tf.function(input_signature=[inputs_spec])
    def regress(inputs):
        return {contract.REGRESS_OUTPUTS: scored_examples(inputs)[formula.output]}

    @tf.function(input_signature=[inputs_spec])
    def classify(inputs):
        outputs = scored_examples(inputs)
        scores = tf.stack([tf.cast(outputs[name], tf.float32) for name in probability_outputs],
                          axis=1)
        classes = tf.tile(tf.constant([list(probability_outputs)]), [tf.shape(scores)[0], 1])
        return {contract.CLASSIFY_SCORES: scores, contract.CLASSIFY_CLASSES: classes}

    @tf.function(input_signature=[examples_spec])
    def transform_features(examples):
        return transform(tf.io.parse_example(examples, parse_spec))

    signatures = {
        contract.SERVING_DEFAULT: serve.get_concrete_function(),
        contract.PREDICT_RAW: predict_raw.get_concrete_function(),
        contract.REGRESS: regress.get_concrete_function(),
        contract.TRANSFORM_FEATURES: transform_features.get_concrete_function(),
    }
    if probability_outputs:
        signatures[contract.CLASSIFY] = classify.get_concrete_function()
    return signatures


def make_signatures(model, config: config_lib.Config):
    """Concrete functions for `model.save(..., signatures=...)`. The model
    must carry the Transform layer as `model.tft_layer`."""
    return build_signatures(model.tft_layer, model, raw_features(config), score_formula(config),
                            binary_tasks(config))


def serving_spec(config: config_lib.Config) -> dict:
    formula = score_formula(config)
    return {
        "model_name": config.model_name,
        "tasks": [t.name for t in config.tasks],
        "features": {
            f.name: {"dtype": f.dtype, "shape": "scalar" if f.is_scalar else "list"}
            for f in config.features},
        "score": {"output": formula.output, "form": formula.form,
                  "weights": dict(formula.weights)},
    }


def _set_method_names(export_dir: str) -> None:
    """Marks `regress` and `classify` with TF Serving's method names, which its
    Classify and Regress require; tf.saved_model.save writes every signature
    as a predict method. The fingerprint covers saved_model.pb, so it is
    rewritten too."""
    path = os.path.join(export_dir, "saved_model.pb")
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        for key, method in ((contract.REGRESS, contract.REGRESS_METHOD),
                            (contract.CLASSIFY, contract.CLASSIFY_METHOD)):
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())
    fingerprint_path = os.path.join(export_dir, "fingerprint.pb")
    if tf.io.gfile.exists(fingerprint_path):
        with tf.io.gfile.GFile(fingerprint_path, "wb") as f:
            f.write(fingerprinting.CreateFingerprintDef(export_dir))


def warmup_example(spec: Mapping) -> tf.train.Example:
    """An Example setting every feature of a serving spec."""
    return examples_lib.example_from_json(
        {name: _WARMUP_VALUES[feature["dtype"]] for name, feature in spec["features"].items()},
        {name: feature["dtype"] for name, feature in spec["features"].items()})


def warmup_logs(spec: Mapping, signature_names: Sequence[str]
                ) -> List[prediction_log_pb2.PredictionLog]:
    """One request per scoring signature the model has, on warmup_example."""
    example = warmup_example(spec)
    serialized = example.SerializeToString()
    model_name = spec["model_name"]
    logs = []
    for name in (contract.SERVING_DEFAULT, contract.PREDICT_RAW):
        if name not in signature_names:
            continue
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = name
        if name == contract.SERVING_DEFAULT:
            request.inputs[contract.EXAMPLES_INPUT].CopyFrom(
                tf.make_tensor_proto([serialized], tf.string))
        else:
            for feature_name, feature in spec["features"].items():
                value = _WARMUP_VALUES[feature["dtype"]]
                shaped = [value] if feature["shape"] == "scalar" else [[value]]
                request.inputs[feature_name].CopyFrom(
                    tf.make_tensor_proto(shaped, TF_DTYPES[feature["dtype"]]))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    if contract.REGRESS in signature_names:
        request = regression_pb2.RegressionRequest()
        request.model_spec.name, request.model_spec.signature_name = model_name, contract.REGRESS
        request.input.example_list.examples.add().CopyFrom(example)
        logs.append(prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=request)))
    if contract.CLASSIFY in signature_names:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = model_name, contract.CLASSIFY
        request.input.example_list.examples.add().CopyFrom(example)
        logs.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    return logs


def write_assets(export_dir: str, spec: Mapping) -> None:
    """Finishes an export: the serving spec, TF Serving method names, the warmup file."""
    extra = os.path.join(export_dir, contract.EXTRA_DIR)
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, contract.SERVING_SPEC_FILE), "w") as f:
        f.write(json.dumps(spec, indent=2, sort_keys=True))
    _set_method_names(export_dir)
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    signature_names = set(saved_model.meta_graphs[0].signature_def)
    with tf.io.TFRecordWriter(os.path.join(extra, contract.WARMUP_FILE)) as writer:
        for log in warmup_logs(spec, sorted(signature_names)):
            writer.write(log.SerializeToString())


def write_serving_assets(export_dir: str, config: config_lib.Config) -> None:
    """What the Trainer calls after model.save: see write_assets."""
    write_assets(export_dir, serving_spec(config))


def read_warmup_logs(version_dir: str) -> Tuple[prediction_log_pb2.PredictionLog, ...]:
    """The warmup records of a version, () when it has none."""
    path = os.path.join(version_dir, contract.EXTRA_DIR, contract.WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return ()
    return tuple(prediction_log_pb2.PredictionLog.FromString(record.numpy())
                 for record in tf.data.TFRecordDataset(path))
