"""attnkit: every kind of attention a modern transformer needs, for PyTorch.

Layers (``attnkit.nn``) are built on functional ops (``attnkit.attention``, RoPE), which run on a
plain PyTorch reference backend everywhere and on Triton kernels on CUDA.
"""

from attnkit.ops.attention import attention

__version__ = "0.1.0"

__all__ = ["attention", "__version__"]
