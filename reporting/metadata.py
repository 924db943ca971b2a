"""ML Metadata of a local work directory: the one place that opens it, and
the queries the run summary, `mtrank report`, `inspect` and `tensorboard`
share."""
from __future__ import annotations

import collections
import os

import ml_metadata as mlmd
from google.protobuf import json_format
from ml_metadata.proto import metadata_store_pb2

from mtrank.base import layout

_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


def connection_config(work_dir: str) -> metadata_store_pb2.ConnectionConfig:
    """The work directory's SQLite store, created on first use: what the
    pipeline records into and the readers below read."""
    sqlite = metadata_store_pb2.SqliteMetadataSourceConfig
    return metadata_store_pb2.ConnectionConfig(sqlite=sqlite(
        filename_uri=layout.metadata_path(work_dir),
        connection_mode=sqlite.READWRITE_OPENCREATE))


def exists(work_dir: str) -> bool:
    return os.path.exists(layout.metadata_path(work_dir))


def open_store(work_dir: str, create: bool = False) -> mlmd.MetadataStore:
    """The store of a work directory. Readers (`create` False) need one that
    a run recorded into; the runner creates it."""
    if not create and not exists(work_dir):
        raise FileNotFoundError(f"no ML Metadata at {layout.metadata_path(work_dir)}: "
                                "run `mtrank run` first")
    return mlmd.MetadataStore(connection_config(work_dir))


def last_execution_id(store: mlmd.MetadataStore) -> int:
    return max((e.id for e in store.get_executions()), default=0)


def is_output(event: metadata_store_pb2.Event) -> bool:
    return event.type in _OUTPUT_EVENTS


def node_id(store: mlmd.MetadataStore, execution_id: int) -> str:
    """The pipeline node (component id) an execution ran."""
    for context in store.get_contexts_by_execution(execution_id):
        if store.get_context_types_by_id([context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return str(execution_id)


def custom_property(artifact, name: str):
    """An artifact's custom property as a Python value, None if absent."""
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    return getattr(value, kind)


def outputs_by_node(store: mlmd.MetadataStore, since_execution_id: int):
    """{node_id: (execution, {artifact type name: [artifacts]})} of the
    executions after `since_execution_id`."""
    executions = [e for e in store.get_executions() if e.id > since_execution_id]
    result = {}
    for execution in sorted(executions, key=lambda e: e.id):
        events = store.get_events_by_execution_ids([execution.id])
        output_ids = [event.artifact_id for event in events if is_output(event)]
        artifacts = collections.defaultdict(list)
        for artifact in store.get_artifacts_by_id(output_ids):
            type_name = store.get_artifact_types_by_id([artifact.type_id])[0].name
            artifacts[type_name].append(artifact)
        result[node_id(store, execution.id)] = (execution, artifacts)
    return result
