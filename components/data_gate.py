"""DataValidationGate: stops the run when ExampleValidator found anomalies.

ExampleValidator only records anomalies (and a `blessed` flag per split);
nothing downstream reads them. Transform depends on this gate, so bad data
never reaches training.
"""

import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The data does not match the schema; the message names each anomaly."""


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """{split: ["feature: description", ...]} for the splits with anomalies."""
    found = {}
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split),
                            ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        problems = [f"{name}: {info.description or info.short_description}"
                    for name, info in sorted(anomalies.anomaly_info.items())]
        if anomalies.HasField("dataset_anomaly_info"):
            problems.append(f"dataset: {anomalies.dataset_anomaly_info.description}")
        if problems:
            found[split] = problems
    return found


def check_anomalies(anomalies_artifact) -> None:
    """Raises DataAnomaliesError naming every anomaly of every split."""
    found = read_anomalies(anomalies_artifact)
    if found:
        raise DataAnomaliesError("data anomalies, run stopped before Transform: " + "; ".join(
            f"[{split}] {problem}" for split, problems in found.items() for problem in problems))


@tfx.dsl.components.component
def DataValidationGate(
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]
) -> None:
    check_anomalies(anomalies)
