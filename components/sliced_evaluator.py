"""SlicedEvaluator: the TFX Evaluator, with each task's bounds applied to the
slices that are large enough to judge.

TFMA cannot make a bound depend on a slice's size (see components/eval_config.py),
but it can restrict a bound to listed slices. The slices and their sizes are
only known once the eval split exists, so this executor counts them (on Beam,
as the Evaluator reads the same examples), lists the large ones in the bounds
(`eval_config.gate_slices`) and hands the result to the stock Evaluator
executor. It records which slices were gated in SLICE_GATING_FILE beside
TFMA's output, for the run summary and the report.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from mtrank.components import eval_config as eval_config_lib

MIN_SLICE_SIZE_KEY = "min_slice_size"
SLICE_GATING_FILE = "slice_gating.json"


def _slice_keys(serialized: bytes, features: List[List[str]]):
    """The slice keys of one tf.Example, one per value combination, as TFMA
    slices them (values as text)."""
    feature_map = tf.train.Example.FromString(serialized).features.feature
    for keys in features:
        combinations = [()]
        for key in keys:
            if key not in feature_map:
                combinations = []
                break
            kind = feature_map[key].WhichOneof("kind")
            values = getattr(feature_map[key], kind).value if kind else []
            texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for v in values]
            combinations = [c + ((key, t),) for c in combinations for t in texts]
        yield from combinations


def count_slices(pipeline: beam.Pipeline, file_patterns: List[str],
                 features: List[List[str]]) -> beam.PCollection:
    """(slice key, examples) for every slice of `features` in the files."""
    records = [pipeline | f"Read[{i}]" >> beam.io.ReadFromTFRecord(pattern)
               for i, pattern in enumerate(file_patterns)]
    return (records | "Flatten" >> beam.Flatten()
            | "SliceKeys" >> beam.FlatMap(_slice_keys, features)
            | "Count" >> beam.combiners.Count.PerElement())


class Executor(evaluator_executor.Executor):
    """Gates the large slices, then runs the stock Evaluator executor."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        exec_properties = dict(exec_properties)
        min_slice_size = exec_properties.pop(MIN_SLICE_SIZE_KEY)
        eval_config = tfma.EvalConfig()
        json_format.Parse(exec_properties[standard_component_specs.EVAL_CONFIG_KEY],
                          eval_config)
        features = eval_config_lib.slice_features(eval_config)
        splits = json_utils.loads(
            exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY) or "null") or ["eval"]
        sizes: Dict[eval_config_lib.SliceKey, int] = {}
        if features:
            examples = artifact_utils.get_single_instance(
                input_dict[standard_component_specs.EXAMPLES_KEY])
            patterns = [os.path.join(artifact_utils.get_split_uri([examples], split), "*")
                        for split in splits]
            sizes_path = os.path.join(self._get_tmp_dir(), "slice_sizes.jsonl")
            with self._make_beam_pipeline() as pipeline:
                _ = (count_slices(pipeline, patterns, features)
                     | "ToJson" >> beam.Map(json.dumps)
                     | "Write" >> beam.io.WriteToText(sizes_path, shard_name_template=""))
            with tf.io.gfile.GFile(sizes_path) as f:
                for line in f:
                    key, size = json.loads(line)
                    sizes[tuple(tuple(pair) for pair in key)] = size
        gated_config, gating = eval_config_lib.gate_slices(eval_config, sizes, min_slice_size)
        exec_properties[standard_component_specs.EVAL_CONFIG_KEY] = json_format.MessageToJson(
            gated_config)
        super().Do(input_dict, output_dict, exec_properties)
        evaluation = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EVALUATION_KEY])
        gating.update(min_slice_size=min_slice_size, sizes={
            eval_config_lib.slice_name(key): size for key, size in sorted(sizes.items())})
        with tf.io.gfile.GFile(os.path.join(evaluation.uri, SLICE_GATING_FILE), "w") as f:
            json.dump(gating, f, indent=2, sort_keys=True)


class SlicedEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {**standard_component_specs.EvaluatorSpec.PARAMETERS,
                  MIN_SLICE_SIZE_KEY: ExecutionParameter(type=int)}


class SlicedEvaluator(base_beam_component.BaseBeamComponent):
    """The Evaluator with bounds on the slices of at least `min_slice_size`
    examples (the overall slice always)."""

    SPEC_CLASS = SlicedEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 baseline_model: types.BaseChannel, eval_config: tfma.EvalConfig,
                 min_slice_size: int, example_splits: List[str]):
        super().__init__(spec=SlicedEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model,
            eval_config=eval_config, example_splits=json_utils.dumps(example_splits),
            min_slice_size=min_slice_size,
            fairness_indicator_thresholds=json_utils.dumps(None),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
