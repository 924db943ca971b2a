"""Serving benchmark: `mtrank serve` against the ceiling of its own stack and
against the same SavedModel called in process.

    .venv/bin/python benchmarks/serving.py [--model-dir DIR] [--work DIR]
                                           [--clients 1,8,32] [--candidates 1,64]
                                           [--requests N] [--rounds N]
                                           [--server-args "--workers 1"] [--out FILE.json]

The model is a real mtrank export: --model-dir (a model base directory, or
one version directory), or else the model `mtrank demo` pushes: 50,000
simulated impressions through the whole pipeline with the inferred config,
built once into --work (a few minutes) and reused by later runs with the
same --work.

For every number of concurrent clients (threads, each with its own
connection, sending its requests one after the other) and of candidates per
request, these ways to score the same requests are measured in this one
process run:

  in-process        the SavedModel's serving_default called directly, one
                    call per request, the way the server runs it (a Session
                    callable, serving/model_store.py) and with the same
                    TensorFlow kernels and thread settings, but without the
                    server's check of the Examples: the model alone
  echo              the ceiling of the gRPC stack: an empty server built
                    as `mtrank serve` builds its own (server.grpc_server:
                    grpcio, the same thread pool and options), one process,
                    answering Predict with a fixed one-output
                    PredictResponse without parsing the request or running
                    anything; the same stubs, clients and request messages
  server            `mtrank serve` (its defaults, plus --server-args) in a
                    subprocess, Predict over gRPC on 127.0.0.1 through the
                    stock stubs, no batching
  server+batch      the same with --enable-batching and the shipped
                    serving/batching_parameters.txt
  rest echo         the ceiling of the REST stack: an empty aiohttp handler
                    on the same application setup as serving/rest.py
                    (rest.HttpServer), in the echo's process, answering POST
                    .../models/NAME:predict with a fixed JSON body after
                    reading the request's
  rest server       the `server` above over its REST port: POST :predict,
                    {"instances": [{"b64": <serialized Example>}, ...]}
  rest server+batch the same on `server+batch`

REST clients are urllib3 (requests' own transport), one keep-alive
connection a client; gRPC clients are one channel a client, so that several
server processes sharing the port (--workers) share the clients.

The machine is shared and its load drifts, so the ways are not run one
after the other: each cell is --rounds rounds, and every round runs a burst
of each way in turn (all servers stay up throughout), each round starting
with another way. Latency is per request as the client sees it, over all
rounds; QPS is the requests over the time spent in that way's bursts. A
burst gives every client at least MIN_CALLS_PER_CLIENT calls: in shorter
ones, the start and end of the burst, when fewer clients are in flight,
weigh on the result. The clients share the machine with the servers: on 2
cores, the client threads' own work is part of what is measured, for the
echo as for the server.

Prints a Markdown table, then the goals (issue 20), each a ratio within
this run, PASS or FAIL:
  1. most clients, 1 candidate: the best serving mode's requests/s at least
     0.5x its echo's (gRPC against echo, REST against rest echo);
  2. 1 client, 1 candidate: the server's p50 at most echo p50 + in-process
     p50 + 0.3 ms (gRPC; REST against rest echo too);
  3. the most candidates, most clients: the best serving mode's
     candidates/s at least 0.5x in-process.
"""
from __future__ import annotations

import argparse
import base64
import gc
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from mtrank.base import keras_env  # noqa: E402,F401  (before TensorFlow)
from mtrank.serving import kernels  # noqa: E402

# The in-process calls run on the CPU kernels `mtrank serve` uses.
kernels.use_tf_serving_kernels()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import urllib3  # noqa: E402
from aiohttp import web  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from mtrank.base import serving_contract  # noqa: E402
from mtrank.serving import model_store, rest, server as server_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

BATCHING_FILE = os.path.join(ROOT, "serving", "batching_parameters.txt")
GRPC_MODES = ("echo", "server", "server+batch")
REST_MODES = ("rest echo", "rest server", "rest server+batch")
MODES = ("in-process",) + GRPC_MODES + REST_MODES
SERVING_MODES = {"gRPC": ("server", "server+batch"), "REST": ("rest server", "rest server+batch")}
ECHO_OF = {"gRPC": "echo", "REST": "rest echo"}
WARMUP_REQUESTS = 5
MIN_CALLS_PER_CLIENT = 20
GOAL_ECHO_RATIO = 0.5         # goal 1
GOAL_P50_SLACK_MS = 0.3       # goal 2
GOAL_IN_PROCESS_RATIO = 0.5   # goal 3


DEMO_IMPRESSIONS = 50_000
DEMO_DAYS = 7


def build_demo_model(work: str) -> str:
    """The model `mtrank demo` pushes, built under `work` unless already
    there; returns its model base directory."""
    from mtrank.base import layout
    from mtrank.pipeline import config_inference, local_runner
    from mtrank.simulator import logs as simulator

    logs_dir = os.path.join(work, "logs")
    log_glob = os.path.join(logs_dir, simulator.EVENT_FILE_GLOB)
    run_dir = os.path.join(work, "run")
    if not glob.glob(log_glob):
        simulator.simulate(logs_dir, impressions=DEMO_IMPRESSIONS, days=DEMO_DAYS, seed=0)
    config = config_inference.infer_config(log_glob)
    base = layout.serving_model_dir(run_dir, config.model_name)
    if os.path.isdir(base) and model_store.list_versions(base):
        return base
    # Beam takes its options from sys.argv unless told otherwise; this
    # script's flags are not Beam's.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        summary = local_runner.run(log_glob, run_dir, config)
    finally:
        sys.argv = argv
    if summary["error"] or summary["pushed_version"] is None:
        raise RuntimeError(f"the demo pipeline pushed no model: "
                           f"{summary['error'] or 'not blessed'} (see {run_dir})")
    return base


def model_base_of(model_dir: str, work: str) -> str:
    """A model base directory holding the model: `model_dir` itself, or, for a
    version directory, a base made around a link to it."""
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        base = os.path.join(work, "model_base")
        os.makedirs(base, exist_ok=True)
        link = os.path.join(base, "1")
        if not os.path.exists(link):
            os.symlink(os.path.abspath(model_dir), link)
        return base
    return model_dir


def candidates_for(spec: model_store.ServingSpec, count: int, seed: int = 0) -> List[bytes]:
    """Serialized Examples with every feature set, varied values."""
    rng = np.random.RandomState(seed)
    examples = []
    for _ in range(count):
        example = tf.train.Example()
        for name, feature in spec.features.items():
            n = 1 if feature.shape == "scalar" else int(rng.randint(1, 4))
            target = example.features.feature[name]
            if feature.dtype == "string":
                target.bytes_list.value.extend(
                    f"{name}{rng.randint(50)}".encode() for _ in range(n))
            elif feature.dtype == "int64":
                target.int64_list.value.extend(int(v) for v in rng.randint(0, 60, n))
            else:
                target.float_list.value.extend(float(v) for v in rng.exponential(10.0, n))
        examples.append(example.SerializeToString())
    return examples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`mtrank serve` as a user runs it, on free loopback ports (gRPC and REST)."""

    def __init__(self, model_base: str, model_name: str, batching: bool,
                 extra_args: Sequence[str] = ()):
        self.port, self.rest_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "mtrank.cli", "serve", "--model-base", model_base,
                   "--model-name", model_name, "--port", str(self.port),
                   "--rest-port", str(self.rest_port), *extra_args]
        if batching:
            command += ["--enable-batching", "--batching-parameters-file", BATCHING_FILE]
        self._start(command)

    def _start(self, command: List[str]) -> None:
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("serving"):
            self.stop()
            raise RuntimeError(f"{command[2:4]} did not start: {line!r}")
        self.banner = line.strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EchoProcess(ServerProcess):
    """This script's --echo-server: the empty gRPC and REST servers."""

    def __init__(self):
        self.port, self.rest_port = _free_port(), _free_port()
        self._start([sys.executable, os.path.abspath(__file__), "--echo-server",
                     f"{self.port},{self.rest_port}"])


ECHO_JSON = b'{"predictions": [0.5]}'


def echo_response() -> predict_pb2.PredictResponse:
    """The echo's fixed answer: one output of one float, as small as a
    Predict response gets."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "mtrank"
    response.model_spec.version.value = 1
    response.outputs["score"].CopyFrom(tf.make_tensor_proto(np.array([0.5], np.float32)))
    return response


def serve_echo(ports: str) -> int:
    """The echo servers, on the stack `mtrank serve` runs (gRPC:
    server.grpc_server with its default options, raw request bytes in as its
    handlers take them; REST: rest.HttpServer, aiohttp with the same
    application setup), until SIGTERM."""
    grpc_port, rest_port = (int(p) for p in ports.split(","))
    options = server_lib.ServerOptions(port=grpc_port, rest_port=rest_port)
    response = echo_response()

    def predict(request_bytes, context):
        return response

    handler = grpc.method_handlers_generic_handler(server_lib.PREDICTION_SERVICE, {
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=None,
            response_serializer=lambda message: message.SerializeToString())})
    grpc_server = server_lib.grpc_server(options, [handler])
    grpc_server.add_insecure_port(f"{options.host}:{grpc_port}")
    grpc_server.start()

    async def v1(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ECHO_JSON, content_type="application/json")

    http = rest.HttpServer(rest.listening_socket(options.host, rest_port), None, options.grace_s,
                           options.max_request_bytes,
                           lambda app: app.router.add_route("*", "/v1/{tail:.*}", v1))
    print(f"serving echo on {grpc_port} and {rest_port}", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    http.stop()
    grpc_server.stop(1).wait()
    return 0


def run_load(call: Callable[[int, int], None], clients: int, requests: int
             ) -> Tuple[List[float], float]:
    """`clients` threads share `requests` calls (call(client, i)); their
    latencies and the wall time, in seconds."""
    latencies: List[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: List[BaseException] = []

    def client(index):
        own = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                call(index, i)
            except BaseException as e:  # reported after the run
                errors.append(e)
                break
            own.append(time.perf_counter() - start)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}")
    return latencies, wall


def summarize(latencies: Sequence[float], wall: float) -> Dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps": len(latencies) / wall}


def in_process_caller(loaded: model_store.LoadedModel, batches: Sequence[np.ndarray]
                      ) -> Callable[[int, int], None]:
    outputs = loaded.signature_infos[serving_contract.SERVING_DEFAULT].outputs

    def call(client, i):
        loaded.run(serving_contract.SERVING_DEFAULT,
                   {serving_contract.EXAMPLES_INPUT: batches[i % len(batches)]}, outputs,
                   check_examples=False)
    return call


def grpc_caller(target: str, model_name: str, batches: Sequence[List[bytes]], clients: int
                ) -> Callable[[int, int], None]:
    """Predict through the stock stubs, one channel (connection) a client."""
    stubs = []
    for _ in range(clients):
        # A subchannel pool of its own: else channels to one target share one connection.
        channel = grpc.insecure_channel(target, options=serving_contract.GRPC_OPTIONS + (
            ("grpc.use_local_subchannel_pool", 1),))
        stubs.append(prediction_service_pb2_grpc.PredictionServiceStub(channel))
    requests = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.inputs[serving_contract.EXAMPLES_INPUT].CopyFrom(
            tf.make_tensor_proto(batch, dtype=tf.string))
        requests.append(request)

    def call(client, i):
        stubs[client].Predict(requests[i % len(requests)], timeout=60)
    return call


def rest_caller(port: int, model_name: str, batches: Sequence[List[bytes]], clients: int
                ) -> Callable[[int, int], None]:
    """POST :predict with urllib3, one keep-alive connection a client; the
    row format with each serialized Example as {"b64": ...}."""
    pools = [urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=True, retries=False)
             for _ in range(clients)]
    path = f"/v1/models/{model_name}:predict"
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(e).decode("ascii")}
                                        for e in batch]}).encode() for batch in batches]
    headers = {"Content-Type": "application/json"}

    def call(client, i):
        response = pools[client].urlopen("POST", path, body=bodies[i % len(bodies)],
                                          headers=headers, timeout=60)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.data[:200]!r}")
    return call


def measure(model_base: str, clients: Sequence[int], candidates: Sequence[int],
            requests: int, rounds: int, server_args: Sequence[str] = ()
            ) -> Tuple[List[dict], Dict[str, str]]:
    """The table's rows, and what each server process said when it started."""
    version = model_store.list_versions(model_base)[-1]
    # The Session settings a server gives its models by default, as `mtrank serve`.
    loaded = model_store.load_version(
        "bench", model_base, version,
        model_store.session_config(server_lib.ServerOptions().inter_op_threads))
    model_name = loaded.spec.model_name
    # As the server does after a load: a full collection walking the loaded
    # model would stall the client threads (and the in-process calls) for
    # 0.3 s at a time.
    gc.collect()
    gc.freeze()
    processes: Dict[str, ServerProcess] = {}
    rows = []
    most = max(clients)
    try:
        processes["echo"] = EchoProcess()
        for mode in ("server", "server+batch"):
            processes[mode] = ServerProcess(model_base, model_name, mode == "server+batch",
                                            server_args)
        for n in candidates:
            batches = [candidates_for(loaded.spec, n, seed) for seed in range(8)]
            callers = {"in-process": in_process_caller(
                loaded, [np.array(b, dtype=object) for b in batches])}
            for mode in GRPC_MODES:
                callers[mode] = grpc_caller(f"127.0.0.1:{processes[mode].port}", model_name,
                                            batches, most)
                callers["rest " + mode] = rest_caller(processes[mode].rest_port, model_name,
                                                      batches, most)
            for call in callers.values():  # every client connects, then warm-up calls
                for client in range(most):
                    call(client, client)
                run_load(call, 1, WARMUP_REQUESTS)
            for c in clients:
                latencies: Dict[str, List[float]] = {mode: [] for mode in MODES}
                seconds = dict.fromkeys(MODES, 0.0)
                for r in range(rounds):
                    for mode in quality.round_order(MODES, r):
                        got, wall = run_load(callers[mode], c, max(
                            requests // rounds, c * MIN_CALLS_PER_CLIENT))
                        latencies[mode].extend(got)
                        seconds[mode] += wall
                rows.extend({"mode": mode, "clients": c, "candidates": n,
                             **summarize(latencies[mode], seconds[mode])} for mode in MODES)
    finally:
        for process in processes.values():
            process.stop()
    return rows, {mode: process.banner for mode, process in processes.items()}


def _row(rows: List[dict], mode: str, clients: int, candidates: int) -> Optional[dict]:
    return next((r for r in rows if (r["mode"], r["clients"], r["candidates"]) ==
                 (mode, clients, candidates)), None)


def _best_qps_ratio(rows: List[dict], modes: Sequence[str], reference: str, clients: int,
                    candidates: int) -> Tuple[str, float]:
    """The mode of `modes` with the most requests/s in the cell, and its
    requests/s over `reference`'s."""
    best = max(modes, key=lambda m: _row(rows, m, clients, candidates)["qps"])
    return best, (_row(rows, best, clients, candidates)["qps"]
                  / _row(rows, reference, clients, candidates)["qps"])


def goals(rows: List[dict]) -> dict:
    """The three goals of issue 20, from the rows: 1 and 2 at the fewest
    candidates (1 and 2 at the most and the fewest clients), 3 at the most
    candidates and clients."""
    least = min(r["clients"] for r in rows)
    most = max(r["clients"] for r in rows)
    fewest = min(r["candidates"] for r in rows)
    largest = max(r["candidates"] for r in rows)
    result = {"clients": [least, most], "candidates": [fewest, largest]}
    for api, modes in SERVING_MODES.items():
        echo = ECHO_OF[api]
        best, ratio = _best_qps_ratio(rows, modes, echo, most, fewest)
        result[f"throughput_vs_echo_{api}"] = {
            "mode": best, "ratio": ratio, "pass": ratio >= GOAL_ECHO_RATIO}
        fastest = min(modes, key=lambda m: _row(rows, m, least, fewest)["p50_ms"])
        p50 = _row(rows, fastest, least, fewest)["p50_ms"]
        bound = (_row(rows, echo, least, fewest)["p50_ms"]
                 + _row(rows, "in-process", least, fewest)["p50_ms"] + GOAL_P50_SLACK_MS)
        result[f"p50_{api}"] = {"mode": fastest, "p50_ms": p50, "bound_ms": bound,
                                "pass": p50 <= bound}
        best, ratio = _best_qps_ratio(rows, modes, "in-process", most, largest)
        result[f"candidates_vs_in_process_{api}"] = {
            "mode": best, "ratio": ratio, "pass": ratio >= GOAL_IN_PROCESS_RATIO}
    return result


def format_table(rows: List[dict]) -> str:
    lines = ["| mode | clients | candidates | p50 ms | p99 ms | QPS | candidates/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["candidates"], r["clients"], MODES.index(r["mode"]))):
        lines.append(f"| {r['mode']} | {r['clients']} | {r['candidates']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['qps']:,.0f} | "
                     f"{r['qps'] * r['candidates']:,.0f} |")
    return "\n".join(lines)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def format_goals(result: dict) -> str:
    least, most = result["clients"]
    fewest, largest = result["candidates"]
    lines = []
    for api in SERVING_MODES:
        g = result[f"throughput_vs_echo_{api}"]
        lines.append(f"goal 1 ({api}): {most} clients, {fewest} candidate: {g['mode']} / "
                     f"{ECHO_OF[api]} requests/s = {g['ratio']:.2f}x (goal >= "
                     f"{GOAL_ECHO_RATIO:g}x): {_verdict(g['pass'])}")
    for api in SERVING_MODES:
        g = result[f"p50_{api}"]
        lines.append(f"goal 2 ({api}): {least} client, {fewest} candidate: {g['mode']} p50 "
                     f"{g['p50_ms']:.2f} ms, {ECHO_OF[api]} p50 + in-process p50 + "
                     f"{GOAL_P50_SLACK_MS:g} ms = {g['bound_ms']:.2f} ms (goal: at most that): "
                     f"{_verdict(g['pass'])}")
    for api in SERVING_MODES:
        g = result[f"candidates_vs_in_process_{api}"]
        lines.append(f"goal 3 ({api}): {most} clients, {largest} candidates: {g['mode']} / "
                     f"in-process candidates/s = {g['ratio']:.2f}x (goal >= "
                     f"{GOAL_IN_PROCESS_RATIO:g}x): {_verdict(g['pass'])}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="model base or version directory (default: the "
                                            "demo's model, built into --work)")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--candidates", default="1,64")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per cell and way to score (more with many clients: "
                             "see MIN_CALLS_PER_CLIENT)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds the requests of a cell are split into")
    parser.add_argument("--server-args", default="",
                        help="more `mtrank serve` flags for both servers, e.g. '--workers 1'")
    parser.add_argument("--out", help="also write the rows and goals as JSON")
    parser.add_argument("--echo-server", metavar="GRPC_PORT,REST_PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        return serve_echo(args.echo_server)
    clients = [int(c) for c in args.clients.split(",")]
    candidates = [int(c) for c in args.candidates.split(",")]
    # The in-process calls run with the thread pools `mtrank serve` uses, so
    # that the comparison is of serving, not of TensorFlow settings.
    server_lib.set_intra_op_threads(server_lib.DEFAULT_INTRA_OP_THREADS)
    work = args.work or tempfile.mkdtemp(prefix="mtrank-serving-bench-")
    try:
        if args.model_dir:
            model_base = model_base_of(args.model_dir, work)
        else:
            print("building the demo's model to serve ...", flush=True)
            model_base = build_demo_model(work)
        rows, banners = measure(model_base, clients, candidates, args.requests, args.rounds,
                                shlex.split(args.server_args))
        result = goals(rows)
        print(f"\nmodel: {model_base}; {args.requests} requests per cell and way (at least "
              f"{MIN_CALLS_PER_CLIENT} a client in each of {args.rounds} interleaved rounds); "
              f"{os.cpu_count()} CPUs; batching: {BATCHING_FILE}; server flags: "
              f"{args.server_args or '(defaults)'}")
        for mode, banner in banners.items():
            print(f"  {mode}: {banner}")
        print()
        print(format_table(rows))
        print()
        print(format_goals(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"rows": rows, "goals": result, "servers": banners}, f, indent=2)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
