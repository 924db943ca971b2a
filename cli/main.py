"""The `mtrank` command line (also `python -m mtrank.cli`).

Heavy modules (TensorFlow, TFX) are imported inside each command, after its
arguments are checked, so `mtrank simulate`, `mtrank --help` and a bad config
or a glob matching no logs answer quickly. The stack's known-harmless noise
is hidden (cli/quiet.py) unless the command is given -v.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import sys
from typing import List, Optional

from mtrank.cli import quiet


def _check_local_logs(log_glob: str) -> None:
    """Raises FileNotFoundError (exit status 2) if a local glob matches no
    file; remote ones (gs://...) are the runner's to read."""
    from mtrank.base import log_files

    if "://" in log_glob:
        return
    # Daily partitions' placeholders, as components.spans.any_span_glob
    # replaces them (that module imports Beam and TFX).
    log_files.expand_log_glob(re.sub(r"\{(YYYY|MM|DD)\}", "*", log_glob))


def _load_or_infer_config(config_path: Optional[str], log_glob: str):
    """The config at `config_path` (checked before anything heavy is
    imported), else one inferred from the logs."""
    from mtrank.base import config as config_lib

    if config_path:
        return config_lib.load_config(config_path)
    from mtrank.pipeline import config_inference

    config = config_inference.infer_config(log_glob, explain=print)
    print(f"no --config: inferred {len(config.features)} features and tasks "
          f"{[t.name for t in config.tasks]} from the logs (see `mtrank init-config`)")
    return config


def cmd_simulate(args) -> int:
    from mtrank.simulator import logs as simulator

    summary = simulator.simulate(args.out, impressions=args.impressions, days=args.days,
                                 seed=args.seed, shuffle_feedback=args.shuffle_feedback)
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    print(f"logs: {os.path.join(args.out, simulator.EVENT_FILE_GLOB)}")
    return 0


def cmd_init_config(args) -> int:
    _check_local_logs(args.logs)
    from mtrank.base import config as config_lib
    from mtrank.pipeline import config_inference

    config = config_inference.infer_config(args.logs, model_name=args.model_name,
                                           explain=print)
    config_lib.save_config(config, args.out)
    print(f"wrote {args.out}: features {[f.name for f in config.features]}, "
          f"tasks {[t.name for t in config.tasks]}")
    return 0


def cmd_config_schema(args) -> int:
    from mtrank.base import config as config_lib

    text = json.dumps(config_lib.json_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out} (docs/config.md: pointing an editor at it)")
    return 0


def _date(text: str) -> datetime.date:
    """A --span date (its span number is computed once the arguments are
    checked: components.spans imports Beam and TFX)."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def cmd_run(args) -> int:
    _check_local_logs(args.logs)
    config = _load_or_infer_config(args.config, args.logs)
    from mtrank.base import layout
    from mtrank.components import spans
    from mtrank.pipeline import local_runner
    from mtrank.reporting import run_summary
    from mtrank.simulator import truth

    summary = local_runner.run(
        args.logs, args.work_dir, config, beam_pipeline_args=args.beam_arg or None,
        verbose=args.verbose, from_component=args.only or getattr(args, "from"),
        to_component=args.only,
        span=spans.span_of_date(args.span) if args.span is not None else -1,
        schema_file=args.schema)
    if truth.add_truth_auc(summary, args.logs, config):
        local_runner.write_summary(args.work_dir, summary)
    print()
    print(run_summary.format_table(summary))
    print(f"summary: {layout.summary_path(args.work_dir)}")
    if summary["error"]:
        print(f"run failed: {summary['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_compile(args) -> int:
    if not args.config:  # inferring the config reads the logs here
        _check_local_logs(args.logs)
    config = _load_or_infer_config(args.config, args.logs)
    from mtrank.kubeflow import runner

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


def cmd_report(args) -> int:
    from mtrank.reporting import report

    text = report.write_report(args.work_dir, args.out)
    print(text)
    print(f"report: {args.out}")
    return 0


def cmd_schema(args) -> int:
    from mtrank.reporting import report

    source = report.export_schema(args.work_dir, args.out)
    print(f"wrote {args.out} (the schema of {source}): curate it, keep it in your repository "
          "and pass it with `mtrank run --schema` or validation.schema")
    return 0


def cmd_tensorboard(args) -> int:
    from mtrank.reporting import training_logs

    runs = training_logs.model_run_dirs(args.work_dir, limit=args.runs)
    command = training_logs.tensorboard_command(runs, args.port)
    for name, directory in runs:
        print(f"{name}: {directory}")
    print(training_logs.format_command(command))
    if args.launch:
        os.execv(command[0], command)
    return 0


def cmd_inspect(args) -> int:
    from mtrank.reporting import inspect_mlmd

    print(inspect_mlmd.inspect(args.work_dir))
    return 0


def cmd_demo(args) -> int:
    from mtrank.cli import demo

    return demo.run_demo(args.work_dir, impressions=args.impressions, days=args.days,
                         verbose=args.verbose)


def cmd_serve(args) -> int:
    if bool(args.model_base) == bool(args.model_config_file):
        raise ValueError("give --model-base or --model-config-file (one of them)")
    if args.batching_parameters_file and not args.enable_batching:
        raise ValueError("--batching-parameters-file needs --enable-batching")
    if args.model_base and not os.path.isdir(args.model_base):
        raise FileNotFoundError(f"--model-base {args.model_base!r} is not a directory")
    from mtrank.serving import kernels

    kernels.use_tf_serving_kernels()  # before TensorFlow is imported
    from mtrank.serving import server, server_config

    if args.model_config_file:
        config = server_config.read_model_server_config(args.model_config_file)
    else:
        config = server_config.single_model_config(args.model_name, args.model_base)
    batching = None
    if args.enable_batching:
        batching = (server_config.read_batching_parameters(args.batching_parameters_file)
                    if args.batching_parameters_file else server_config.BatchingParameters())
    intra_op = args.tensorflow_intra_op_parallelism
    inter_op = args.tensorflow_inter_op_parallelism
    workers = server.DEFAULT_WORKERS if args.workers is None else args.workers
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    return server.serve_forever(config, server.ServerOptions(
        host=args.host, port=args.port, rest_port=args.rest_port or None,
        max_workers=args.max_workers, poll_interval_s=args.poll_seconds, batching=batching,
        tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
        grace_s=args.grace_seconds,
        intra_op_threads=server.DEFAULT_INTRA_OP_THREADS if intra_op is None else intra_op,
        inter_op_threads=server.DEFAULT_INTER_OP_THREADS if inter_op is None else inter_op),
        workers=workers)


def cmd_predict(args) -> int:
    _check_local_logs(args.logs)
    from mtrank.serving import client

    root_certificates = None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            root_certificates = f.read()
    client.print_predictions(args.target, args.logs, limit=args.limit,
                             model_name=args.model_name, batch_size=args.batch_size,
                             signature=args.signature, timeout_s=args.timeout_seconds,
                             retries=args.retries, root_certificates=root_certificates)
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
    p.add_argument("--shuffle-feedback", metavar="TYPE",
                   help="move this feedback type's events to random impressions (its task's "
                        "labels become noise), to see the validation gates stop a bad model")
    p.set_defaults(func=cmd_simulate)

    p = commands.add_parser("init-config", help="infer a config from logs, for editing")
    p.add_argument("--logs", required=True, help="glob of log files")
    p.add_argument("--out", required=True, help="YAML file to write")
    p.add_argument("--model-name", default="mtrank")
    p.set_defaults(func=cmd_init_config)

    p = commands.add_parser("config-schema", help="the config's JSON Schema, for editors")
    p.add_argument("--out", help="JSON file to write (default: stdout)")
    p.set_defaults(func=cmd_config_schema)

    p = commands.add_parser("run", help="run the pipeline locally")
    p.add_argument("--logs", "--input", dest="logs", required=True, metavar="GLOB",
                   help="glob of log files; daily partitions as a glob with {YYYY}-{MM}-{DD} "
                        "(each run ingests one day and trains on the last "
                        "split.window_spans); or the CSV / TFRecord files (or their "
                        "directory) when the config's input.format is csv / tfrecord")
    p.add_argument("--span", type=_date, metavar="YYYY-MM-DD",
                   help="with daily partitions: the day to ingest (default: the newest whose "
                        "following days, for late feedback, are present)")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--config", help="YAML config (default: inferred from the logs)")
    p.add_argument("--schema", metavar="FILE",
                   help="curated schema (text proto) to import instead of inferring one "
                        "(default: the config's validation.schema); see `mtrank schema`")
    p.add_argument("--beam-arg", action="append",
                   help="Beam pipeline argument, repeatable (default --direct_num_workers=1)")
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

    p = commands.add_parser("tensorboard", help="TensorBoard over the newest Trainer runs' logs")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--runs", type=int, default=5, help="how many of the newest runs")
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--launch", action="store_true",
                   help="start TensorBoard (on 127.0.0.1) instead of only printing the command")
    p.set_defaults(func=cmd_tensorboard)

    p = commands.add_parser("inspect", help="runs, executions, artifacts and lineage from MLMD")
    p.add_argument("--work-dir", required=True)
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("report", help="HTML report of the last run: per task and slice "
                                           "candidate vs baseline, plots, data checks, lineage")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out", default="report.html", help="HTML file to write")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("schema", help="export the last run's schema for curation")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out", required=True, help="schema text proto to write")
    p.set_defaults(func=cmd_schema)

    p = commands.add_parser("demo", help="simulate logs, run, serve and predict, end to end")
    p.add_argument("--work-dir", default="demo")
    p.add_argument("--impressions", type=int, default=50000)
    p.add_argument("--days", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("serve", help="serve pushed models over the TF Serving gRPC and "
                                          "REST APIs")
    p.add_argument("--model-base",
                   help="model base directory, e.g. WORK/serving_model/mtrank (one model)")
    p.add_argument("--model-name", default="mtrank")
    p.add_argument("--model-config-file",
                   help="TF Serving ModelServerConfig (text format), e.g. serving/models.config")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--rest-port", type=int, default=8501,
                   help="HTTP/JSON (REST) port, with Prometheus metrics at "
                        "/monitoring/prometheus/metrics (0: no REST)")
    p.add_argument("--enable-batching", action="store_true",
                   help="merge concurrent requests into one model call")
    p.add_argument("--batching-parameters-file",
                   help="TF Serving BatchingParameters (text format), e.g. "
                        "serving/batching_parameters.txt")
    p.add_argument("--poll-seconds", type=float, default=1.0,
                   help="how often the model directories are checked for new versions")
    p.add_argument("--tls-cert", help="PEM server certificate (with --tls-key: TLS only)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics over HTTP on this port (same host)")
    p.add_argument("--max-workers", type=int, default=64, help="gRPC handler threads")
    p.add_argument("--workers", type=int,
                   help="server processes sharing the ports (SO_REUSEPORT), each with its own "
                        "copy of the models (default 2, measured best on 2 CPUs; see "
                        "docs/serving.md)")
    p.add_argument("--tensorflow-intra-op-parallelism", type=int,
                   help="threads one op may use (0: TensorFlow picks; default 1, measured "
                        "fastest for ranking models, see docs/serving.md)")
    p.add_argument("--tensorflow-inter-op-parallelism", type=int,
                   help="ops of one model call run at once (0: TensorFlow picks; "
                        "negative: all in the thread of the call; default -1, measured "
                        "fastest, see docs/serving.md)")
    p.add_argument("--grace-seconds", type=float, default=10.0,
                   help="on SIGTERM, how long requests in flight may take to finish")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("predict", help="score the impressions of a log file")
    p.add_argument("--target", required=True, help="HOST:PORT of a TF Serving API server")
    p.add_argument("--logs", required=True, help="a JSON Lines (optionally gzip) log file")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--model-name", default="mtrank")
    p.add_argument("--signature", default="serving_default",
                   choices=["serving_default", "predict_raw"],
                   help="send tf.Examples (serving_default) or raw feature tensors")
    p.add_argument("--batch-size", type=int, default=256, help="candidates per request")
    p.add_argument("--timeout-seconds", type=float, default=10.0,
                   help="deadline for the whole scoring")
    p.add_argument("--retries", type=int, default=3,
                   help="retries of a request answered UNAVAILABLE or RESOURCE_EXHAUSTED")
    p.add_argument("--tls-ca", help="PEM certificate(s) to verify a TLS server with")
    p.set_defaults(func=cmd_predict)

    # On every command, whoever adds it: one flag that shows everything.
    for command_parser in commands.choices.values():
        command_parser.add_argument(
            "-v", "--verbose", action="store_true",
            help="show everything: TFX's own logs (mtrank run, demo) and the stack's "
                 "known-harmless warnings, hidden by default (cli/quiet.py)")
    return parser


@contextlib.contextmanager
def _sys_argv_without_arguments():
    """TFX's Beam executors parse sys.argv with absl's flags (known_only):
    the command's arguments are not theirs, and absl reads `-v` as its
    --verbosity, taking the next argument as its value."""
    arguments, sys.argv[1:] = sys.argv[1:], []
    try:
        yield
    finally:
        sys.argv[1:] = arguments


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mtrank.base.config import ConfigError

    with _sys_argv_without_arguments(), quiet.known_noise_filtered(enabled=not args.verbose):
        try:
            return args.func(args)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            print(f"mtrank {args.command}: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
