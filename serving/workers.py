"""Several server processes on one port (`mtrank serve --workers N`).

Python runs one thread of a process at a time, and a request spends most of
its server time in Python (gRPC's and the handler's) rather than in the
model. N worker processes, each a whole server (serving/server.py) with its
own copy of every model, listen on the same gRPC and REST ports with
SO_REUSEPORT; the kernel spreads new connections over them. A client's
connection stays with one worker, so one client gains nothing, and many
clients gain up to N times the CPU a single process could use
(docs/serving.md has the measurements).

The supervisor (this process) holds each port bound with SO_REUSEPORT but not
listening, from before the workers start until after they end: a server
started on the same port without SO_REUSEPORT fails as it would against one
process, and port 0 names one free port for all workers.

What stays one server's behaviour:
- each worker polls the model directories, loads, warms and publishes new
  versions itself (hot reload, zero failed requests, as one process);
- HandleReloadConfigRequest, answered by one worker, is applied by every
  worker before it is answered: the worker asks the supervisor, which has
  each worker reload and reports the first error;
- metrics are the sum over the workers: each worker writes its counters,
  histograms and gauges to files in a directory of the supervisor's
  (prometheus_client's multiprocess mode), and every exposition (the REST
  port's /monitoring/prometheus/metrics from any worker, --metrics-port from
  the supervisor) adds them up. Requests in flight are summed over the live
  workers; versions available is the highest of the live workers';
- SIGTERM or SIGINT to the supervisor is passed to every worker, which drains
  as one process does; the supervisor exits 0 when all have. A worker that
  dies on its own ends the server (exit 1), so that whatever restarts it
  (systemd, Kubernetes) restarts the whole.

Protocol on each worker's stdin / stdout, one line a message: the supervisor
sends `start <base64 pickle of (config bytes, ServerOptions)>`, the worker
answers `ready <ports and versions as JSON>`; `reload <base64 config>` from a
worker asks for a reload, `apply <base64 config>` asks a worker to reload and
it answers `applied` or `failed <message>`; `result` / `error <message>` tell
the asking worker how it went.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Callable, Dict, List, Optional

from mtrank.serving import metrics as metrics_lib

logger = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening (it takes
    no connections); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e}") from None
    return sock


class _Worker:
    def __init__(self, index: int, env: Dict[str, str]):
        self.index = index
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtrank.serving.workers"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.lock = threading.Lock()

    def send(self, line: str) -> None:
        with self.lock:
            try:
                self.process.stdin.write(line + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the worker is gone; the supervisor notices


class Supervisor:
    """Starts `workers` server processes sharing the ports of `options` and
    keeps them; `stop()` drains and ends them. `on_worker_ended()` is called
    when a worker ends on its own, not stopped by `stop()`."""

    def __init__(self, config, options, workers: int, on_worker_ended: Callable[[], None]):
        self._metrics_dir = tempfile.mkdtemp(prefix="mtrank-serve-metrics-")
        self._reserved: List[socket.socket] = []
        self._workers: List[_Worker] = []
        self._reload_lock = threading.Lock()
        self._applied: Dict[int, Optional[str]] = {}
        self._applied_cv = threading.Condition()
        self._on_worker_ended = on_worker_ended
        self._stopping = False
        self._metrics_http: Optional[metrics_lib.MetricsHttp] = None
        try:
            grpc_socket = reserve_port(options.host, options.port)
            self._reserved.append(grpc_socket)
            port = grpc_socket.getsockname()[1]
            rest_port = None
            if options.rest_port is not None:
                rest_socket = reserve_port(options.host, options.rest_port)
                self._reserved.append(rest_socket)
                rest_port = rest_socket.getsockname()[1]
            worker_options = dataclasses.replace(
                options, port=port, rest_port=rest_port, metrics_port=None, reuse_port=True,
                metrics_dir=self._metrics_dir)
            env = dict(os.environ, **{METRICS_DIR_ENV: self._metrics_dir})
            start = "start " + _b64(pickle.dumps((config.SerializeToString(), worker_options)))
            self._workers = [_Worker(i, env) for i in range(workers)]
            for worker in self._workers:
                worker.send(start)
            self.ready = [json.loads(self._first_line(worker)) for worker in self._workers]
            for worker in self._workers:
                threading.Thread(target=self._read, args=(worker,), daemon=True,
                                 name=f"mtrank-worker-{worker.index}").start()
            self.port, self.rest_port = port, rest_port
            self.metrics_port = None
            if options.metrics_port is not None:
                self._metrics_http = metrics_lib.MetricsHttp(
                    metrics_lib.shared_registry(self._metrics_dir), options.metrics_port,
                    options.host)
                self.metrics_port = self._metrics_http.port
        except BaseException:
            self.stop(0)
            raise

    def _first_line(self, worker: _Worker) -> str:
        line = ""
        for line in worker.process.stdout:  # anything else a library printed is skipped
            if line.startswith("ready "):
                break
        if not line.startswith("ready "):
            raise RuntimeError(f"server worker {worker.index} did not start (exit status "
                               f"{worker.process.wait()}); see its log above")
        return line[len("ready "):]

    def _read(self, worker: _Worker) -> None:
        for line in worker.process.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "reload":
                threading.Thread(target=self._reload, args=(worker, rest), daemon=True).start()
            elif kind in ("applied", "failed"):
                with self._applied_cv:
                    self._applied[worker.index] = rest if kind == "failed" else None
                    self._applied_cv.notify_all()
        status = worker.process.wait()
        metrics_lib.mark_process_dead(self._metrics_dir, worker.process.pid)
        with self._applied_cv:  # a reload waiting for it learns it is gone
            self._applied.setdefault(worker.index, f"worker {worker.index} ended")
            self._applied_cv.notify_all()
        if not self._stopping:
            logger.error("server worker %d ended with status %s; stopping", worker.index, status)
            self._on_worker_ended()

    def _reload(self, asking: _Worker, config_b64: str) -> None:
        """Has every worker apply the config; tells `asking` how it went."""
        with self._reload_lock:
            with self._applied_cv:
                self._applied.clear()
            for worker in self._workers:
                worker.send("apply " + config_b64)
            with self._applied_cv:
                self._applied_cv.wait_for(lambda: len(self._applied) == len(self._workers))
                errors = [e for _, e in sorted(self._applied.items()) if e is not None]
        asking.send("error " + errors[0] if errors else "result")

    def stop(self, grace_s: float) -> None:
        """SIGTERM to every worker; waits for them to drain (grace_s, then
        some) and kills what is left."""
        self._stopping = True
        for worker in self._workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self._workers:
            try:
                worker.process.wait(timeout=grace_s + 30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        if self._metrics_http is not None:
            self._metrics_http.stop()
        for sock in self._reserved:
            sock.close()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)


# The worker side.

class _Channel:
    """The worker's end: requests a reload from the supervisor and applies
    the ones it is sent."""

    def __init__(self, model_server):
        self._model_server = model_server
        self._out_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one reload of ours at a time
        self._answer = threading.Event()
        self._error: Optional[str] = None

    def send(self, line: str) -> None:
        with self._out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def reload_everywhere(self, config) -> None:
        """Asks the supervisor to have every worker apply `config`; raises
        ValueError with the first worker's error."""
        with self._reload_lock:
            self._answer.clear()
            self.send("reload " + _b64(config.SerializeToString()))
            self._answer.wait()
            if self._error is not None:
                raise ValueError(self._error)

    def read_commands(self) -> None:
        from tensorflow_serving.config import model_server_config_pb2

        for line in sys.stdin:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "apply":
                config = model_server_config_pb2.ModelServerConfig.FromString(
                    base64.b64decode(rest))
                threading.Thread(target=self._apply, args=(config,), daemon=True).start()
            elif kind in ("result", "error"):
                self._error = rest if kind == "error" else None
                self._answer.set()

    def _apply(self, config) -> None:
        try:
            self._model_server.reload_here(config)
        except Exception as e:  # reported to the asking worker
            self.send("failed " + (str(e).replace("\n", " ") or type(e).__name__))
            return
        self.send("applied")


def worker_main() -> int:
    """A worker: reads its start line, serves, drains on SIGTERM / SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    line = sys.stdin.readline()
    if not line.startswith("start "):
        return 2
    from mtrank.serving import kernels

    kernels.use_tf_serving_kernels()
    from tensorflow_serving.config import model_server_config_pb2

    from mtrank.serving import server

    config_bytes, options = pickle.loads(base64.b64decode(line[len("start "):]))
    config = model_server_config_pb2.ModelServerConfig.FromString(config_bytes)
    running = server.start(config, options)
    channel = _Channel(running.model_server)
    running.model_server.reload_hook = channel.reload_everywhere

    def commands_until_orphaned():
        channel.read_commands()
        # stdin closed: the supervisor is gone (even killed with SIGKILL),
        # and a worker left behind would keep the ports.
        stop.set()

    threading.Thread(target=commands_until_orphaned, daemon=True, name="mtrank-commands").start()
    channel.send("ready " + json.dumps(
        {"pid": os.getpid(),
         "versions": {k: list(v) for k, v in running.model_server.manager.available().items()}}))
    stop.wait()
    running.stop(options.grace_s)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(worker_main())
