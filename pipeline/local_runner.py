"""Runs the pipeline locally: LocalDagRunner, Beam DirectRunner and SQLite
ML Metadata, all under one work directory (its layout: base/layout.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import List, Optional

from absl import logging as absl_logging
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from mtrank.base import layout
from mtrank.base import config as config_lib
from mtrank.components import eval_config as eval_config_lib
from mtrank.pipeline import pipeline as pipeline_lib
from mtrank.reporting import metadata, run_summary

# Beam's DirectRunner in this process: its multi-processing mode measured
# slower on 2 CPUs (docs/scaling.md, docs/benchmarks.md).
DEFAULT_BEAM_ARGS = ("--direct_num_workers=1",)


class _ProgressPrinter(logging.Handler):
    """Prints one line as each component starts and finishes.

    LocalDagRunner announces components only through its log, so progress is
    read from there rather than by re-implementing its loop.
    """

    def __init__(self, total: int, out=sys.stdout):
        super().__init__(level=logging.INFO)
        self._total, self._done, self._started, self._out = total, 0, {}, out

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "Component %s is running.":
            self._started[record.args[0]] = time.time()
            print(f"[{self._done + 1}/{self._total}] {record.args[0]} ...", file=self._out,
                  flush=True)
        elif record.msg == "Component %s is finished.":
            self._done += 1
            elapsed = time.time() - self._started.get(record.args[0], time.time())
            print(f"[{self._done}/{self._total}] {record.args[0]} done in {elapsed:.1f} s",
                  file=self._out, flush=True)


def _partial_run(pipeline, from_component: Optional[str], to_component: Optional[str]):
    if from_component is None and to_component is None:
        return None
    ids = [component.id for component in pipeline.components]
    for name in (from_component, to_component):
        if name is not None and name not in ids:
            raise ValueError(f"no component {name!r} in the pipeline; components: {ids}")
    return tfx_pipeline.RunOptions(
        from_nodes=[from_component] if from_component else None,
        to_nodes=[to_component] if to_component else None)


@contextlib.contextmanager
def _tfx_logs_as_progress(total: int, verbose: bool):
    """TFX logs every step at INFO through absl. While the pipeline runs,
    those records feed the progress printer; only warnings (or everything,
    if verbose) reach the terminal."""
    absl_logger = absl_logging.get_absl_logger()
    saved = absl_logger.level, absl_logger.propagate, list(absl_logger.handlers)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    absl_logger.handlers = [_ProgressPrinter(total), terminal]
    absl_logger.setLevel(logging.INFO)
    absl_logger.propagate = False
    # The Transform component lowers absl's verbosity to WARNING while it runs,
    # which would hide the announcements of every later component: hold the
    # level at INFO for the duration of the run.
    absl_logger.setLevel = lambda level: None
    try:
        yield
    finally:
        del absl_logger.setLevel  # back to the class's method
        absl_logger.setLevel(saved[0])
        absl_logger.propagate = saved[1]
        absl_logger.handlers = saved[2]


def run(log_glob: str, work_dir: str, config: config_lib.Config,
        beam_pipeline_args: Optional[List[str]] = None, verbose: bool = False,
        from_component: Optional[str] = None, to_component: Optional[str] = None,
        span: int = -1, schema_file: Optional[str] = None) -> dict:
    """Runs the pipeline once on `log_glob` (logs, or the CSV / TFRecord
    files of `config.input.format`) and returns (and writes) its summary.
    With daily partitions, `span` is the day to ingest (days since
    1970-01-01), -1 the newest complete one. `schema_file` is a curated
    schema to import (default: the config's validation.schema, else inferred).

    A failing component (bad data, a bug) still yields a summary of what ran,
    with the error under "error"; the caller decides the exit code.
    """
    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    pipeline = pipeline_lib.create_pipeline(
        pipeline_name=config.model_name,
        pipeline_root=layout.pipeline_root(work_dir),
        log_glob=os.path.abspath(log_glob) if "://" not in log_glob else log_glob,
        config=config,
        eval_config=eval_config_lib.make_eval_config(config),
        serving_model_dir=layout.serving_model_dir(work_dir, config.model_name),
        metadata_connection_config=metadata.connection_config(work_dir),
        beam_pipeline_args=beam_pipeline_args or list(DEFAULT_BEAM_ARGS),
        span=span,
        schema_file=os.path.abspath(schema_file) if schema_file else None,
    )
    since = (metadata.last_execution_id(metadata.open_store(work_dir))
             if metadata.exists(work_dir) else 0)

    run_options = _partial_run(pipeline, from_component, to_component)
    started = time.time()
    error = None
    with _tfx_logs_as_progress(len(pipeline.components), verbose):
        try:
            tfx.orchestration.LocalDagRunner().run(pipeline, run_options=run_options)
        except Exception as e:  # noqa: BLE001 - reported in the summary; the CLI exits 1
            error = f"{type(e).__name__}: {e}"
    summary = run_summary.collect(metadata.open_store(work_dir, create=True), since)
    summary["wall_s"]["total"] = round(time.time() - started, 1)
    summary["error"] = error
    summary["data_anomalies"] = run_summary.data_anomalies(error)
    write_summary(work_dir, summary)
    return summary


def write_summary(work_dir: str, summary: dict) -> None:
    with open(layout.summary_path(work_dir), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
