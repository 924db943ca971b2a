"""What Transform makes of each configured feature, shared by Transform,
the model and serving."""
from __future__ import annotations

from mtrank.base import config as config_lib

# Multivalent ids are shifted by one so that 0 can mean "no value" (padding).
PADDING_ID = 0


def embedding_input_dim(feature: config_lib.FeatureConfig) -> int:
    """How many distinct ids the transformed feature can take."""
    if feature.kind == "numeric":
        return feature.num_buckets + 1  # tft.bucketize may add an edge bucket
    ids = feature.hash_buckets if feature.encoding == "hashing" else feature.vocab_size + 1
    return ids + 1 if feature.kind == "multivalent" else ids


def is_embedded(feature: config_lib.FeatureConfig) -> bool:
    """Ids get embedding tables; z-scored and logged numerics enter as they
    are (piecewise-linear ones through their own dense layer)."""
    return feature.kind != "numeric" or feature.transform == "buckets"


def is_periodic(feature: config_lib.FeatureConfig) -> bool:
    """A z-scored number the model embeds through learned sin / cos."""
    return feature.kind == "numeric" and feature.transform == "periodic"


def is_piecewise_linear(feature: config_lib.FeatureConfig) -> bool:
    """Transformed to a [batch, num_buckets] encoding (not one value)."""
    return feature.kind == "numeric" and feature.transform == "piecewise_linear"
