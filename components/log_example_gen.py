"""LogExampleGen: a TFX ExampleGen for raw interaction logs.

Unlike the stock file ExampleGens, which map input files to examples one to
one, this one joins events across files (feedback with its impression) and
splits by time, so it runs its own Beam pipeline (`components.ingest`).

Outputs:
  examples: Examples with splits train and eval (gzipped TFRecords of
    tf.Example), as StatisticsGen, Transform and the Evaluator expect them.
  dead_letters: DeadLetters, JSON lines each with a `dead_letter_reason`.
Both artifacts carry the ingestion counts as MLMD custom properties.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import apache_beam as beam
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from components import ingest
from pipeline import config as config_lib

COUNTS_FILE = "counts.json"
COUNTS_PROPERTY = "ingest_counts"


class DeadLetters(types.Artifact):
    """Log lines that could not become examples, each with its reason."""

    TYPE_NAME = "mtrank.DeadLetters"


class LogExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "input_glob": ExecutionParameter(type=str),
        "config_json": ExecutionParameter(type=str),
    }
    INPUTS = {}
    OUTPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "dead_letters": ChannelParameter(type=DeadLetters),
    }


class Executor(base_beam_executor.BaseBeamExecutor):
    """Runs `ingest.LogsToExamples` and records its counts in MLMD."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        config = config_lib.config_from_json(exec_properties["config_json"])
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        dead_letters = artifact_utils.get_single_instance(output_dict["dead_letters"])
        examples.split_names = artifact_utils.encode_split_names(list(ingest.SPLITS))
        examples_utils.set_payload_format(
            examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")

        pipeline = self._make_beam_pipeline()
        outputs = pipeline | "LogsToExamples" >> ingest.LogsToExamples(
            exec_properties["input_glob"], config)
        for split in ingest.SPLITS:
            outputs[split] | f"Write{split}" >> beam.io.WriteToTFRecord(
                os.path.join(artifact_utils.get_split_uri([examples], split), "data_tfrecord"),
                file_name_suffix=".gz")
        outputs["dead_letters"] | "WriteDeadLetters" >> beam.io.WriteToText(
            os.path.join(dead_letters.uri, "dead_letters"), file_name_suffix=".jsonl")
        outputs["counts"] | "WriteCounts" >> beam.io.WriteToText(
            os.path.join(dead_letters.uri, COUNTS_FILE), shard_name_template="")
        pipeline.run().wait_until_finish()

        counts = json.loads(io_utils.read_string_file(
            os.path.join(dead_letters.uri, COUNTS_FILE)))
        empty = [s for s in ingest.SPLITS if not counts.get(ingest.split_count_key(s))]
        if empty:
            raise ValueError(
                f"split(s) {empty} got no examples from {exec_properties['input_glob']!r}; "
                f"the eval split is the last {config.split.eval_days} day(s) of impressions, "
                "so the logs need more days than that. Counts: " + json.dumps(counts))
        for artifact in (examples, dead_letters):
            artifact.set_string_custom_property(COUNTS_PROPERTY, json.dumps(counts))


class LogExampleGen(base_beam_component.BaseBeamComponent):
    """Joins impression and feedback logs into labelled, time-split examples."""

    SPEC_CLASS = LogExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_glob: str, config: config_lib.Config):
        super().__init__(spec=LogExampleGenSpec(
            input_glob=input_glob,
            config_json=config.to_json(),
            examples=types.Channel(type=standard_artifacts.Examples),
            dead_letters=types.Channel(type=DeadLetters),
        ))
