"""The serving signatures (serving/signatures.py) of a real export: the real
Transform (tf.Transform on Beam over small data), the real model the trainer
builds, saved with the serving signatures and loaded back with
tf.saved_model.load, then served by our server."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from mtrank.base import serving_contract
from mtrank.serving import client as client_lib, signatures
from mtrank.trainer import task as task_lib
from mtrank_testing import serving_util as testing_util
from mtrank_testing import trainer_util as tu


@pytest.fixture(scope="module")
def config():
    # Two ensemble members: the export serves their mean (the other exports
    # in the suite, the server's and the pipeline's, hold one member).
    return tu.small_config(model={"ensemble_size": 2})


@pytest.fixture(scope="module")
def instances(config):
    return tu.raw_instances(config)


@pytest.fixture(scope="module")
def export(config, instances, tmp_path_factory):
    """(loaded SavedModel, in-process model, TFTransformOutput, transformed data, export dir)."""
    work = tmp_path_factory.mktemp("export")
    transformed, transform_dir = tu.run_transform(config, instances, str(work))
    tft_output = tft.TFTransformOutput(transform_dir)
    label_keys = set(config.label_keys)
    feature_keys = [f.name for f in config.features]
    features = {k: tf.constant(v) for k, v in tu.batch_of(transformed, feature_keys).items()}
    labels = {k: tf.constant(v, tf.float32)
              for k, v in tu.batch_of(transformed, sorted(label_keys)).items()}
    tf.keras.utils.set_random_seed(0)
    model = task_lib.build_model(config)
    # Eager: tracing train_step runs autograph over all of tf_keras (~15 s).
    model.run_eagerly = True
    model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(), steps_per_epoch=5,
              epochs=1, verbose=0)
    model.tft_layer = tft_output.transform_features_layer()
    export_dir = str(work / "serving_model")
    model.save(export_dir, save_format="tf",
               signatures=signatures.make_signatures(model, config))
    signatures.write_serving_assets(export_dir, config)
    # The export must be self-contained (vocabularies copied into its
    # assets): load it while the Transform output is out of the way.
    hidden = transform_dir + "_hidden"
    os.rename(transform_dir, hidden)
    try:
        loaded = tf.saved_model.load(export_dir)
        loaded.signatures["serving_default"](
            examples=_serialized(config, instances[:2]))
    finally:
        os.rename(hidden, transform_dir)
    return loaded, model, tft_output, transformed, export_dir


@pytest.fixture(scope="module")
def loaded(export):
    return export[0]


def _serialized(config, instances, include_labels=False):
    return tf.constant([tu.to_example(i, config, include_labels).SerializeToString()
                        for i in instances])


def _serve(loaded, serialized):
    return {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        examples=serialized).items()}


def test_serving_default_takes_only_serialized_examples(loaded):
    fn = loaded.signatures["serving_default"]
    args, kwargs = fn.structured_input_signature
    assert args == ()
    assert list(kwargs) == [serving_contract.EXAMPLES_INPUT] == ["examples"]
    spec = kwargs["examples"]
    assert spec.dtype == tf.string
    assert spec.shape.as_list() == [None]


def test_signatures_exported(loaded):
    assert set(loaded.signatures) == {"serving_default", "predict_raw", "regress", "classify",
                                      "transform_features"}


@pytest.mark.parametrize("n", [1, 5])
def test_outputs_one_value_per_example_per_task(config, instances, loaded, n):
    outputs = _serve(loaded, _serialized(config, instances[:n]))
    assert set(outputs) == {t.name for t in config.tasks} | {"score"}
    for task in config.tasks:
        assert outputs[task.name].shape == (n,), task.name
        assert outputs[task.name].dtype == np.float32
        if task.type == "binary":
            assert np.all((outputs[task.name] >= 0) & (outputs[task.name] <= 1))
    if n > 1:
        assert np.std(outputs["click"]) > 0  # examples are scored individually


def test_output_structure_is_declared(config, loaded):
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert set(outputs) == {t.name for t in config.tasks} | {"score"}
    for spec in outputs.values():
        assert spec.dtype == tf.float32 and spec.shape.as_list() == [None]


def test_scores_do_not_depend_on_batch_companions(config, instances, loaded):
    batch = _serve(loaded, _serialized(config, instances[:5]))
    for i in range(5):
        alone = _serve(loaded, _serialized(config, [instances[i]]))
        for task in config.tasks:
            np.testing.assert_allclose(alone[task.name], batch[task.name][i:i + 1], rtol=1e-5,
                                       atol=1e-6)


def test_missing_feature_takes_the_default(config, instances, loaded):
    """An example missing `age` scores as one with the default age 0."""
    instance = dict(instances[0])
    assert instance["age"] != [0]
    missing = dict(instance, age=[])
    explicit = dict(instance, age=[0])
    out_missing = _serve(loaded, _serialized(config, [missing]))
    out_explicit = _serve(loaded, _serialized(config, [explicit]))
    out_original = _serve(loaded, _serialized(config, [instance]))
    for task in config.tasks:
        assert np.all(np.isfinite(out_missing[task.name]))
        np.testing.assert_allclose(out_missing[task.name], out_explicit[task.name], rtol=1e-6)
    assert any(not np.allclose(out_missing[t.name], out_original[t.name]) for t in config.tasks)


def test_extra_values_of_a_scalar_feature_are_ignored(config, instances, loaded):
    one = [dict(i) for i in instances[:3]]
    extra = [dict(i, age=i["age"] + [1000], category=i["category"] + [b"zzz"]) for i in one]
    plain = _serve(loaded, _serialized(config, one))
    with_extra = _serve(loaded, _serialized(config, extra))
    for task in config.tasks:
        np.testing.assert_allclose(plain[task.name], with_extra[task.name], rtol=1e-6)


def test_example_with_no_features_scores(config, loaded):
    outputs = _serve(loaded, tf.constant([tf.train.Example().SerializeToString()] * 2))
    for task in config.tasks:
        assert outputs[task.name].shape == (2,)
        assert np.all(np.isfinite(outputs[task.name]))


def test_unknown_feature_is_ignored(config, instances, loaded):
    plain = _serve(loaded, _serialized(config, instances[:3]))
    extra = [dict(i, unknown_feature=[b"x", b"y"], another=[1.5]) for i in instances[:3]]
    with_extra = _serve(loaded, _serialized(config, extra))
    for task in config.tasks:
        np.testing.assert_array_equal(plain[task.name], with_extra[task.name])


def test_labels_are_not_required_and_do_not_matter(config, instances, loaded):
    without = _serve(loaded, _serialized(config, instances[:4], include_labels=False))
    with_labels = _serve(loaded, _serialized(config, instances[:4], include_labels=True))
    for task in config.tasks:
        np.testing.assert_array_equal(without[task.name], with_labels[task.name])


def test_transform_features_returns_transformed_features(config, instances, export):
    loaded, _, _, transformed, _ = export
    out = loaded.signatures["transform_features"](examples=_serialized(config, instances))
    assert set(out) == {f.name for f in config.features}
    for name, value in out.items():
        np.testing.assert_allclose(
            value.numpy(), np.stack([np.asarray(t[name]) for t in transformed]),
            rtol=1e-5, atol=1e-5, err_msg=name)


def test_serving_spec_lists_features_with_dtypes(config, export):
    export_dir = export[4]
    path = os.path.join(export_dir, "assets.extra", serving_contract.SERVING_SPEC_FILE)
    with open(path) as f:
        spec = json.load(f)
    assert spec["model_name"] == config.model_name
    assert spec["tasks"] == ["click", "purchase", "dwell"]
    # Unset weights: every binary task weighs 1 (dwell is a regression).
    assert spec["score"] == {"output": "score", "form": "weighted_product",
                             "weights": {"click": 1.0, "purchase": 1.0}}
    assert spec["features"] == {
        "user_id": {"dtype": "string", "shape": "scalar"},
        "item_id": {"dtype": "string", "shape": "scalar"},
        "category": {"dtype": "string", "shape": "scalar"},
        "age": {"dtype": "int64", "shape": "scalar"},
        "price": {"dtype": "float", "shape": "scalar"},
        "popularity": {"dtype": "float", "shape": "scalar"},
        "tags": {"dtype": "string", "shape": "list"},
        "seen_items": {"dtype": "int64", "shape": "list"},
    }


def test_scores_equal_model_of_transform_in_process(config, instances, export):
    loaded, model, tft_output, _, _ = export
    serialized = _serialized(config, instances)
    served = _serve(loaded, serialized)
    raw_spec = {k: v for k, v in tu.raw_feature_spec(config).items()
                if k not in config.label_keys}
    features = tft_output.transform_raw_features(tf.io.parse_example(serialized, raw_spec))
    expected = model(features)
    for task in config.tasks:
        np.testing.assert_allclose(served[task.name], expected[task.name].numpy(), rtol=1e-5,
                                   atol=1e-6)


def _raw_inputs(config, instances):
    """predict_raw tensors: scalars [batch] (missing: the default), lists
    [batch, longest] padded with the default."""
    inputs = {}
    for feature in config.features:
        dtype = {"string": tf.string, "int64": tf.int64, "float": tf.float32}[feature.dtype]
        values = [list(i[feature.name]) for i in instances]
        if feature.is_scalar:
            inputs[feature.name] = tf.constant(
                [v[0] if v else feature.default_value for v in values], dtype)
        else:
            width = max(len(v) for v in values)
            pad = b"" if feature.dtype == "string" else 0
            inputs[feature.name] = tf.constant([v + [pad] * (width - len(v)) for v in values],
                                               dtype)
    return inputs


def test_predict_raw_scores_equal_serving_default(config, instances, loaded):
    """Including an instance with missing scalars, an empty list and an over-long list."""
    from_examples = _serve(loaded, _serialized(config, instances))
    from_raw = loaded.signatures["predict_raw"](**_raw_inputs(config, instances))
    assert set(from_raw) == set(from_examples)
    for name, values in from_examples.items():
        np.testing.assert_allclose(from_raw[name].numpy(), values, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_predict_raw_takes_one_input_per_feature_in_its_dtype(config, loaded):
    _, kwargs = loaded.signatures["predict_raw"].structured_input_signature
    assert {name: (spec.dtype, spec.shape.rank) for name, spec in kwargs.items()} == {
        f.name: ({"string": tf.string, "int64": tf.int64, "float": tf.float32}[f.dtype],
                 1 if f.is_scalar else 2)
        for f in config.features}


def test_score_is_the_weighted_product_of_binary_tasks(config, instances, loaded):
    outputs = _serve(loaded, _serialized(config, instances))
    np.testing.assert_allclose(outputs["score"], outputs["click"] * outputs["purchase"],
                               rtol=1e-5)


def test_regress_and_classify_carry_tf_serving_method_names(config, instances, export):
    loaded, export_dir = export[0], export[4]
    from mtrank.serving import model_store
    session_signatures = model_store.SessionSignatures(
        export_dir, model_store.session_config(), model_store.read_serving_spec(export_dir))
    defs = {key: info.definition for key, info in session_signatures.infos.items()}
    assert defs["regress"].method_name == "tensorflow/serving/regress"
    assert defs["classify"].method_name == "tensorflow/serving/classify"
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert set(defs["regress"].inputs) == {"inputs"} and set(defs["regress"].outputs) == {
        "outputs"}
    assert tf.saved_model.experimental.read_fingerprint(export_dir).saved_model_checksum
    serialized = _serialized(config, instances[:3])
    scores = _serve(loaded, serialized)
    regressed = loaded.signatures["regress"](inputs=serialized)["outputs"].numpy()
    np.testing.assert_allclose(regressed, scores["score"], rtol=1e-6)
    # As the server runs it, with the Examples check in the same Session call.
    in_session = session_signatures.run("regress", {"inputs": np.array(serialized, dtype=object)},
                                        ["outputs"])["outputs"]
    np.testing.assert_allclose(in_session, regressed, rtol=1e-6)
    classified = loaded.signatures["classify"](inputs=serialized)
    assert classified["classes"].numpy().tolist() == [[b"click", b"purchase"]] * 3
    np.testing.assert_allclose(classified["scores"].numpy(),
                               np.stack([scores["click"], scores["purchase"]], axis=1), rtol=1e-6)


def test_warmup_file_holds_one_request_per_scoring_signature(export):
    logs = signatures.read_warmup_logs(export[4])
    kinds = [(log.WhichOneof("log_type"), getattr(log, log.WhichOneof("log_type"))
              .request.model_spec.signature_name) for log in logs]
    assert kinds == [("predict_log", "serving_default"), ("predict_log", "predict_raw"),
                     ("regress_log", "regress"), ("classify_log", "classify")]


def _json_features(config, instance):
    """An instance as a client's JSON object (a missing scalar is null)."""
    features = {}
    for feature in config.features:
        values = [v.decode() if isinstance(v, bytes) else v for v in instance[feature.name]]
        features[feature.name] = (values[0] if values else None) if feature.is_scalar else values
    return features


def test_our_server_serves_the_export_with_every_signature(config, instances, export,
                                                           tmp_path):
    """The real export in a model base, served with batching, through the client."""
    loaded, export_dir = export[0], export[4]
    base = tmp_path / "mtrank_test"
    shutil.copytree(export_dir, base / "7")
    features = [_json_features(config, i) for i in instances[:8]]
    expected = _serve(loaded, _serialized(config, instances[:8]))
    from mtrank.serving import server_config
    with testing_util.running_server(str(base), config.model_name,
                                     batching=server_config.BatchingParameters()) as (_, target):
        for signature in ("serving_default", "predict_raw"):
            with client_lib.RankingClient(target, config.model_name,
                                          signature=signature) as ranking:
                served = ranking.predict(features, batch_size=4)
                assert ranking.status() == {7: "AVAILABLE"}
            assert set(served) == set(expected)
            for name in expected:
                np.testing.assert_allclose(served[name], expected[name], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{signature}/{name}")
