"""`mtrank demo`: the whole path once, on simulated logs.

Simulate logs -> run the pipeline with the inferred config -> serve the
pushed model on a free loopback port -> score held-out impressions through
the stock TF Serving stubs -> print the summary.
"""
from __future__ import annotations

import glob
import os

from mtrank.pipeline import config_inference, local_runner
from mtrank.reporting import run_summary
from mtrank.simulator import logs as simulator


def run_demo(work_dir: str, impressions: int, days: int, seed: int = 0) -> int:
    from mtrank.serving import client, server

    logs_dir = os.path.join(work_dir, "logs")
    print(f"== simulating {impressions} impressions over {days} days into {logs_dir}")
    simulator.simulate(logs_dir, impressions=impressions, days=days, seed=seed)
    log_glob = os.path.join(logs_dir, simulator.EVENT_FILE_GLOB)

    config = config_inference.infer_config(log_glob)
    print(f"== running the pipeline (inferred config: tasks {[t.name for t in config.tasks]})")
    summary = local_runner.run(log_glob, os.path.join(work_dir, "run"), config)
    print()
    print(run_summary.format_table(summary))
    if summary["error"] or summary["pushed_version"] is None:
        print(f"demo stopped: {summary['error'] or 'the model was not blessed, so not pushed'}")
        return 1

    model_base = local_runner.serving_model_dir(os.path.join(work_dir, "run"), config.model_name)
    running = server.serve(model_base, model_name=config.model_name, port=0)
    port = running.port
    try:
        # The last file can hold only late feedback; score the last day shown.
        last_day = next(path for path in sorted(glob.glob(log_glob), reverse=True)
                        if client.read_impressions(path, limit=1))
        print(f"\n== serving {model_base} on 127.0.0.1:{port}; scoring impressions of {last_day}")
        client.print_predictions(f"127.0.0.1:{port}", last_day, limit=8,
                                 model_name=config.model_name)
    finally:
        running.stop()
    print(f"\nsummary: {os.path.join(work_dir, 'run', local_runner.SUMMARY_FILE)}")
    print(f"serve it yourself: mtrank serve --model-base {model_base}")
    return 0
