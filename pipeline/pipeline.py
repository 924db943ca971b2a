"""The mtrank TFX pipeline. `create_pipeline` only wires components; every
input arrives as a parameter, so the local and Kubeflow runners share it."""
from __future__ import annotations

import json
from typing import List, NamedTuple, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from mtrank.components import spans, tabular_example_gen
from mtrank.components.data_gate import DataValidationGate
from mtrank.components.log_example_gen import LogExampleGen
from mtrank.base import layout
from mtrank.base import config as config_lib
from mtrank.components.resolvers import LatestOrNoneStrategy
from mtrank.components.sliced_evaluator import SlicedEvaluator

PREPROCESSING_FN = "mtrank.trainer.preprocessing.preprocessing_fn"
RUN_FN = "mtrank.trainer.task.run_fn"


def make_example_gen(input_glob: str, config: config_lib.Config, span: int = -1):
    """The ExampleGen for `config.input.format`: LogExampleGen joins logs into
    labelled examples split by time (or, from daily partitions, one span
    split by request); csv and tfrecord input is already labelled, one
    example a row, split by hash (train / eval / test)."""
    if config.input.format == "logs":
        return LogExampleGen(input_glob=input_glob, config=config, span=span)
    return tabular_example_gen.example_gen(input_glob, config)


TRANSFORM_ID = "Transform"


class SpanNodes(NamedTuple):
    """Resolvers over earlier runs' artifacts, for daily partitions."""

    window: tfx.dsl.Resolver
    transform_cache: tfx.dsl.Resolver


def make_span_nodes(example_gen, config: config_lib.Config) -> SpanNodes:
    """The training window over daily partitions: the Examples of the last
    `split.window_spans` spans, this run's new one and earlier runs' others,
    found in ML Metadata; and the last Transform's analyzer cache, so the
    analyzers do not read the earlier spans again."""
    window = tfx.dsl.Resolver(
        strategy_class=spans.LatestSpansStrategy,
        config={"num_spans": config.split.window_spans},
        examples=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.Examples,
            producer_component_id=example_gen.id),
    ).with_id("span_window_resolver")
    window.add_upstream_node(example_gen)
    transform_cache = tfx.dsl.Resolver(
        strategy_class=LatestOrNoneStrategy,
        cache=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.TransformCache,
            producer_component_id=TRANSFORM_ID),
    ).with_id("transform_cache_resolver")
    return SpanNodes(window, transform_cache)


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    log_glob: str,
    config: config_lib.Config,
    eval_config: tfma.EvalConfig,
    serving_model_dir: str,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    preprocessing_fn: str = PREPROCESSING_FN,
    run_fn: str = RUN_FN,
    trainer_resources=None,
    span: int = -1,
    schema_file: Optional[str] = None,
    latest_artifact_strategy=LatestOrNoneStrategy,
) -> tfx.dsl.Pipeline:
    """The pipeline over `log_glob`: log files, daily partitions of logs
    (a glob with {YYYY}-{MM}-{DD}; `span` picks the day, -1 the newest
    complete one), or for `config.input.format` csv / tfrecord the tabular
    files (or their directory). `trainer_resources` (a KFP ResourceSpec) asks
    a cluster for the Trainer's GPUs. `schema_file` is a curated schema to
    import (default: the config's validation.schema; without one SchemaGen
    infers it). `latest_artifact_strategy` resolves the previous run's
    statistics (the Kubeflow compile passes TFX's own strategy)."""
    custom_config = layout.config_properties(config)

    # Labelled examples in splits: train, eval (and, for tabular input, test).
    example_gen = make_example_gen(log_glob, config, span)

    # With daily partitions, Transform and the Trainer read a rolling window
    # of spans; each run ingests only its new one.
    span_nodes = make_span_nodes(example_gen, config) if spans.is_span_pattern(log_glob) else None
    training_examples = (span_nodes.window.outputs["examples"] if span_nodes
                         else example_gen.outputs["examples"])

    # Computes statistics over every split.
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

    # The schema: a curated one imported from `schema_file` (or the config's
    # validation.schema), else inferred from the statistics. Shapes stay
    # variable so that Transform parses features as the serving signature does.
    schema_file = schema_file or config.validation.schema
    if schema_file:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_file)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)

    # The previous statistics artifact (the last run's), the reference of the
    # drift check; resolved before this run's statistics exist.
    previous_statistics = tfx.dsl.Resolver(
        strategy_class=latest_artifact_strategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics,
                                   producer_component_id=statistics_gen.id),
    ).with_id("previous_statistics_resolver")
    statistics_gen.add_upstream_node(previous_statistics)

    # Checks the statistics against the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])

    # Stops the run on the validator's anomalies, on drift against the previous
    # statistics and on train/eval skew beyond the config's thresholds.
    data_gate = DataValidationGate(
        anomalies=example_validator.outputs["anomalies"],
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        previous_statistics=previous_statistics.outputs["statistics"],
        checks_json=json.dumps({"drift": config.validation.drift,
                                "skew": config.validation.skew}, sort_keys=True))

    # Builds the feature transform graph, the same at training and serving time.
    # Without its own statistics: they repeat StatisticsGen's passes (before
    # and after the transform) and nothing reads them; the data checks and the
    # report use StatisticsGen's.
    transform = tfx.components.Transform(
        examples=training_examples,
        schema=schema_gen.outputs["schema"],
        analyzer_cache=span_nodes.transform_cache.outputs["cache"] if span_nodes else None,
        preprocessing_fn=preprocessing_fn,
        custom_config=custom_config,
        disable_statistics=True).with_id(TRANSFORM_ID)
    transform.add_upstream_node(data_gate)

    # Trains the multi-task ranking model on train, validating on eval, and
    # exports it with its signatures.
    trainer = tfx.components.Trainer(
        run_fn=run_fn,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(
            splits=["train"], num_steps=config.training.train_steps or 0),
        eval_args=tfx.proto.EvalArgs(splits=["eval"], num_steps=config.training.eval_steps or 0),
        custom_config=custom_config)
    if trainer_resources is not None:
        # Container resources (GPUs) where a cluster runs the pipeline.
        trainer.with_platform_config(trainer_resources)

    # Finds the last blessed model, the baseline of the change bounds.
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    # Evaluates every task overall and per slice on the eval split, and
    # blesses only if all pass (slices of at least validation.min_slice_size).
    evaluator = SlicedEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config,
        min_slice_size=config.validation.min_slice_size,
        example_splits=["eval"]).with_id("Evaluator")

    # Copies a blessed model to a new version of the serving base directory.
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, *(span_nodes or ()), previous_statistics, statistics_gen,
                    schema_gen, example_validator, data_gate, transform, trainer,
                    model_resolver, evaluator, pusher],
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [])
