"""The replicas of a training step under tf.distribute.

Each replica computes its share of a loss over the global batch (the sum of
the replicas' shares is the loss), so a mean needs the example count summed
over the replicas, and a term that is not per-example needs the number of
replicas to count once. Outside a strategy there is one replica.
"""
from __future__ import annotations

import tensorflow as tf


def replicas_in_sync() -> int:
    """How many replicas run this step (1 outside a replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over the replicas of this step. A batch splits unevenly
    over replicas (7 as 4 + 3), so counts are added up, not inferred from
    this replica's share."""
    if replicas_in_sync() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)
