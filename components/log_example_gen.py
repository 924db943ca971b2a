"""LogExampleGen: a TFX ExampleGen for raw interaction logs.

Unlike the stock file ExampleGens, which map input files to examples one to
one, this one joins events across files (feedback with its impression) and
splits by time, so it runs its own Beam pipeline (`components.ingest`).

When `input_glob` names daily partitions ({YYYY}-{MM}-{DD}), each run
ingests one span: `span` if given, else the newest complete one (see
components/spans.py); the Examples artifact carries its span number, so the
pipeline's window resolver can train on the last spans without re-reading
them.

Outputs:
  examples: Examples with splits train and eval (gzipped TFRecords of
    tf.Example), as StatisticsGen, Transform and the Evaluator expect them.
  dead_letters: DeadLetters, JSON lines each with a `dead_letter_reason`.
Both artifacts carry the ingestion counts as MLMD custom properties.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Dict, List

import apache_beam as beam
from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.io import fileio
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from mtrank.components import bucketed_join, ingest, spans
from mtrank.base import counts, layout
from mtrank.base import config as config_lib

COUNTS_FILE = "counts.json"


class DeadLetters(types.Artifact):
    """Log lines that could not become examples, each with its reason."""

    TYPE_NAME = "mtrank.DeadLetters"


class LogExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "input_glob": ExecutionParameter(type=str),
        layout.CONFIG_KEY: ExecutionParameter(type=str),
        # With daily partitions: the span (days since 1970-01-01) to ingest;
        # -1 for the newest complete one.
        "span": ExecutionParameter(type=int),
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
        config = layout.config_from_properties(exec_properties)
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        dead_letters = artifact_utils.get_single_instance(output_dict["dead_letters"])
        examples.split_names = artifact_utils.encode_split_names(list(ingest.SPLITS))
        examples_utils.set_payload_format(
            examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")

        input_glob = exec_properties["input_glob"]
        span_input = None
        if spans.is_span_pattern(input_glob):
            lookahead = spans.lookahead_days(config.max_label_window_s)
            requested = exec_properties.get("span", -1)
            span = spans.latest_complete_span(
                input_glob, lookahead, requested if requested >= 0 else None)
            span_input = spans.SpanInput.of(input_glob, span, lookahead)
            examples.span = span
            # SpanRangeStrategy and other span tools read the custom property.
            examples.set_int_custom_property("span", span)
            logging.info("ingesting span %d (%s) from %s, feedback also from %s", span,
                         spans.date_of_span(span), span_input.own_glob,
                         span_input.lookahead_globs)

        def write_outputs(outputs, name: str) -> None:
            for split in ingest.SPLITS:
                if split in outputs:
                    outputs[split] | f"Write{split}" >> beam.io.WriteToTFRecord(os.path.join(
                        artifact_utils.get_split_uri([examples], split), f"data_tfrecord-{name}"),
                        file_name_suffix=".gz")
            outputs["dead_letters"] | "WriteDeadLetters" >> beam.io.WriteToText(
                os.path.join(dead_letters.uri, f"dead_letters-{name}"), file_name_suffix=".jsonl")
            outputs["counts"] | "WriteCounts" >> beam.io.WriteToText(
                os.path.join(dead_letters.uri, f"counts-{name}.json"), shard_name_template="")

        own_glob = span_input.own_glob if span_input else input_glob
        if bucketed_join.should_use([own_glob], self._beam_pipeline_args or []):
            passes = bucketed_join.run(
                self._make_beam_pipeline, input_glob, config, span_input, write_outputs,
                scratch_dir=os.path.join(dead_letters.uri, "_join_buckets"))["passes"]
            logging.info("joined in %d pass(es) of the bucketed join", passes)
        else:
            with self._make_beam_pipeline() as pipeline:
                write_outputs(pipeline | "LogsToExamples" >> ingest.LogsToExamples(
                    input_glob, config, span_input), "all")
        ingest_counts = _merge_counts(os.path.join(dead_letters.uri, "counts-*.json"),
                                      os.path.join(dead_letters.uri, COUNTS_FILE))

        empty = [s for s in ingest.SPLITS if not ingest_counts.get(counts.split_count_key(s))]
        if empty:
            rule = (f"{config.split.eval_percent}% of the span's requests are eval"
                    if span_input else
                    f"the eval split is the last {config.split.eval_days} day(s) of "
                    "impressions, so the logs need more days than that")
            raise ValueError(
                f"split(s) {empty} got no examples from "
                f"{span_input.own_glob if span_input else input_glob!r}; {rule}. "
                "Counts: " + json.dumps(ingest_counts))
        for artifact in (examples, dead_letters):
            artifact.set_string_custom_property(counts.COUNTS_PROPERTY, json.dumps(ingest_counts))


def _merge_counts(pattern: str, merged_path: str) -> Dict[str, int]:
    """Sums the counts files of the ingestion's pipelines into one."""
    summed = collections.Counter()
    for path in sorted(fileio.glob(pattern)):
        summed.update(json.loads(io_utils.read_string_file(path)))
        fileio.remove(path)
    merged = dict(sorted(summed.items()))
    io_utils.write_string_file(merged_path, json.dumps(merged, sort_keys=True))
    return merged


class LogExampleGen(base_beam_component.BaseBeamComponent):
    """Joins impression and feedback logs into labelled, time-split examples."""

    SPEC_CLASS = LogExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_glob: str, config: config_lib.Config, span: int = -1):
        spans.check_span_pattern(input_glob)
        super().__init__(spec=LogExampleGenSpec(
            input_glob=input_glob,
            **layout.config_properties(config),
            span=span,
            examples=types.Channel(type=standard_artifacts.Examples),
            dead_letters=types.Channel(type=DeadLetters),
        ))
