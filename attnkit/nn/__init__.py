"""Layers built on ``attnkit.ops``."""

from attnkit.nn.rotary import RotaryEmbedding

__all__ = ["RotaryEmbedding"]
