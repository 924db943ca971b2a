"""components of mtrank."""
from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
