"""Plain PyTorch RoPE: cos/sin tables from positions, and the rotation itself.

No validation here (``attnkit.ops.rope`` does it at the public boundary). Math in float32 (float64
when an input is float64); results in the input's dtype.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-width tables: ``cos(p * inv_freq) * attention_factor`` and the same with sin.

    positions int ``[...]``, inv_freq float32 ``[r/2]`` -> cos, sin float32 ``[..., r/2]``.
    """
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # [..., r/2]
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    style: str,
    rotary_dim: int,
) -> torch.Tensor:
    """Rotate the leading ``rotary_dim`` dims of ``x``'s last axis; pass the rest through.

    x ``[..., d]``; cos, sin ``[..., r/2]`` broadcastable against ``x[..., :r/2]``.
    ``half``: pairs ``(i, i + r/2)``; ``interleaved``: pairs ``(2i, 2i + 1)``. Each pair
    ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``.
    """
    compute = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), torch.float32)
    rot = x[..., :rotary_dim].to(compute)  # [..., r]
    c, s = cos.to(compute), sin.to(compute)  # [..., r/2]
    if style == "half":
        a, b = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]  # [..., r/2] each
        out = torch.cat((a * c - b * s, b * c + a * s), dim=-1)  # [..., r]
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]  # [..., r/2] each
        out = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)  # [..., r]
    out = out.to(x.dtype)
    if rotary_dim < x.shape[-1]:
        out = torch.cat((out, x[..., rotary_dim:]), dim=-1)  # [..., d]
    return out
