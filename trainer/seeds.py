"""Reproducible, per-layer random seeds."""
import zlib


def layer_seed(seed: int, name: str) -> int:
    """A seed derived from the config's seed and a layer's name: the same on
    every run, and different for each named layer, so towers and embedding
    tables do not start identical."""
    return (seed + zlib.crc32(name.encode())) % (2 ** 31)
