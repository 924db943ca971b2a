"""Reporting: the run summary, the HTML report, ML Metadata inspection, training logs."""
from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
