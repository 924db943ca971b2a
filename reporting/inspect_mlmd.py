"""`mtrank inspect`: the runs, executions, artifacts and lineage that ML
Metadata recorded under a work directory, as text tables."""
from __future__ import annotations

import collections
import datetime
from typing import Dict, List

from ml_metadata.proto import metadata_store_pb2

from mtrank.base import layout
from mtrank.reporting import metadata

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S")


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def inspect(work_dir: str) -> str:
    """Everything MLMD knows about the runs in `work_dir`, oldest run first."""
    store = metadata.open_store(work_dir)
    context_types = {t.id: t.name for t in store.get_context_types()}
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    executions = sorted(store.get_executions(), key=lambda e: e.id)

    run_of: Dict[int, str] = {}
    node_of: Dict[int, str] = {}
    for execution in executions:
        for context in store.get_contexts_by_execution(execution.id):
            kind = context_types[context.type_id]
            if kind == "pipeline_run":
                run_of[execution.id] = context.name
            elif kind == "node":
                node_of[execution.id] = context.name.split(".", 1)[-1]

    events = store.get_events_by_execution_ids([e.id for e in executions])
    inputs, outputs = collections.defaultdict(list), collections.defaultdict(list)
    for event in events:
        side = outputs if metadata.is_output(event) else inputs
        side[event.execution_id].append(event.artifact_id)
    artifacts = {a.id: a for a in store.get_artifacts()}

    runs = collections.OrderedDict()
    for execution in executions:
        runs.setdefault(run_of.get(execution.id, "(no run)"), []).append(execution)
    sections = [f"ML Metadata: {layout.metadata_path(work_dir)}",
                f"{len(runs)} run(s), {len(executions)} execution(s), {len(artifacts)} artifact(s)"]
    for run, run_executions in runs.items():
        rows = []
        for e in run_executions:
            seconds = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
            rows.append([e.id, node_of.get(e.id, "?"), _STATES.get(e.last_known_state, "?"),
                         _time(e.create_time_since_epoch), f"{seconds:.1f}",
                         ",".join(map(str, sorted(inputs[e.id]))) or "-",
                         ",".join(map(str, sorted(outputs[e.id]))) or "-"])
        sections += ["", f"run {run}", _table(
            ["exec", "component", "state", "started (UTC)", "s", "inputs", "outputs"], rows)]
    rows = [[a.id, artifact_types[a.type_id], a.uri] for a in artifacts.values()]
    sections += ["", "artifacts", _table(["id", "type", "uri"], rows)]
    return "\n".join(sections)
