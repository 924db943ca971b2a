"""The dense stack every bottom, expert and tower is made of."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mtrank.trainer.seeds import layer_seed


# The normalisations model.normalization offers, by name.
NORMALIZATIONS = {
    "batch": tf.keras.layers.BatchNormalization,
    "layer": tf.keras.layers.LayerNormalization,
}


def mlp(units: Sequence[int], name: str, seed: int, dropout: float = 0.0,
        normalization: str = "none") -> tf.keras.Sequential:
    """ReLU layers of `units`, each followed by dropout (active only when
    called with training=True) when `dropout` > 0. With `normalization`
    batch or layer, each layer is Dense -> normalisation -> ReLU (the
    normalisation before the ReLU, so that it centres the pre-activations)."""
    if normalization != "none" and normalization not in NORMALIZATIONS:
        raise ValueError(f"{name}: normalization must be none, batch or layer, "
                         f"got {normalization!r}")
    layers = []
    for i, width in enumerate(units):
        layers.append(tf.keras.layers.Dense(
            width, activation="relu" if normalization == "none" else None, name=f"{name}_{i}",
            kernel_initializer=tf.keras.initializers.GlorotUniform(
                seed=layer_seed(seed, f"{name}_{i}"))))
        if normalization != "none":
            layers.append(NORMALIZATIONS[normalization](name=f"{name}_{i}_{normalization}_norm"))
            layers.append(tf.keras.layers.ReLU(name=f"{name}_{i}_relu"))
        if dropout:
            layers.append(tf.keras.layers.Dropout(
                dropout, seed=layer_seed(seed, f"{name}_{i}_dropout"), name=f"{name}_{i}_dropout"))
    return tf.keras.Sequential(layers, name=name)


def last_kernel(stack: tf.keras.Sequential) -> tf.Variable:
    """The kernel of the last Dense layer of `stack` (GradNorm measures the
    task gradients there)."""
    dense = [layer for layer in stack.layers if isinstance(layer, tf.keras.layers.Dense)]
    if not dense:
        raise ValueError(f"{stack.name}: no Dense layer (training.bottom_units is empty)")
    return dense[-1].kernel
