"""The mtrank TFX pipeline. `create_pipeline` only wires components; every
input arrives as a parameter, so the local and Kubeflow runners share it."""
from __future__ import annotations

from typing import List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components import tabular_example_gen
from components.data_gate import DataValidationGate
from components.log_example_gen import LogExampleGen
from pipeline import config as config_lib

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"


def make_example_gen(input_glob: str, config: config_lib.Config):
    """The ExampleGen for `config.input.format`: LogExampleGen joins logs into
    labelled examples split by time; csv and tfrecord input is already
    labelled, one example a row, split by hash (train / eval / test)."""
    if config.input.format == "logs":
        return LogExampleGen(input_glob=input_glob, config=config)
    return tabular_example_gen.example_gen(input_glob, config)


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
) -> tfx.dsl.Pipeline:
    """The pipeline over `log_glob`: log files, or for `config.input.format`
    csv / tfrecord the tabular files (or their directory). `trainer_resources`
    (a KFP ResourceSpec) asks a cluster for the Trainer's GPUs."""
    custom_config = {"config_json": config.to_json()}

    # Labelled examples in splits: train, eval (and, for tabular input, test).
    example_gen = make_example_gen(log_glob, config)

    # Computes statistics over every split.
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

    # Infers a schema from the statistics. Shapes stay variable so that
    # Transform parses features exactly as the serving signature does.
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)

    # Checks the statistics against the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])

    # Stops the run if the validator found anomalies.
    data_gate = DataValidationGate(anomalies=example_validator.outputs["anomalies"])

    # Builds the feature transform graph, the same at training and serving time.
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=preprocessing_fn,
        custom_config=custom_config)
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

    # Evaluates every task on the eval split and blesses only if all pass.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config,
        example_splits=["eval"])

    # Copies a blessed model to a new version of the serving base directory.
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                    transform, trainer, model_resolver, evaluator, pusher],
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [])
