"""Where things are: the files of a local work directory, and the property
that carries the config to the components that run it.

A work directory (`mtrank run --work-dir`):
  metadata.sqlite            ML Metadata of every run (a second run reuses it,
                             so the Evaluator finds the last blessed model)
  pipeline_root/             TFX artifacts
  serving_model/<model>/<v>/ pushed SavedModels, TF Serving's layout
  run_summary.json           the summary of the last run
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping

from mtrank.base import config as config_lib

METADATA_FILE = "metadata.sqlite"
PIPELINE_ROOT_DIR = "pipeline_root"
SERVING_MODEL_DIR = "serving_model"
SUMMARY_FILE = "run_summary.json"

# The exec property (LogExampleGen) and custom_config entry (Transform,
# Trainer) holding the config as JSON.
CONFIG_KEY = "config_json"


def metadata_path(work_dir: str) -> str:
    return os.path.join(work_dir, METADATA_FILE)


def pipeline_root(work_dir: str) -> str:
    return os.path.join(work_dir, PIPELINE_ROOT_DIR)


def serving_model_dir(root: str, model_name: str) -> str:
    """The model base directory the Pusher writes versions into, under a
    work directory (or a cluster's pipeline root)."""
    return os.path.join(root, SERVING_MODEL_DIR, model_name)


def summary_path(work_dir: str) -> str:
    return os.path.join(work_dir, SUMMARY_FILE)


def config_properties(config: config_lib.Config) -> Dict[str, str]:
    """The config as a component's properties carry it."""
    return {CONFIG_KEY: config.to_json()}


def config_from_properties(properties: Mapping[str, Any]) -> config_lib.Config:
    """The config back from exec properties or a custom_config."""
    return config_lib.config_from_json(properties[CONFIG_KEY])
