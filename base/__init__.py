"""The base of mtrank: the config model and the contracts every stage shares.

It imports nothing else of the project, and nothing here imports TensorFlow at
import time except the modules that build TensorFlow protos, so the CLI can
validate a config before TensorFlow loads.
"""
from mtrank.base import keras_env  # noqa: F401  (must precede TensorFlow)
