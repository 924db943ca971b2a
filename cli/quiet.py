"""Hides the TensorFlow / TFX stack's known-harmless noise from the `mtrank` command.

Each pattern below names one message, where it comes from and why it is
harmless; anything else (any other warning, log record or line on stderr)
passes unchanged. `mtrank <command> -v` turns all of it off.

The noise reaches the terminal four ways, so there are four filters:
  Python warnings        warnings filters (category, message and module)
  Python logging         a logging.Filter on the `absl` and `tensorflow` loggers
  exceptions in __del__  sys.unraisablehook (TensorFlow's, at interpreter exit)
  C++ lines on fd 2      TF_CPP_MIN_LOG_LEVEL=1 (no C++ INFO) unless set, and a
                         child process that stderr flows through, dropping
                         the listed lines

The stderr filter runs in a child process rather than a thread so that what
a dying process wrote last (a fatal C++ log line before an abort, a
faulthandler traceback) still reaches the terminal: the child reads the
pipe to its end after this process is gone. Only stdlib modules are
imported at the top: the child runs this file with `python -I -S`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from typing import Iterator

# (category, message regex, module regex) for warnings.filterwarnings.
NOISY_WARNINGS = (
    # google-api-core (imported under TensorFlow, Beam and TFX) warns on
    # every start that Google's client libraries no longer support Python
    # 3.10, which this project pins (TFX 1.16 supports 3.9 and 3.10 only).
    (FutureWarning,
     r"You are using (a non-supported Python version|a Python version \S+ past its end of life)",
     r"google\.api_core\._python_version_support"),
    # google-cloud-aiplatform (under TFX), when imported: kfp 2.5 requires
    # google-cloud-storage < 3, which aiplatform still supports.
    (FutureWarning, r"Support for google-cloud-storage < 3\.0\.0 will be removed",
     r"google\.cloud\.aiplatform(\..+)?"),
    # TFMA computes precision, recall and F1 at every threshold at once;
    # thresholds above every prediction have no predicted positives, so their
    # ratios are 0/0, which TFMA reports as NaN (undefined).
    (RuntimeWarning, r"(invalid value|divide by zero) encountered in divide",
     r"tensorflow_model_analysis\.metrics\.(confusion_matrix_metrics|binary_confusion_matrices)"),
)

# Logger name -> regexes matched against the start of a record's message.
NOISY_LOG_MESSAGES = {
    "absl": (
        # TFX 1.16's channel_resolver tests `if artifact_query.property_predicate`
        # where it means HasField: an empty proto message is truthy, so every
        # input channel of every component logs this though none has a
        # predicate.
        r"ArtifactQuery\.property_predicate is not supported\.\Z",
        # tf.Transform analyses the preprocessing_fn traced as a tf.function
        # and warns once per vocabulary table in it; the SavedModel it exports
        # initializes those tables once, when it is loaded, so the cost per
        # call it warns of does not occur in training or serving.
        r"Tables initialized inside a tf\.function  will be re-initialized on every invocation",
        # Transform's transformed_examples carry no payload_format property;
        # the Trainer falls back to tf.Example, which is what Transform wrote.
        r"Examples artifact does not have payload_format custom property\. "
        r"Falling back to FORMAT_TF_EXAMPLE\Z",
    ),
    "tensorflow": (
        # tf_keras, while saving the trained model: the model is a subclassed
        # Model without get_config. The exported SavedModel is served through
        # its signatures; the model is never rebuilt from its config.
        r"Model's `__init__\(\)` arguments contain non-serializable objects\.",
        # TensorFlow APIs deprecated under tfx_bsl's and TFMA's own calls
        # (parse_example_dataset, tf_record_iterator): theirs to update,
        # nothing a user of mtrank can change. Deprecated calls elsewhere,
        # mtrank's included, still show.
        r"From \S*/(tfx_bsl|tensorflow_model_analysis)/\S+: \w+ \(from tensorflow\.[\w.]+\) "
        r"is deprecated and will be removed",
    ),
}

# Lines TensorFlow's C++ code writes straight to fd 2, as bytes regexes.
# Each starts with the C++ log prefix "2026-12-03 17:27:40.503141: E file:line] ".
_CPP_LOG_PREFIX = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: "
NOISY_STDERR_LINES = (
    # At `import tensorflow`, XLA's CUDA plugins (cuFFT, cuDNN, cuBLAS) are
    # registered a second time by the same wheel and say so at ERROR level;
    # the first registration stands, and this pipeline runs on CPU.
    _CPP_LOG_PREFIX
    + rb"E external/local_xla/xla/stream_executor/cuda/cuda_(fft|dnn|blas)\.cc:\d+\] "
    rb"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for "
    rb"plugin cu(FFT|DNN|BLAS) when one has already been registered\Z",
    # At `import tensorflow` without TensorRT installed: TF-TRT is an
    # optional GPU inference optimizer that mtrank does not use.
    _CPP_LOG_PREFIX + rb"W tensorflow/compiler/tf2tensorrt/utils/py_utils\.cc:\d+\] "
    rb"TF-TRT Warning: Could not find TensorRT\Z",
    # gRPC's C core, at INFO, when the demo's server stops while its client
    # channel is still open: the server's GOAWAY frame closes the idle
    # connection, as a server shutdown should.
    rb"I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ chttp2_transport\.cc:\d+\] \S+: Got goaway \[\d+\] "
    rb"err=UNAVAILABLE:GOAWAY received; Error code: \d+; Debug Text: Cancelling all calls"
    rb"( \{[^}]*\})?\Z",
)

# TensorFlow's C++ INFO lines at import (cpu_feature_guard's "This TensorFlow
# binary is optimized to use available CPU instructions", over two lines, and
# the oneDNN notice) are notices, never problems: "1" keeps WARNING and up.
CPP_MIN_LOG_LEVEL = "1"

# AtomicFunction.__del__ indexes a module global that interpreter shutdown has
# already set to None: a TypeError per tf.function still alive at exit, after
# everything has run and been written.
_ATOMIC_FUNCTION_MODULE = "tensorflow.python.eager.polymorphic_function.atomic_function"

# At the end of a command, how long to wait for the stderr filter to pass the
# last lines on. It waits longer only if a process this one started still
# holds stderr; the filter then keeps running until that process exits.
_STDERR_DRAIN_TIMEOUT_S = 10.0


class KnownNoiseLogFilter(logging.Filter):
    """Drops log records whose message starts with one of `patterns`."""

    def __init__(self, patterns):
        super().__init__()
        self._patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is the handler's to report
            return True
        return not any(p.match(message) for p in self._patterns)


def is_noisy_stderr_line(line: bytes) -> bool:
    """Whether a line of stderr (without its newline) is listed noise."""
    return any(re.match(pattern, line) for pattern in NOISY_STDERR_LINES)


def pass_stderr_through(source_fd: int, sink_fd: int) -> None:
    """Copies `source_fd` to `sink_fd` until its end, dropping noisy lines.

    Every other byte is written unchanged, in order, as soon as its line is
    complete (the last line also without a newline).
    """
    pending = b""
    while True:
        chunk = os.read(source_fd, 1 << 16)
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        _write_all(sink_fd, b"".join(line + b"\n" for line in lines
                                     if not is_noisy_stderr_line(line)))
    if pending and not is_noisy_stderr_line(pending):
        _write_all(sink_fd, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


class _StderrFilter:
    """Points fd 2 (Python's, C++'s and child processes' stderr) into a pipe
    read by a child process running `pass_stderr_through`."""

    def __init__(self):
        sys.stderr.flush()
        self._terminal_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        try:
            # Its own session: Ctrl-C in the terminal stops this process, whose
            # traceback the filter must still pass on.
            self._child = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=read_fd, stdout=self._terminal_fd, stderr=self._terminal_fd,
                start_new_session=True)
        except BaseException:
            os.close(self._terminal_fd)
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        os.dup2(write_fd, 2)
        os.close(write_fd)

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self._terminal_fd, 2)  # closes this process's end of the pipe
        os.close(self._terminal_fd)
        try:
            self._child.wait(timeout=_STDERR_DRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass  # a process started here still writes through it; it ends with that


def _drop_atomic_function_exit_errors(previous_hook):
    """A sys.unraisablehook dropping only AtomicFunction.__del__'s TypeError
    during interpreter shutdown. Everything it uses is bound here: shutdown
    sets module globals, this module's included, to None."""
    is_finalizing, module = sys.is_finalizing, _ATOMIC_FUNCTION_MODULE

    def hook(unraisable):
        function = unraisable.object
        if (is_finalizing() and unraisable.exc_type is TypeError
                and getattr(function, "__qualname__", None) == "AtomicFunction.__del__"
                and getattr(function, "__module__", None) == module):
            return
        previous_hook(unraisable)

    hook.drops_atomic_function_exit_errors = True
    return hook


@contextlib.contextmanager
def known_noise_filtered(enabled: bool = True) -> Iterator[None]:
    """While a command runs: drop the listed noise (nothing if not `enabled`).

    The unraisable hook stays installed afterwards: TensorFlow's functions
    are collected at interpreter exit, after the command has returned.
    """
    if not enabled:
        yield
        return
    if not getattr(sys.unraisablehook, "drops_atomic_function_exit_errors", False):
        sys.unraisablehook = _drop_atomic_function_exit_errors(sys.unraisablehook)
    saved_log_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", CPP_MIN_LOG_LEVEL)
    # absl's logger is an ABSLLogger, made when absl.logging is imported:
    # looking its name up first would make a plain Logger that absl reuses.
    from absl import logging as absl_logging

    loggers = {"absl": absl_logging.get_absl_logger(),
               "tensorflow": logging.getLogger("tensorflow")}
    log_filters = [(loggers[name], KnownNoiseLogFilter(patterns))
                   for name, patterns in NOISY_LOG_MESSAGES.items()]
    for logger, log_filter in log_filters:
        logger.addFilter(log_filter)
    stderr_filter = _StderrFilter()
    try:
        with warnings.catch_warnings():
            for category, message, module in NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message, category, module)
            yield
    finally:
        stderr_filter.close()
        for logger, log_filter in log_filters:
            logger.removeFilter(log_filter)
        if saved_log_level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


if __name__ == "__main__":  # the stderr filter's child process
    pass_stderr_through(sys.stdin.fileno(), sys.stdout.fileno())
