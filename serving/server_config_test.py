"""Tests of serving/server_config.py: TF Serving's config files and version policies."""
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from mtrank.serving import server_config


def policy(text):
    return text_format.Parse(text, model_server_config_pb2.ModelConfig()).model_version_policy


@pytest.mark.parametrize("text, expected", [
    ("", {5}),
    ("model_version_policy { latest { num_versions: 2 } }", {3, 5}),
    ("model_version_policy { latest { num_versions: 9 } }", {1, 3, 5}),
    ("model_version_policy { specific { versions: 1 versions: 4 } }", {1}),
    ("model_version_policy { all {} }", {1, 3, 5}),
])
def test_select_versions_applies_the_policy(text, expected):
    assert server_config.select_versions(policy(text), [3, 1, 5]) == expected
    assert server_config.select_versions(policy(text), []) == set()


@pytest.mark.parametrize("text, words", [
    ("", "lists no model"),
    ('model_config_list { config { base_path: "/m" } }', "name: required"),
    ('model_config_list { config { name: "a" } }', "'a'.base_path: required"),
    ('model_config_list { config { name: "a" base_path: "/m" } '
     'config { name: "a" base_path: "/n" } }', "used twice"),
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "onnx" } }',
     "model_platform"),
    ('model_config_list { config { name: "a" base_path: "/m" '
     'model_version_policy { specific {} } } }', "specific.versions"),
    ('model_config_list { config { name: "a" base_path: "/m" '
     'model_version_policy { specific { versions: 1 } } '
     'version_labels { key: "stable" value: 2 } } }', "version_labels['stable']"),
])
def test_invalid_model_configs_name_the_field(text, words):
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    with pytest.raises(server_config.ServerConfigError) as raised:
        server_config.validate(config, "models.config")
    assert words in str(raised.value) and "models.config" in str(raised.value)


def test_text_format_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n")
    with pytest.raises(server_config.ServerConfigError, match=r"batching_parameters.txt: 2:"):
        server_config.read_batching_parameters(str(path))
    with pytest.raises(server_config.ServerConfigError, match="cannot read"):
        server_config.read_model_server_config(str(tmp_path / "missing.config"))


def test_batching_parameters_take_defaults_and_check_values(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text("max_batch_size { value: 32 }\nnum_batch_threads { value: 4 }\n")
    assert server_config.read_batching_parameters(str(path)) == server_config.BatchingParameters(
        max_batch_size=32, num_batch_threads=4)
    path.write_text("num_batch_threads { value: 0 }\n")
    with pytest.raises(server_config.ServerConfigError, match="num_batch_threads"):
        server_config.read_batching_parameters(str(path))
    path.write_text("allowed_batch_sizes: 8\n")
    with pytest.raises(server_config.ServerConfigError, match="allowed_batch_sizes"):
        server_config.read_batching_parameters(str(path))
