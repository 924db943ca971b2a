"""A serving process runs TensorFlow's own CPU kernels unless told otherwise.

Each case starts a fresh interpreter: the choice is made when TensorFlow is
first imported, and this test process has long imported it.
"""
import os
import subprocess
import sys

import pytest

from mtrank.serving import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow itself decided, read after the import.
PROBE = """
from mtrank.serving import kernels
kernels.use_tf_serving_kernels()
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
print("onednn", _pywrap_util_port.IsMklEnabled())
"""


def _onednn_in_fresh_process(environment_value):
    env = {k: v for k, v in os.environ.items() if k != kernels.ONEDNN_ENV}
    if environment_value is not None:
        env[kernels.ONEDNN_ENV] = environment_value
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return [line for line in out.splitlines() if line.startswith("onednn ")][-1]


@pytest.mark.parametrize("environment_value, expected", [
    (None, "onednn False"),   # the serving default, as the official image
    ("1", "onednn True"),     # a user who exports it gets oneDNN
])
def test_oneDNN_is_off_unless_the_environment_asks(environment_value, expected):
    assert _onednn_in_fresh_process(environment_value) == expected


def test_after_tensorflow_is_imported_nothing_changes_and_a_warning_says_so(
        monkeypatch, caplog):
    import tensorflow  # noqa: F401  (already imported by the suite; made explicit)

    monkeypatch.delenv(kernels.ONEDNN_ENV, raising=False)
    kernels.use_tf_serving_kernels()
    assert kernels.ONEDNN_ENV not in os.environ
    assert "already imported" in caplog.text
