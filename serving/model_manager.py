"""Which versions of which models serve traffic, kept up to date by polling.

For each model of the ModelServerConfig, every poll lists the base
directory's versions and applies the version policy to the loadable ones:
versions already loaded, and new ones whose files did not change since the
previous poll (a version still being copied is left for a later poll). A
version to add is loaded and warmed (its warmup requests replayed) before it
is published; only then are versions the policy no longer wants dropped.
Requests resolve their version against the published map, which is replaced
as a whole, so a request always runs on a loaded, warmed version, and one in
flight on a dropped version completes on it.

After versions are added or dropped, everything then alive is frozen out of
Python's garbage collector (gc.freeze). A server holds hundreds of thousands
of Python objects (TensorFlow itself, and each loaded graph), and each full
collection would otherwise walk them all holding the GIL (0.17 s with the
demo's model loaded), stalling every request in flight: at 32 clients with
batching, p99 latency fell from about 330 ms to 50 ms with the heap frozen,
and the server's CPU time per request by a quarter (benchmarks/serving.py,
measured when versions were loaded as eager objects, 0.3 s a collection).
Unfreezing first lets that collection free the cycles the versions just
dropped leave behind.

A version that fails to load or warm is logged, reported by GetModelStatus,
and not tried again until its files change; the policy then counts it out,
so with `latest` the last good version keeps serving. A version whose
directory is deleted is dropped; a base directory that disappears keeps the
loaded versions serving.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from mtrank.serving import model_store, server_config
from mtrank.serving.errors import not_found

logger = logging.getLogger(__name__)

WarmupFn = Callable[[model_store.LoadedModel], None]
_State = get_model_status_pb2.ModelVersionStatus


@dataclasses.dataclass
class _ModelState:
    config: model_server_config_pb2.ModelConfig
    available: Dict[int, model_store.LoadedModel] = dataclasses.field(default_factory=dict)
    failed: Dict[int, Tuple[tuple, str]] = dataclasses.field(default_factory=dict)
    seen: Dict[int, tuple] = dataclasses.field(default_factory=dict)
    ended: set = dataclasses.field(default_factory=set)


def _freeze_heap() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelManager:
    """Loads, warms, publishes and drops versions (see the module docstring)."""

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, warmup: WarmupFn,
                 on_change: Optional[Callable[[str, int, bool], None]] = None,
                 session_config: Optional[tf.compat.v1.ConfigProto] = None):
        self._models: Dict[str, _ModelState] = {}
        self._session_config = session_config
        self._warmup = warmup
        self._on_change = on_change or (lambda model, available, failed: None)
        self._poll_lock = threading.Lock()  # one poll (or reload) at a time
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._set_config(server_config.validate(config))
        self.poll(initial=True)

    def _set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        for model in config.model_config_list.config:
            if not os.path.isdir(model.base_path):
                raise FileNotFoundError(f"model {model.name!r}: base path {model.base_path!r} "
                                        "does not exist")
        models = {}
        for model in config.model_config_list.config:
            state = self._models.get(model.name)
            if state is None or state.config.base_path != model.base_path:
                state = _ModelState(config=model)
            else:
                state.config = model
            models[model.name] = state
        self._models = models

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: serve exactly these models from now on.

        Returns when the new config's versions are loaded (or have failed).
        """
        server_config.validate(config, "reload request")
        with self._poll_lock:
            before = set(self._models)
            self._set_config(config)
            removed = before - set(self._models)
        self.poll(initial=True)
        if removed:
            with self._poll_lock:
                _freeze_heap()

    def start_polling(self, interval_s: float) -> None:
        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # a bad poll must not end polling
                    logger.exception("polling the model directories failed")

        self._thread = threading.Thread(target=loop, name="mtrank-model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def poll(self, initial: bool = False) -> None:
        """One round over every model; `initial` loads versions seen for the first time."""
        with self._poll_lock:
            changed = False
            for name, state in list(self._models.items()):
                changed |= self._poll_model(name, state, initial)
            if changed:
                _freeze_heap()

    def _poll_model(self, name: str, state: _ModelState, initial: bool) -> bool:
        """Loads and drops versions of one model; whether any was."""
        base = state.config.base_path
        try:
            present = model_store.list_versions(base)
        except FileNotFoundError:
            # Likely a storage hiccup: serving what is loaded beats serving nothing.
            logger.warning("model %s: base path %s is missing; keeping versions %s",
                           name, base, sorted(state.available))
            return False
        fingerprints = {}
        for version in present:
            if version in state.available:
                continue
            fingerprints[version] = model_store.version_fingerprint(
                os.path.join(base, str(version)))
        loadable = set(state.available) & set(present)
        for version, fingerprint in fingerprints.items():
            failed = state.failed.get(version)
            if failed is not None and failed[0] == fingerprint:
                continue
            if initial or state.seen.get(version) == fingerprint:
                loadable.add(version)
        state.seen = fingerprints
        available = dict(state.available)
        while True:
            # A version that fails is out and the policy picks again among the
            # rest, so a broken newest version leaves the previous one serving.
            wanted = server_config.select_versions(state.config.model_version_policy, loadable)
            missing = sorted(wanted - set(available), reverse=True)
            if not missing:
                break
            for version in missing:
                loaded = self._load(name, state, version, fingerprints[version])
                if loaded is None:
                    loadable.discard(version)
                else:
                    available[version] = loaded
        published = {v: available[v] for v in sorted(wanted)}
        dropped = sorted(set(state.available) - set(published))
        added = sorted(set(published) - set(state.available))
        state.available = published
        state.ended.update(dropped)
        state.ended.difference_update(published)
        if added or dropped:
            logger.info("model %s: serving versions %s (added %s, dropped %s)",
                        name, sorted(published), added, dropped)
            self._on_change(name, len(published), False)
        return bool(added or dropped)

    def _load(self, name: str, state: _ModelState, version: int, fingerprint: tuple
              ) -> Optional[model_store.LoadedModel]:
        path = os.path.join(state.config.base_path, str(version))
        try:
            loaded = model_store.load_version(name, state.config.base_path, version,
                                              self._session_config)
            self._warmup(loaded)
        except Exception as e:  # any broken version is skipped, whatever broke it
            message = f"{type(e).__name__}: {e}"
            logger.error("model %s: skipping version %d at %s: %s", name, version, path, message)
            state.failed[version] = (fingerprint, message)
            self._on_change(name, len(state.available), True)
            return None
        state.failed.pop(version, None)
        logger.info("model %s: loaded and warmed version %d from %s", name, version, path)
        return loaded

    def resolve(self, model_spec) -> model_store.LoadedModel:
        """The version a request's ModelSpec names; NOT_FOUND when it is not served."""
        state = self._models.get(model_spec.name)
        if state is None:
            raise not_found(f"model '{model_spec.name}' is not served; served models: "
                            f"{sorted(self._models)}")
        available = state.available
        which = model_spec.WhichOneof("version_choice")
        if which == "version":
            version = model_spec.version.value
        elif which == "version_label":
            label = model_spec.version_label
            if label not in state.config.version_labels:
                raise not_found(f"model '{model_spec.name}' has no version label '{label}'; "
                                f"labels: {sorted(state.config.version_labels)}")
            version = state.config.version_labels[label]
        else:
            if not available:
                raise not_found(f"model '{model_spec.name}' has no version available yet")
            return available[max(available)]
        if version not in available:
            raise not_found(f"version {version} of model '{model_spec.name}' is not available; "
                            f"available: {sorted(available)}")
        return available[version]

    def status(self, model_spec) -> List[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus: every version this server knows, or the one asked for."""
        state = self._models.get(model_spec.name)
        if state is None:
            raise not_found(f"model '{model_spec.name}' is not served")
        statuses = {}
        for version in state.ended:
            statuses[version] = (_State.END, 0, "")
        for version, (_, message) in state.failed.items():
            statuses[version] = (_State.END, grpc.StatusCode.UNKNOWN.value[0], message)
        for version in state.available:
            statuses[version] = (_State.AVAILABLE, 0, "")
        which = model_spec.WhichOneof("version_choice")
        if which is not None:
            version = (model_spec.version.value if which == "version"
                       else state.config.version_labels.get(model_spec.version_label))
            if version not in statuses:
                raise not_found(f"model '{model_spec.name}' has no version "
                                f"{model_spec.version_label or version}")
            statuses = {version: statuses[version]}
        result = []
        for version in sorted(statuses):
            state_value, code, message = statuses[version]
            status = _State(version=version, state=state_value)
            status.status.error_code = code
            status.status.error_message = message
            result.append(status)
        return result

    def serves(self, name: str) -> bool:
        return name in self._models

    def available(self) -> Dict[str, Tuple[int, ...]]:
        """{model name: versions serving traffic}."""
        return {name: tuple(sorted(state.available)) for name, state in self._models.items()}

