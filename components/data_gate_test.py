"""DataValidationGate reads the anomalies TFDV wrote and stops on any."""
import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from components import data_gate


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
    data_gate.check_anomalies(artifact)


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
        data_gate.check_anomalies(artifact)
