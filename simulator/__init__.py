"""A simulator of interaction logs with known click and purchase probabilities (the truth)."""
