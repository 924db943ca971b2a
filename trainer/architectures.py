"""The registry of model bodies by `model.architecture`.

A body maps the embedded features to each task's tower input
({task name: [batch, units]}) and names its `shared_variables` (the last
layer every task shares, where GradNorm measures gradients). A new
architecture is a new module with such a layer, one entry here and its name
in base/config.py's ARCHITECTURES.
"""
from __future__ import annotations

from typing import Callable, Dict

import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.mmoe import MMoE
from mtrank.trainer.ple import PLE
from mtrank.trainer.shared_bottom import SharedBottom

# (config, seed) -> body layer.
Builder = Callable[[config_lib.Config, int], tf.keras.layers.Layer]


def _shared_bottom(config: config_lib.Config, seed: int) -> tf.keras.layers.Layer:
    return SharedBottom([t.name for t in config.tasks], config.training.bottom_units,
                        seed, config.model.dropout, config.model.normalization,
                        name="shared_bottom")


def _mmoe(config: config_lib.Config, seed: int) -> tf.keras.layers.Layer:
    return MMoE([t.name for t in config.tasks], config.model.num_experts,
                config.training.bottom_units, seed, config.model.dropout,
                config.model.normalization, name="mmoe")


def _ple(config: config_lib.Config, seed: int, extraction_layers: int
         ) -> tf.keras.layers.Layer:
    model = config.model
    return PLE([t.name for t in config.tasks], extraction_layers, model.num_experts,
               model.task_experts, config.training.bottom_units, seed,
               model.dropout, model.normalization, name=config.model.architecture)


ARCHITECTURES: Dict[str, Builder] = {
    "shared_bottom": _shared_bottom,
    "mmoe": _mmoe,
    "cgc": lambda config, seed: _ple(config, seed, extraction_layers=1),
    "ple": lambda config, seed: _ple(config, seed, config.model.extraction_layers),
}


def build_body(config: config_lib.Config, seed: int) -> tf.keras.layers.Layer:
    """The config's body, its layers initialised from `seed`."""
    return ARCHITECTURES[config.model.architecture](config, seed)
