"""DCN-v2 feature crossing (Wang et al. 2021) before the bottom or experts."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from mtrank.trainer.seeds import layer_seed


class CrossStack(tf.keras.layers.Layer):
    """`num_layers` tfrs Cross layers: x_{l+1} = x0 * (W x_l + b) + x_l, with W
    low-rank (`projection_dim`) or full. The output has the input's width."""

    def __init__(self, num_layers: int, projection_dim: Optional[int], seed: int, **kwargs):
        super().__init__(**kwargs)
        self.crosses = [
            tfrs.layers.dcn.Cross(
                projection_dim=projection_dim, name=f"cross_{i}",
                kernel_initializer=tf.keras.initializers.GlorotUniform(
                    seed=layer_seed(seed, f"cross_{i}")))
            for i in range(num_layers)]

    def call(self, x0: tf.Tensor) -> tf.Tensor:
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return x
