"""Tests of trainer/weight_averaging.py on a one-weight Keras model whose
every SGD step adds 1 to its weight, so each average is known exactly."""
import numpy as np
import pytest
import tensorflow as tf

from mtrank.trainer.weight_averaging import WeightAveraging

MOMENTUM = 0.9


class _Counter(tf.keras.Model):
    """weight += 1 per step (SGD, lr 1, gradient -1); eval loss = weight."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(0.0)

    def call(self, x):
        return x * 0.0 + self.w

    def train_step(self, data):
        self.optimizer.apply_gradients([(tf.constant(-1.0), self.w)])
        return {"loss": self.w.read_value()}

    def test_step(self, data):
        return {"loss": self.w.read_value()}


class _Record(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.eval_weights = []

    def on_test_end(self, logs=None):
        self.eval_weights.append(float(self.model.w.numpy()))


def _expected_average(steps, interval=1):
    """The average starts from the weights after the first step (1); the
    momentum ramps up as min(MOMENTUM, (1 + t) / (10 + t)), t the steps
    averaged so far. Updated every `interval` steps with that many steps'
    momentum, and the last steps averaged in before the eval."""
    average, t, pending = 1.0, 0, 0
    for step in range(2, steps + 1):
        pending += 1
        if pending == interval or step == steps:
            t += pending
            momentum = min(MOMENTUM, (1 + t) / (10 + t)) ** pending
            average = momentum * average + (1 - momentum) * step
            pending = 0
    return average


def _fit(epochs, steps, validation=True, extra=(), interval=1):
    model = _Counter()
    model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    data = tf.data.Dataset.from_tensors(tf.zeros([1])).repeat(steps)
    record = _Record()
    history = model.fit(data, epochs=epochs, validation_data=data if validation else None,
                        callbacks=[WeightAveraging(MOMENTUM, interval), record, *extra], verbose=0)
    return model, record, history


def test_eval_sees_the_average_and_training_continues_from_the_raw_weights():
    model, record, history = _fit(epochs=3, steps=4)
    averages = [_expected_average(4 * epoch) for epoch in (1, 2, 3)]
    np.testing.assert_allclose(record.eval_weights, averages, rtol=1e-6)
    np.testing.assert_allclose(history.history["val_loss"], averages, rtol=1e-6)
    # Training losses are the raw weights: 4, 8, 12 steps in.
    np.testing.assert_allclose(history.history["loss"], [4, 8, 12])
    assert float(model.w.numpy()) == pytest.approx(averages[-1])


def test_without_eval_the_model_ends_with_the_average():
    model, _, _ = _fit(epochs=2, steps=3, validation=False)
    assert float(model.w.numpy()) == pytest.approx(_expected_average(6))


def test_early_stopping_keeps_the_best_epochs_average():
    # val_loss (the average) grows every epoch: epoch 1 is the best, and
    # training stops after epoch 2 with epoch 1's weights, the average,
    # not the raw weight (2).
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=1,
                                            restore_best_weights=True)
    model, record, _ = _fit(epochs=5, steps=2, extra=[stop])
    assert len(record.eval_weights) == 2
    assert float(model.w.numpy()) == pytest.approx(_expected_average(2))


class _LastRawWeights(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.weights = [w.numpy() for w in self.model.trainable_variables]


def test_a_model_built_by_its_first_step_is_averaged():
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    x, y = tf.ones([8, 2]), tf.fill([8, 1], 3.0)
    raw = _LastRawWeights()
    history = model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y),
                        callbacks=[WeightAveraging(MOMENTUM, 1), raw], verbose=0)
    # The model ends with averaged weights, not the last step's, and they
    # are the ones the last eval scored.
    assert not np.allclose(model.get_weights()[0], raw.weights[0])
    assert model.evaluate(x, y, verbose=0) == pytest.approx(
        history.history["val_loss"][-1], rel=1e-5)


@pytest.mark.parametrize("steps", [7, 8])  # the eval after a whole interval, and inside one
def test_averages_updated_every_few_steps_include_the_last_steps(steps):
    model, record, _ = _fit(epochs=1, steps=steps, interval=3)
    assert record.eval_weights == pytest.approx([_expected_average(steps, 3)])
    assert float(model.w.numpy()) == pytest.approx(_expected_average(steps, 3))


def test_updating_every_ten_steps_stays_within_five_steps_of_every_step():
    # The weight counts the steps: the averages differ by how many steps
    # they lag behind, which the interval shifts by at most half of itself.
    every_step = _expected_average(300)
    _, record, _ = _fit(epochs=1, steps=300, interval=10)
    assert 0 < abs(record.eval_weights[0] - every_step) <= 5
