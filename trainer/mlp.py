"""The dense stack every bottom, expert and tower is made of."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from trainer.seeds import layer_seed


def mlp(units: Sequence[int], name: str, seed: int, dropout: float = 0.0) -> tf.keras.Sequential:
    """ReLU layers of `units`, each followed by dropout (active only when
    called with training=True) when `dropout` > 0."""
    layers = []
    for i, width in enumerate(units):
        layers.append(tf.keras.layers.Dense(
            width, activation="relu", name=f"{name}_{i}",
            kernel_initializer=tf.keras.initializers.GlorotUniform(
                seed=layer_seed(seed, f"{name}_{i}"))))
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
