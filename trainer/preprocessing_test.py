"""Tests of trainer/preprocessing.py: the real preprocessing_fn run with
tf.Transform on Beam over small in-memory data whose feature spec is all
VarLenFeature, as the pipeline's schema yields."""
import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from mtrank.trainer import features as features_lib
from mtrank.trainer import preprocessing
from mtrank_testing import trainer_util as tu


@pytest.fixture(scope="module")
def config():
    return tu.small_config()


@pytest.fixture(scope="module")
def instances(config):
    return tu.raw_instances(config)


@pytest.fixture(scope="module")
def transform_run(config, instances, tmp_path_factory):
    return tu.run_transform(config, instances, str(tmp_path_factory.mktemp("tft")))


@pytest.fixture(scope="module")
def transformed(transform_run):
    return transform_run[0]


@pytest.fixture(scope="module")
def tft_output(transform_run):
    return tft.TFTransformOutput(transform_run[1])


def _column(transformed, key):
    return np.stack([np.asarray(t[key]) for t in transformed])


def _raw_scalar(instances, name, default):
    return np.array([i[name][0] if i[name] else default for i in instances], np.float64)


def _zscore(x):
    return (x - x.mean()) / x.std()


def test_output_keys_shapes_and_dtypes(config, transformed, tft_output):
    expected = {f.name for f in config.features} | set(config.label_keys)
    assert all(set(t) == expected for t in transformed)
    assert len(transformed) == tu.NUM_INSTANCES
    spec = tft_output.transformed_feature_spec()
    assert set(spec) == expected
    for f in config.features:
        shape = [f.max_len] if f.kind == "multivalent" else []
        dtype = tf.int64 if features_lib.is_embedded(f) else tf.float32
        assert spec[f.name] == tf.io.FixedLenFeature(shape, dtype), f.name


def test_zscore_has_zero_mean_unit_std(transformed, tft_output):
    assert tft_output.transformed_feature_spec()["age"].dtype == tf.float32
    age = _column(transformed, "age")
    assert abs(age.mean()) < 1e-5
    assert abs(age.std() - 1.0) < 1e-4


def test_missing_scalar_takes_config_default_before_transformation(config, instances,
                                                                   transformed):
    assert instances[tu.MISSING_SCALAR]["age"] == []
    raw_age = _raw_scalar(instances, "age", config.feature("age").default_value)
    assert raw_age[tu.MISSING_SCALAR] == 0
    np.testing.assert_allclose(_column(transformed, "age"), _zscore(raw_age), rtol=1e-4,
                               atol=1e-4)
    # The missing price is log1p(0.0) = 0, exactly as instance 0's price 0.0.
    price = _column(transformed, "price")
    assert instances[0]["price"] == [0.0]
    assert price[tu.MISSING_SCALAR] == pytest.approx(price[0], abs=1e-6)


def test_log_transform_of_known_values(instances, transformed):
    raw_price = _raw_scalar(instances, "price", 0.0)
    expected = _zscore(np.log1p(raw_price))
    np.testing.assert_allclose(_column(transformed, "price"), expected, rtol=1e-4, atol=1e-4)


def test_buckets_within_range_and_monotone(config, instances, transformed):
    num_buckets = config.feature("popularity").num_buckets
    buckets = _column(transformed, "popularity")
    assert buckets.min() >= 0 and buckets.max() <= num_buckets
    assert buckets.max() < features_lib.embedding_input_dim(config.feature("popularity"))
    raw = _raw_scalar(instances, "popularity", 0.0)
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(buckets[order]) >= 0)
    # 20 distinct values over 4 quantile buckets: every bucket is used.
    assert len(set(buckets.tolist())) >= num_buckets - 1


@pytest.mark.parametrize("name", ["user_id", "item_id"])
def test_hashed_ids(config, instances, transformed, name):
    feature = config.feature(name)
    ids = _column(transformed, name)
    assert ids.min() >= 0 and ids.max() < feature.hash_buckets
    expected = tf.strings.to_hash_bucket_fast(
        [i[name][0] for i in instances], feature.hash_buckets).numpy()
    np.testing.assert_array_equal(ids, expected)


def test_vocabulary_ids(config, instances, transformed):
    feature = config.feature("category")
    ids = _column(transformed, "category")
    assert ids.min() >= 0 and ids.max() <= feature.vocab_size  # vocab_size + 1 ids
    assert ids.max() < features_lib.embedding_input_dim(feature)
    counts = collections.Counter(i["category"][0] for i in instances)
    (top, top_count), (_, second_count) = counts.most_common(2)
    assert top_count > second_count
    by_value = collections.defaultdict(set)
    for instance, i in zip(instances, ids):
        by_value[instance["category"][0]].add(int(i))
    assert by_value[top] == {0}
    # Values beyond the top vocab_size share the one OOV bucket.
    ranked = [v for v, _ in counts.most_common()]
    for value in ranked[feature.vocab_size:]:
        assert by_value[value] == {feature.vocab_size}
    in_vocab = [by_value[v] for v in ranked[:feature.vocab_size]]
    assert sorted(min(s) for s in in_vocab) == list(range(feature.vocab_size))


def test_multivalent_hashed_list(config, instances, transformed):
    feature = config.feature("tags")
    tags = _column(transformed, "tags")
    assert tags.shape == (tu.NUM_INSTANCES, feature.max_len)
    for instance, row in zip(instances, tags):
        values = instance["tags"][:feature.max_len]
        expected = np.zeros(feature.max_len, np.int64)
        if values:
            expected[:len(values)] = tf.strings.to_hash_bucket_fast(
                values, feature.hash_buckets).numpy() + 1
        np.testing.assert_array_equal(row, expected)
    assert np.all(tags[tu.EMPTY_LIST] == features_lib.PADDING_ID)
    assert len(instances[tu.LONG_LIST]["tags"]) > feature.max_len
    assert np.all(tags[tu.LONG_LIST] > 0)
    assert tags.max() < features_lib.embedding_input_dim(feature)


def test_multivalent_vocabulary_list(config, instances, transformed):
    feature = config.feature("seen_items")
    seen = _column(transformed, "seen_items")
    assert seen.shape == (tu.NUM_INSTANCES, feature.max_len)
    assert seen.min() >= 0 and seen.max() < features_lib.embedding_input_dim(feature)
    counts = collections.Counter(v for i in instances for v in i["seen_items"])
    (top, top_count), (_, second_count) = counts.most_common(2)
    assert top_count > second_count
    for instance, row in zip(instances, seen):
        values = instance["seen_items"][:feature.max_len]
        assert np.all(row[:len(values)] >= 1)  # real values are shifted by +1
        assert np.all(row[len(values):] == features_lib.PADDING_ID)
        for value, i in zip(values, row):
            if value == top:
                assert i == 1
            else:
                assert i != 1
    long_row = seen[tu.LONG_LIST]
    assert len(instances[tu.LONG_LIST]["seen_items"]) > feature.max_len
    assert np.all(long_row >= 1)


def test_labels_passed_through_as_float(config, instances, transformed, tft_output):
    spec = tft_output.transformed_feature_spec()
    for key in config.label_keys:
        assert spec[key] == tf.io.FixedLenFeature([], tf.float32)
        labels = _column(transformed, key)
        np.testing.assert_array_equal(labels, [i[key][0] for i in instances])


def _parsed(config, instances, include_labels=True):
    serialized = [tu.to_example(i, config, include_labels).SerializeToString()
                  for i in instances]
    spec = tu.raw_feature_spec(config)
    if not include_labels:
        spec = {k: v for k, v in spec.items() if k not in config.label_keys}
    return tf.io.parse_example(serialized, spec)


def _assert_same(transformed, tensors, keys):
    for key in keys:
        np.testing.assert_allclose(tensors[key].numpy(), _column(transformed, key),
                                   rtol=1e-5, atol=1e-5, err_msg=key)


def test_saved_transform_graph_gives_the_same_output(config, instances, transformed,
                                                     tft_output):
    outputs = tft_output.transform_raw_features(_parsed(config, instances))
    assert set(outputs) == set(transformed[0])
    _assert_same(transformed, outputs, outputs.keys())


def test_transform_layer_without_labels_gives_the_same_features(config, instances, transformed,
                                                               tft_output):
    """As at serving time: the layer gets features only, no labels."""
    layer = tft_output.transform_features_layer()
    outputs = layer(_parsed(config, instances, include_labels=False))
    assert set(outputs) == {f.name for f in config.features}
    _assert_same(transformed, outputs, outputs.keys())


def test_transform_of_one_example_matches_batch(config, instances, transformed, tft_output):
    """Batch statistics do not leak: each example transforms the same alone,
    including one whose features are all missing from the batch."""
    layer = tft_output.transform_features_layer()
    for index in (tu.MISSING_SCALAR, tu.EMPTY_LIST, tu.LONG_LIST):
        outputs = layer(_parsed(config, [instances[index]], include_labels=False))
        _assert_same([transformed[index]], outputs, outputs.keys())


def test_piecewise_linear_encoding_of_known_values():
    # Bins [0, 0], [0, 1], [1, 3]: the zero-width bin is a step at 0.
    edges = tf.constant([0.0, 0.0, 1.0, 3.0])
    x = tf.constant([-1.0, 0.0, 0.5, 2.0, 5.0])
    np.testing.assert_allclose(preprocessing.piecewise_linear(x, edges).numpy(),
                               [[0, 0, 0], [0, 0, 0], [1, 0.5, 0], [1, 1, 0.5], [1, 1, 1]],
                               atol=1e-6)


ZERO_INFLATED_PRICES = {2: 1.0, 6: 2.0, 9: 4.0, 13: 8.0, 17: 16.0}


@pytest.fixture(scope="module")
def piecewise_run(tmp_path_factory):
    """The small config with `popularity` (0, 1, ..., 19) and `price` piecewise-
    linear; `price` made zero-inflated (ZERO_INFLATED_PRICES, else 0)."""
    features = [dict(f, transform="piecewise_linear", num_buckets=4)
                if f["name"] in ("popularity", "price") else f for f in tu.CONFIG_DICT["features"]]
    config = tu.small_config(features=features)
    instances = [dict(instance, price=[ZERO_INFLATED_PRICES.get(i, 0.0)])
                 for i, instance in enumerate(tu.raw_instances(config))]
    transformed, output_dir = tu.run_transform(
        config, instances, str(tmp_path_factory.mktemp("tft_piecewise")))
    return config, instances, transformed, tft.TFTransformOutput(output_dir)


def test_piecewise_linear_encodes_over_training_quantiles(piecewise_run):
    config, instances, transformed, tft_output = piecewise_run
    assert tft_output.transformed_feature_spec()["popularity"] == tf.io.FixedLenFeature(
        [4], tf.float32)
    encoded = _column(transformed, "popularity")
    raw = _raw_scalar(instances, "popularity", 0.0)
    assert encoded.shape == (tu.NUM_INSTANCES, 4)
    assert encoded.min() >= 0.0 and encoded.max() <= 1.0
    # Bins fill in order: no component exceeds the one before it.
    assert np.all(np.diff(encoded, axis=1) <= 1e-6)
    # The minimum encodes as all zeros, the maximum as all ones, and the
    # encoding's sum grows with the value (it keeps the value's order).
    np.testing.assert_allclose(encoded[raw.argmin()], 0.0, atol=1e-6)
    np.testing.assert_allclose(encoded[raw.argmax()], 1.0, atol=1e-6)
    order = np.argsort(raw)
    assert np.all(np.diff(encoded[order].sum(axis=1)) > 0)
    # 0..19 over 4 quantile bins: every bin is partly filled by some value.
    assert np.all(((encoded > 0) & (encoded < 1)).any(axis=0))


def test_piecewise_linear_bins_split_the_non_zero_values_of_a_zero_inflated_column(
        piecewise_run):
    _, _, transformed, _ = piecewise_run
    encoded = _column(transformed, "price")
    zeros = [i for i in range(tu.NUM_INSTANCES) if i not in ZERO_INFLATED_PRICES]
    np.testing.assert_allclose(encoded[zeros], 0.0, atol=1e-6)
    # Quantiles over all values would all be 0 (75% zeros): three step bins
    # and every non-zero price inside the one last bin. Over the non-zero
    # prices, the bins are filled one after another as the price grows.
    filled = [int(np.sum(encoded[i] > 0.999)) for i in sorted(ZERO_INFLATED_PRICES)]
    assert filled[0] == 0 and filled[-1] == 4
    assert sorted(filled) == filled and len(set(filled)) >= 4


def test_piecewise_linear_serving_layer_clips_out_of_range_values(piecewise_run):
    config, instances, transformed, tft_output = piecewise_run
    layer = tft_output.transform_features_layer()
    outputs = layer(_parsed(config, instances, include_labels=False))
    _assert_same(transformed, outputs, ["popularity"])
    beyond = [dict(instances[0], popularity=[-50.0]), dict(instances[0], popularity=[1e6])]
    encoded = layer(_parsed(config, beyond, include_labels=False))["popularity"].numpy()
    np.testing.assert_allclose(encoded, [[0, 0, 0, 0], [1, 1, 1, 1]], atol=1e-6)
