"""Probabilities that are products of sigmoids, kept as logits: ESMM's
P(click and purchase) = P(click) x P(purchase | click), and PAL's
P(click) = P(seen | position) x P(click | seen).

Every binary output of the model stays a logit, so one loss (binary
cross-entropy from logits) and one served form (its sigmoid) fit all tasks.
"""
from __future__ import annotations

import math

import tensorflow as tf

_LOG_HALF = -math.log(2.0)
# log p is kept below this, so that log(1 - p) is finite (p < 1 - 1e-7).
_MAX_LOG_P = -1e-7


def log1mexp(x: tf.Tensor) -> tf.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012); each
    branch sees only inputs where it is finite, so gradients are too."""
    x = tf.minimum(x, _MAX_LOG_P)
    near_zero = tf.maximum(x, _LOG_HALF)
    far = tf.minimum(x, _LOG_HALF)
    return tf.where(x > _LOG_HALF, tf.math.log(-tf.math.expm1(near_zero)),
                    tf.math.log1p(-tf.exp(far)))


def product_logit(*logits: tf.Tensor) -> tf.Tensor:
    """The logit of sigmoid(logits[0]) x sigmoid(logits[1]) x ..."""
    log_p = tf.math.add_n([tf.math.log_sigmoid(z) for z in logits])
    log_p = tf.minimum(log_p, _MAX_LOG_P)
    return log_p - log1mexp(log_p)
