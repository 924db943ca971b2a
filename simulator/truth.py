"""The truth AUC of a run on simulated logs: how well the probabilities the
simulator drew the logs with rank the labels of the run's eval split, the
ceiling for any model trained on them. `mtrank run` and `mtrank demo` add it
to the run summary when the logs have a truth file beside them."""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
from typing import Dict, Optional, Tuple

import tensorflow as tf
from sklearn.metrics import roc_auc_score

from mtrank.base import config as config_lib
from mtrank.components import spans
from mtrank.simulator.logs import TRUTH_FILE_NAME


def find_truth_file(log_glob: str) -> Optional[str]:
    """The simulator's truth file beside the logs of `log_glob`, or in the
    directory above them (daily partitions in subdirectories); None when
    the logs are not simulated."""
    for directory in sorted({os.path.dirname(p)
                             for p in glob.glob(spans.any_span_glob(log_glob))}):
        for candidate in (directory, os.path.dirname(directory)):
            path = os.path.join(candidate, TRUTH_FILE_NAME)
            if os.path.exists(path):
                return path
    return None


def truth_auc(truth_path: str, examples_uri: str, config: config_lib.Config
              ) -> Dict[str, Dict[str, float]]:
    """AUC of the simulator's generating probabilities against the labels of
    the eval split, per binary task: `truth_auc` from p_<feedback> (the
    ceiling for these labels) and, where the simulator gives it,
    `truth_auc_no_position` from p_<feedback>_no_position (the ceiling for a
    position-free model such as the served one)."""
    columns = {}
    for task in config.tasks:
        if task.type == "binary":
            columns[task.name] = {"truth_auc": f"p_{task.feedback}",
                                  "truth_auc_no_position": f"p_{task.feedback}_no_position"}
    # The eval split's impressions first, then only their truth rows: the
    # eval split is a small share of the logs, the truth file covers them all.
    eval_labels: Dict[Tuple[str, str], Dict[str, float]] = {}
    files = tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        ids = [feature[key].bytes_list.value for key in (config_lib.REQUEST_ID, config_lib.ITEM_ID)
               if key in feature]
        if len(ids) < 2 or not all(ids):
            return {}  # the examples do not identify impressions (no item_id feature)
        eval_labels[(ids[0][0].decode(), ids[1][0].decode())] = {
            task.name: feature[task.label_key].float_list.value[0]
            for task in config.tasks if task.name in columns}
    truth = {}
    with gzip.open(truth_path, "rt") as f:
        for line in f:
            row = json.loads(line)
            key = (row["request_id"], row["item_id"])
            if key in eval_labels:
                truth[key] = row
    labels = collections.defaultdict(list)
    scores = collections.defaultdict(lambda: collections.defaultdict(list))
    for key, task_labels in eval_labels.items():
        row = truth.get(key)
        if row is None:
            continue
        for task, label in task_labels.items():
            if columns[task]["truth_auc"] not in row:
                continue
            labels[task].append(label)
            for metric, column in columns[task].items():
                if column in row:
                    scores[task][metric].append(row[column])
    result = {}
    for task, task_labels in labels.items():
        if not 0 < sum(task_labels) < len(task_labels):
            continue
        result[task] = {metric: round(float(roc_auc_score(task_labels, values)), 5)
                        for metric, values in scores[task].items()
                        if len(values) == len(task_labels)}
    return result


def add_truth_auc(summary: dict, log_glob: str, config: config_lib.Config) -> bool:
    """Adds each binary task's truth AUC to a run summary (local_runner.run's)
    of a run on `log_glob`; whether there was one to add (simulated logs, and
    a run that got as far as examples)."""
    if config.input.format != "logs" or not summary.get("examples_uri"):
        return False
    truth_path = find_truth_file(log_glob)
    if truth_path is None:
        return False
    aucs_by_task = truth_auc(truth_path, summary["examples_uri"], config)
    for task, aucs in aucs_by_task.items():
        summary["tasks"].setdefault(task, {}).update(aucs)
    return bool(aucs_by_task)
