"""Explicit second-order interactions of the embedded features, beside the
DCN-v2 cross layers: the user . item dot product of matrix factorisation and
the factorization-machine term over every feature. Each is a [batch, 1]
number that TaskNetwork gives a direct path to every task's logit."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import tensorflow as tf

from mtrank.trainer.seeds import layer_seed


def _projection(units: int, seed: int, name: str) -> tf.keras.layers.Dense:
    # Linear and without bias: a projected embedding is still an embedding
    # (a bias would add a first-order term to a second-order one).
    return tf.keras.layers.Dense(
        units, use_bias=False, name=name,
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=layer_seed(seed, name)))


class UserItemDot(tf.keras.layers.Layer):
    """(user vector [batch, du], item vector [batch, di]) -> their dot product,
    [batch, 1]. Vectors of different widths meet at the narrower one's: the
    wider is projected to it."""

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self._seed = seed
        self._user_projection: Optional[tf.keras.layers.Dense] = None
        self._item_projection: Optional[tf.keras.layers.Dense] = None

    def build(self, input_shape):
        user_width, item_width = int(input_shape[0][-1]), int(input_shape[1][-1])
        if user_width > item_width:
            self._user_projection = _projection(item_width, self._seed, f"{self.name}_user")
        elif item_width > user_width:
            self._item_projection = _projection(user_width, self._seed, f"{self.name}_item")
        super().build(input_shape)

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        user, item = inputs
        if self._user_projection is not None:
            user = self._user_projection(user)
        if self._item_projection is not None:
            item = self._item_projection(item)
        return tf.reduce_sum(user * item, axis=-1, keepdims=True)


class FactorizationMachine(tf.keras.layers.Layer):
    """The second-order term of a factorization machine (Rendle 2010) over
    fields {name: [batch, d_i]}: sum over pairs i < j of <v_i, v_j>, [batch, 1],
    as 0.5 * sum_k ((sum_i v_ik)^2 - sum_i v_ik^2), O(fields x dim), not
    O(fields^2).

    Fields narrower than the widest (a number is a field of width 1) are
    projected to its width; a number x then interacts as x * v, as in
    Rendle's FM.
    The term is summed over the dimensions to one number, not kept as the
    dim-wide vector (NFM's bi-interaction pooling): a number has a direct
    path to the logits, where the vector would need a learned readout."""

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self._seed = seed
        self._projections: Dict[str, tf.keras.layers.Dense] = {}

    def build(self, input_shape):
        dim = max(int(shape[-1]) for shape in input_shape.values())
        for name, shape in input_shape.items():
            if int(shape[-1]) != dim:
                self._projections[name] = _projection(dim, self._seed, f"{self.name}_{name}")
        super().build(input_shape)

    def call(self, fields: Dict[str, tf.Tensor]) -> tf.Tensor:
        vectors = tf.stack([self._projections[name](v) if name in self._projections else v
                            for name, v in sorted(fields.items())], axis=1)
        square_of_sum = tf.square(tf.reduce_sum(vectors, axis=1))
        sum_of_squares = tf.reduce_sum(tf.square(vectors), axis=1)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=-1, keepdims=True)
