"""Training throughput: the model fed by the trainer's input_fn (reading
the Transform output) against the same model fed from in-memory tensors.

    .venv/bin/python benchmarks/train_throughput.py [--model shared_bottom]
        [--data ../shared/data/census-income.test.gz] [--config pipeline/configs/census.yaml]
        [--work DIR] [--rows N] [--repeats 3] [--out FILE.json]

The Census-Income rows go through the real pipeline up to Transform once (the
same work directory as benchmarks/census.py by default, so either reuses the
other's run). Then, in one process, one model trains one epoch at a time on
the train split, alternating between

  input_fn   trainer.task.input_fn over the transformed TFRecords (what the
             Trainer does: read, parse, batch, split labels, prefetch)
  in_memory  the same examples, read once into tensors beforehand, batched
             from memory (Dataset.from_tensor_slices)

after one untimed epoch of each (tracing). Examples/s is the train split's
size over the epoch's wall time, the median of --repeats epochs; the goal is
input_fn / in_memory >= 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import census  # noqa: E402
import quality  # noqa: E402

from mtrank.base import config as config_lib  # noqa: E402


def in_memory_dataset(dataset, batch_size: int):
    """The examples of `dataset` as tensors in memory, batched again."""
    import tensorflow as tf

    features, labels = {}, {}
    for batch_features, batch_labels in dataset:
        for target, source in ((features, batch_features), (labels, batch_labels)):
            for key, value in source.items():
                target.setdefault(key, []).append(value)
    tensors = ({k: tf.concat(v, axis=0) for k, v in features.items()},
               {k: tf.concat(v, axis=0) for k, v in labels.items()})
    examples = int(next(iter(tensors[1].values())).shape[0])
    return (tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)), examples


def measure(outputs: quality.TransformOutputs, config: config_lib.Config, repeats: int) -> dict:
    from mtrank.trainer import task

    batch_size = config.training.batch_size
    from_files = quality.split_dataset(outputs, config, "train", batch_size)
    from_memory, examples = in_memory_dataset(from_files, batch_size)
    model = task.build_model(config)
    feeds = {"input_fn": from_files, "in_memory": from_memory}
    seconds = {name: [] for name in feeds}
    for repeat in range(repeats + 1):
        # Alternate which goes first, so that drift in machine load hits both.
        order = list(feeds) if repeat % 2 == 0 else list(feeds)[::-1]
        for name in order:
            started = time.perf_counter()
            model.fit(feeds[name], epochs=1, verbose=0)
            if repeat:  # the first epoch of each traces the train step
                seconds[name].append(time.perf_counter() - started)
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append({"feed": name, "examples": examples, "epoch_s": round(median, 2),
                     "examples_per_s": round(examples / median)})
    ratio = rows[0]["examples_per_s"] / rows[1]["examples_per_s"]
    return {"rows": rows, "input_fn_over_in_memory": round(ratio, 3),
            "batch_size": batch_size, "repeats": repeats}


def format_table(result: dict) -> str:
    rows = [[r["feed"], f"{r['examples']:,}", result["batch_size"], f"{r['epoch_s']:.2f}",
             f"{r['examples_per_s']:,}"] for r in result["rows"]]
    return "\n".join([
        quality.markdown_table(["feed", "examples", "batch", "epoch s (median)", "examples/s"],
                               rows),
        "",
        f"input_fn / in_memory: {result['input_fn_over_in_memory']:.3f} (goal >= 0.9)",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shared_bottom", choices=config_lib.ARCHITECTURES)
    parser.add_argument("--data", default=census.DEFAULT_DATA)
    parser.add_argument("--config", default=census.DEFAULT_CONFIG)
    parser.add_argument("--work", default=os.path.join(quality.ROOT, "work", "census_benchmark"))
    parser.add_argument("--rows", type=int, default=0, help="only the first N rows (smoke runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="JSON file for the result")
    args = parser.parse_args(argv)
    config = quality.with_model(config_lib.load_config(args.config), args.model)
    work_dir = os.path.abspath(args.work)
    data = census.sample_rows(args.data, args.rows, work_dir) if args.rows else args.data
    outputs = quality.transform_once(data, os.path.join(work_dir, "pipeline"), config)
    result = measure(outputs, config, args.repeats)
    result.update(model=args.model, code=quality.code_version())
    print()
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
