"""DataValidationGate reads the anomalies TFDV wrote and stops on any."""
import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from mtrank.components import data_gate


def _anomalies_artifact(tmp_path, anomalies_by_split):
    """An ExampleAnomalies artifact laid out as ExampleValidator writes it."""
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = artifact_utils.encode_split_names(list(anomalies_by_split))
    for split, anomalies in anomalies_by_split.items():
        split_dir = artifact_utils.get_split_uri([artifact], split)
        os.makedirs(split_dir)
        with open(os.path.join(split_dir, data_gate.ANOMALIES_FILE), "wb") as f:
            f.write(anomalies.SerializeToString())
    return artifact


def _validate(train: pd.DataFrame, serving: pd.DataFrame):
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(train))
    return tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(serving), schema)


TRAIN = pd.DataFrame({"device": ["mobile", "desktop"] * 20, "price": [1.0, 2.0] * 20})


def test_clean_data_passes(tmp_path):
    artifact = _anomalies_artifact(tmp_path, {"train": _validate(TRAIN, TRAIN),
                                              "eval": _validate(TRAIN, TRAIN)})
    assert data_gate.read_anomalies(artifact) == {}
    data_gate.check(data_gate.read_anomalies(artifact), {})


def test_anomalies_stop_the_run_and_are_named(tmp_path):
    drifted = pd.DataFrame({"device": ["toaster"] * 40, "price": [1.0] * 40})
    missing_column = pd.DataFrame({"device": ["mobile"] * 40})
    artifact = _anomalies_artifact(tmp_path, {"train": _validate(TRAIN, TRAIN),
                                              "eval": _validate(TRAIN, drifted),
                                              "extra": _validate(TRAIN, missing_column)})
    found = data_gate.read_anomalies(artifact)
    assert sorted(found) == ["eval", "extra"]
    assert any(p.startswith("device:") and "toaster" in p for p in found["eval"])
    assert any(p.startswith("price:") for p in found["extra"])
    with pytest.raises(data_gate.DataAnomaliesError, match=r"\[eval\] device:.*\[extra\] price:"):
        data_gate.check(data_gate.read_anomalies(artifact), {})


def _stats(frame: pd.DataFrame):
    return tfdv.generate_statistics_from_dataframe(frame)


def _schema_with_closed_devices(min_domain_mass: float):
    """A curated schema: devices form a closed domain that tolerates unseen
    values up to 1 - min_domain_mass of the values."""
    schema = tfdv.infer_schema(_stats(TRAIN))
    device = tfdv.get_feature(schema, "device")
    device.distribution_constraints.min_domain_mass = min_domain_mass
    return schema


def _with_new_devices(share: float) -> pd.DataFrame:
    n = 1000
    new = int(n * share)
    return pd.DataFrame({"device": ["mobile", "desktop"] * ((n - new) // 2) + ["toaster"] * new,
                         "price": [1.0, 2.0] * (n // 2)})


def test_new_category_beyond_tolerance_is_an_anomaly():
    schema = _schema_with_closed_devices(0.99)
    within = tfdv.validate_statistics(_stats(_with_new_devices(0.004)), schema)
    assert "device" not in within.anomaly_info
    beyond = tfdv.validate_statistics(_stats(_with_new_devices(0.05)), schema)
    assert "device" in beyond.anomaly_info
    with pytest.raises(data_gate.DataAnomaliesError, match=r"\[eval\] device:.*toaster"):
        data_gate.check({"eval": data_gate._problems(beyond)}, {})


def test_missing_feature_is_an_anomaly():
    anomalies = tfdv.validate_statistics(_stats(TRAIN[["device"]]), tfdv.infer_schema(_stats(TRAIN)))
    problems = data_gate._problems(anomalies)
    assert any(p.startswith("price:") and "missing" in p.lower() for p in problems), problems


def _shifted(device_share_mobile: float, price_offset: float) -> pd.DataFrame:
    n = 1000
    mobile = int(n * device_share_mobile)
    return pd.DataFrame({"device": ["mobile"] * mobile + ["desktop"] * (n - mobile),
                         "price": [1.0 + price_offset + (i % 10) / 10 for i in range(n)]})


def test_distribution_shift_against_previous_statistics_is_drift():
    previous = _stats(_shifted(0.5, 0.0))
    schema = tfdv.infer_schema(previous)
    thresholds = {"device": 0.1, "price": 0.3}
    same = data_gate.distribution_anomalies(
        schema, _stats(_shifted(0.52, 0.0)), None, previous, drift=thresholds, skew={})
    assert same == {}
    shifted = data_gate.distribution_anomalies(
        schema, _stats(_shifted(0.8, 5.0)), None, previous, drift=thresholds, skew={})
    assert list(shifted) == ["drift"]
    device, price = shifted["drift"]
    assert device.startswith("device:") and "Linfty" in device.replace(" ", "")
    assert price.startswith("price:") and "Jensen-Shannon" in price
    with pytest.raises(data_gate.DataAnomaliesError, match=r"\[drift\] device:.*\[drift\] price:"):
        data_gate.check({}, shifted)


def test_train_eval_skew_and_no_check_without_a_reference():
    train = _stats(_shifted(0.5, 0.0))
    schema = tfdv.infer_schema(train)
    skewed = data_gate.distribution_anomalies(
        schema, train, _stats(_shifted(0.9, 0.0)), None, drift={"device": 0.1},
        skew={"device": 0.1})
    # No previous statistics (a first run): no drift check, the skew check runs.
    assert list(skewed) == ["skew"] and skewed["skew"][0].startswith("device:")
    # Features without a threshold are not compared.
    assert data_gate.distribution_anomalies(
        schema, train, _stats(_shifted(0.9, 0.0)), None, drift={}, skew={"price": 0.3}) == {}


def test_environments_labels_absent_at_serving():
    labelled = pd.DataFrame({"device": ["mobile", "desktop"] * 20, "click_label": [0.0, 1.0] * 20})
    schema = tfdv.infer_schema(_stats(labelled))
    schema.default_environment.extend([data_gate.TRAINING, data_gate.SERVING])
    tfdv.get_feature(schema, "click_label").not_in_environment.append(data_gate.SERVING)
    serving = _stats(labelled[["device"]])
    assert not tfdv.validate_statistics(serving, schema,
                                        environment=data_gate.SERVING).anomaly_info
    in_training = tfdv.validate_statistics(serving, schema, environment=data_gate.TRAINING)
    assert "click_label" in in_training.anomaly_info
    assert data_gate.training_environment(schema) == data_gate.TRAINING
    assert data_gate.training_environment(tfdv.infer_schema(serving)) is None
