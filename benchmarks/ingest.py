"""Ingestion benchmark: our LogExampleGen against a bare Beam pipeline.

    .venv/bin/python benchmarks/ingest.py [--events 1000000,5000000] [--work DIR]
                                          [--out FILE.json] [--modes in_memory,multi_processing]
                                          [--repeats N] [--max-rss-gb GB]

For each size, simulator logs of about that many events (lines) are written
once under --work (and reused by later runs), then two Beam pipelines run on
them, each in its own subprocess, on the DirectRunner with the same options:

  ours  the LogExampleGen executor (`components.log_example_gen.Executor`, driven
        directly, without TFX's orchestrator): parse, join feedback with its
        impression by (request_id, item_id), label, split by time, write
        gzipped train/eval TFRecords, dead letters and counts.
  bare  ReadFromText (gzip) -> json.loads -> tf.train.Example -> WriteToTFRecord
        (gzip): the least any pipeline turning these files into TFRecords does.

Wall time is the Beam pipeline alone (construction, run, wait), measured in the
subprocess; interpreter start-up and imports are not in it. Peak RSS is the
subprocess's own (`wait4` ru_maxrss: the largest single process, which for
multi_processing includes the largest worker), plus the peak of the summed RSS
of its process tree sampled every 0.1 s (workers share library pages, so the
sum overstates what multi_processing really needs). With --repeats > 1 the two
pipelines alternate which goes first (ABBA...) and the table shows medians.

Memory guard: the in-memory DirectRunner holds the data between stages in RAM,
so a large size can exhaust the machine. A run whose process tree passes
--max-rss-gb (default 80% of RAM) is killed, and a run whose peak RSS,
extrapolated linearly from the same pipeline at a smaller size, would pass it
is not started; the table says so instead of giving numbers.

Prints a Markdown table; --out also writes every run as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The simulator writes about this many events (lines) per impression.
EVENTS_PER_IMPRESSION = 1.16
DEFAULT_EVENTS = "1000000,5000000"
DEFAULT_DAYS = 14
PIPELINES = ("bare", "ours")
MODES = {
    # The DirectRunner options of `mtrank run` by default.
    "in_memory": ["--runner=DirectRunner", "--direct_num_workers=1"],
    "multi_processing": ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                         "--direct_num_workers=2"],
}
SIM_MARKER = "simulated.json"
CONFIG_FILE = "config.json"
SAMPLE_INTERVAL_S = 0.1


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Keras 2 before TensorFlow is imported, as everywhere in this project.
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONWARNINGS"] = "ignore"
    return env


# --- children ----------------------------------------------------------------


def _child_simulate(logs_dir: str, events: int, days: int, seed: int) -> None:
    from mtrank.pipeline import config_inference
    from mtrank.simulator import logs as simulator

    impressions = max(1, round(events / EVENTS_PER_IMPRESSION))
    started = time.perf_counter()
    summary = simulator.simulate(logs_dir, impressions=impressions, days=days, seed=seed)
    log_glob = os.path.join(logs_dir, simulator.EVENT_FILE_GLOB)
    config = config_inference.infer_config(log_glob)
    with open(os.path.join(logs_dir, CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    marker = {"target_events": events, "impressions": impressions, "days": days, "seed": seed,
              "events": summary["events"], "glob": log_glob,
              "simulate_s": round(time.perf_counter() - started, 1)}
    # Written last: its presence means the logs and config are complete.
    with open(os.path.join(logs_dir, SIM_MARKER), "w") as f:
        json.dump(marker, f, indent=2)


def _own_max_rss_mb() -> float:
    """This process's peak RSS so far: after the imports, before the pipeline."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_ours(log_glob: str, config_json: str, output: str, beam_args: List[str]) -> dict:
    import apache_beam as beam
    from tfx.types import standard_artifacts

    from mtrank.base import counts, layout
    from mtrank.components import log_example_gen

    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(output, "examples")
    dead_letters = log_example_gen.DeadLetters()
    dead_letters.uri = os.path.join(output, "dead_letters")
    # The executor gets its Beam pipeline from this function rather than from
    # beam_pipeline_args, so both pipelines run with exactly the same argv and
    # TFX does not build its tfx_ephemeral sdist (see docs/scaling.md).
    context = log_example_gen.Executor.Context(
        tmp_dir=os.path.join(output, "tmp"), unique_id="bench",
        make_beam_pipeline_fn=lambda: beam.Pipeline(argv=beam_args))
    executor = log_example_gen.Executor(context)
    startup_rss_mb = _own_max_rss_mb()
    started = time.perf_counter()
    executor.Do({}, {"examples": [examples], "dead_letters": [dead_letters]},
                {"input_glob": log_glob, layout.CONFIG_KEY: config_json})
    pipeline_s = time.perf_counter() - started
    ingest_counts = json.loads(examples.get_string_custom_property(counts.COUNTS_PROPERTY))
    return {"pipeline_s": pipeline_s, "lines_read": ingest_counts[counts.LINES_READ],
            "records_written": sum(counts.examples_per_split(ingest_counts).values()),
            "startup_rss_mb": startup_rss_mb}


def _to_example(line: str) -> bytes:
    """A JSON event as a tf.train.Example: every top-level field and every
    feature, strings as bytes, integers as int64, numbers as float, lists by
    their first element's type."""
    import tensorflow as tf

    event = json.loads(line)
    fields = event.pop("features", None) or {}
    fields.update(event)
    example = tf.train.Example()
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            continue
        feature = example.features.feature[name]
        if isinstance(values[0], str):
            feature.bytes_list.value.extend(v.encode("utf-8") for v in values)
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return example.SerializeToString()


def _child_bare(log_glob: str, output: str, beam_args: List[str]) -> dict:
    import apache_beam as beam
    import tensorflow  # noqa: F401 - imported before the clock starts, as in "ours"
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    lines_read = Metrics.counter("bare", "lines_read")

    def convert(line: str) -> bytes:
        lines_read.inc()
        return _to_example(line)

    startup_rss_mb = _own_max_rss_mb()
    started = time.perf_counter()
    pipeline = beam.Pipeline(argv=beam_args)
    _ = (pipeline
         | "ReadLines" >> beam.io.ReadFromText(log_glob)  # gzip from the extension
         | "ToExample" >> beam.Map(convert)
         | "Write" >> beam.io.WriteToTFRecord(os.path.join(output, "data_tfrecord"),
                                              file_name_suffix=".gz"))
    result = pipeline.run()
    result.wait_until_finish()
    pipeline_s = time.perf_counter() - started
    counters = result.metrics().query(MetricsFilter().with_name("lines_read"))["counters"]
    read = sum(c.committed or c.attempted or 0 for c in counters)
    return {"pipeline_s": pipeline_s, "lines_read": read, "records_written": read,
            "startup_rss_mb": startup_rss_mb}


def _run_child(args) -> int:
    if args.child == "simulate":
        _child_simulate(args.logs_dir, args.sim_events, args.days, args.seed)
        return 0
    beam_args = args.beam_args
    if args.child == "ours":
        with open(args.config_file) as f:
            result = _child_ours(args.glob, f.read(), args.output, beam_args)
    else:
        result = _child_bare(args.glob, args.output, beam_args)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


# --- parent ------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _measure(cmd: List[str], log_path: str, max_rss_mb: Optional[float] = None) -> dict:
    """Runs `cmd`, returning its wall time, exit code, wait4 max RSS and the
    sampled peak RSS of its process tree. A tree above `max_rss_mb` is killed
    (the child leads its own process group, so exactly it and its workers)."""
    peak = [0]
    killed = []
    done = threading.Event()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(),
                                cwd=ROOT, start_new_session=True)

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                if max_rss_mb and peak[0] / 2**20 > max_rss_mb and not killed:
                    killed.append(f"killed at {peak[0] / 2**30:.1f} GB RSS "
                                  f"(limit {max_rss_mb / 1024:.1f} GB)")
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                done.wait(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be
            # the maximum over every child this process ever waited for).
            _, status, rusage = os.wait4(proc.pid, 0)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the child is in its own session,
            # so it would outlive us; take its process group down with us.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        finally:
            done.set()
            sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if killed:
        try:  # workers of a killed multi_processing run
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"returncode": proc.returncode, "process_s": time.perf_counter() - started,
            "max_rss_mb": rusage.ru_maxrss / 1024,  # kilobytes on Linux
            "tree_rss_mb": peak[0] / 2**20, "killed": killed[0] if killed else None}


def _script_cmd(*args: str) -> List[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def ensure_logs(work: str, events: int, days: int, seed: int) -> dict:
    """Simulated logs of about `events` events under `work`, written once."""
    logs_dir = os.path.join(work, f"logs-{events}-d{days}-s{seed}")
    marker = os.path.join(logs_dir, SIM_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        _say(f"reusing {info['events']:,} events in {logs_dir}")
        return {**info, "dir": logs_dir, "reused": True}
    os.makedirs(logs_dir, exist_ok=True)
    _say(f"simulating ~{events:,} events into {logs_dir} ...")
    measured = _measure(_script_cmd("--child", "simulate", "--logs-dir", logs_dir,
                                    "--sim-events", str(events), "--days", str(days),
                                    "--seed", str(seed)),
                        os.path.join(logs_dir, "simulate.log"))
    if measured["returncode"] != 0:
        raise RuntimeError(f"simulation failed, see {logs_dir}/simulate.log")
    with open(marker) as f:
        info = json.load(f)
    _say(f"simulated {info['events']:,} events in {info['simulate_s']} s "
         f"(peak RSS {measured['max_rss_mb']:.0f} MB)")
    return {**info, "dir": logs_dir, "reused": False}


def run_one(pipeline: str, mode: str, logs: dict, work: str, tag: str,
            max_rss_mb: float) -> dict:
    run_dir = os.path.join(work, "runs", f"{tag}-{mode}-{pipeline}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    result_file = os.path.join(run_dir, "result.json")
    cmd = _script_cmd("--child", pipeline, "--glob", logs["glob"],
                      "--config-file", os.path.join(logs["dir"], CONFIG_FILE),
                      "--output", os.path.join(run_dir, "output"), "--result", result_file,
                      "--", *MODES[mode])
    measured = _measure(cmd, os.path.join(run_dir, "child.log"), max_rss_mb)
    row = {"pipeline": pipeline, "mode": mode, "events": logs["events"],
           "target_events": logs["target_events"], **measured}
    # Per-run output is only needed while checking the run.
    shutil.rmtree(os.path.join(run_dir, "output"), ignore_errors=True)
    if measured["killed"]:
        row["skipped"] = measured["killed"]
        _say(f"  {pipeline:4s} {mode}: {measured['killed']}")
        return row
    if measured["returncode"] != 0:
        raise RuntimeError(f"{pipeline} ({mode}) failed, see {run_dir}/child.log")
    with open(result_file) as f:
        result = json.load(f)
    if result["lines_read"] != logs["events"]:
        raise RuntimeError(f"{pipeline} read {result['lines_read']} lines, "
                           f"the logs have {logs['events']}")
    row.update(result)
    row["events_per_s"] = logs["events"] / result["pipeline_s"]
    _say(f"  {pipeline:4s} {mode}: {result['pipeline_s']:.1f} s, "
         f"{row['events_per_s']:,.0f} events/s, peak RSS {measured['max_rss_mb']:.0f} MB "
         f"(tree {measured['tree_rss_mb']:.0f} MB)")
    return row


def _projected_rss_mb(runs: List[dict], pipeline: str, mode: str, events: int):
    """Peak tree RSS of `pipeline` at `events`, extrapolated from its largest
    completed run: start-up RSS plus the rest scaled linearly with events.
    Only from a run at least a twentieth of the size (below that, start-up and
    buffers dominate and the slope means nothing)."""
    done = [r for r in runs if (r["pipeline"], r["mode"]) == (pipeline, mode)
            and not r.get("skipped")]
    if not done:
        return None
    largest = max(done, key=lambda r: r["events"])
    if largest["events"] >= events or largest["events"] * 20 < events:
        return None
    startup = min(largest.get("startup_rss_mb", 0), largest["tree_rss_mb"])
    growth = (largest["tree_rss_mb"] - startup) * events / largest["events"]
    return startup + growth, largest["events"]


def summarize(runs: List[dict]) -> List[dict]:
    """One row per (size, mode, pipeline): medians over repeats, and ours/bare."""
    rows = []
    keys = sorted({(r["target_events"], r["mode"]) for r in runs},
                  key=lambda k: (k[0], list(MODES).index(k[1])))
    for target, mode in keys:
        by_pipeline = {}
        for pipeline in PIPELINES:
            group = [r for r in runs if (r["target_events"], r["mode"], r["pipeline"])
                     == (target, mode, pipeline)]
            if not group:
                continue
            skipped = [r for r in group if r.get("skipped")]
            group = [r for r in group if not r.get("skipped")]
            if not group:
                by_pipeline[pipeline] = {
                    "target_events": target, "events": skipped[0]["events"], "mode": mode,
                    "pipeline": pipeline, "repeats": 0, "skipped": skipped[0]["skipped"]}
                continue
            by_pipeline[pipeline] = {
                "target_events": target, "events": group[0]["events"], "mode": mode,
                "pipeline": pipeline, "repeats": len(group),
                "wall_s": statistics.median(r["pipeline_s"] for r in group),
                "events_per_s": statistics.median(r["events_per_s"] for r in group),
                "max_rss_mb": max(r["max_rss_mb"] for r in group),
                "tree_rss_mb": max(r["tree_rss_mb"] for r in group),
            }
        if len(by_pipeline) == 2 and not any("skipped" in r for r in by_pipeline.values()):
            ratio = by_pipeline["ours"]["events_per_s"] / by_pipeline["bare"]["events_per_s"]
            for row in by_pipeline.values():
                row["ours_over_bare"] = ratio
        rows.extend(by_pipeline[p] for p in PIPELINES if p in by_pipeline)
    return rows


def format_table(rows: List[dict]) -> str:
    lines = ["| events | DirectRunner mode | pipeline | wall s | events/s | peak RSS MB "
             "| peak tree RSS MB | ours/bare (events/s) |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['events']:,} | {r['mode']} | {r['pipeline']} | — | — | — | — "
                         f"| not measured: {r['skipped']} |")
            continue
        ratio = f"{r['ours_over_bare']:.2f}x" if r["pipeline"] == "ours" and \
            "ours_over_bare" in r else ""
        lines.append(f"| {r['events']:,} | {r['mode']} | {r['pipeline']} | {r['wall_s']:.1f} "
                     f"| {r['events_per_s']:,.0f} | {r['max_rss_mb']:,.0f} "
                     f"| {r['tree_rss_mb']:,.0f} | {ratio} |")
    return "\n".join(lines)


def _code_version() -> dict:
    """The commit measured, and uncommitted changes to the measured code (the
    ingestion changes under active development, so a table needs its commit).
    Read-only: no optional locks, so a concurrent git user is not disturbed."""
    def git(*args):
        try:
            return subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("diff", "--name-only", "HEAD", "--", "components", "pipeline")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "uncommitted": [path for path in changed.splitlines()
                            if not path.endswith("_test.py")]}


def _format_code(code: dict) -> str:
    text = f"code: {code['commit']}"
    if code["uncommitted"]:
        text += " + uncommitted changes to " + ", ".join(code["uncommitted"])
    if code.get("changed_during_run"):
        text += f" (changed during the run to {_format_code(code['changed_during_run'])})"
    return text


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine() -> dict:
    import psutil

    import apache_beam

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "apache_beam": apache_beam.__version__,
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default=DEFAULT_EVENTS,
                        help=f"comma-separated event counts (default {DEFAULT_EVENTS})")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "mtrank-ingest-bench"),
                        help="logs (kept, reused) and per-run outputs")
    parser.add_argument("--out", help="write the runs and the table rows as JSON here")
    parser.add_argument("--modes", default="in_memory",
                        help=f"comma-separated DirectRunner modes from {list(MODES)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each pipeline per size and mode (order alternates)")
    parser.add_argument("--max-rss-gb", type=float,
                        help="kill (or, projected from a smaller size, skip) a run whose "
                             "process tree would exceed this; default 80%% of RAM")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=0)
    # Internal: one measured pipeline (or the simulation) in a subprocess.
    parser.add_argument("--child", choices=("simulate", "ours", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--logs-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sim-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--glob", help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("beam_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args)
    # SIGTERM unwinds like Ctrl-C, so the running child is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    sizes = [int(float(s)) for s in args.events.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not sizes or args.repeats < 1:
        parser.error(f"bad --modes {unknown}, --events or --repeats")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    import psutil
    max_rss_mb = (args.max_rss_gb * 1024 if args.max_rss_gb
                  else 0.8 * psutil.virtual_memory().total / 2**20)

    started = time.time()
    code = _code_version()
    _say(_format_code(code))
    runs = []
    logs_info = []
    turn = 0  # alternates which pipeline goes first
    for events in sizes:
        logs = ensure_logs(work, events, args.days, args.seed)
        logs_info.append(logs)
        for mode in modes:
            for repeat in range(args.repeats):
                order = PIPELINES if turn % 2 == 0 else PIPELINES[::-1]
                turn += 1
                for pipeline in order:
                    projected = _projected_rss_mb(runs, pipeline, mode, logs["events"])
                    if projected and projected[0] > max_rss_mb:
                        reason = (f"projected {projected[0] / 1024:.0f} GB RSS (from the "
                                  f"{projected[1]:,}-event run) > limit "
                                  f"{max_rss_mb / 1024:.0f} GB")
                        _say(f"  {pipeline:4s} {mode}: skipped, {reason}")
                        row = {"pipeline": pipeline, "mode": mode, "events": logs["events"],
                               "target_events": logs["target_events"], "skipped": reason}
                    else:
                        row = run_one(pipeline, mode, logs, work, f"{events}-r{repeat}",
                                      max_rss_mb)
                    row["repeat"] = repeat
                    runs.append(row)
    rows = summarize(runs)
    code_after = _code_version()
    if code_after != code:
        # Each child imports the code as it is when it starts.
        code["changed_during_run"] = code_after
        _say(f"warning: the code changed during the run ({_format_code(code_after)})")
    table = format_table(rows)
    print(table)
    print()
    print(_format_code(code))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join([os.path.relpath(__file__, ROOT)] +
                                           (argv if argv is not None else sys.argv[1:])),
                       "code": code, "machine": _machine(), "logs": logs_info, "runs": runs,
                       "rows": rows, "table": table, "total_s": round(time.time() - started, 1)},
                      f, indent=2)
    _say(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
