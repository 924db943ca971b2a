"""The curated schema pipeline/schemas/simulator.pbtxt against the simulator
whose logs it describes and the environments DataValidationGate validates in."""
import os

import pytest
import tensorflow_data_validation as tfdv

from mtrank.components import data_gate
from mtrank.simulator import logs as simulator

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "pipeline", "schemas", "simulator.pbtxt")


def test_curated_simulator_schema():
    schema = tfdv.load_schema_text(SCHEMA)
    assert list(schema.default_environment) == [data_gate.TRAINING, data_gate.SERVING]
    for feature in schema.feature:
        absent_at_serving = (feature.name.endswith("_label")
                             or feature.name in ("position", "request_id", "impression_ts"))
        assert (list(feature.not_in_environment) == [data_gate.SERVING]) == absent_at_serving, \
            feature.name
    for name, values in (("device", simulator.DEVICES), ("country", simulator.COUNTRIES),
                         ("item_category", simulator.CATEGORIES)):
        assert set(tfdv.get_domain(schema, name).value) == set(values)
        assert tfdv.get_feature(schema, name).distribution_constraints.min_domain_mass == \
            pytest.approx(0.99)
    for name in ("user_id", "item_id", "request_id"):
        assert not tfdv.get_feature(schema, name).HasField("domain"), name
