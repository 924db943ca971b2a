"""The noise filters of cli/quiet.py, each in a fresh interpreter (the filters
act on fd 2, the warnings registry and interpreter exit)."""
import os
import subprocess
import sys
import textwrap

CUFFT_LINE = (b"2026-12-03 17:27:40.503141: E external/local_xla/xla/stream_executor/cuda/"
              b"cuda_fft.cc:479] Unable to register cuFFT factory: Attempting to register "
              b"factory for plugin cuFFT when one has already been registered")
TRT_LINE = (b"2026-12-03 17:35:12.145519: W tensorflow/compiler/tf2tensorrt/utils/"
            b"py_utils.cc:38] TF-TRT Warning: Could not find TensorRT")
GOAWAY_LINE = (b"I1203 18:47:17.126909   11082 chttp2_transport.cc:1403] ipv4:127.0.0.1:34677: "
               b"Got goaway [2] err=UNAVAILABLE:GOAWAY received; Error code: 2; Debug Text: "
               b"Cancelling all calls {http2_error:2}")


def _python(code: str, stdin: bytes = b"", without_env=()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in without_env}
    env["TF_USE_LEGACY_KERAS"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], input=stdin,
                          capture_output=True, env=env, timeout=300)


def test_listed_stderr_lines_are_dropped_and_every_other_byte_passes_in_order():
    # More than a pipe's 64 KiB, so the filter's reads split lines.
    real = [f"real line {i} ".encode() + b"x" * (i % 97) for i in range(3000)]
    written = []
    for i, line in enumerate(real):
        written.append(line)
        if i % 100 == 0:
            written += [CUFFT_LINE, TRT_LINE, GOAWAY_LINE]
    # The same noise line with anything before or after it is not the noise.
    altered = [b"prefix " + CUFFT_LINE, TRT_LINE + b" and more"]
    stream = b"\n".join(written + altered) + b"\nno newline at the end"
    result = _python("""
        import os, sys
        from mtrank.cli import quiet

        with quiet.known_noise_filtered():
            data = sys.stdin.buffer.read()
            for start in range(0, len(data), 7001):
                os.write(2, data[start:start + 7001])
        """, stdin=stream)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == b"\n".join(real + altered) + b"\nno newline at the end"


def test_stderr_written_just_before_the_process_dies_still_arrives():
    result = _python(f"""
        import os
        from mtrank.cli import quiet

        with quiet.known_noise_filtered():
            os.write(2, {CUFFT_LINE!r} + b"\\nF a fatal line before an abort\\n")
            os._exit(3)
        """)
    assert result.returncode == 3
    assert result.stderr == b"F a fatal line before an abort\n"


def test_listed_warnings_and_log_records_are_dropped_and_others_still_print():
    result = _python("""
        import logging, sys, warnings
        from absl import logging as absl_logging
        from mtrank.cli import quiet

        tf_logger = logging.getLogger("tensorflow")
        with quiet.known_noise_filtered():
            import google.api_core  # its Python version check warns, FutureWarning
            warnings.warn_explicit(
                "invalid value encountered in divide", RuntimeWarning,
                "confusion_matrix_metrics.py", 542,
                module="tensorflow_model_analysis.metrics.confusion_matrix_metrics")
            absl_logging.warning("ArtifactQuery.property_predicate is not supported.")
            absl_logging.warning("Examples artifact does not have %s custom property. "
                                 "Falling back to %s", "payload_format", "FORMAT_TF_EXAMPLE")
            tf_logger.warning("Model's `__init__()` arguments contain non-serializable objects. "
                              "Please implement a `get_config()` method.")
            tf_logger.warning("From /x/site-packages/tfx_bsl/tfxio/tf_example_record.py:343: "
                              "parse_example_dataset (from tensorflow.python.data.experimental"
                              ".ops.parsing_ops) is deprecated and will be removed in a future "
                              "version.")

            warnings.warn("unlisted: invalid value encountered in divide", RuntimeWarning)
            warnings.warn_explicit(
                "invalid value encountered in divide", RuntimeWarning, "mine.py", 1,
                module="mtrank.trainer.mine")
            warnings.warn("unlisted future warning", FutureWarning)
            absl_logging.error("unlisted absl error")
            absl_logging.warning("Examples artifact does not have %s custom property. "
                                 "Falling back to %s", "payload_format", "FORMAT_PARQUET")
            tf_logger.warning("From /work/main/trainer/model.py:12: f (from tensorflow.x) "
                              "is deprecated and will be removed in a future version.")
        absl_logging.warning("ArtifactQuery.property_predicate is not supported.")
        """)
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    for hidden in ("non-supported Python version", "confusion_matrix_metrics.py:542",
                   "FORMAT_TF_EXAMPLE", "non-serializable", "parse_example_dataset"):
        assert hidden not in stderr, stderr
    for shown in ("unlisted: invalid value", "mine.py:1: RuntimeWarning",
                  "unlisted future warning", "unlisted absl error", "FORMAT_PARQUET",
                  "trainer/model.py:12"):
        assert shown in stderr, stderr
    # The filters end with the command.
    assert stderr.count("ArtifactQuery.property_predicate is not supported.") == 1, stderr


# A tf.function alive at exit, referenced from a module cleared after
# TensorFlow's (collections is imported first): its AtomicFunction.__del__
# then fails as in `mtrank demo`. A __del__ failing while the program runs
# is a real error and must still print.
TENSORFLOW_PROGRAM = """
    import collections
    from mtrank.cli import quiet

    class Broken:
        def __del__(self):
            raise KeyError("a real error in __del__")

    with quiet.known_noise_filtered(enabled={enabled}):
        import tensorflow as tf

        @tf.function
        def double(x):
            return x * 2

        double(tf.constant(1.0))
        collections.kept_until_exit = double
        Broken()
    """


def test_tensorflow_import_and_exit_noise_is_dropped_and_real_errors_are_not():
    # TF_CPP_MIN_LOG_LEVEL unset: TensorFlow's C++ INFO lines would print too.
    unset = ("TF_CPP_MIN_LOG_LEVEL",)
    shown = _python(TENSORFLOW_PROGRAM.format(enabled=False), without_env=unset)
    quiet = _python(TENSORFLOW_PROGRAM.format(enabled=True), without_env=unset)
    assert shown.returncode == quiet.returncode == 0, (shown.stderr, quiet.stderr)
    for noise in (b"Unable to register cuFFT factory", b"Unable to register cuDNN factory",
                  b"Unable to register cuBLAS factory", b"TF-TRT Warning",
                  b"cpu_feature_guard", b"Exception ignored in: <function AtomicFunction.__del__"):
        assert noise in shown.stderr, noise  # the noise is real ...
        assert noise not in quiet.stderr, quiet.stderr.decode()  # ... and hidden
    assert b"KeyError: 'a real error in __del__'" in quiet.stderr
