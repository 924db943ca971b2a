"""serving of mtrank."""
from pipeline import keras_env  # noqa: F401  (must precede TensorFlow)
