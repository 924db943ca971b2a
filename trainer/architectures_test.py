"""Tests of trainer/architectures.py: the registry covers the config's
names, and every architecture trains inside the full model."""
import numpy as np
import pytest
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer import architectures
from mtrank_testing import trainer_util as tu
from mtrank.trainer.model import MultiTaskRankingModel


def test_registry_names_are_the_configs():
    assert set(architectures.ARCHITECTURES) == set(config_lib.ARCHITECTURES)


@pytest.mark.parametrize("model_section", [
    {"architecture": "shared_bottom", "cross_layers": 2, "cross_projection_dim": 4},
    {"architecture": "mmoe", "num_experts": 3},
    {"architecture": "cgc", "num_experts": 2, "task_experts": 1},
    {"architecture": "ple", "num_experts": 2, "task_experts": 1, "extraction_layers": 2},
    {"architecture": "mmoe", "num_experts": 2, "normalization": "layer"},
    {"architecture": "ple", "num_experts": 1, "extraction_layers": 2, "normalization": "batch"},
])
def test_architecture_trains_in_the_model(model_section):
    tf.keras.utils.set_random_seed(0)
    config = tu.small_config(model=model_section)
    model = MultiTaskRankingModel(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    features, labels = tu.random_batch_with_labels(config, 16)
    outputs = model(features)
    assert set(outputs) == {"click", "purchase", "dwell"}
    network, = model.members
    assert network.body.name == model_section["architecture"]
    assert network.shared_variables
    if "cross_layers" in model_section:
        assert len(network.cross.crosses) == 2
    if "normalization" in model_section:
        # Every hidden layer of the body and the towers is normalised.
        norm = {"layer": tf.keras.layers.LayerNormalization,
                "batch": tf.keras.layers.BatchNormalization}[model_section["normalization"]]
        for part in [network.body, *network.towers.values()]:
            layers = part.submodules
            assert any(isinstance(x, norm) for x in layers), part.name
            assert not any(isinstance(x, tf.keras.layers.Dense)
                           and x.activation is tf.keras.activations.relu for x in layers)
    before = float(model.compute_loss((features, labels)))
    for _ in range(5):
        logs = model.train_step((features, labels))
    assert np.isfinite(float(logs["loss"]))
    assert float(model.compute_loss((features, labels))) < before
