"""Evaluator benchmark: the TFMA analysis of a finished `mtrank run`, as the
run configured it and in variants, timed in interleaved rounds.

    .venv/bin/python benchmarks/evaluator.py --run-dir WORK_DIR [--rounds 2]
        [--variants configured,own_metrics,overall_only,gated_only,multi_processing]
        [--out FILE.json]

WORK_DIR is the `--work-dir` of an `mtrank run` (benchmarks/scale.py leaves
one in its --work/run). From its ML Metadata it takes the last Evaluator's
EvalConfig, the model and the eval split that Evaluator read, and runs
tfma.run_model_analysis on them, on the DirectRunner as `mtrank run` does.
Only the candidate model is analysed (a first run has no baseline; with
one, TFMA computes every metric twice).

Variants, each a change to the run's EvalConfig or Beam options:

  configured        as the run configured it
  own_metrics       binary tasks' loss and averages from TFMA's and Keras'
                    own metrics (BinaryCrossentropy, Calibration, MeanLabel,
                    MeanPrediction), as before components/histogram_metrics.py
  overall_only      no slices but the overall one
  gated_only        each task's gated metric alone (AUC, or MSE)
  multi_processing  configured, on Beam's multi-processing DirectRunner with
                    2 workers

Prints a Markdown table: per variant, the median seconds over the rounds and
the ratio to `configured` (run in the same rounds, so load drifts weigh on
all alike).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow_model_analysis as tfma  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from mtrank.pipeline import local_runner  # noqa: E402
from mtrank.reporting import metadata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

IN_MEMORY = list(local_runner.DEFAULT_BEAM_ARGS)  # mtrank run's default
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
OWN_METRICS = {"HistogramBinaryCrossentropy": "BinaryCrossentropy",
               "HistogramCalibration": "Calibration", "HistogramMeanLabel": "MeanLabel",
               "HistogramMeanPrediction": "MeanPrediction"}
GATED_METRICS = ("AUC", "MeanSquaredError")


def evaluator_inputs(run_dir: str) -> Tuple[tfma.EvalConfig, str, str]:
    """The last Evaluator's EvalConfig (candidate only, no change bounds),
    the directory of its model's SavedModel and the file pattern of its eval
    split."""
    store = metadata.open_store(run_dir)
    executions = [e for e in store.get_executions()
                  if metadata.node_id(store, e.id) == "Evaluator"]
    if not executions:
        raise SystemExit(f"{run_dir} has no Evaluator execution")
    execution = executions[-1]
    eval_config = json_format.Parse(execution.custom_properties["eval_config"].string_value,
                                    tfma.EvalConfig())
    del eval_config.model_specs[1:]
    eval_config.model_specs[0].ClearField("is_baseline")
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            metric.threshold.ClearField("change_threshold")
            for per_slice in metric.per_slice_thresholds:
                per_slice.threshold.ClearField("change_threshold")
    inputs = [event.artifact_id for event in store.get_events_by_execution_ids([execution.id])
              if not metadata.is_output(event)]
    model_dir = examples = None
    for artifact in store.get_artifacts_by_id(inputs):
        kind = store.get_artifact_types_by_id([artifact.type_id])[0].name
        if kind == "Model" and model_dir is None:
            model_dir = os.path.join(artifact.uri, "Format-Serving")
        elif kind == "Examples":
            examples = os.path.join(artifact.uri, "Split-eval", "*")
    return eval_config, model_dir, examples


def _copy(eval_config: tfma.EvalConfig) -> tfma.EvalConfig:
    copy = tfma.EvalConfig()
    copy.CopyFrom(eval_config)
    return copy


def _own_metrics(eval_config: tfma.EvalConfig) -> tfma.EvalConfig:
    changed = _copy(eval_config)
    for spec in changed.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name in OWN_METRICS:
                metric.class_name = OWN_METRICS[metric.class_name]
                metric.ClearField("module")
    return changed


def _overall_only(eval_config: tfma.EvalConfig) -> tfma.EvalConfig:
    changed = _copy(eval_config)
    del changed.slicing_specs[1:]
    return changed


def _gated_only(eval_config: tfma.EvalConfig) -> tfma.EvalConfig:
    changed = _copy(eval_config)
    for spec in changed.metrics_specs:
        kept = [metric for metric in spec.metrics if metric.class_name in GATED_METRICS]
        del spec.metrics[:]
        spec.metrics.extend(kept)
    return changed


# Variant -> (EvalConfig change, Beam arguments).
VARIANTS: Dict[str, Tuple[Callable[[tfma.EvalConfig], tfma.EvalConfig], List[str]]] = {
    "configured": (_copy, IN_MEMORY),
    "own_metrics": (_own_metrics, IN_MEMORY),
    "overall_only": (_overall_only, IN_MEMORY),
    "gated_only": (_gated_only, IN_MEMORY),
    "multi_processing": (_copy, MULTI_PROCESSING),
}


def measure(run_dir: str, variants: Sequence[str], rounds: int) -> Dict[str, List[float]]:
    eval_config, model_dir, examples = evaluator_inputs(run_dir)
    seconds: Dict[str, List[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="mtrank-evaluator-bench-") as work:
        for round_index in range(rounds):
            for variant in quality.round_order(variants, round_index):
                change, beam_args = VARIANTS[variant]
                config = change(eval_config)
                model = tfma.default_eval_shared_model(eval_saved_model_path=model_dir,
                                                       eval_config=config)
                start = time.perf_counter()
                tfma.run_model_analysis(
                    eval_shared_model=model, eval_config=config, data_location=examples,
                    output_path=os.path.join(work, f"{variant}-{round_index}"),
                    pipeline_options=PipelineOptions(beam_args))
                seconds[variant].append(time.perf_counter() - start)
                print(f"round {round_index + 1}/{rounds} {variant}: "
                      f"{seconds[variant][-1]:.1f} s", flush=True)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="an `mtrank run --work-dir`")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the seconds as JSON")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "configured" not in variants:
        parser.error(f"--variants: unknown {unknown}; `configured` must be among them"
                     if unknown else "--variants must include `configured`")
    seconds = measure(args.run_dir, variants, args.rounds)
    base = statistics.median(seconds["configured"])
    rows = [[variant, f"{statistics.median(seconds[variant]):.1f}",
             f"{statistics.median(seconds[variant]) / base:.2f}x"] for variant in variants]
    print()
    print(quality.markdown_table(["variant", "median s", "of configured"], rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"run_dir": os.path.abspath(args.run_dir), "seconds": seconds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
