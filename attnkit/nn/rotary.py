"""``RotaryEmbedding``: the RoPE frequencies of a layer, turning positions into cos/sin tables."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.ops._checks import check_int, check_tensor
from attnkit.ops.rope import apply_rope, check_style, resolve_rotary_dim, rope_cos_sin
from attnkit.ops.rope_scaling import (
    DynamicNTKScaling,
    RopeScaling,
    check_scaling,
    check_theta,
    rope_inv_freq,
)

__all__ = ["RotaryEmbedding"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: positions -> half-width ``(cos, sin)`` tables.

    Holds ``inv_freq`` (float32 ``[rotary_dim // 2]``) as a non-persistent buffer: it follows
    ``.to(device)`` but is not in the ``state_dict``, so Hugging Face checkpoints load strictly.

    ``attention_factor`` is the factor the tables are multiplied by (YaRN's attention scale; 1.0
    for the other scalings). As in Hugging Face, cos and sin already include it, so q.k grows by
    its square; do not apply it again to the softmax scale.

    Args:
        head_dim: size of each head, >= 2.
        theta: RoPE base, > 1 (10000 Llama 2, 500000 Llama 3).
        rotary_dim: leading dims of each head to rotate (partial rotary); even, <= head_dim;
            default head_dim.
        style: ``"half"`` (Hugging Face rotate_half) or ``"interleaved"`` (GPT-J).
        scaling: ``LinearScaling``, ``DynamicNTKScaling``, ``YarnScaling``, ``Llama3Scaling`` or
            None.
        max_positions: the context length the frequencies are built for. With
            ``DynamicNTKScaling`` (default: its ``original_max_positions``) the buffer holds the
            frequencies for this length, and a call whose largest position + 1 exceeds it
            recomputes them for that length (stateless: the buffer is not changed). Other
            scalings only record it.
        device: device of the buffer (default: the current default device, so
            ``with torch.device("meta"):`` works; then ``to_empty`` + ``reset_parameters``).

    Raises:
        TypeError / ValueError: invalid arguments (messages name the argument).

    >>> rotary = RotaryEmbedding(64)
    >>> cos, sin = rotary(torch.arange(10))          # [s] -> [s, 32] each
    >>> cos.shape
    torch.Size([10, 32])
    >>> q = torch.randn(2, 10, 4, 64)                 # [b, s, h, d]
    >>> rotary.rotate(q, torch.arange(10)).shape
    torch.Size([2, 10, 4, 64])
    """

    inv_freq: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        theta: float = 10000.0,
        rotary_dim: int | None = None,
        style: str = "half",
        scaling: RopeScaling | None = None,
        max_positions: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_int("head_dim", head_dim, minimum=2)
        self.head_dim = head_dim
        self.rotary_dim = resolve_rotary_dim(head_dim, rotary_dim)
        self.theta = check_theta(theta)
        self.style = check_style(style)
        check_scaling("scaling", scaling)
        self.scaling = scaling
        if max_positions is not None:
            check_int("max_positions", max_positions, minimum=1)
        elif isinstance(scaling, DynamicNTKScaling):
            max_positions = scaling.original_max_positions
        self.max_positions = max_positions
        inv_freq, self.attention_factor = self._frequencies(self.max_positions, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _frequencies(
        self, seq_len: int | None, device: torch.device | str | None
    ) -> tuple[torch.Tensor, float]:
        if not isinstance(self.scaling, DynamicNTKScaling):
            seq_len = None
        return rope_inv_freq(
            self.rotary_dim, theta=self.theta, scaling=self.scaling, seq_len=seq_len, device=device
        )

    def reset_parameters(self) -> None:
        """Recompute ``inv_freq`` in place on its current device (e.g. after ``to_empty``)."""
        inv_freq, self.attention_factor = self._frequencies(self.max_positions,
                                                            self.inv_freq.device)
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq)

    def _inv_freq_for(self, positions: torch.Tensor) -> torch.Tensor:
        if isinstance(self.scaling, DynamicNTKScaling) and positions.numel():
            length = int(positions.max()) + 1
            if length > self.max_positions:
                return self._frequencies(length, self.inv_freq.device)[0]
        if self.inv_freq.dtype != torch.float32:
            # the module was cast (e.g. .to(torch.bfloat16)): recompute at full precision
            return self._frequencies(self.max_positions, self.inv_freq.device)[0]
        return self.inv_freq

    def forward(
        self, positions: torch.Tensor, *, full_width: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos/sin tables for integer positions.

        Args:
            positions: int tensor ``[seq]`` or ``[batch, seq]`` on the module's device.
            full_width: return Hugging Face-style tables ``[..., rotary_dim]`` laid out for
                ``style`` (``half``: ``cat(cos, cos)``; ``interleaved``: each value twice),
                usable as ``x * cos + rotate(x) * sin``. ``apply_rope`` takes the default
                half-width tables.

        Returns:
            ``(cos, sin)``, float32 ``[*positions.shape, rotary_dim // 2]`` (or
            ``[..., rotary_dim]`` with ``full_width``), multiplied by ``attention_factor``.

        Raises:
            TypeError: positions not an int tensor.
            ValueError: positions not 1-D or 2-D, or on another device than the module.
        """
        self._check_positions(positions)
        cos, sin = rope_cos_sin(positions, self._inv_freq_for(positions),
                                attention_factor=self.attention_factor)  # [..., r/2]
        if full_width:
            if self.style == "half":
                cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
            else:
                cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        return cos, sin

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Apply the rotation to ``x`` ``[b, s, h, head_dim]`` at ``positions`` ``[s]`` or ``[b, s]``.

        Returns:
            Tensor of x's shape and dtype.

        Raises:
            TypeError / ValueError: bad x (rank, head dim) or positions (dtype, shape, device).
        """
        check_tensor("x", x)
        if x.ndim != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"x must be [batch, seq, heads, head_dim={self.head_dim}], got shape "
                f"{tuple(x.shape)}"
            )
        self._check_positions(positions)
        b, s = x.shape[0], x.shape[1]
        if positions.shape[-1] != s or (positions.ndim == 2 and positions.shape[0] != b):
            raise ValueError(
                f"positions must have shape [{s}] or [{b}, {s}] to match x {tuple(x.shape)}, got "
                f"{tuple(positions.shape)}"
            )
        cos, sin = self(positions)  # [(b,) s, r/2]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [(b,) s, 1, r/2]
        return apply_rope(x, cos, sin, style=self.style, rotary_dim=self.rotary_dim)

    def _check_positions(self, positions: torch.Tensor) -> None:
        check_tensor("positions", positions)
        if positions.dtype not in _INT_DTYPES:
            raise TypeError(
                f"positions must be an integer tensor (int32 or int64), got {positions.dtype}"
            )
        if positions.ndim not in (1, 2):
            raise ValueError(
                f"positions must be [seq] or [batch, seq], got shape {tuple(positions.shape)}"
            )
        if positions.device != self.inv_freq.device:
            raise ValueError(
                f"positions must be on the module's device ({self.inv_freq.device}), got "
                f"{positions.device}; move one of them with .to()"
            )

    def extra_repr(self) -> str:
        parts = [f"{self.head_dim}", f"theta={self.theta:g}", f"style={self.style!r}"]
        if self.rotary_dim != self.head_dim:
            parts.append(f"rotary_dim={self.rotary_dim}")
        if self.scaling is not None:
            parts.append(f"scaling={self.scaling}")
        if self.max_positions is not None:
            parts.append(f"max_positions={self.max_positions}")
        return ", ".join(parts)
