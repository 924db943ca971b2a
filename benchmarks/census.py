"""Census-Income (KDD) benchmark: multi-task models against single-task
baselines and gradient-boosted trees, test AUC of each task.

    .venv/bin/python benchmarks/census.py [--models shared_bottom,mmoe,ple]
        [--data ../shared/data/census-income.test.gz] [--config pipeline/configs/census.yaml]
        [--work DIR] [--out FILE.json] [--rows N] [--single-task MODELS]

The rows go through the real pipeline path of `mtrank run --config
pipeline/configs/census.yaml` up to Transform (CSV ExampleGen with the
config's seeded 70/15/15 split, statistics, schema, validation gate,
Transform), once; later runs on the same --work reuse it. Then, on that
Transform output, with the trainer's own `train_model` (train split,
early stopping on eval):

  <model>         the config's model with `model.architecture` = <model>, both tasks
  <model>_single  the same model trained on one task at a time (for the
                  --single-task models; default: every model)
  gbdt            scikit-learn HistGradientBoostingClassifier per task, on
                  ExampleGen's raw train split of the same rows

every one scored by AUC on the test split, which neither training nor early
stopping sees. Only the file's test split (99,762 rows) is available, so the
published figures (torch-rechub, trained on the full training split of
199,523 rows and tested on this file) are beside ours, not comparable
one-to-one.

Prints a Markdown table; --out writes {model: {task: auc}} as JSON.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402  (sets up the path and Keras 2 before TensorFlow)

from mtrank.base import config as config_lib  # noqa: E402

DEFAULT_DATA = os.path.join(quality.ROOT, "..", "shared", "data", "census-income.test.gz")
DEFAULT_CONFIG = os.path.join(quality.ROOT, "pipeline", "configs", "census.yaml")
DEFAULT_MODELS = "shared_bottom,mmoe,ple"
# AUC (income, marital) from the torch-rechub benchmark table, trained on the
# full Census-Income training split (../shared/data/README.md).
PUBLISHED = {
    "shared_bottom": {"income": 0.9560, "marital": 0.9948},
    "mmoe": {"income": 0.9579, "marital": 0.9950},
    "ple": {"income": 0.959, "marital": 0.9951},
}
GBDT = "gbdt"


def sample_rows(data: str, rows: int, work_dir: str) -> str:
    """The first `rows` lines of `data` as a gzip file in `work_dir` (smoke
    runs); the same file on every call."""
    path = os.path.join(work_dir, f"census-sample-{rows}.csv.gz")
    if not os.path.exists(path):
        os.makedirs(work_dir, exist_ok=True)
        with gzip.open(data, "rt") as src, gzip.open(path + ".tmp", "wt") as dst:
            for i, line in enumerate(src):
                if i == rows:
                    break
                dst.write(line)
        os.replace(path + ".tmp", path)
    return path


def _raw_split(examples_uri: str, split: str, config: config_lib.Config):
    """ExampleGen's raw examples of a split as a DataFrame: numbers as
    floats, everything else as pandas categories; and {task: labels}."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    columns: Dict[str, list] = {f.name: [] for f in config.features}
    labels: Dict[str, list] = {t.name: [] for t in config.tasks}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        for f in config.features:
            kind = feature[f.name].WhichOneof("kind") if f.name in feature else None
            values = getattr(feature[f.name], kind).value if kind else []
            value = values[0] if len(values) else f.default_value
            columns[f.name].append(value.decode() if isinstance(value, bytes) else value)
        for t in config.tasks:
            labels[t.name].append(feature[t.label_key].float_list.value[0])
    frame = pd.DataFrame({
        f.name: (np.asarray(columns[f.name], np.float64) if f.kind == "numeric"
                 else pd.Categorical([str(v) for v in columns[f.name]]))
        for f in config.features})
    return frame, {k: np.asarray(v) for k, v in labels.items()}


def gbdt_aucs(examples_uri: str, config: config_lib.Config, seed: int) -> Dict[str, float]:
    """HistGradientBoosting per task: trained on train (its own early stopping
    on 10% of it), scored on test."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    train_x, train_y = _raw_split(examples_uri, "train", config)
    test_x, test_y = _raw_split(examples_uri, "test", config)
    # Test categories not seen in training become missing, as the trees expect.
    for column in train_x.columns:
        if str(train_x[column].dtype) == "category":
            test_x[column] = test_x[column].cat.set_categories(train_x[column].cat.categories)
    result = {}
    for task in config.tasks:
        trees = HistGradientBoostingClassifier(
            max_iter=500, learning_rate=0.1, categorical_features="from_dtype",
            early_stopping=True, random_state=seed)
        trees.fit(train_x, train_y[task.name])
        result[task.name] = round(float(roc_auc_score(
            test_y[task.name], trees.predict_proba(test_x)[:, 1])), 4)
    return result


def run(data: str, config_path: str, models: List[str], work_dir: str,
        single_task: Sequence[str] = (), rows: int = 0) -> dict:
    config = config_lib.load_config(config_path)
    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    if rows:
        data = sample_rows(data, rows, work_dir)
    outputs = quality.transform_once(data, os.path.join(work_dir, "pipeline"), config)
    task_names = [t.name for t in config.tasks]
    aucs: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}

    def timed(name, fn):
        started = time.time()
        aucs[name] = fn()
        seconds[name] = round(time.time() - started, 1)
        print(f"{name}: {aucs[name]} ({seconds[name]} s)", flush=True)

    for model in models:
        timed(model, lambda: quality.train_and_score(
            outputs, quality.with_model(config, model),
            os.path.join(work_dir, "runs", model), "test"))
        if model in single_task:
            def singles(model=model):
                return {name: quality.train_and_score(
                    outputs, quality.with_model(config, model, tasks=[name]),
                    os.path.join(work_dir, "runs", f"{model}_single_{name}"), "test")[name]
                    for name in task_names}
            timed(f"{model}_single", singles)
    timed(GBDT, lambda: gbdt_aucs(outputs.examples, config, config.training.seed))
    return {"aucs": aucs, "train_s": seconds, "transform_s": outputs.transform_s,
            "data": os.path.abspath(data), "config": os.path.abspath(config_path),
            "code": quality.code_version()}


def format_table(result: dict, task_names: List[str]) -> str:
    rows = []
    for name, aucs in result["aucs"].items():
        published = PUBLISHED.get(name, {})
        rows.append([name] + [aucs[t] for t in task_names]
                    + [published.get(t, "") for t in task_names]
                    + [f"{result['train_s'][name]:.1f}"])
    header = (["model"] + [f"{t} AUC" for t in task_names]
              + [f"published {t}" for t in task_names] + ["train+score s"])
    return "\n".join([
        quality.markdown_table(header, rows),
        "",
        "Ours: test split (15%) of census-income.test.gz, trained on its 70% train split "
        "(early stopping on the 15% eval split). Published: torch-rechub, trained on the "
        "full Census-Income training split (199,523 rows), tested on this file.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated model.architecture values (default {DEFAULT_MODELS})")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--work", default=os.path.join(quality.ROOT, "work", "census_benchmark"))
    parser.add_argument("--out", help="JSON file: {model: {task: auc}}")
    parser.add_argument("--rows", type=int, default=0,
                        help="use only the first N rows (smoke runs)")
    parser.add_argument("--single-task", metavar="MODELS",
                        help="models to train single-task baselines of (default: all of "
                             "--models; '' for none)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in config_lib.ARCHITECTURES]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(config_lib.ARCHITECTURES)}")
    single_task = models if args.single_task is None else [
        m for m in args.single_task.split(",") if m]
    result = run(args.data, args.config, models, args.work, single_task, args.rows)
    task_names = [t.name for t in config_lib.load_config(args.config).tasks]
    quality.report(result, format_table(result, task_names), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
