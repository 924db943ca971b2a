"""Entry points of mtrank: the `mtrank` command and the demo, above every package."""
from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
