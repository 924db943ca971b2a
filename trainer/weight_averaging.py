"""Exponential moving average (EMA) of the weights over training steps, as
a Keras callback (`training.ema_momentum`).

The averaged weights are the ones evaluated on the eval split at the end of
each epoch, so early stopping compares and keeps averaged weights, and the
trained model ends with them; training steps run on the raw weights, put
back at the start of each epoch.

The averages are updated every `interval` steps, with the momentum of that
many steps (momentum ** interval): rewriting the averages costs a pass over
every weight, and the inferred config's user and item tables make that
pass as costly as a training step (2M simulated impressions: training 215 s
with an update every step, against 80 s without averaging). The weights a
step apart barely differ at the momenta used (0.99 and up: a window of
hundreds of steps). Every 50 steps, on the 2M run's examples (training seeds
0 / 1): the same AUCs as every 10 to 0.0002, training 126 s against 160 s
(98 s without averaging); at 200k (two logs x two training seeds) click
+0.0005 to +0.0013 on all four runs, purchase -0.0007 to +0.0016
(docs/benchmarks.md). In runs of a few hundred steps a pass the momentum's
ramp keeps the window under 50 steps, and the average is then close to the
last weights.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import tensorflow as tf


# Steps between updates of the averages (see the module's docstring).
UPDATE_INTERVAL_STEPS = 50


class WeightAveraging(tf.keras.callbacks.Callback):
    def __init__(self, momentum: float, interval: int = UPDATE_INTERVAL_STEPS):
        super().__init__()
        self.momentum = momentum
        self.interval = interval
        self._averages: List[tf.Variable] = []
        self._raw: Optional[List[np.ndarray]] = None
        self._steps = tf.Variable(0.0, trainable=False)
        self._pending = 0  # steps taken since the last update
        self._update = tf.function(self._update_averages, autograph=False)

    def _update_averages(self, steps):
        # As tf.train.ExponentialMovingAverage with num_updates: the momentum
        # ramps up over the first steps, min(momentum, (1 + t) / (10 + t)),
        # so that a short run (a few dozen steps) averages its recent
        # weights, not its first ones.
        self._steps.assign_add(steps)
        momentum = tf.minimum(self.momentum,
                              (1.0 + self._steps) / (10.0 + self._steps)) ** steps
        for average, weight in zip(self._averages, self.model.trainable_variables):
            average.assign(momentum * average + (1.0 - momentum) * weight)

    def _catch_up(self):
        """Averages the steps since the last update in."""
        if self._pending:
            self._update(tf.constant(float(self._pending)))
            self._pending = 0

    def on_train_begin(self, logs=None):
        self._averages = []
        self._raw = None
        self._steps.assign(0.0)
        self._pending = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._averages:
            self._pending += 1
            if self._pending >= self.interval:
                self._catch_up()
        else:
            # From the weights after the first step: a subclassed model has
            # none before its first call.
            self._averages = [tf.Variable(w.read_value(), trainable=False)
                              for w in self.model.trainable_variables]

    def _use_averages(self):
        self._catch_up()
        if self._raw is None:
            self._raw = [w.numpy() for w in self.model.trainable_variables]
            for weight, average in zip(self.model.trainable_variables, self._averages):
                weight.assign(average)

    def on_test_begin(self, logs=None):
        if self._averages:
            self._use_averages()

    def on_epoch_begin(self, epoch, logs=None):
        if self._raw is not None:
            for weight, raw in zip(self.model.trainable_variables, self._raw):
                weight.assign(raw)
            self._raw = None

    def on_train_end(self, logs=None):
        # Without an eval split the averages are not in place yet. (With
        # one they are, unless early stopping has put its best epoch's
        # weights, averaged too, in their place: those stay.)
        if self._averages:
            self._use_averages()
