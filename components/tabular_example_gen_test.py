"""Tests of the tabular ExampleGens: split buckets, config passing, and the
CSV and TFRecord ExampleGens run by TFX (LocalDagRunner) on small files."""
import glob
import gzip
import json
import os

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx
from tfx.orchestration import metadata
from tfx.utils import proto_utils

from mtrank.components import tabular_example_gen
from mtrank.base import layout
from mtrank.base.counts import COUNTS_PROPERTY
from mtrank.base import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CENSUS_FILE = os.path.join(os.path.dirname(REPO), "shared", "data", "census-income.test.gz")
CENSUS_CONFIG = os.path.join(REPO, "pipeline", "configs", "census.yaml")
ROWS = 200


def test_output_config_hash_buckets_in_lowest_terms():
    split = tabular_example_gen.output_config(
        config_lib.InputSplitConfig(train=70, eval=15, test=15))
    assert [(s.name, s.hash_buckets) for s in split.split_config.splits] == [
        ("train", 14), ("eval", 3), ("test", 3)]
    assert split.split_config.partition_feature_name == config_lib.SPLIT_KEY
    # A split of 0 is left out.
    split = tabular_example_gen.output_config(
        config_lib.InputSplitConfig(train=80, eval=20, test=0))
    assert [(s.name, s.hash_buckets) for s in split.split_config.splits] == [
        ("train", 4), ("eval", 1)]


def test_config_round_trips_through_custom_config():
    config = config_lib.load_config(CENSUS_CONFIG)
    as_json = proto_utils.proto_to_json(tabular_example_gen.custom_config(config))
    assert tabular_example_gen.config_from_exec_properties({"custom_config": as_json}) == config


def test_input_base_and_pattern(tmp_path):
    assert tabular_example_gen.input_base_and_pattern("/data/x/*.csv.gz") == (
        "/data/x", "*.csv.gz")
    assert tabular_example_gen.input_base_and_pattern(str(tmp_path)) == (str(tmp_path), "*")


def test_read_header_requires_the_same_header_in_every_file(tmp_path):
    (tmp_path / "a.csv").write_text("x, y\n1, 2\n")
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:
        f.write("x,y\n3,4\n")
    assert tabular_example_gen.read_header(str(tmp_path / "*"), ", ") == ["x", "y"]
    (tmp_path / "c.csv").write_text("x, z\n")
    with pytest.raises(ValueError, match="differs"):
        tabular_example_gen.read_header(str(tmp_path / "*"), ", ")


def _run_example_gen(work: str, input_glob: str, config: config_lib.Config):
    """Runs the tabular ExampleGen (the one the pipeline builds for csv and
    tfrecord input) alone; returns its ingestion counts, {split: sorted
    serialized examples} and its dead letters."""
    connection_config = metadata.sqlite_metadata_connection_config(
        layout.metadata_path(work))
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="t", pipeline_root=os.path.join(work, "root"),
        components=[tabular_example_gen.example_gen(input_glob, config)],
        metadata_connection_config=connection_config,
        beam_pipeline_args=["--direct_num_workers=1"]))
    [examples] = metadata_store.MetadataStore(connection_config).get_artifacts_by_type(
        "Examples")
    splits = {}
    for split_dir in sorted(glob.glob(os.path.join(examples.uri, "Split-*"))):
        records = tf.data.TFRecordDataset(glob.glob(os.path.join(split_dir, "*")),
                                          compression_type="GZIP").as_numpy_iterator()
        splits[os.path.basename(split_dir)[len("Split-"):]] = sorted(
            tf.train.Example.FromString(r).SerializeToString(deterministic=True)
            for r in records)
    dead_letters = []
    dead_letters_dir = examples.custom_properties["dead_letters_uri"].string_value
    for path in sorted(glob.glob(os.path.join(dead_letters_dir, "*.jsonl"))):
        with open(path) as f:
            dead_letters.extend(json.loads(line) for line in f)
    return (json.loads(examples.custom_properties[COUNTS_PROPERTY].string_value), splits,
            dead_letters)


@pytest.fixture(scope="module")
def census_slice(tmp_path_factory):
    """The first ROWS rows of the census file, plus one row with a field too
    few, in one gzip file; and the same rows under a header line."""
    if not os.path.exists(CENSUS_FILE):
        pytest.skip(f"no {CENSUS_FILE} (the shared data directory beside the repo)")
    with gzip.open(CENSUS_FILE, "rt") as f:
        lines = [next(f) for _ in range(ROWS)]
    lines.insert(50, lines[50].rsplit(",", 1)[0] + "\n")
    data = tmp_path_factory.mktemp("census")
    with gzip.open(data / "rows.csv.gz", "wt") as f:
        f.writelines(lines)
    with_header = tmp_path_factory.mktemp("census_header")
    config = config_lib.load_config(CENSUS_CONFIG)
    (with_header / "rows.csv").write_text(", ".join(config.input.column_names) + "\n"
                                          + "".join(lines))
    return str(data / "rows.csv.gz"), str(with_header)


def test_csv_example_gen_splits_counts_and_is_deterministic(census_slice, tmp_path):
    no_header, header_dir = census_slice
    config = config_lib.load_config(CENSUS_CONFIG)
    counts, splits, dead_letters = _run_example_gen(str(tmp_path / "a"), no_header, config)

    sizes = {split: len(examples) for split, examples in splits.items()}
    assert counts == {
        "lines_read": ROWS + 1, "impressions": ROWS, "dead_letter.wrong_column_count": 1,
        **{f"examples.{split}": size for split, size in sizes.items()}}
    assert sum(sizes.values()) == ROWS
    # The row left out is kept, with its reason, file and text.
    [dead] = dead_letters
    assert dead["dead_letter_reason"] == "wrong_column_count"
    assert dead["source"].endswith("rows.csv.gz") and dead["line"].count(",") == 40
    # 70/15/15 by hash: roughly, on 200 rows.
    assert 0.6 < sizes["train"] / ROWS < 0.8
    assert 0.08 < sizes["eval"] / ROWS < 0.22 and 0.08 < sizes["test"] / ROWS < 0.22

    example = tf.train.Example.FromString(splits["train"][0])
    names = set(example.features.feature)
    assert {"income_label", "marital_label", config_lib.SPLIT_KEY} <= names
    assert not names & {"instance_weight", "income_50k", "marital_stat"}
    assert names == {f.name for f in config.features} | {
        "income_label", "marital_label", config_lib.SPLIT_KEY}

    # The same rows, read again (and this time named by a header line), land
    # in the same splits as the same examples.
    header_config = config_lib.config_from_dict(dict(config.to_dict(), input={
        k: v for k, v in config.to_dict()["input"].items() if k != "column_names"}))
    counts_again, splits_again, _ = _run_example_gen(str(tmp_path / "b"), header_dir,
                                                     header_config)
    assert splits_again == splits
    assert counts_again == counts


def test_tfrecord_example_gen_keeps_labelled_examples(tmp_path):
    config = config_lib.config_from_dict({
        "model_name": "m",
        "input": {"format": "tfrecord", "split": {"train": 50, "eval": 50}},
        "features": [{"name": "age", "kind": "numeric", "dtype": "int64"}],
        "tasks": [{"name": "rich", "eval": {"min_auc": 0.5}}],
    })
    data = tmp_path / "data"
    data.mkdir()
    with tf.io.TFRecordWriter(str(data / "rows.tfrecord.gz"),
                              options=tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for i in range(40):
            example = tf.train.Example()
            example.features.feature["age"].int64_list.value.append(i)
            if i != 7:
                example.features.feature["rich_label"].float_list.value.append(i % 2)
            writer.write(example.SerializeToString())
    counts, splits, dead_letters = _run_example_gen(str(tmp_path / "w"), str(data / "*.gz"),
                                                    config)
    assert [d["dead_letter_reason"] for d in dead_letters] == ["missing_label"]
    assert counts == {"lines_read": 40, "impressions": 39, "dead_letter.missing_label": 1,
                      "examples.train": len(splits["train"]),
                      "examples.eval": len(splits["eval"])}
    assert len(splits["train"]) + len(splits["eval"]) == 39 and set(splits) == {"train", "eval"}
