"""attnkit: every kind of attention a modern transformer needs, for PyTorch.

Layers (``attnkit.nn``) are built on functional ops (``attnkit.attention``, RoPE), which run on a
plain PyTorch reference backend everywhere and on Triton kernels on CUDA.
"""

from attnkit.ops.attention import attention
from attnkit.ops.decode import decode_attention
from attnkit.ops.mla_decode import mla_decode_attention
from attnkit.ops.positions import (
    positions_from_boundaries,
    positions_from_cu_seqlens,
    positions_from_offset,
)
from attnkit.ops.rope import apply_rope, rope, rope_cos_sin
from attnkit.ops.rope_scaling import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    RopeScaling,
    YarnScaling,
    rope_inv_freq,
    scaling_from_hf,
)

# isort: split
# Layers import the ops above, so they come after them.
from attnkit.nn.rotary import RotaryEmbedding

__version__ = "0.1.0"

__all__ = [
    "decode_attention",
    "mla_decode_attention",
    "attention",
    "apply_rope",
    "rope",
    "rope_cos_sin",
    "RotaryEmbedding",
    "positions_from_offset",
    "positions_from_cu_seqlens",
    "positions_from_boundaries",
    "LinearScaling",
    "DynamicNTKScaling",
    "YarnScaling",
    "Llama3Scaling",
    "RopeScaling",
    "rope_inv_freq",
    "scaling_from_hf",
    "__version__",
]
