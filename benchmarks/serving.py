"""Serving benchmark: `mtrank serve` against the same SavedModel called in process.

    .venv/bin/python benchmarks/serving.py [--model-dir DIR] [--work DIR]
                                           [--clients 1,8,32] [--candidates 1,64]
                                           [--requests N] [--out FILE.json]

The model is a real mtrank export: --model-dir (a model base directory, or
one version directory), or else the model `mtrank demo` pushes: 50,000
simulated impressions through the whole pipeline with the inferred config
(the default architecture, PLE), built once into --work (about 4 minutes)
and reused by later runs with the same --work.

For every number of concurrent clients (threads, each sending its requests
one after the other) and of candidates per request, three ways to score the
same requests are measured in this one process run:

  in-process      the SavedModel's serving_default called directly, one
                  call per request, the way the server runs it (a Session
                  callable, serving/model_store.py) and with the same
                  TensorFlow kernels and thread settings, but without the server's
                  check of the Examples: the model alone
  server          `mtrank serve` in a subprocess, over gRPC on 127.0.0.1,
                  Predict through the stock stubs, no batching
  server+batch    the same with --enable-batching and the shipped
                  serving/batching_parameters.txt

The machine is shared and its load drifts, so the three are not run one
after the other: each cell is --rounds rounds, and every round runs a burst
of each way in turn (both servers stay up throughout). Latency is per request
as the client sees it, over all rounds; QPS is the requests over the time
spent in that way's bursts. A burst gives every client at least
MIN_CALLS_PER_CLIENT calls: in shorter ones, the start and end of the burst,
when fewer clients are in flight, weigh on the result (32 clients with
batching, 6 calls a client: 1,332 requests/s; 19: 1,601-1,773). Prints a
Markdown table, then the two goals: the p50 overhead of the server over
in-process at 1 client and 1 candidate
(goal <= 1 ms) and the QPS of batching over no batching at 32 clients (goal
>= 3x). The clients share the machine with the server: on 2 cores, the
client threads' own gRPC work is part of what is measured.
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import os
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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from mtrank.base import serving_contract  # noqa: E402
from mtrank.serving import model_store, server as server_lib  # noqa: E402

BATCHING_FILE = os.path.join(ROOT, "serving", "batching_parameters.txt")
MODES = ("in-process", "server", "server+batch")
WARMUP_REQUESTS = 5
MIN_CALLS_PER_CLIENT = 20
GOAL_OVERHEAD_MS = 1.0
GOAL_BATCHING_GAIN = 3.0


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
    """`mtrank serve` as a user runs it, on a free loopback port."""

    def __init__(self, model_base: str, model_name: str, batching: bool):
        self.port = _free_port()
        command = [sys.executable, "-m", "mtrank.cli", "serve", "--model-base", model_base,
                   "--model-name", model_name, "--port", str(self.port), "--rest-port", "0"]
        if batching:
            command += ["--enable-batching", "--batching-parameters-file", BATCHING_FILE]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("serving"):
            self.stop()
            raise RuntimeError(f"mtrank serve did not start: {line!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_load(call: Callable[[int], None], clients: int, requests: int
             ) -> Tuple[List[float], float]:
    """`clients` threads share `requests` calls; their latencies and the wall
    time, in seconds."""
    latencies: List[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: List[BaseException] = []

    def client():
        own = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                call(i)
            except BaseException as e:  # reported after the run
                errors.append(e)
                break
            own.append(time.perf_counter() - start)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=client) for _ in range(clients)]
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
                      ) -> Callable[[int], None]:
    outputs = sorted(loaded.signature_defs[serving_contract.SERVING_DEFAULT].outputs)

    def call(i):
        loaded.run(serving_contract.SERVING_DEFAULT,
                   {serving_contract.EXAMPLES_INPUT: batches[i % len(batches)]}, outputs,
                   check_examples=False)
    return call


def server_caller(target: str, model_name: str, batches: Sequence[List[bytes]]
                  ) -> Callable[[int], None]:
    channel = grpc.insecure_channel(target, options=serving_contract.GRPC_OPTIONS)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    requests = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.inputs[serving_contract.EXAMPLES_INPUT].CopyFrom(
            tf.make_tensor_proto(batch, dtype=tf.string))
        requests.append(request)

    def call(i):
        stub.Predict(requests[i % len(requests)], timeout=60)
    return call


def measure(model_base: str, clients: Sequence[int], candidates: Sequence[int],
            requests: int, rounds: int) -> List[dict]:
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
    servers = {}
    rows = []
    try:
        for mode in MODES[1:]:
            servers[mode] = ServerProcess(model_base, model_name, batching=mode == "server+batch")
        for n in candidates:
            batches = [candidates_for(loaded.spec, n, seed) for seed in range(8)]
            callers = {"in-process": in_process_caller(
                loaded, [np.array(b, dtype=object) for b in batches])}
            for mode, server in servers.items():
                callers[mode] = server_caller(f"127.0.0.1:{server.port}", model_name, batches)
            for call in callers.values():
                run_load(call, 1, WARMUP_REQUESTS)
            for c in clients:
                latencies: Dict[str, List[float]] = {mode: [] for mode in MODES}
                seconds = dict.fromkeys(MODES, 0.0)
                for r in range(rounds):
                    # Each round starts with another way, so that a drift in
                    # the machine's load favours none of them.
                    for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                        got, wall = run_load(callers[mode], c, max(
                            requests // rounds, c * MIN_CALLS_PER_CLIENT))
                        latencies[mode].extend(got)
                        seconds[mode] += wall
                rows.extend({"mode": mode, "clients": c, "candidates": n,
                             **summarize(latencies[mode], seconds[mode])} for mode in MODES)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def _row(rows: List[dict], mode: str, clients: int, candidates: int) -> Optional[dict]:
    return next((r for r in rows if (r["mode"], r["clients"], r["candidates"]) ==
                 (mode, clients, candidates)), None)


def goals(rows: List[dict]) -> dict:
    """The two goals, from the smallest and largest client counts measured."""
    least = min(r["clients"] for r in rows)
    most = max(r["clients"] for r in rows)
    fewest = min(r["candidates"] for r in rows)
    result = {}
    base, served = _row(rows, "in-process", least, fewest), _row(rows, "server", least, fewest)
    result["overhead_p50_ms"] = served["p50_ms"] - base["p50_ms"]
    result["batching_gain"] = {
        n: _row(rows, "server+batch", most, n)["qps"] / _row(rows, "server", most, n)["qps"]
        for n in sorted({r["candidates"] for r in rows})}
    result["clients"], result["candidates"] = (least, most), fewest
    return result


def format_table(rows: List[dict]) -> str:
    lines = ["| mode | clients | candidates | p50 ms | p99 ms | QPS | candidates/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["candidates"], r["clients"], MODES.index(r["mode"]))):
        lines.append(f"| {r['mode']} | {r['clients']} | {r['candidates']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['qps']:,.0f} | "
                     f"{r['qps'] * r['candidates']:,.0f} |")
    return "\n".join(lines)


def format_goals(result: dict) -> str:
    least, most = result["clients"]
    overhead = result["overhead_p50_ms"]
    lines = [f"p50 overhead of the server over in-process, {least} client, "
             f"{result['candidates']} candidate: {overhead:.2f} ms (goal <= "
             f"{GOAL_OVERHEAD_MS:g} ms: {'met' if overhead <= GOAL_OVERHEAD_MS else 'NOT met'})"]
    for n, gain in result["batching_gain"].items():
        lines.append(f"QPS with batching / without, {most} clients, {n} candidates: {gain:.2f}x "
                     f"(goal >= {GOAL_BATCHING_GAIN:g}x: "
                     f"{'met' if gain >= GOAL_BATCHING_GAIN else 'NOT met'})")
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
    parser.add_argument("--out", help="also write the rows and goals as JSON")
    args = parser.parse_args(argv)
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
        rows = measure(model_base, clients, candidates, args.requests, args.rounds)
        result = goals(rows)
        print(f"\nmodel: {model_base}; {args.requests} requests per cell and way (at least "
              f"{MIN_CALLS_PER_CLIENT} a client in each of {args.rounds} interleaved rounds); "
              f"{os.cpu_count()} CPUs; batching: {BATCHING_FILE}\n")
        print(format_table(rows))
        print()
        print(format_goals(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"rows": rows, "goals": result}, f, indent=2)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
