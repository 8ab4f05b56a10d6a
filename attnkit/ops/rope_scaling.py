"""RoPE frequency scaling: the configs (linear, dynamic NTK, YaRN, Llama 3) and their frequencies.

Rotary embeddings rotate the pair ``i`` of a head by the angle ``position * inv_freq[i]`` with
``inv_freq[i] = theta ** (-2i / rotary_dim)``. A scaling changes those frequencies (and, for YaRN,
the magnitude of cos/sin) so that a model trained on a short context reads a longer one:

- :class:`LinearScaling`: position interpolation, every frequency divided by ``factor``.
- :class:`DynamicNTKScaling`: the base grows with the current length beyond the trained one.
- :class:`YarnScaling`: per-frequency blend of interpolation and extrapolation, plus an
  attention-scale factor applied to cos/sin.
- :class:`Llama3Scaling`: low frequencies divided by ``factor``, high ones kept, a smooth ramp
  between them.

:func:`rope_inv_freq` turns ``(rotary_dim, theta, scaling)`` into the frequencies;
:func:`scaling_from_hf` reads a Hugging Face ``rope_scaling`` / ``rope_parameters`` dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from attnkit.ops._checks import check_int, check_number

__all__ = [
    "DynamicNTKScaling",
    "Llama3Scaling",
    "LinearScaling",
    "RopeScaling",
    "YarnScaling",
    "rope_inv_freq",
    "scaling_from_hf",
]


def _positive(name: str, value: object) -> float:
    """A real number > 0 (TypeError for non-numbers, ValueError otherwise)."""
    value = check_number(name, value)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _at_least_one(name: str, value: object) -> float:
    value = check_number(name, value)
    if not value >= 1 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 1, got {value}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    """Store a normalised field on a frozen dataclass."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class LinearScaling:
    """Linear position interpolation: positions divided by ``factor`` (``inv_freq / factor``).

    The seeds' ``ScaleRope(factor)`` and Hugging Face ``rope_type="linear"``.

    Args:
        factor: how much longer the new context is; every frequency is divided by it. > 0.

    Raises:
        TypeError: ``factor`` is not a number.
        ValueError: ``factor`` is not > 0.

    >>> LinearScaling(factor=4.0)
    LinearScaling(factor=4.0)
    """

    factor: float

    def __post_init__(self) -> None:
        _set(self, "factor", _positive("LinearScaling.factor", self.factor))


@dataclass(frozen=True)
class DynamicNTKScaling:
    """Dynamic NTK-aware scaling (Hugging Face ``rope_type="dynamic"``).

    While the sequence fits in ``original_max_positions`` the frequencies are the unscaled ones.
    For a length ``L > original_max_positions`` the base becomes
    ``theta * (factor * L / original_max_positions - (factor - 1)) ** (d / (d - 2))`` with
    ``d = rotary_dim``, so the frequencies depend on the current length: pass ``seq_len`` to
    :func:`rope_inv_freq` (``RotaryEmbedding`` and ``rope`` do so from the positions they see).

    Args:
        factor: the scaling factor, >= 1.
        original_max_positions: the context length the model was trained on, >= 1.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range.

    >>> DynamicNTKScaling(factor=2.0, original_max_positions=4096).factor
    2.0
    """

    factor: float
    original_max_positions: int

    def __post_init__(self) -> None:
        _set(self, "factor", _at_least_one("DynamicNTKScaling.factor", self.factor))
        check_int("DynamicNTKScaling.original_max_positions", self.original_max_positions,
                  minimum=1)


@dataclass(frozen=True)
class YarnScaling:
    """YaRN scaling (Peng et al. 2023; Hugging Face ``rope_type="yarn"``).

    Frequency ``i`` (wavelength ``2*pi / inv_freq[i]``) is interpolated (divided by ``factor``)
    when it turns fewer than ``beta_slow`` times over ``original_max_positions``, kept when it turns
    more than ``beta_fast`` times, and blended linearly in between (the ramp runs over the
    frequency indices given by the inverse-dimension formula, floored/ceiled when ``truncate``).

    The attention factor multiplies cos and sin (so it scales q.k by its square). Unless
    ``attention_factor`` is given it is ``m(factor, mscale) / m(factor, mscale_all_dim)`` with
    ``m(s, a) = 0.1 * a * ln(s) + 1`` for ``s > 1`` (and 1 otherwise). With the defaults
    (``mscale=1``, ``mscale_all_dim=0``) this is the paper's ``0.1 * ln(factor) + 1``; DeepSeek-V2/V3
    set both ``mscale`` and ``mscale_all_dim`` (the ratio variant).

    Args:
        factor: context extension factor, >= 1.
        original_max_positions: the trained context length, >= 1.
        beta_fast: rotations above which a frequency is kept, > beta_slow.
        beta_slow: rotations below which a frequency is fully interpolated, > 0.
        mscale: numerator coefficient of the attention factor, >= 0.
        mscale_all_dim: denominator coefficient of the attention factor, >= 0.
        attention_factor: explicit attention factor (> 0); overrides the mscale formula.
        truncate: floor/ceil the ramp's bounds to whole dimensions (Hugging Face default True).

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range, or ``beta_fast <= beta_slow``.

    >>> round(YarnScaling(factor=4.0, original_max_positions=4096).resolved_attention_factor(), 4)
    1.1386
    """

    factor: float
    original_max_positions: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        _set(self, "factor", _at_least_one("YarnScaling.factor", self.factor))
        check_int("YarnScaling.original_max_positions", self.original_max_positions, minimum=1)
        _set(self, "beta_fast", _positive("YarnScaling.beta_fast", self.beta_fast))
        _set(self, "beta_slow", _positive("YarnScaling.beta_slow", self.beta_slow))
        if self.beta_fast <= self.beta_slow:
            raise ValueError(
                f"YarnScaling.beta_fast ({self.beta_fast}) must be > beta_slow ({self.beta_slow})"
            )
        _set(self, "mscale", check_number("YarnScaling.mscale", self.mscale, minimum=0.0))
        _set(self, "mscale_all_dim",
             check_number("YarnScaling.mscale_all_dim", self.mscale_all_dim, minimum=0.0))
        if self.attention_factor is not None:
            _set(self, "attention_factor",
                 _positive("YarnScaling.attention_factor", self.attention_factor))
        if not isinstance(self.truncate, bool):
            raise TypeError(
                f"YarnScaling.truncate must be a bool, got {type(self.truncate).__name__}"
            )

    def resolved_attention_factor(self) -> float:
        """The factor cos and sin are multiplied by (see the class docstring)."""
        if self.attention_factor is not None:
            return self.attention_factor

        def m(scale: float, coeff: float) -> float:
            return 1.0 if scale <= 1 else 0.1 * coeff * math.log(scale) + 1.0

        return m(self.factor, self.mscale) / m(self.factor, self.mscale_all_dim)


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1 scaling (Hugging Face ``rope_type="llama3"``).

    With wavelength ``w = 2*pi / inv_freq``, ``L = original_max_positions``: frequencies with
    ``w < L / high_freq_factor`` are kept, those with ``w > L / low_freq_factor`` are divided by
    ``factor``, and those between are blended with ``t = (L / w - low_freq_factor) /
    (high_freq_factor - low_freq_factor)``: ``(1 - t) * inv_freq / factor + t * inv_freq``.

    Args:
        factor: scaling factor for the low frequencies, >= 1.
        low_freq_factor: > 0.
        high_freq_factor: > low_freq_factor.
        original_max_positions: the trained context length, >= 1.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range, or ``high_freq_factor <= low_freq_factor``.

    >>> Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    ...               original_max_positions=8192).factor
    8.0
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int

    def __post_init__(self) -> None:
        _set(self, "factor", _at_least_one("Llama3Scaling.factor", self.factor))
        _set(self, "low_freq_factor",
             _positive("Llama3Scaling.low_freq_factor", self.low_freq_factor))
        _set(self, "high_freq_factor",
             _positive("Llama3Scaling.high_freq_factor", self.high_freq_factor))
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"Llama3Scaling.high_freq_factor ({self.high_freq_factor}) must be > "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        check_int("Llama3Scaling.original_max_positions", self.original_max_positions, minimum=1)


RopeScaling = LinearScaling | DynamicNTKScaling | YarnScaling | Llama3Scaling
_SCALINGS = (LinearScaling, DynamicNTKScaling, YarnScaling, Llama3Scaling)


def check_scaling(name: str, scaling: object) -> None:
    """Raise TypeError unless ``scaling`` is None or one of the scaling configs."""
    if scaling is not None and not isinstance(scaling, _SCALINGS):
        raise TypeError(
            f"{name} must be None, LinearScaling, DynamicNTKScaling, YarnScaling or "
            f"Llama3Scaling, got {type(scaling).__name__}"
        )


def check_theta(theta: object) -> float:
    """Raise unless ``theta`` is a finite number > 1."""
    value = check_number("theta", theta)
    if not value > 1 or math.isinf(value):
        raise ValueError(f"theta must be a finite number > 1, got {value}")
    return value


def check_rotary_dim(name: str, value: object) -> int:
    """Raise unless ``value`` is an even int >= 2."""
    value = check_int(name, value, minimum=2)
    if value % 2:
        raise ValueError(f"{name} must be even, got {value}")
    return value


def rope_inv_freq(
    rotary_dim: int,
    *,
    theta: float,
    scaling: RopeScaling | None = None,
    seq_len: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of RoPE and the factor cos/sin are multiplied by.

    Computed in float64 and rounded once to float32.

    Args:
        rotary_dim: number of rotated dims (even); one frequency per pair.
        theta: the RoPE base (10000 for Llama 2, 500000 for Llama 3), > 1.
        scaling: a scaling config, or None for plain RoPE.
        seq_len: the current sequence length; only :class:`DynamicNTKScaling` reads it (None or a
            length within ``original_max_positions`` gives the unscaled frequencies).
        device: where to put the result (default: the current default device).

    Returns:
        ``(inv_freq, attention_factor)``: float32 ``[rotary_dim // 2]`` and a Python float (1.0
        except for YaRN).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``rotary_dim`` odd or < 2 (< 4 for dynamic NTK), ``theta <= 1``, ``seq_len < 1``.

    >>> inv_freq, attention_factor = rope_inv_freq(8, theta=10000.0)
    >>> inv_freq.shape, attention_factor
    (torch.Size([4]), 1.0)
    """
    dim = check_rotary_dim("rotary_dim", rotary_dim)
    base = check_theta(theta)
    check_scaling("scaling", scaling)
    if seq_len is not None:
        check_int("seq_len", seq_len, minimum=1)

    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim  # [r/2]
    attention_factor = 1.0

    if isinstance(scaling, DynamicNTKScaling):
        if dim < 4:
            raise ValueError(f"rotary_dim must be >= 4 for DynamicNTKScaling, got {dim}")
        orig = scaling.original_max_positions
        length = orig if seq_len is None else max(seq_len, orig)
        base = base * (scaling.factor * length / orig - (scaling.factor - 1)) ** (dim / (dim - 2))

    inv_freq = base ** -exponents  # [r/2]

    if isinstance(scaling, LinearScaling):
        inv_freq = inv_freq / scaling.factor
    elif isinstance(scaling, YarnScaling):
        inv_freq = _yarn(inv_freq, dim, base, scaling)
        attention_factor = scaling.resolved_attention_factor()
    elif isinstance(scaling, Llama3Scaling):
        inv_freq = _llama3(inv_freq, scaling)

    if device is None:
        device = torch.empty(()).device  # follows `with torch.device(...)` contexts
    return inv_freq.to(device=device, dtype=torch.float32), float(attention_factor)


def _yarn(inv_freq: torch.Tensor, dim: int, base: float, cfg: YarnScaling) -> torch.Tensor:
    """YaRN blend of extrapolated (unscaled) and interpolated (``/ factor``) frequencies."""

    def dim_of(rotations: float) -> float:
        # the (fractional) dimension whose frequency turns `rotations` times over the context
        wavelength_budget = cfg.original_max_positions / (2 * math.pi * rotations)
        return dim * math.log(wavelength_budget) / (2 * math.log(base))

    low, high = dim_of(cfg.beta_fast), dim_of(cfg.beta_slow)
    if cfg.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1: extrapolate (keep), 0: interpolate
    return inv_freq / cfg.factor * (1.0 - keep) + inv_freq * keep


def _llama3(inv_freq: torch.Tensor, cfg: Llama3Scaling) -> torch.Tensor:
    """Llama 3.1: divide low frequencies by ``factor``, keep high ones, ramp between."""
    wavelength = 2 * math.pi / inv_freq  # [r/2]
    ctx = cfg.original_max_positions
    t = (ctx / wavelength - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
    blended = (1 - t) * inv_freq / cfg.factor + t * inv_freq
    out = torch.where(wavelength > ctx / cfg.low_freq_factor, inv_freq / cfg.factor, blended)
    return torch.where(wavelength < ctx / cfg.high_freq_factor, inv_freq, out)


_HF_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def scaling_from_hf(
    rope_scaling: Mapping[str, Any] | None,
    *,
    max_position_embeddings: int | None = None,
) -> RopeScaling | None:
    """Map a Hugging Face ``rope_scaling`` (or ``rope_parameters``) dict to a scaling config.

    The type is read from ``"rope_type"`` (or the older ``"type"``). Values follow Hugging Face's
    own reading of the config, so the frequencies match ``ROPE_INIT_FUNCTIONS``:

    - ``dynamic``: the original length is ``max_position_embeddings`` (the config's), else the
      dict's ``original_max_position_embeddings``.
    - ``yarn``: the original length is the dict's ``original_max_position_embeddings``, else
      ``max_position_embeddings``. The dict's ``factor`` is used as given (recent Hugging Face
      versions replace it by ``max_position_embeddings / original_max_position_embeddings``,
      which is the same number for DeepSeek-V3). ``mscale``/``mscale_all_dim`` are used only
      when both are non-zero, else the attention factor is ``0.1 * ln(factor) + 1``.
    - ``llama3``: every key is required.

    Args:
        rope_scaling: the dict, or None (plain RoPE). Other keys (``rope_theta``,
            ``partial_rotary_factor``, ...) are ignored.
        max_position_embeddings: the config's ``max_position_embeddings``, needed by
            ``dynamic`` and by ``yarn`` without ``original_max_position_embeddings``.

    Returns:
        A scaling config, or None for ``default``/None.

    Raises:
        TypeError: ``rope_scaling`` is not a mapping.
        ValueError: unknown type, or a required key is missing.

    >>> scaling_from_hf({"rope_type": "linear", "factor": 2.0})
    LinearScaling(factor=2.0)
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, Mapping):
        raise TypeError(f"rope_scaling must be a dict or None, got {type(rope_scaling).__name__}")
    if max_position_embeddings is not None:
        check_int("max_position_embeddings", max_position_embeddings, minimum=1)
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind not in _HF_TYPES:
        listed = ", ".join(repr(t) for t in _HF_TYPES)
        raise ValueError(
            f"rope_scaling type must be one of {listed}, got {kind!r} (not supported by attnkit)"
        )
    if kind == "default":
        return None

    def need(key: str) -> Any:
        if rope_scaling.get(key) is None:
            raise ValueError(f"rope_scaling of type {kind!r} needs the key {key!r}, got keys "
                             f"{sorted(rope_scaling)}")
        return rope_scaling[key]

    def original(prefer_config: bool) -> int:
        from_dict = rope_scaling.get("original_max_position_embeddings")
        first, second = ((max_position_embeddings, from_dict) if prefer_config
                         else (from_dict, max_position_embeddings))
        value = first if first is not None else second
        if value is None:
            raise ValueError(
                f"rope_scaling of type {kind!r} needs 'original_max_position_embeddings' in the "
                f"dict or max_position_embeddings=, got neither"
            )
        return value

    if kind == "linear":
        return LinearScaling(factor=need("factor"))
    if kind == "dynamic":
        return DynamicNTKScaling(factor=need("factor"), original_max_positions=original(True))
    if kind == "llama3":
        return Llama3Scaling(
            factor=need("factor"),
            low_freq_factor=need("low_freq_factor"),
            high_freq_factor=need("high_freq_factor"),
            original_max_positions=need("original_max_position_embeddings"),
        )
    # yarn
    mscale = rope_scaling.get("mscale")
    mscale_all_dim = rope_scaling.get("mscale_all_dim")
    if not (mscale and mscale_all_dim):
        mscale, mscale_all_dim = 1.0, 0.0
    return YarnScaling(
        factor=need("factor"),
        original_max_positions=original(False),
        beta_fast=rope_scaling.get("beta_fast") or 32.0,
        beta_slow=rope_scaling.get("beta_slow") or 1.0,
        mscale=mscale,
        mscale_all_dim=mscale_all_dim,
        attention_factor=rope_scaling.get("attention_factor"),
        truncate=rope_scaling.get("truncate", True),
    )
