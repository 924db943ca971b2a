"""`mtrank demo`: the whole path once, on simulated logs.

Simulate logs -> run the pipeline with the inferred config -> serve the
pushed model on free loopback ports -> score held-out impressions through
the stock TF Serving stubs (gRPC) and again through the REST API -> print the
summary.
"""
from __future__ import annotations

import glob
import json
import math
import os
import urllib.request
from typing import Any, List, Mapping, Sequence

from mtrank.base import layout, serving_contract
from mtrank.pipeline import config_inference, local_runner
from mtrank.reporting import run_summary
from mtrank.simulator import logs as simulator
from mtrank.simulator import truth

# Impressions of the last day scored through the server and printed.
SCORED_IMPRESSIONS = 8


def format_ranked_predictions(rows, score_output: str) -> str:
    """The demo's table of (request_id, item_id, {output: value}) rows: each
    task's probability, the fused score `score_output` and its rank among the
    rows (1 = the highest score, the impression a ranking shows first; ties
    share a rank). The fused score combines several probabilities (by default
    their product), far below 0.0001: its rank is what a reader compares."""
    tasks = sorted({name for _, _, scores in rows for name in scores} - {score_output})
    fused = [scores[score_output] for _, _, scores in rows]
    ranks = [1 + sum(other > value for other in fused) for value in fused]
    table = [["request_id", "item_id", *tasks, score_output, "rank"]] + [
        [request_id, item_id, *(f"{scores[task]:.4f}" for task in tasks),
         f"{scores[score_output]:.2e}", str(rank)]
        for (request_id, item_id, scores), rank in zip(rows, ranks)
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in table)


def rest_regress(rest_port: int, model_name: str, candidates: Sequence[Mapping[str, Any]]
                 ) -> List[float]:
    """The fused score of each candidate (a dict of features) from the REST
    API's :regress, as a client without TensorFlow asks for it."""
    body = json.dumps({"signature_name": serving_contract.REGRESS, "examples": list(candidates)})
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v1/models/{model_name}:regress", data=body.encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["results"]


def run_demo(work_dir: str, impressions: int, days: int, seed: int = 0,
             verbose: bool = False) -> int:
    """`verbose`: TFX's own logs too (mtrank demo -v)."""
    from mtrank.serving import client, server

    logs_dir = os.path.join(work_dir, "logs")
    print(f"== simulating {impressions} impressions over {days} days into {logs_dir}")
    simulator.simulate(logs_dir, impressions=impressions, days=days, seed=seed)
    log_glob = os.path.join(logs_dir, simulator.EVENT_FILE_GLOB)

    config = config_inference.infer_config(log_glob)
    print(f"== running the pipeline (inferred config: tasks {[t.name for t in config.tasks]})")
    run_dir = os.path.join(work_dir, "run")
    summary = local_runner.run(log_glob, run_dir, config, verbose=verbose)
    if truth.add_truth_auc(summary, log_glob, config):
        local_runner.write_summary(run_dir, summary)
    print()
    print(run_summary.format_table(summary))
    if summary["error"] or summary["pushed_version"] is None:
        print(f"demo stopped: {summary['error'] or 'the model was not blessed, so not pushed'}")
        return 1

    model_base = layout.serving_model_dir(run_dir, config.model_name)
    running = server.serve(model_base, model_name=config.model_name, port=0, rest_port=0)
    port, rest_port = running.port, running.rest_port
    try:
        # The last file can hold only late feedback; score the last day shown.
        last_day = next(path for path in sorted(glob.glob(log_glob), reverse=True)
                        if client.read_impressions(path, limit=1))
        rows = client.predict_logs(f"127.0.0.1:{port}", last_day, limit=SCORED_IMPRESSIONS,
                                   model_name=config.model_name)
        over_rest = rest_regress(rest_port, config.model_name, [
            client.impression_features(event)
            for event in client.read_impressions(last_day, limit=SCORED_IMPRESSIONS)])
    finally:
        running.stop()
    score_output = serving_contract.fused_score_output(config.output_names)
    print(f"\n== served {model_base} on 127.0.0.1:{port} (gRPC) and 127.0.0.1:{rest_port} "
          f"(REST); scored the first {len(rows)} impressions of {last_day}")
    print(f"== {score_output}: the fused ranking score (serving.score); rank: its order among "
          f"these {len(rows)}, 1 = ranked first")
    print(format_ranked_predictions(rows, score_output))
    same = len(over_rest) == len(rows) and all(
        math.isclose(rest_score, scores[score_output], rel_tol=1e-6)
        for rest_score, (_, _, scores) in zip(over_rest, rows))
    print(f"== the same impressions as JSON features, POST /v1/models/{config.model_name}:regress "
          f"over REST: {score_output} {'the same' if same else 'DIFFERENT'} as over gRPC")
    print(f"\nsummary: {layout.summary_path(run_dir)}")
    print(f"serve it yourself: mtrank serve --model-base {model_base} (gRPC on 8500, REST on "
          "8501)")
    return 0
