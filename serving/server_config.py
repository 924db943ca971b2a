"""TF Serving's configuration files, read as TF Serving reads them.

- `--model_config_file`: a ModelServerConfig in protobuf text format
  (tensorflow_serving.config.model_server_config_pb2): the models, each with
  a base path, a version policy (latest N, specific versions, all) and
  version labels.
- `--batching_parameters_file`: a BatchingParameters message
  (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
- `--monitoring_config_file`: a MonitoringConfig message
  (tensorflow_serving/config/monitoring_config.proto).

tensorflow-serving-api ships no Python classes for the last two, so they are
declared here with the same names, field numbers and types, which makes the
text format (and every error about it) the same as TF Serving's.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, List, Set

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

TENSORFLOW_PLATFORM = "tensorflow"


class ServerConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and field."""


def _declare_messages():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb))
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mtrank/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    field = descriptor_pb2.FieldDescriptorProto
    batching = file_proto.message_type.add(name="BatchingParameters")
    for number, name, wrapper in ((1, "max_batch_size", "Int64Value"),
                                  (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"),
                                  (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")):
        batching.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                           type=field.TYPE_MESSAGE, type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, label=field.LABEL_REPEATED,
                       type=field.TYPE_INT64)
    batching.field.add(name="pad_variable_length_inputs", number=7, label=field.LABEL_OPTIONAL,
                       type=field.TYPE_BOOL)
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=field.LABEL_OPTIONAL,
                         type=field.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=field.LABEL_OPTIONAL,
                         type=field.TYPE_STRING)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=field.LABEL_OPTIONAL,
                         type=field.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file_proto)
    factory = message_factory.MessageFactory(pool)
    return (factory.GetPrototype(pool.FindMessageTypeByName("tensorflow.serving." + name))
            for name in ("BatchingParameters", "MonitoringConfig"))


BatchingParametersProto, MonitoringConfigProto = _declare_messages()


def _parse_text(path: str, message):
    try:
        with open(path, encoding="utf-8") as f:
            return text_format.Parse(f.read(), message)
    except OSError as e:
        raise ServerConfigError(f"{path}: cannot read: {e.strerror}") from None
    except text_format.ParseError as e:
        raise ServerConfigError(f"{path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """Server-side batching (TF Serving's names).

    max_batch_size: examples (not requests) in one model call.
    batch_timeout_micros: how long the first request of a batch waits for others.
    num_batch_threads: model calls running at once.
    max_enqueued_batches: batches waiting per signature; beyond it, requests
      are refused with RESOURCE_EXHAUSTED.

    The defaults are the best measured with benchmarks/serving.py on 2 CPUs:
    no timeout and one batch thread, so a lone request runs at once and
    requests arriving while the model runs are merged into the next call
    (a timeout only added latency; a second thread halved the merging).
    """

    max_batch_size: int = 256
    batch_timeout_micros: int = 0
    num_batch_threads: int = 1
    max_enqueued_batches: int = 64

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ServerConfigError(f"batching parameter {field.name}: must be an integer "
                                        f">= {minimum}, got {value!r}")


def read_batching_parameters(path: str) -> BatchingParameters:
    message = _parse_text(path, BatchingParametersProto())
    if message.allowed_batch_sizes or message.pad_variable_length_inputs:
        raise ServerConfigError(f"{path}: allowed_batch_sizes and pad_variable_length_inputs "
                                "are not supported by mtrank serve (batches are not padded)")
    values = {field.name: getattr(message, field.name).value
              for field in dataclasses.fields(BatchingParameters)
              if message.HasField(field.name)}
    try:
        return BatchingParameters(**values)
    except ServerConfigError as e:
        raise ServerConfigError(f"{path}: {e}") from None


def read_monitoring_config(path: str):
    """The MonitoringConfig message of a --monitoring_config_file."""
    return _parse_text(path, MonitoringConfigProto())


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """What TF Serving's --model_name / --model_base_path mean: one model, latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name=name, base_path=base_path, model_platform=TENSORFLOW_PLATFORM)
    model.model_version_policy.latest.num_versions = 1
    return config


def validate(config: model_server_config_pb2.ModelServerConfig, where: str = "model config"
             ) -> model_server_config_pb2.ModelServerConfig:
    """Checks what this server supports; ServerConfigError names the model and field."""
    if config.WhichOneof("config") not in (None, "model_config_list"):
        raise ServerConfigError(f"{where}: only model_config_list is supported")
    names: Set[str] = set()
    for i, model in enumerate(config.model_config_list.config):
        at = f"{where}: model_config_list.config[{i}]"
        if not model.name:
            raise ServerConfigError(f"{at}.name: required")
        at = f"{where}: model {model.name!r}"
        if model.name in names:
            raise ServerConfigError(f"{at}: the name is used twice")
        names.add(model.name)
        if not model.base_path:
            raise ServerConfigError(f"{at}.base_path: required")
        if model.model_platform not in ("", TENSORFLOW_PLATFORM):
            raise ServerConfigError(f"{at}.model_platform: only '{TENSORFLOW_PLATFORM}' is "
                                    f"served, got {model.model_platform!r}")
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "latest" and policy.latest.num_versions < 0:
            raise ServerConfigError(f"{at}.model_version_policy.latest.num_versions: must be >= 0")
        if kind == "specific" and not policy.specific.versions:
            raise ServerConfigError(f"{at}.model_version_policy.specific.versions: list at "
                                    "least one version")
        for label, version in model.version_labels.items():
            if kind == "specific" and version not in policy.specific.versions:
                raise ServerConfigError(f"{at}.version_labels[{label!r}]: version {version} is "
                                        "not one the version policy serves")
    if not names:
        raise ServerConfigError(f"{where}: model_config_list lists no model")
    return config


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    return validate(_parse_text(path, model_server_config_pb2.ModelServerConfig()), path)


def select_versions(policy, available: Iterable[int]) -> Set[int]:
    """The versions a ServableVersionPolicy serves out of `available` ones.

    Unset, it is TF Serving's default: the latest version.
    """
    ordered: List[int] = sorted(available)
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(ordered)
    if kind == "specific":
        return set(ordered) & set(policy.specific.versions)
    count = policy.latest.num_versions if kind == "latest" else 1
    return set(ordered[-max(count, 1):]) if ordered else set()
