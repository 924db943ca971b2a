"""The `mtrank` command line (also `python -m pipeline`).

Heavy modules (TensorFlow, TFX) are imported inside each command, so
`mtrank simulate` and `mtrank --help` start quickly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional



def _load_or_infer_config(config_path: Optional[str], log_glob: str):
    from pipeline import config as config_lib
    from pipeline import config_inference

    if config_path:
        return config_lib.load_config(config_path)
    config = config_inference.infer_config(log_glob)
    print(f"no --config: inferred {len(config.features)} features and tasks "
          f"{[t.name for t in config.tasks]} from the logs (see `mtrank init-config`)")
    return config


def cmd_simulate(args) -> int:
    from pipeline import simulator

    summary = simulator.simulate(args.out, impressions=args.impressions, days=args.days,
                                 seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    print(f"logs: {os.path.join(args.out, simulator.EVENT_FILE_GLOB)}")
    return 0


def cmd_init_config(args) -> int:
    from pipeline import config as config_lib
    from pipeline import config_inference

    config = config_inference.infer_config(args.logs, model_name=args.model_name)
    config_lib.save_config(config, args.out)
    print(f"wrote {args.out}: features {[f.name for f in config.features]}, "
          f"tasks {[t.name for t in config.tasks]}")
    return 0


def cmd_run(args) -> int:
    from pipeline import local_runner, run_summary

    config = _load_or_infer_config(args.config, args.logs)
    summary = local_runner.run(
        args.logs, args.work_dir, config, beam_pipeline_args=args.beam_arg or None,
        verbose=args.verbose, from_component=args.only or getattr(args, "from"),
        to_component=args.only)
    print()
    print(run_summary.format_table(summary))
    print(f"summary: {os.path.join(args.work_dir, local_runner.SUMMARY_FILE)}")
    if summary["error"]:
        print(f"run failed: {summary['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_compile(args) -> int:
    from kubeflow import runner

    config = _load_or_infer_config(args.config, args.logs)
    beam_args = list(args.beam_arg or [])
    if args.dataflow_project:
        beam_args = runner.dataflow_beam_args(
            args.dataflow_project, args.dataflow_region, args.pipeline_root, args.image
        ) + beam_args
    spec = runner.compile_pipeline(
        config, args.output, log_glob=args.logs, pipeline_root=args.pipeline_root,
        image=args.image, serving_model_dir=args.serving_model_dir,
        beam_pipeline_args=beam_args)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"wrote {args.output}: KFP v2 PipelineJob with {len(tasks)} steps, image {args.image}")
    return 0


def cmd_inspect(args) -> int:
    from pipeline import inspect_mlmd

    print(inspect_mlmd.inspect(args.work_dir))
    return 0


def cmd_demo(args) -> int:
    from pipeline import demo

    return demo.run_demo(args.work_dir, impressions=args.impressions, days=args.days)


def cmd_serve(args) -> int:
    from serving import server

    server.serve_forever(args.model_base, model_name=args.model_name, host=args.host,
                         port=args.port)
    return 0


def cmd_predict(args) -> int:
    from serving import client

    client.print_predictions(args.target, args.logs, limit=args.limit,
                             model_name=args.model_name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrank", description="Multi-task ranking pipeline: logs in, served model out.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("simulate", help="write simulated interaction logs")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--impressions", type=int, default=20000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    p = commands.add_parser("init-config", help="infer a config from logs, for editing")
    p.add_argument("--logs", required=True, help="glob of log files")
    p.add_argument("--out", required=True, help="YAML file to write")
    p.add_argument("--model-name", default="mtrank")
    p.set_defaults(func=cmd_init_config)

    p = commands.add_parser("run", help="run the pipeline locally")
    p.add_argument("--logs", "--input", dest="logs", required=True, metavar="GLOB",
                   help="glob of log files, or of the CSV / TFRecord files (or their "
                        "directory) when the config's input.format is csv / tfrecord")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--config", help="YAML config (default: inferred from the logs)")
    p.add_argument("--beam-arg", action="append",
                   help="Beam pipeline argument, repeatable (default --direct_num_workers=1)")
    p.add_argument("--verbose", action="store_true", help="show TFX's own logs")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--only", metavar="COMPONENT",
                      help="run only this component, reusing the last run's upstream artifacts")
    part.add_argument("--from", metavar="COMPONENT",
                      help="run from this component on, reusing the last run's upstream artifacts")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("compile", help="compile for Kubeflow Pipelines v2 / Vertex AI")
    p.add_argument("--output", required=True, help="PipelineJob spec (JSON) to write")
    p.add_argument("--logs", "--input", dest="logs", required=True, metavar="GLOB",
                   help="input files as the cluster sees them, e.g. gs://BUCKET/logs/*.jsonl.gz")
    p.add_argument("--config", help="YAML config (default: inferred from --logs, if readable here)")
    p.add_argument("--image", default="mtrank:0.1.0",
                   help="image with this package installed (kubeflow/Dockerfile)")
    p.add_argument("--pipeline-root", required=True, help="where artifacts go, e.g. gs://BUCKET/mtrank")
    p.add_argument("--serving-model-dir",
                   help="model base directory to push to (default PIPELINE_ROOT/serving_model/MODEL)")
    p.add_argument("--dataflow-project", help="run the Beam components on Dataflow in this project")
    p.add_argument("--dataflow-region", default="us-central1")
    p.add_argument("--beam-arg", action="append", help="more Beam pipeline arguments, repeatable")
    p.set_defaults(func=cmd_compile)

    p = commands.add_parser("inspect", help="runs, executions, artifacts and lineage from MLMD")
    p.add_argument("--work-dir", required=True)
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("demo", help="simulate logs, run, serve and predict, end to end")
    p.add_argument("--work-dir", default="demo")
    p.add_argument("--impressions", type=int, default=50000)
    p.add_argument("--days", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("serve", help="serve pushed models over the TF Serving gRPC API")
    p.add_argument("--model-base", required=True,
                   help="model base directory, e.g. WORK/serving_model/mtrank")
    p.add_argument("--model-name", default="mtrank")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("predict", help="score the impressions of a log file")
    p.add_argument("--target", required=True, help="HOST:PORT of a TF Serving API server")
    p.add_argument("--logs", required=True, help="a JSON Lines (optionally gzip) log file")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--model-name", default="mtrank")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # The Google Cloud client libraries TFX imports warn about Python 3.10 on
    # every start; they are not actionable for a user of the CLI.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from pipeline.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"mtrank {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
