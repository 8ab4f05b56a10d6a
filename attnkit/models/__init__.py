"""A small Llama-style decoder built from ``attnkit.nn``, and generation with KV caches."""

from attnkit.models.config import DecoderConfig
from attnkit.models.decoder import Decoder
from attnkit.models.generate import generate

__all__ = ["Decoder", "DecoderConfig", "generate"]
