"""The CPU kernels a serving process runs its models with: TF Serving's.

TensorFlow's pip package swaps in oneDNN kernels on CPUs with AVX512_VNNI
and newer, unless TF_ENABLE_ONEDNN_OPTS=0 is in the environment when
TensorFlow is first imported. The official `tensorflow/serving` image is
built without oneDNN (Intel publishes a separate one that has it), so it
runs TensorFlow's own (Eigen) kernels. On ranking models those are also the
faster ones: each oneDNN call pays a fixed cost that a model of small dense
layers never earns back (docs/serving.md, "Performance settings").

This module imports no TensorFlow, so that it can be called before it is.
"""
import logging
import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"

logger = logging.getLogger(__name__)


def use_tf_serving_kernels() -> None:
    """Turns oneDNN off for this process, unless the environment already
    chose; to be called before TensorFlow is first imported, as `mtrank
    serve` does (afterwards it changes nothing, and a warning says so)."""
    if ONEDNN_ENV in os.environ:
        return
    if "tensorflow" in sys.modules:
        logger.warning("TensorFlow is already imported in this process; its CPU kernels stay "
                       "as they are (set %s=0 before importing it to serve with TF "
                       "Serving's)", ONEDNN_ENV)
        return
    os.environ[ONEDNN_ENV] = "0"
