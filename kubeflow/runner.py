"""Compiles the mtrank pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines.

The same `create_pipeline` as the local run, handed to TFX's
KubeflowV2DagRunner, which writes a KFP v2 PipelineJob spec (JSON). Trainer and
Transform code is referenced by import path (`trainer.task.run_fn`, ...), so
nothing is uploaded: the image must have this package installed
(kubeflow/Dockerfile).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from mtrank.base import config as config_lib, layout
from mtrank.components import eval_config as eval_config_lib, spans
from mtrank.pipeline import pipeline as pipeline_lib

DEFAULT_IMAGE = "mtrank:0.1.0"

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def trainer_resources(config: config_lib.Config) -> Optional[ResourceSpec]:
    """The Trainer's container resources from the config, if it asks for GPUs."""
    training = config.training
    if not training.gpus:
        return None
    return ResourceSpec(accelerator=ResourceSpec.AcceleratorConfig(
        type=training.gpu_type, count=training.gpus))


def dataflow_beam_args(project: str, region: str, pipeline_root: str, image: str) -> List[str]:
    """Beam arguments that run the Beam components (LogExampleGen,
    StatisticsGen, Transform, Evaluator) on Dataflow, with workers started
    from the pipeline's own image so they have this package and
    TF_USE_LEGACY_KERAS=1."""
    return [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={pipeline_root.rstrip('/')}/beam-tmp",
        "--experiments=use_runner_v2",
        f"--sdk_container_image={image}",
    ]


def kfp_pipeline_name(model_name: str) -> str:
    """KFP names are lowercase letters, digits and hyphens."""
    return model_name.lower().replace("_", "-")


def compile_pipeline(config: config_lib.Config, output: str, log_glob: str,
                     pipeline_root: str, image: str = DEFAULT_IMAGE,
                     serving_model_dir: Optional[str] = None,
                     beam_pipeline_args: Optional[List[str]] = None) -> dict:
    """Writes the PipelineJob spec to `output` and returns it.

    `serving_model_dir` defaults to `<pipeline_root>/serving_model/<model>`,
    the model base directory TF Serving reads.
    """
    if spans.is_span_pattern(log_glob):
        raise ValueError(
            f"{log_glob!r}: daily partitions train on a window of spans found by a resolver "
            "that KubeflowV2DagRunner cannot compile (it compiles only the LatestArtifact and "
            "LatestBlessedModel strategies); give the compiled pipeline a plain glob, or run "
            "spans with `mtrank run`")
    pipeline = pipeline_lib.create_pipeline(
        pipeline_name=kfp_pipeline_name(config.model_name),
        pipeline_root=pipeline_root,
        log_glob=log_glob,
        config=config,
        eval_config=eval_config_lib.make_eval_config(config),
        serving_model_dir=serving_model_dir or layout.serving_model_dir(
            pipeline_root, config.model_name),
        beam_pipeline_args=beam_pipeline_args,
        trainer_resources=trainer_resources(config),
        # The only resolver strategies KubeflowV2DagRunner compiles.
        latest_artifact_strategy=tfx.dsl.experimental.LatestArtifactStrategy,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output))
    runner.run(pipeline, write_out=True)
    with open(output) as f:
        return json.load(f)
