"""mtrank pipeline: config, pipeline definition, runners and CLI."""
from pipeline import keras_env  # noqa: F401  (must precede TensorFlow)
