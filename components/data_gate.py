"""DataValidationGate: stops the run before Transform (so before the Trainer)
when the data is not what the schema and the config expect.

It checks, with TFDV:
- the anomalies ExampleValidator found (each split against the schema);
- drift: this run's train statistics against the previous statistics
  artifact (the last run's, resolved from ML Metadata), for the features of
  `validation.drift`;
- skew: the train split against the eval split, the most recent data and so
  the closest to what serving sees, for the features of `validation.skew`.
Statistics are validated in the schema's TRAINING environment (labels
present); SERVING is the environment of unlabelled serving requests.
"""

import json
import os
from typing import Dict, List, Optional

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx import v1 as tfx
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils
from tfx.utils import io_utils

ANOMALIES_FILE = "SchemaDiff.pb"
TRAINING = "TRAINING"
SERVING = "SERVING"
TRAIN_SPLIT, EVAL_SPLIT = "train", "eval"
# The anomaly types of TFDV's distribution comparators (drift and skew).
_COMPARATOR_TYPES = frozenset(
    value for name, value in anomalies_pb2.AnomalyInfo.Type.items()
    if name.startswith("COMPARATOR_") and name.endswith("_HIGH"))


class DataAnomaliesError(RuntimeError):
    """The data does not match the schema or drifted; the message names each anomaly."""


def _problems(anomalies: anomalies_pb2.Anomalies, comparators_only: bool = False) -> List[str]:
    problems = []
    for name, info in sorted(anomalies.anomaly_info.items()):
        if comparators_only and not any(r.type in _COMPARATOR_TYPES for r in info.reason):
            continue
        problems.append(f"{name}: {info.description or info.short_description}")
    if anomalies.HasField("dataset_anomaly_info") and not comparators_only:
        problems.append(f"dataset: {anomalies.dataset_anomaly_info.description}")
    return problems


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """{split: ["feature: description", ...]} for the splits with anomalies."""
    found = {}
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split),
                            ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        problems = _problems(anomalies)
        if problems:
            found[split] = problems
    return found


def with_comparators(schema: schema_pb2.Schema, drift: Dict[str, float],
                     skew: Dict[str, float]) -> schema_pb2.Schema:
    """A copy of `schema` with the config's drift and skew thresholds:
    L-infinity distance for string features, Jensen-Shannon divergence for
    numeric ones."""
    schema = schema_pb2.Schema.FromString(schema.SerializeToString())
    for comparators, field in ((drift, "drift_comparator"), (skew, "skew_comparator")):
        for name, threshold in comparators.items():
            feature = tfdv.get_feature(schema, name)
            comparator = getattr(feature, field)
            if feature.type == schema_pb2.BYTES:
                comparator.infinity_norm.threshold = threshold
            else:
                comparator.jensen_shannon_divergence.threshold = threshold
    return schema


def training_environment(schema: schema_pb2.Schema) -> Optional[str]:
    """TRAINING where the schema declares environments (a curated one); an
    inferred schema has none and holds every feature everywhere."""
    return TRAINING if TRAINING in schema.default_environment else None


def distribution_anomalies(schema: schema_pb2.Schema,
                           train: Optional[statistics_pb2.DatasetFeatureStatisticsList],
                           eval_statistics: Optional[statistics_pb2.DatasetFeatureStatisticsList],
                           previous_train: Optional[statistics_pb2.DatasetFeatureStatisticsList],
                           drift: Dict[str, float], skew: Dict[str, float]) -> Dict[str, List[str]]:
    """{"drift": [...], "skew": [...]}: the features whose distance is above
    its threshold, described by TFDV (which distance, its value, the bound)."""
    found = {}
    if train is None:
        return found
    checks = (("drift", with_comparators(schema, drift=drift, skew={}),
               {"previous_statistics": previous_train}),
              ("skew", with_comparators(schema, drift={}, skew=skew),
               {"serving_statistics": eval_statistics}))
    for kind, schema_with_thresholds, other_statistics in checks:
        if None in other_statistics.values() or not (drift if kind == "drift" else skew):
            continue
        anomalies = tfdv.validate_statistics(train, schema_with_thresholds,
                                             environment=training_environment(schema),
                                             **other_statistics)
        problems = _problems(anomalies, comparators_only=True)
        if problems:
            found[kind] = problems
    return found


def check(anomalies_by_split: Dict[str, List[str]],
          distribution: Dict[str, List[str]]) -> None:
    """Raises DataAnomaliesError naming every anomaly."""
    named = [f"[{split}] {problem}" for split, problems in anomalies_by_split.items()
             for problem in problems]
    named += [f"[{kind}] {problem}" for kind, problems in distribution.items()
              for problem in problems]
    if named:
        raise DataAnomaliesError("data anomalies, run stopped before Transform: "
                                 + "; ".join(named))


def _split_statistics(artifact, split: str):
    if artifact is None or split not in artifact_utils.decode_split_names(artifact.split_names):
        return None
    return stats_artifact_utils.load_statistics(artifact, split).proto()


@tfx.dsl.components.component
def DataValidationGate(
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
        statistics: tfx.dsl.components.InputArtifact[
            tfx.types.standard_artifacts.ExampleStatistics],
        schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
        checks_json: tfx.dsl.components.Parameter[str],
        previous_statistics: tfx.dsl.components.InputArtifact[
            tfx.types.standard_artifacts.ExampleStatistics] = None,
) -> None:
    """`checks_json`: {"drift": {feature: threshold}, "skew": {...}}."""
    checks = json.loads(checks_json)
    schema_proto = io_utils.SchemaReader().read(
        io_utils.get_only_uri_in_dir(schema.uri))
    check(read_anomalies(anomalies), distribution_anomalies(
        schema_proto,
        train=_split_statistics(statistics, TRAIN_SPLIT),
        eval_statistics=_split_statistics(statistics, EVAL_SPLIT),
        previous_train=_split_statistics(previous_statistics, TRAIN_SPLIT),
        drift=checks.get("drift", {}), skew=checks.get("skew", {})))
