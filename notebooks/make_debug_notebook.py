"""Writes notebooks/debug.ipynb (run it after editing the cells here:
`python notebooks/make_debug_notebook.py`)."""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Debugging the mtrank pipeline one component at a time\n\n"
        "The same components `mtrank run` wires (`mtrank.pipeline.pipeline.create_pipeline`), run "
        "here one by one with TFX's `InteractiveContext`, so each output can be looked at "
        "before the next step: statistics, schema, anomalies, the training curve and the "
        "evaluation per task. It simulates small logs; point `LOG_GLOB` at your own logs "
        "instead."),
    new_code_cell(
        "# Parameters (the test overrides them).\n"
        "WORK_DIR = 'debug-work'\n"
        "IMPRESSIONS = 3000\n"
        "DAYS = 3\n"
        "LOG_GLOB = None  # None: simulate logs under WORK_DIR",
        metadata={"tags": ["parameters"]}),
    new_code_cell(
        "import json\nimport os\n"
        "os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2, before TensorFlow\n"
        "import pandas as pd\n"
        "import tensorflow as tf\n"
        "from tfx.orchestration.experimental.interactive.interactive_context import "
        "InteractiveContext\n"
        "from mtrank.base import counts, layout\n"
        "from mtrank.components import eval_config\n"
        "from mtrank.pipeline import config_inference, pipeline\n"
        "from mtrank.reporting import run_summary\n"
        "from mtrank.simulator import logs as simulator\n"
        "\n"
        "if LOG_GLOB is None:\n"
        "    simulator.simulate(os.path.join(WORK_DIR, 'logs'), impressions=IMPRESSIONS, "
        "days=DAYS, seed=0)\n"
        "    LOG_GLOB = os.path.join(os.path.abspath(WORK_DIR), 'logs', "
        "simulator.EVENT_FILE_GLOB)\n"
        "config = config_inference.infer_config(LOG_GLOB)\n"
        "print(config.to_yaml())"),
    new_code_cell(
        "root = os.path.abspath(os.path.join(WORK_DIR, 'interactive'))\n"
        "context = InteractiveContext(pipeline_name=config.model_name, pipeline_root=root)\n"
        "components = {c.id: c for c in pipeline.create_pipeline(\n"
        "    pipeline_name=config.model_name, pipeline_root=root, log_glob=LOG_GLOB, "
        "config=config,\n"
        "    eval_config=eval_config.make_eval_config(config),\n"
        "    serving_model_dir=layout.serving_model_dir(root, config.model_name),\n"
        ").components}\n"
        "list(components)"),
    new_markdown_cell("## Ingestion: examples, dead letters and counts"),
    new_code_cell(
        "example_gen = components['LogExampleGen']\n"
        "context.run(example_gen)\n"
        "examples = example_gen.outputs['examples'].get()[0]\n"
        "pd.Series(json.loads(examples.get_string_custom_property(counts.COUNTS_PROPERTY)))"),
    new_markdown_cell("## Statistics, schema and anomalies"),
    new_code_cell(
        "for name in ('StatisticsGen', 'SchemaGen', 'ExampleValidator', 'DataValidationGate'):\n"
        "    context.run(components[name])\n"
        "import tensorflow_data_validation as tfdv\n"
        "from tfx.types import artifact_utils\n"
        "stats_uri = components['StatisticsGen'].outputs['statistics'].get()[0].uri\n"
        "train_stats = tfdv.load_stats_binary(os.path.join(stats_uri, 'Split-train', "
        "'FeatureStats.pb'))\n"
        "print('train examples:', train_stats.datasets[0].num_examples)\n"
        "schema_uri = components['SchemaGen'].outputs['schema'].get()[0].uri\n"
        "schema = tfdv.load_schema_text(os.path.join(schema_uri, 'schema.pbtxt'))\n"
        "tfdv.display_schema(schema)"),
    new_code_cell(
        "from mtrank.components import data_gate\n"
        "anomalies = data_gate.read_anomalies("
        "components['ExampleValidator'].outputs['anomalies'].get()[0])\n"
        "anomalies or 'no anomalies'"),
    new_markdown_cell("## Transform and training"),
    new_code_cell(
        "context.run(components['Transform'])\n"
        "context.run(components['Trainer'])"),
    new_code_cell(
        "# The training curve: losses and AUCs per validation, by step (TensorBoard logs).\n"
        "run_dir = components['Trainer'].outputs['model_run'].get()[0].uri\n"
        "rows = []\n"
        "for phase in ('train', 'validation'):\n"
        "    for path in tf.io.gfile.glob(os.path.join(run_dir, phase, 'events.out.*')):\n"
        "        for event in tf.compat.v1.train.summary_iterator(path):\n"
        "            for value in event.summary.value:\n"
        "                if value.tag.startswith('epoch_'):\n"
        "                    rows.append({'phase': phase, 'step': event.step, "
        "'metric': value.tag[6:],\n"
        "                                 'value': float(tf.make_ndarray(value.tensor))})\n"
        "curve = pd.DataFrame(rows).pivot_table(index=['phase', 'step'], columns='metric', "
        "values='value')\n"
        "curve"),
    new_markdown_cell("## Evaluation per task, blessing and push"),
    new_code_cell(
        "for name in ('latest_blessed_model_resolver', 'Evaluator', 'Pusher'):\n"
        "    context.run(components[name])\n"
        "evaluation = components['Evaluator'].outputs['evaluation'].get()[0].uri\n"
        "blessing = components['Evaluator'].outputs['blessing'].get()[0]\n"
        "print('blessed:', blessing.get_int_custom_property('blessed') == 1)\n"
        "pd.DataFrame(run_summary.task_metrics(evaluation)).T"),
]


def main():
    notebook = new_notebook(cells=CELLS, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "debug.ipynb")
    nbformat.write(notebook, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
