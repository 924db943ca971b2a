"""Simulator benchmark: each architecture on simulated logs, per-task AUC
beside the truth AUC (the simulator's generating probabilities).

    .venv/bin/python benchmarks/simulator.py [--impressions 200000] [--days 14]
        [--models shared_bottom,mmoe,cgc,ple,shared_bottom+position,ple+position]
        [--work DIR] [--out FILE.json]

`mtrank simulate` logs (written once under --work, reused later), the config
`mtrank init-config` infers from them, and the real pipeline up to Transform
(LogExampleGen with its time split: the last day is eval), once. Then each
model, `model.architecture` = the name (`+position`: with a position-bias
tower on click, `model.position_tasks`), is trained by the trainer's own
`train_model` and scored by AUC on the eval split.

truth: the AUC of the generating probabilities on the same labels (p_<task>),
the ceiling for a model that sees position. truth (no position): of
p_click_no_position, the ceiling for a position-free score, which is what
every model serves; the position tower aims at it.

Prints a Markdown table; --out writes {model: {task: auc}} as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

from mtrank.base import config as config_lib  # noqa: E402

DEFAULT_MODELS = "shared_bottom,mmoe,cgc,ple,shared_bottom+position,ple+position"
POSITION_SUFFIX = "+position"
SIMULATED_MARKER = "simulated.json"
TRUTH = "truth"
TRUTH_NO_POSITION = "truth (no position)"


def ensure_logs(work_dir: str, impressions: int, days: int, seed: int) -> str:
    """Simulated logs under work_dir/logs, written once per (impressions,
    days, seed); returns their glob."""
    from mtrank.simulator import logs as simulator

    logs_dir = os.path.join(work_dir, "logs")
    marker = os.path.join(logs_dir, SIMULATED_MARKER)
    wanted = {"impressions": impressions, "days": days, "seed": seed}
    if not (os.path.exists(marker) and json.load(open(marker)) == wanted):
        simulator.simulate(logs_dir, impressions=impressions, days=days, seed=seed)
        with open(marker, "w") as f:
            json.dump(wanted, f)
    return os.path.join(logs_dir, simulator.EVENT_FILE_GLOB)


def model_config(config: config_lib.Config, name: str) -> config_lib.Config:
    architecture = name[:-len(POSITION_SUFFIX)] if name.endswith(POSITION_SUFFIX) else name
    if architecture not in config_lib.ARCHITECTURES:
        raise ValueError(f"--models: unknown architecture {architecture!r}; known: "
                         f"{list(config_lib.ARCHITECTURES)}")
    if not name.endswith(POSITION_SUFFIX):
        return quality.with_model(config, architecture)
    return quality.with_model(config, architecture, position_tasks=["click"])


def truth_aucs(log_glob: str, outputs: quality.TransformOutputs,
               config: config_lib.Config) -> Dict[str, Dict[str, float]]:
    from mtrank.simulator import logs as simulator
    from mtrank.simulator import truth

    truth_file = os.path.join(os.path.dirname(log_glob), simulator.TRUTH_FILE_NAME)
    by_task = truth.truth_auc(truth_file, outputs.examples, config)
    rows: Dict[str, Dict[str, float]] = {TRUTH: {}, TRUTH_NO_POSITION: {}}
    for task, aucs in by_task.items():
        rows[TRUTH][task] = aucs["truth_auc"]
        if "truth_auc_no_position" in aucs:
            rows[TRUTH_NO_POSITION][task] = aucs["truth_auc_no_position"]
    return rows


def run(work_dir: str, impressions: int, days: int, models: List[str], seed: int = 0) -> dict:
    from mtrank.pipeline import config_inference

    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    log_glob = ensure_logs(work_dir, impressions, days, seed)
    config = config_inference.infer_config(log_glob)
    configs = {name: model_config(config, name) for name in models}  # fail before training
    # One Transform for every model: with `position` passed through when a
    # position tower needs it (the other models do not read it).
    transform_config = next((c for c in configs.values() if c.model.position_tasks), config)
    outputs = quality.transform_once(log_glob, os.path.join(work_dir, "pipeline"),
                                     transform_config)
    aucs: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}
    for name, model_cfg in configs.items():
        started = time.time()
        aucs[name] = quality.train_and_score(
            outputs, model_cfg, os.path.join(work_dir, "runs", name.replace("+", "_")), "eval")
        seconds[name] = round(time.time() - started, 1)
        print(f"{name}: {aucs[name]} ({seconds[name]} s)", flush=True)
    aucs.update(truth_aucs(log_glob, outputs, config))
    return {"aucs": aucs, "train_s": seconds, "transform_s": outputs.transform_s,
            "impressions": impressions, "days": days,
            "tasks": [t.name for t in config.tasks if t.type == "binary"],
            "code": quality.code_version()}


def format_table(result: dict) -> str:
    tasks = result["tasks"]
    rows = [[name] + [aucs.get(task, "") for task in tasks]
            + [f"{result['train_s'][name]:.1f}" if name in result["train_s"] else ""]
            for name, aucs in result["aucs"].items()]
    return "\n".join([
        quality.markdown_table(["model"] + [f"{t} AUC" for t in tasks] + ["train+score s"], rows),
        "",
        f"{result['impressions']:,} simulated impressions over {result['days']} days; AUC on the "
        "eval split (last day). Served scores are position-free: compare click with "
        f"'{TRUTH_NO_POSITION}'; '{TRUTH}' is the ceiling for a score that knows the position.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impressions", type=int, default=200000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--work", default=os.path.join(quality.ROOT, "work", "simulator_benchmark"))
    parser.add_argument("--out", help="JSON file: {model: {task: auc}}")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    result = run(args.work, args.impressions, args.days, models, args.seed)
    quality.report(result, format_table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
