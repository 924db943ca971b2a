"""The pipeline: `create_pipeline`, the local runner and config inference."""
from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
