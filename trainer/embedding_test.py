"""Tests of trainer/embedding.py's piecewise-linear and periodic numeric
embeddings and the id embeddings' regularisers (the id embeddings' lookup and
pooling are tested with the model in model_test.py)."""
import numpy as np
import tensorflow as tf

from mtrank.base import config as config_lib
from mtrank.trainer.embedding import FeatureEmbedding


def _features():
    return [
        config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                 transform="piecewise_linear", num_buckets=4, embedding_dim=3),
        config_lib.FeatureConfig(name="age", kind="numeric", dtype="int64"),
    ]


def test_piecewise_linear_feature_is_a_relu_layer_of_embedding_dim():
    layer = FeatureEmbedding(_features(), seed=1)
    encoded = tf.constant([[0, 0, 0, 0], [1, 0.5, 0, 0], [1, 1, 1, 1]], tf.float32)
    age = tf.constant([0.5, -1.0, 2.0])
    out = layer({"price": encoded, "age": age}).numpy()
    assert out.shape == (3, 4)
    dense = layer._embeddings["price"]
    expected = np.maximum(encoded.numpy() @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    np.testing.assert_allclose(out[:, :3], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[:, 3], age.numpy())
    assert not np.allclose(out[1, :3], out[2, :3])


def test_piecewise_linear_layer_is_trained():
    layer = FeatureEmbedding(_features(), seed=1)
    encoded = tf.constant([[1, 0.5, 0, 0], [1, 1, 1, 0.2]], tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer({"price": encoded, "age": tf.constant([0.0, 1.0])}))
    kernel = layer._embeddings["price"].kernel
    assert kernel in layer.trainable_variables
    assert np.any(tape.gradient(loss, kernel).numpy() != 0)


def test_periodic_feature_is_a_relu_layer_over_sin_and_cos_of_learned_frequencies():
    features = [config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                         transform="periodic", num_frequencies=5,
                                         frequency_scale=0.5, embedding_dim=3)]
    layer = FeatureEmbedding(features, seed=1)
    x = tf.constant([0.0, 0.3, -2.0, 7.0])
    with tf.GradientTape() as tape:
        out = layer({"price": x})
        loss = tf.reduce_sum(out)
    periodic = layer._embeddings["price"]
    frequencies = periodic.frequencies.numpy()
    assert frequencies.shape == (5,) and np.all(frequencies != 0)
    angles = 2 * np.pi * x.numpy()[:, None] * frequencies[None, :]
    encoded = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    dense = periodic.dense
    expected = np.maximum(encoded @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The frequencies are trained with the rest of the model.
    assert periodic.frequencies in layer.trainable_variables
    assert np.any(tape.gradient(loss, periodic.frequencies).numpy() != 0)


def test_periodic_frequencies_start_at_the_configured_scale_and_seed():
    def frequencies(scale, seed):
        feature = config_lib.FeatureConfig(name="price", kind="numeric", dtype="float",
                                           transform="periodic", num_frequencies=400,
                                           frequency_scale=scale)
        return FeatureEmbedding([feature], seed=seed)._embeddings["price"].frequencies.numpy()
    assert abs(np.std(frequencies(0.1, 0)) - 0.1) < 0.02
    assert abs(np.std(frequencies(3.0, 0)) - 3.0) < 0.6
    np.testing.assert_array_equal(frequencies(0.1, 0), frequencies(0.1, 0))
    assert not np.allclose(frequencies(0.1, 0), frequencies(0.1, 1))


def _id_features(**overrides):
    return [
        config_lib.FeatureConfig(name="user_id", kind="categorical", dtype="string",
                                 hash_buckets=10, embedding_dim=3),
        config_lib.FeatureConfig(name="tags", kind="multivalent", dtype="string",
                                 hash_buckets=10, max_len=3, embedding_dim=3),
        config_lib.FeatureConfig(name="age", kind="numeric", dtype="int64"),
        config_lib.FeatureConfig(name="popularity", kind="numeric", dtype="float",
                                 transform="buckets", num_buckets=4, embedding_dim=2),
    ]


def _id_inputs():
    return {"user_id": tf.constant([2, 5, 5], tf.int64),
            "tags": tf.constant([[1, 4, 0], [0, 0, 0], [3, 3, 9]], tf.int64),
            "age": tf.constant([0.5, -1.0, 2.0]),
            "popularity": tf.constant([0, 1, 3], tf.int64)}


def test_embedding_dropout_drops_id_vectors_in_training_only():
    layer = FeatureEmbedding(_id_features(), seed=1, dropout=0.5)
    inputs = _id_inputs()
    plain = FeatureEmbedding(_id_features(), seed=1)(inputs).numpy()
    np.testing.assert_array_equal(layer(inputs).numpy(), plain)
    np.testing.assert_array_equal(layer(inputs, training=False).numpy(), plain)
    trained = layer(inputs, training=True, per_feature=True)
    expected = {name: v.numpy() for name, v in layer(inputs, per_feature=True).items()}
    for name in ("user_id", "tags"):  # ids: each value dropped or scaled by 1 / (1 - 0.5)
        dropped = trained[name].numpy() == 0
        assert dropped.any() and not dropped.all(), name
        np.testing.assert_allclose(trained[name].numpy()[~dropped],
                                   2 * expected[name][~dropped], rtol=1e-6)
    for name in ("age", "popularity"):  # numbers are not ids
        np.testing.assert_array_equal(trained[name].numpy(), expected[name])


def test_squared_norms_add_up_every_id_row_an_example_looks_up():
    layer = FeatureEmbedding(_id_features(), seed=1)
    inputs = _id_inputs()
    layer(inputs)
    users = layer._embeddings["user_id"].embeddings.numpy()
    tags = layer._embeddings["tags"].embeddings.numpy()

    def sq(row):
        return float(np.sum(row ** 2))

    expected = [sq(users[2]) + sq(tags[1]) + sq(tags[4]),
                sq(users[5]),  # an empty list adds nothing
                sq(users[5]) + 2 * sq(tags[3]) + sq(tags[9])]  # a repeated id counts twice
    np.testing.assert_allclose(layer.squared_norms(inputs).numpy(), expected, rtol=1e-6)


def test_learning_rate_multiplier_scales_the_id_tables_adam_steps():
    """The same rows at first; one Adam step moves every id row by about the
    learning rate times the multiplier (Adam's first step is lr x sign of
    the gradient), and the bucketed numbers' rows by the learning rate."""
    inputs = _id_inputs()
    steps, first_user_rows = {}, {}
    for multiplier in (1.0, 0.1):
        layer = FeatureEmbedding(_id_features(), seed=1, learning_rate_multiplier=multiplier)
        before = {k: v.numpy() for k, v in layer(inputs, per_feature=True).items()}
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs) * tf.range(1.0, 10.0))
        tf.keras.optimizers.Adam(0.01).apply_gradients(
            zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))
        after = {k: v.numpy() for k, v in layer(inputs, per_feature=True).items()}
        steps[multiplier] = {k: np.abs(after[k] - before[k]) for k in before}
        first_user_rows[multiplier] = before["user_id"]
    np.testing.assert_allclose(first_user_rows[0.1], first_user_rows[1.0], rtol=1e-6)
    np.testing.assert_allclose(steps[1.0]["user_id"], 0.01, rtol=1e-3)
    np.testing.assert_allclose(steps[0.1]["user_id"], 0.001, rtol=1e-3)
    np.testing.assert_allclose(steps[0.1]["popularity"], steps[1.0]["popularity"], rtol=1e-6)
