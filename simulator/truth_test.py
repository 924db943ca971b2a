"""The truth AUC: the simulator's probabilities scored against the labels of
a run's eval split, found beside the logs and added to the run summary."""
import gzip
import json
import os

import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.simulator import truth
from mtrank.simulator.logs import TRUTH_FILE_NAME

CONFIG = config_lib.config_from_dict({
    "model_name": "m",
    "features": [{"name": "item_id", "kind": "categorical", "dtype": "string"}],
    "tasks": [{"name": "click", "feedback": "click", "label_window_s": 600},
              {"name": "revenue", "feedback": "purchase", "type": "regression",
               "label_window_s": 86400}],
})
# (request_id, item_id, click label, p_click, p_click_no_position): p_click
# ranks every click first (AUC 1), p_click_no_position one pair of four (0.25).
IMPRESSIONS = [("r1", "a", 1.0, 0.9, 0.1), ("r1", "b", 0.0, 0.1, 0.9),
               ("r2", "a", 1.0, 0.8, 0.8), ("r2", "b", 0.0, 0.2, 0.2)]


def _write_truth(directory) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TRUTH_FILE_NAME)
    with gzip.open(path, "wt") as f:
        for request_id, item_id, _, p_click, p_no_position in IMPRESSIONS:
            f.write(json.dumps({"request_id": request_id, "item_id": item_id,
                                "p_click": p_click, "p_purchase": 0.01,
                                "p_click_no_position": p_no_position}) + "\n")
    return path


def _write_eval_examples(examples_uri, rows) -> None:
    """An Examples artifact's eval split as LogExampleGen writes it."""
    split_dir = os.path.join(examples_uri, "Split-eval")
    os.makedirs(split_dir)
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz"),
                              "GZIP") as writer:
        for request_id, item_id, label in rows:
            example = tf.train.Example()
            feature = example.features.feature
            feature[config_lib.REQUEST_ID].bytes_list.value.append(request_id.encode())
            feature[config_lib.ITEM_ID].bytes_list.value.append(item_id.encode())
            feature["click_label"].float_list.value.append(label)
            feature["revenue_label"].float_list.value.append(0.0)
            writer.write(example.SerializeToString())


def test_truth_auc_per_binary_task_against_the_eval_labels(tmp_path):
    truth_path = _write_truth(tmp_path / "logs")
    examples = str(tmp_path / "examples")
    # An impression the truth file does not know is left out, not scored.
    _write_eval_examples(examples, [row[:3] for row in IMPRESSIONS] + [("r9", "z", 1.0)])
    assert truth.truth_auc(truth_path, examples, CONFIG) == {
        "click": {"truth_auc": 1.0, "truth_auc_no_position": 0.25}}


def test_truth_file_beside_the_logs_or_above_their_partitions(tmp_path):
    logs = tmp_path / "logs"
    (logs / "2026-11-01").mkdir(parents=True)
    (logs / "2026-11-01" / "events.jsonl.gz").write_bytes(b"")
    partitions = str(logs / "{YYYY}-{MM}-{DD}" / "events.jsonl.gz")
    assert truth.find_truth_file(partitions) is None
    path = _write_truth(logs)
    assert truth.find_truth_file(partitions) == path
    (logs / "events-2026-11-01.jsonl.gz").write_bytes(b"")
    assert truth.find_truth_file(str(logs / "events-*.jsonl.gz")) == path


def test_added_to_the_summary_of_a_run_on_simulated_logs(tmp_path):
    logs = tmp_path / "logs"
    _write_truth(logs)
    (logs / "events-2026-11-01.jsonl.gz").write_bytes(b"")
    log_glob = str(logs / "events-*.jsonl.gz")
    examples = str(tmp_path / "examples")
    _write_eval_examples(examples, [row[:3] for row in IMPRESSIONS])
    summary = {"examples_uri": examples, "tasks": {"click": {"auc": 0.7}, "revenue": {}}}
    assert truth.add_truth_auc(summary, log_glob, CONFIG)
    assert summary["tasks"] == {
        "click": {"auc": 0.7, "truth_auc": 1.0, "truth_auc_no_position": 0.25}, "revenue": {}}
    # A run that stopped before its examples has nothing to score.
    stopped = {"examples_uri": None, "tasks": {}}
    assert not truth.add_truth_auc(stopped, log_glob, CONFIG)
    assert stopped["tasks"] == {}
