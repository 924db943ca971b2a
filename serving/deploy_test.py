"""Checks of the production path shipped in serving/: the TF Serving config
files and the Kubernetes manifests agree with each other, and our server reads
the same files."""
import os
import re

import grpc
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mtrank.serving import server as server_lib, server_config
from mtrank_testing import serving_util as testing_util

SERVING_DIR = os.path.dirname(os.path.abspath(__file__))
K8S_DIR = os.path.join(SERVING_DIR, "k8s")
SHIPPED = ("models.config", "batching_parameters.txt", "monitoring.config")


@pytest.fixture(scope="module")
def manifests():
    with open(os.path.join(K8S_DIR, "kustomization.yaml")) as f:
        resources = yaml.safe_load(f)["resources"]
    assert sorted(resources) == sorted(
        name for name in os.listdir(K8S_DIR) if name != "kustomization.yaml")
    documents = {}
    for name in resources:
        with open(os.path.join(K8S_DIR, name)) as f:
            for document in yaml.safe_load_all(f):
                documents[document["kind"]] = document
    return documents


@pytest.fixture(scope="module")
def container(manifests):
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def flags(container):
    parsed = {}
    for arg in container["args"]:
        match = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        assert match, f"not a --flag=value: {arg}"
        parsed[match.group(1)] = match.group(2)
    return parsed


def shipped(name):
    with open(os.path.join(SERVING_DIR, name), encoding="utf-8") as f:
        return f.read()


def test_shipped_files_parse_as_tf_serving_reads_them():
    config = server_config.read_model_server_config(os.path.join(SERVING_DIR, "models.config"))
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "mtrank", "/models/mtrank", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    assert server_config.read_batching_parameters(
        os.path.join(SERVING_DIR, "batching_parameters.txt")) == server_config.BatchingParameters()
    monitoring = server_config.read_monitoring_config(
        os.path.join(SERVING_DIR, "monitoring.config"))
    assert monitoring.prometheus_config.enable


def test_configmap_holds_exactly_the_shipped_files(manifests):
    assert manifests["ConfigMap"]["data"] == {name: shipped(name) for name in SHIPPED}


def test_deployment_runs_the_official_image_with_the_shipped_files(manifests, container):
    assert container["image"].startswith("tensorflow/serving:")
    assert container["command"] == ["tensorflow_model_server"]
    args = flags(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert args["model_config_file"] == f"{mounts['config']}/models.config"
    assert args["batching_parameters_file"] == f"{mounts['config']}/batching_parameters.txt"
    assert args["monitoring_config_file"] == f"{mounts['config']}/monitoring.config"
    assert args["enable_batching"] == "true"
    config = server_config.read_model_server_config(os.path.join(SERVING_DIR, "models.config"))
    for model in config.model_config_list.config:
        assert model.base_path.startswith(mounts["models"] + "/"), model.base_path


def test_ports_probes_and_service_agree(manifests, container):
    args = flags(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(args["port"]), "http": int(args["rest_api_port"])}
    config = server_config.read_model_server_config(os.path.join(SERVING_DIR, "models.config"))
    model_name = config.model_config_list.config[0].name
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": f"/v1/models/{model_name}/metadata",
                                               "port": "http"}
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    service = manifests["Service"]["spec"]
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert {p["targetPort"]: p["port"] for p in service["ports"]} == {
        "grpc": 8500, "http": 8501}
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    monitoring = server_config.read_monitoring_config(
        os.path.join(SERVING_DIR, "monitoring.config"))
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert int(annotations["prometheus.io/port"]) == ports["http"]


def test_autoscaler_scales_the_deployment(manifests):
    spec = manifests["HorizontalPodAutoscaler"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": manifests["Deployment"]["metadata"]["name"]}
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["metrics"][0]["resource"]["name"] == "cpu"


def test_our_server_serves_with_the_shipped_files(tmp_path):
    """models.config with its base path moved to a local directory, and the
    shipped batching parameters, as `mtrank serve` would read them."""
    base = tmp_path / "mtrank"
    testing_util.write_test_model(str(base), 1)
    config_file = tmp_path / "models.config"
    config_file.write_text(shipped("models.config").replace("/models/mtrank", str(base)))
    config = server_config.read_model_server_config(str(config_file))
    batching = server_config.read_batching_parameters(
        os.path.join(SERVING_DIR, "batching_parameters.txt"))
    running = server_lib.start(config, server_lib.ServerOptions(port=0, batching=batching))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "mtrank"
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b""], tf.string))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=10)
        assert response.model_spec.version.value == 1
        assert set(response.outputs) == {"click", "purchase", "score"}
    finally:
        running.stop(grace_s=None)
