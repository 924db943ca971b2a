"""Tests of serving/workers.py: `mtrank serve --workers 2` as a user runs it,
over real gRPC and HTTP on loopback, with many connections so that both
worker processes answer."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mtrank.serving import server as server_lib, server_config
from mtrank_testing import serving_util as testing_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Connections the kernel spreads over 2 workers: all 16 on one has a
# probability of 2 * 2**-16.
CONNECTIONS = 16


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(model_name="mtrank"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    example = tf.train.Example()
    example.features.feature["user_id"].bytes_list.value.append(b"u1")
    request.inputs["examples"].CopyFrom(
        tf.make_tensor_proto([example.SerializeToString()], dtype=tf.string))
    return request


class Served:
    def __init__(self, model_base, *flags):
        self.port, self.rest_port, self.metrics_port = _free_port(), _free_port(), _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtrank.cli", "serve", "--model-base", model_base,
             "--port", str(self.port), "--rest-port", str(self.rest_port),
             "--metrics-port", str(self.metrics_port), "--workers", "2", *flags],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.banner = self.process.stdout.readline()
        self.channels = [grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                               options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(CONNECTIONS)]
        self.stubs = [prediction_service_pb2_grpc.PredictionServiceStub(ch)
                      for ch in self.channels]

    def workers(self):
        # The CLI has another child: cli/quiet.py, the filter of TensorFlow's log.
        return [child for child in psutil.Process(self.process.pid).children()
                if "mtrank.serving.workers" in child.cmdline()]

    def close(self):
        for channel in self.channels:
            channel.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def model_base(tmp_path):
    base = str(tmp_path / "mtrank")
    testing_util.write_test_model(base, 1, bias=0.0)
    return base


def _metrics(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_workers_share_the_ports_and_sum_their_metrics_then_drain_on_sigterm(model_base):
    served = Served(model_base)
    try:
        assert served.banner.startswith(
            f"serving mtrank versions [1] on 127.0.0.1:{served.port}; REST on "
            f"http://127.0.0.1:{served.rest_port}"), served.banner
        assert "(2 worker processes)" in served.banner
        workers = served.workers()
        assert len(workers) == 2

        for stub in served.stubs:
            stub.Predict(_request(), timeout=30)

        # Both workers hold some of the clients' connections on the shared port.
        holding = [w for w in workers
                   if any(c.laddr.port == served.port and c.status == psutil.CONN_ESTABLISHED
                          for c in w.net_connections())]
        assert len(holding) == 2
        # A server that does not share the port cannot take it.
        with pytest.raises(OSError, match="cannot listen"):
            server_lib.start(server_config.single_model_config("mtrank", model_base),
                             server_lib.ServerOptions(port=served.port))
        # Every scrape, from the supervisor or from either worker over REST,
        # sums both workers' counts.
        key = ("mtrank_serving_requests_total",
               (("code", "OK"), ("method", "Predict"), ("model", "mtrank"),
                ("signature", "serving_default")))
        scrapes = [_metrics(f"http://127.0.0.1:{served.metrics_port}/metrics")]
        scrapes += [_metrics(f"http://127.0.0.1:{served.rest_port}/monitoring/prometheus/metrics")
                    for _ in range(6)]
        for scrape in scrapes:
            assert scrape[key] == CONNECTIONS
            assert scrape[("mtrank_serving_requests_in_flight", ())] == 0
            assert scrape[("mtrank_serving_versions_available", (("model", "mtrank"),))] == 1

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        served.close()


def test_every_worker_reloads_new_versions_and_configs_without_a_failed_request(
        model_base, tmp_path):
    staging = str(tmp_path / "staging")
    testing_util.write_test_model(staging, 2, bias=1.0)
    other = tmp_path / "other"
    shutil.copytree(os.path.join(model_base, "1"), other / "5")
    served = Served(model_base, "--poll-seconds", "0.05")
    stop = threading.Event()
    failures, versions = [], [[] for _ in served.stubs]

    def send(index):
        while not stop.is_set():
            try:
                response = served.stubs[index].Predict(_request(), timeout=30)
            except grpc.RpcError as e:
                failures.append(e.code())
                continue
            versions[index].append(response.model_spec.version.value)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(CONNECTIONS)]
    try:
        for thread in senders:
            thread.start()
        shutil.copytree(os.path.join(staging, "2"), os.path.join(model_base, "2"))
        give_up = time.monotonic() + 60
        while not all(v and v[-1] == 2 for v in versions) and time.monotonic() < give_up:
            time.sleep(0.05)
        stop.set()
        for thread in senders:
            thread.join()
        assert failures == []
        assert all(v[-1] == 2 for v in versions)  # every connection, so both workers

        # A config reload over gRPC reaches one worker and applies in both.
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(f"""model_config_list {{
          config {{ name: "mtrank" base_path: "{model_base}" model_platform: "tensorflow" }}
          config {{ name: "other" base_path: "{other}" model_platform: "tensorflow" }}
        }}""", request.config)
        models = model_service_pb2_grpc.ModelServiceStub(served.channels[0])
        models.HandleReloadConfigRequest(request, timeout=60)
        for stub in served.stubs:
            assert stub.Predict(_request("other"), timeout=30).model_spec.version.value == 5
        request.config.model_config_list.config[1].base_path = str(tmp_path / "missing")
        with pytest.raises(grpc.RpcError) as raised:
            models.HandleReloadConfigRequest(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing" in raised.value.details()
        scores = {tuple(np.round(tf.make_ndarray(
            stub.Predict(_request(), timeout=30).outputs["score"]), 6)) for stub in served.stubs}
        assert len(scores) == 1  # every worker serves the same version
    finally:
        stop.set()
        served.close()


def test_a_worker_that_dies_ends_the_server_with_status_1(model_base):
    served = Served(model_base)
    try:
        assert served.banner.startswith("serving"), served.banner
        served.workers()[0].kill()
        assert served.process.wait(timeout=60) == 1
    finally:
        served.close()


def test_workers_end_when_the_supervisor_is_killed(model_base):
    served = Served(model_base)
    try:
        assert served.banner.startswith("serving"), served.banner
        workers = served.workers()
        served.process.kill()  # SIGKILL: no chance to stop them
        served.process.wait()
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == []
        # The ports are free again.
        with socket.socket() as s:
            s.bind(("127.0.0.1", served.port))
    finally:
        served.close()
