"""Simulator benchmark: models on simulated logs, per-task AUC beside the
truth AUC (the simulator's generating probabilities) and beside the
in-memory reference (benchmarks/reference.py) fit on the same examples.

    .venv/bin/python benchmarks/simulator.py [--impressions 200000] [--days 14]
        [--seed 0] [--models ple,shared_bottom,reference] [--work DIR] [--out FILE.json]

`mtrank simulate` logs (written once under --work, reused later), the config
`mtrank init-config` infers from them, and the real pipeline up to Transform
(LogExampleGen with its time split: the last day is eval), once. Then each
--models entry is trained by the trainer's own `train_model` and scored by
AUC on the eval split. An entry is `reference`, or an architecture with
variants joined by `+`:
  position       a position-bias tower on click (model.position_tasks)
  independent    no funnels: every task its own tower (no depends_on)
  alone          one model per task, trained without the others (a row each)
  FIELD=VALUE    a model or training field, the value read as YAML,
                 e.g. ple+user_item_dot=true+embedding_l2=1e-5
  FEATURE.FIELD=VALUE  a feature's field, e.g. user_id.embedding_dim=64

truth: the AUC of the generating probabilities on the same labels (p_<task>),
the ceiling for a model that sees position. truth (no position): of
p_<task>_no_position, the ceiling for a position-free score, which is what
every model serves; the gaps in the table are to it. truth, users fitted:
the truth with every user's latent vectors fitted from the train days
(simulator/ceiling.py), which a model that learnt all else perfectly could
reach; the truth itself is out of reach, since users have about 20
impressions each at any size of the logs.

Prints a Markdown table; --out writes {model: {task: auc}} as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Dict, List

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

from mtrank.base import config as config_lib  # noqa: E402

DEFAULT_MODELS = "ple,shared_bottom,reference"
# ARCHITECTURE+VARIANT+...: position (a position-bias tower on click),
# independent (no funnels), alone (each task trained by itself), FIELD=VALUE
# (a model or training field, the value as YAML).
VARIANTS = ("position", "independent", "alone", "FIELD=VALUE", "FEATURE.FIELD=VALUE")
ALONE = "alone"
REFERENCE = "reference"
SIMULATED_MARKER = "simulated.json"
TRUTH = "truth"
TRUTH_NO_POSITION = "truth (no position)"
CEILING = "truth, users fitted"
CEILING_NO_POSITION = "truth, users fitted (no position)"
NOT_TRAINED = (TRUTH, TRUTH_NO_POSITION, CEILING, CEILING_NO_POSITION)


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


def _variant_raw(config: config_lib.Config, tokens: List[str]) -> dict:
    """The config as a dict with a variant's tokens applied (see VARIANTS)."""
    raw = config.to_dict()
    for token in tokens:
        if token == "position":
            raw["model"]["position_tasks"] = ["click"]
        elif token == "independent":
            for task in raw["tasks"]:
                task.pop("depends_on", None)
        elif "=" in token:
            field, value = token.split("=", 1)
            if "." in field:  # FEATURE.FIELD
                name, field = field.split(".", 1)
                target = next((f for f in raw["features"] if f["name"] == name), None)
                if target is None:
                    raise ValueError(f"--models: no feature {name!r}")
            else:
                section = next((s for s in ("model", "training") if field in raw[s]), None)
                if section is None:
                    raise ValueError(f"--models: {field!r} is not a model or training field")
                target = raw[section]
            target[field] = yaml.safe_load(value)
        else:
            raise ValueError(f"--models: unknown variant {token!r}; known: {VARIANTS}")
    return raw


def model_configs(config: config_lib.Config, name: str) -> Dict[str, config_lib.Config]:
    """{row name: config} of one --models entry: ARCHITECTURE[+VARIANT...];
    `+alone` makes one row per binary task, trained without the others."""
    architecture, *tokens = name.split("+")
    if architecture not in config_lib.ARCHITECTURES:
        raise ValueError(f"--models: unknown architecture {architecture!r}; known: "
                         f"{list(config_lib.ARCHITECTURES)} or {REFERENCE!r}")
    alone = ALONE in tokens
    tokens = [t for t in tokens if t != ALONE]
    raw = _variant_raw(quality.with_model(config, architecture), tokens)
    if not alone:
        return {name: config_lib.config_from_dict(raw)}
    configs = {}
    for task in raw["tasks"]:
        if task["type"] != "binary":
            continue
        only = {**raw, "tasks": [{k: v for k, v in task.items() if k != "depends_on"}]}
        only["model"] = {**raw["model"], "position_tasks": [
            t for t in raw["model"].get("position_tasks", []) if t == task["name"]]}
        only.pop("serving", None)  # its score may weigh the tasks left out
        configs[f"{name} ({task['name']})"] = config_lib.config_from_dict(only)
    return configs


def truth_aucs(log_glob: str, impressions: int, days: int, seed: int,
               outputs: quality.TransformOutputs,
               config: config_lib.Config) -> Dict[str, Dict[str, float]]:
    """Rows of the truth's AUCs and of the learnable ceiling's
    (simulator/ceiling.py: the truth with the users' vectors fitted from the
    train days), with and without the position."""
    from mtrank.simulator import ceiling
    from mtrank.simulator import logs as simulator
    from mtrank.simulator import truth

    logs_dir = os.path.dirname(log_glob)
    files = {(TRUTH, TRUTH_NO_POSITION): os.path.join(logs_dir, simulator.TRUTH_FILE_NAME),
             (CEILING, CEILING_NO_POSITION): ceiling.write_ceiling(
                 logs_dir, impressions, days, seed, config.split.eval_days)}
    rows: Dict[str, Dict[str, float]] = {}
    for (with_position, no_position), path in files.items():
        rows[with_position], rows[no_position] = {}, {}
        for task, aucs in truth.truth_auc(path, outputs.examples, config).items():
            rows[with_position][task] = aucs["truth_auc"]
            if "truth_auc_no_position" in aucs:
                rows[no_position][task] = aucs["truth_auc_no_position"]
    return rows


def run(work_dir: str, impressions: int, days: int, models: List[str], seed: int = 0) -> dict:
    from mtrank.pipeline import config_inference

    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    log_glob = ensure_logs(work_dir, impressions, days, seed)
    config = config_inference.infer_config(log_glob)
    configs = {row: row_config for name in models if name != REFERENCE  # fail before training
               for row, row_config in model_configs(config, name).items()}
    # One Transform per feature set (a variant may change a feature), with
    # `position` passed through when a position tower needs it (the other
    # models do not read it).
    groups: Dict[str, List[str]] = {}
    for name, model_cfg in configs.items():
        key = json.dumps([f.model_dump() for f in model_cfg.features], sort_keys=True)
        groups.setdefault(key, []).append(name)
    inferred_key = json.dumps([f.model_dump() for f in config.features], sort_keys=True)
    outputs_of: Dict[str, quality.TransformOutputs] = {}
    for key, names in sorted(groups.items(), key=lambda item: item[0] != inferred_key):
        # Every task's label (rows of `alone` keep one task each), and the
        # position for any position tower of the group.
        raw = config.to_dict()
        raw["features"] = configs[names[0]].to_dict()["features"]
        raw["model"]["position_tasks"] = sorted(
            {t for n in names for t in configs[n].model.position_tasks})
        transform_config = config_lib.config_from_dict(raw)
        pipeline_dir = "pipeline" if key == inferred_key else (
            "pipeline-" + hashlib.sha256(key.encode()).hexdigest()[:8])
        outputs = quality.transform_once(log_glob, os.path.join(work_dir, pipeline_dir),
                                         transform_config)
        outputs_of.update({name: outputs for name in names})
    if not outputs_of:  # only the reference: it reads ExampleGen's output
        outputs_of[REFERENCE] = quality.transform_once(
            log_glob, os.path.join(work_dir, "pipeline"), config)
    aucs: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}
    for name, model_cfg in configs.items():
        started = time.time()
        aucs[name] = quality.train_and_score(
            outputs_of[name], model_cfg,
            os.path.join(work_dir, "runs", name.replace("+", "_")), "eval")
        seconds[name] = round(time.time() - started, 1)
        print(f"{name}: {aucs[name]} ({seconds[name]} s)", flush=True)
    # Every Transform ran on the same examples (ExampleGen's output).
    outputs = next(iter(outputs_of.values()))
    if REFERENCE in models:
        from reference import fit_and_score

        started = time.time()
        aucs[REFERENCE] = fit_and_score(outputs.examples, config, config.training.seed)
        seconds[REFERENCE] = round(time.time() - started, 1)
        print(f"{REFERENCE}: {aucs[REFERENCE]} ({seconds[REFERENCE]} s)", flush=True)
    aucs.update(truth_aucs(log_glob, impressions, days, seed, outputs, config))
    return {"aucs": aucs, "train_s": seconds,
            "transform_s": sum({o.transform_graph: o.transform_s
                                for o in outputs_of.values()}.values()),
            "impressions": impressions, "days": days,
            "tasks": [t.name for t in config.tasks if t.type == "binary"],
            "configs": {name: c.to_dict() for name, c in configs.items()},
            "code": quality.code_version()}


def gaps(result: dict) -> Dict[str, Dict[str, float]]:
    """{model: {task: its AUC minus the position-free truth's}} (the truth
    with position for logs written before the truth file had both)."""
    truth = {**result["aucs"][TRUTH], **result["aucs"][TRUTH_NO_POSITION]}
    trained = {row: aucs for row, aucs in result["aucs"].items() if row not in NOT_TRAINED}
    return {row: {task: round(auc - truth[task], 4) for task, auc in aucs.items()}
            for row, aucs in trained.items()}


def format_table(result: dict) -> str:
    tasks = result["tasks"]
    gap = gaps(result)
    reference = result["aucs"].get(REFERENCE)

    def cell(name, task):
        auc = result["aucs"][name].get(task)
        if auc is None:
            return ""
        if name not in gap:
            return f"{auc:.4f}"
        text = f"{auc:.4f} ({gap[name][task]:+.3f})"
        if reference and name != REFERENCE and task in reference:
            text += f" [{auc - reference[task]:+.3f}]"
        return text

    rows = [[name] + [cell(name, task) for task in tasks]
            + [f"{result['train_s'][name]:.1f}" if name in result["train_s"] else ""]
            for name in result["aucs"]]
    return "\n".join([
        quality.markdown_table(["model"] + [f"{t} AUC" for t in tasks] + ["train+score s"], rows),
        "",
        "(gap to the position-free truth) "
        f"[against '{REFERENCE}', the in-memory Keras model of benchmarks/reference.py]",
        f"{result['impressions']:,} simulated impressions over {result['days']} days; AUC on the "
        "eval split (last day). Served scores are position-free: compare click with "
        f"'{TRUTH_NO_POSITION}'; '{TRUTH}' is the ceiling for a score that knows the position. "
        f"'{CEILING_NO_POSITION}': the truth with each user's vectors fitted from the train "
        "days (simulator/ceiling.py), the ceiling within reach of a model.",
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
