"""Server-side dynamic batching, with TF Serving's batching parameters.

Requests for the same version, signature and outputs, whose inputs agree on
every dimension but the first, wait in one queue. A batch is run when it
holds `max_batch_size` examples, or `batch_timeout_micros` after its first
request arrived, by one of `num_batch_threads` threads: the inputs are
concatenated, the signature runs once, and each request gets its rows of the
outputs. A request larger than `max_batch_size` runs as a batch of its own.
When a queue already holds `max_enqueued_batches` batches (a batch being run
no longer counts), a request is refused at once with RESOURCE_EXHAUSTED
rather than left waiting: the client backs off or goes elsewhere.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Deque, Dict, Hashable, List, Mapping, Optional, Sequence

import grpc
import numpy as np

from mtrank.serving.errors import RequestError
from mtrank.serving.server_config import BatchingParameters

logger = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Dict[str, np.ndarray]]


class _Task:
    __slots__ = ("inputs", "size", "future")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int):
        self.inputs = inputs
        self.size = size
        self.future: concurrent.futures.Future = concurrent.futures.Future()


class _Batch:
    __slots__ = ("run", "tasks", "size", "deadline", "closed")

    def __init__(self, run: RunFn, deadline: float):
        self.run = run
        self.tasks: List[_Task] = []
        self.size = 0
        self.deadline = deadline
        self.closed = False


def batch_key(model_key: Hashable, signature: str, output_keys: Sequence[str],
              inputs: Mapping[str, np.ndarray]) -> Hashable:
    """Requests that may share a batch have equal keys."""
    return (model_key, signature, tuple(output_keys),
            tuple((name, array.dtype.str, array.shape[1:]) for name, array in
                  sorted(inputs.items())))


class Batcher:
    """Merges concurrent requests into model calls (see the module docstring)."""

    def __init__(self, params: BatchingParameters,
                 on_batch: Optional[Callable[[int, int], None]] = None):
        self.params = params
        self._on_batch = on_batch or (lambda requests, examples: None)
        self._queues: Dict[Hashable, Deque[_Batch]] = collections.defaultdict(collections.deque)
        self._lock = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"mtrank-batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, run: RunFn, inputs: Mapping[str, np.ndarray],
               size: int) -> concurrent.futures.Future:
        """Queues one request of `size` examples; its future gets its output rows.

        `run` runs a merged batch; every request with the same key must pass
        an equivalent one.
        """
        task = _Task(inputs, size)
        timeout_s = self.params.batch_timeout_micros / 1e6
        with self._lock:
            if self._stopping:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues[key]
            last = queue[-1] if queue else None
            if last is None or last.closed or last.size + size > self.params.max_batch_size:
                if last is not None:
                    last.closed = True
                if len(queue) >= self.params.max_enqueued_batches:
                    raise RequestError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the batch queue is full ({self.params.max_enqueued_batches} batches "
                        "waiting); retry later")
                last = _Batch(run, time.monotonic() + timeout_s)
                queue.append(last)
            last.tasks.append(task)
            last.size += size
            if last.size >= self.params.max_batch_size:
                last.closed = True
            self._lock.notify()
        return task.future

    def _next_batch(self) -> Optional[_Batch]:
        """The oldest batch that is full or whose timeout passed; None when stopping."""
        with self._lock:
            while True:
                now = time.monotonic()
                ready, ready_key, wake = None, None, None
                for key, queue in self._queues.items():
                    head = queue[0]
                    if head.closed or head.deadline <= now or self._stopping:
                        if ready is None or head.deadline < ready.deadline:
                            ready, ready_key = head, key
                    elif wake is None or head.deadline < wake:
                        wake = head.deadline
                if ready is not None:
                    queue = self._queues[ready_key]
                    queue.popleft()
                    if not queue:
                        del self._queues[ready_key]
                    return ready
                if self._stopping:
                    return None
                self._lock.wait(None if wake is None else max(wake - now, 0))

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        try:
            if len(tasks) == 1:
                merged = tasks[0].inputs
            else:
                merged = {name: np.concatenate([t.inputs[name] for t in tasks])
                          for name in tasks[0].inputs}
            outputs = batch.run(merged)
            self._on_batch(len(tasks), sum(t.size for t in tasks))
        except BaseException as e:  # every waiting request learns what happened
            if len(tasks) == 1:
                tasks[0].future.set_exception(e)
                return
            # One bad request must not fail the others merged with it.
            for task in tasks:
                self._run_alone(batch.run, task)
            return
        start = 0
        for task in tasks:
            task.future.set_result({key: value[start:start + task.size]
                                    for key, value in outputs.items()})
            start += task.size

    def _run_alone(self, run: RunFn, task: _Task) -> None:
        try:
            outputs = run(task.inputs)
            self._on_batch(1, task.size)
        except BaseException as e:
            task.future.set_exception(e)
            return
        task.future.set_result(outputs)

    def stop(self) -> None:
        """Runs what is queued, then ends the batch threads."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
