"""Selects Keras 2 (tf-keras) for every process that runs mtrank code.

TensorFlow Recommenders and TF Transform are built on Keras 2. TensorFlow 2.16
picks Keras 3 unless TF_USE_LEGACY_KERAS=1 is in the environment when
TensorFlow is first imported, so every package of this project imports this
module first, and Beam worker processes inherit the variable.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

if "tensorflow" in sys.modules and os.environ["TF_USE_LEGACY_KERAS"] != "1":
    raise ImportError(
        "mtrank needs Keras 2: set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported"
    )


def check_legacy_keras():
    """Raises if TensorFlow was imported before Keras 2 could be selected."""
    import tensorflow as tf

    if not tf.keras.Model.__module__.startswith("tf_keras"):
        raise RuntimeError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set, so "
            "tf.keras is Keras 3; import mtrank modules first or export "
            "TF_USE_LEGACY_KERAS=1"
        )
