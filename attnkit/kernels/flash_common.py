"""Pieces shared by attnkit's flash-attention kernels: masks, scores, tile ranges, launch args.

Visibility of key ``j`` to query ``i`` (``offset = seq_k - seq_q``, bottom-right)::

    causal:           j <= i + offset
    window (l, r):    i + offset - l <= j <= i + offset + r   (-1: unbounded)
    key padding:      kpm[b, j]         bool attn_mask: mask[b, h, i, j]

Scores are kept in base 2 (``log2(e)`` folded into the scale) so the softmax uses ``exp2``.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
import triton.testing

from attnkit.kernels import fast_launch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Largest BLOCK_M * BLOCK_N kept when a dense attn_mask tile shares shared memory with K and V.
MASKED_TILE_AREA = 64 * 64
# float32 inputs (tf32x3 products: 4-byte tiles plus their split copies) get small tiles of one
# stage whatever the table says: (query tile, key tile) by padded head-dim width. Compiled for
# sm90 by Triton 3.6 they need at most 80 KiB of shared memory (benchmarks/sm90_resources.py
# --dtype fp32; 64x128 dK/dV tiles of two stages asked for 289 KiB on the H200).
FP32_TILES = {64: (32, 64), 128: (32, 32), 256: (16, 16)}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints (``triton.cdiv`` is a constexpr function whose call
    costs several microseconds of host time; launchers call this one per launch)."""
    return -(-a // b)


def on_input_device(launcher):
    """Decorate a launcher so that it runs on its first argument's CUDA device.

    Triton launches on the current device. Without this, inputs on ``cuda:1`` with
    ``cuda:0`` current would be launched on ``cuda:0``. The check costs one
    ``current_device`` call. CPU tensors (the interpreter) pass straight through.

    Example:
        >>> @on_input_device
        ... def flash_fwd(q, k, v, **options): ...
    """

    @functools.wraps(launcher)
    def on_device(first, *args, **kwargs):
        if first.is_cuda and first.device.index != torch.cuda.current_device():
            with torch.cuda.device(first.device):
                return launcher(first, *args, **kwargs)
        return launcher(first, *args, **kwargs)

    return on_device


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``), in plain integer arithmetic:
    ``triton.next_power_of_2`` goes through Triton's function wrapper, which costs a few
    microseconds of host time per launch."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def head_block(dim: int) -> int:
    """The power-of-two tile width covering a head dim (at least 16, the dot's minimum)."""
    return max(16, next_power_of_2(dim))


def seq_bucket(seq: int) -> int:
    """Autotune key for sequence lengths: the next power of two, clamped to [1024, 65536].

    Passed as a plain (unused) kernel argument so tuning is keyed on it without compiling
    one binary per bucket (all values are multiples of 16, none is 1: one specialisation).
    """
    return min(65536, max(1024, next_power_of_2(seq)))


def _config(row: tuple[int, int, int, int]) -> triton.Config:
    """A ``triton.Config`` from a table row ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``."""
    block_m, block_n, warps, stages = row
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


def tile_configs(table: dict[int, tuple[tuple[int, int, int, int], ...]], width: int, *,
                 masked: bool = False, fp32: bool = False) -> list[triton.Config]:
    """Autotune configs ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for a head-dim width.

    ``table`` maps the widest padded head dim (64, 128, 256) to its candidates, best guess
    first; under the interpreter (or ``ATTNKIT_FLASH_TUNE=0``) only one config is tried.
    ``masked``: a dense ``attn_mask`` tile is pipelined through shared memory beside K and V, so
    only tiles of at most 64 x 64 with at most two stages are kept (the large tiles overflow
    the 227 KiB of an H100's shared memory).
    ``fp32``: float32 inputs get the one small config of ``FP32_TILES``.
    """
    if interpreting():
        return [_config((16, 16, 4, 1))]
    key = 64 if width <= 64 else (128 if width <= 128 else 256)
    if fp32:
        return [_config((*FP32_TILES[key], 4, 1))]
    rows = table[key]
    if masked:
        rows = tuple((bm, bn, w, min(st, 2)) for bm, bn, w, st in rows
                     if bm * bn <= MASKED_TILE_AREA) or ((64, 32, 4, 1),)
    configs = [_config(row) for row in rows]
    return configs[:1] if tuning_limited() else configs


def pruner(table: dict[int, tuple[tuple[int, int, int, int], ...]]):
    """An ``early_config_prune`` that swaps in ``table``'s configs for the launch's head dims,
    mask kind and input dtype."""

    def prune(configs, named_args, **kwargs):
        width = max(kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64)),
                    kwargs.get("BLOCK_DV", named_args.get("BLOCK_DV", 64)))
        masked = kwargs.get("MASK_KIND", named_args.get("MASK_KIND", 0)) != 0
        fp32 = getattr(named_args.get("q_ptr"), "dtype", None) == torch.float32
        return tile_configs(table, width, masked=masked, fp32=fp32)

    return prune


def all_configs(table: dict[int, tuple[tuple[int, int, int, int], ...]]) -> list[triton.Config]:
    """Every config of ``table`` (the autotuner's list before pruning)."""
    if interpreting():
        return tile_configs(table, 64)
    return [_config(row) for rows in table.values() for row in rows]


def autotune_bench(kernel_call, quantiles):
    """The autotuner's timing of one candidate: ``do_bench`` after 100 ms of warm-up.

    Each candidate is timed right after its compilation, which leaves the GPU idle for
    seconds: its clocks drop, and ``do_bench``'s default 25 ms of warm-up does not bring them
    back (an H200 run picked 1.5x slower tiles for the 1k causal forward that way).
    """
    return triton.testing.do_bench(kernel_call, warmup=100, rep=100, quantiles=quantiles)


_PICKS: dict[int, dict[tuple, triton.Config]] = {}  # id(kernel) -> key -> config
_KEY_SLOTS: dict[int, tuple[tuple[str, int], ...]] = {}


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for an autotuned kernel, with less host time.

    The first call with a given autotune key goes through Triton's autotuner (which tunes and
    picks a config); later calls launch the jitted function under it with that config directly.
    The autotuner's own bookkeeping costs about 35 microseconds of host time per launch on the
    H200 machine's CPU, enough to make a 0.22 ms forward host-bound in a benchmark that flushes
    the cache between calls (benchmarks/NOTES-flash.md, step 5). The key is the autotuner's:
    its ``key`` arguments and the dtype of every tensor argument. Clearing the autotuner's
    cache (``kernel.cache.clear()``) clears the picks at the next ``launch`` (a cache refilled
    in between by direct ``kernel[grid]`` calls is not noticed). The jitted function is then
    launched through ``fast_launch.run``, which skips Triton's argument binding as well.

    Example (inside a launcher; ``grid`` a callable of the config's meta-parameters):
        >>> launch(_flash_fwd_kernel, grid, q, k, v, ..., D=128, TMA=False, SEQ_BUCKET=1024)
    """
    picks, key = _picks_and_key(kernel, args, kwargs)
    config = picks.get(key)
    if config is None:
        kernel[grid](*args, **kwargs)
        if kernel.cache:  # a single-config autotuner keeps no cache: nothing to skip then
            picks[key] = kernel.best_config
        return
    kernel.best_config = config  # what the autotuner would report for this launch
    fast_launch.run(kernel.fn, grid, args, {**kwargs, **config.all_kwargs()})


def _picks_and_key(kernel, args, kwargs) -> tuple[dict, tuple]:
    """``launch``'s picks for ``kernel`` and the key of one call's arguments.

    The key's dtypes are read at the positions where the kernel's first call with as many
    positional arguments had tensors (the launchers pass a placeholder tensor for an absent
    one, never None), which saves scanning some 60 arguments on every launch (about 5 us of
    host time each, four times per backward); a non-tensor found there rescans.
    """
    picks = _PICKS.setdefault(id(kernel), {})
    if not kernel.cache:  # the autotuner was reset (tests do, to force a config): so are we
        picks.clear()
    slots = _KEY_SLOTS.get(id(kernel))
    if slots is None:  # where each key argument sits: by name, else by position
        slots = _KEY_SLOTS[id(kernel)] = tuple((name, kernel.arg_names.index(name))
                                               for name in kernel.keys)
    tensors = fast_launch.slots(kernel, args)[0]
    try:
        dtypes = [args[i].dtype for i in tensors]
    except AttributeError:  # a position that held a tensor holds something else now
        fast_launch.forget_slots(kernel, args)
        return _picks_and_key(kernel, args, kwargs)
    key = (*[kwargs[name] if name in kwargs else args[i] for name, i in slots], *dtypes)
    return picks, key


def tuned(kernel, *args, **kwargs) -> bool:
    """Whether ``launch(kernel, grid, *args, **kwargs)`` would skip the autotuner (a config
    is picked for this key already, or the kernel has a single config).

    Example:
        >>> tuned(_bwd_dq_kernel, q, k, ..., HQ=16, TMA=False)  # before any launch
        False
    """
    if len(kernel.configs) == 1:
        return True
    picks, key = _picks_and_key(kernel, args, kwargs)
    return key in picks


def tuning_limited() -> bool:
    """``ATTNKIT_FLASH_TUNE=0`` restricts each kernel to its first config (quick test runs)."""
    return os.environ.get("ATTNKIT_FLASH_TUNE", "1") == "0"


@triton.jit
def visible_scores(s, rows, cols, seqlen_q, seqlen_k, offset, b, h, kpm_ptr, stride_kpm_b,
                  mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn,
                  IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr,
                  EDGE: tl.constexpr, HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr):
    """Apply every mask to base-2 scores ``s``; ``rows``/``cols`` index the sequence.

    ``rows``/``cols`` are 2-D and broadcast to ``s``'s shape: ``[M, 1]``/``[1, N]`` for
    ``s [M, N]``, or ``[1, M]``/``[N, 1]`` for transposed scores ``s [N, M]``.

    ``MASK_KIND``: 0 none, 1 bool attn_mask, 2 additive attn_mask. Masked scores become -inf.
    """
    if EDGE:
        ok = cols < seqlen_k
        diag = rows + offset
        if IS_CAUSAL:
            ok = ok & (cols <= diag)
        if WIN_LEFT >= 0:
            ok = ok & (cols >= diag - WIN_LEFT)
        if WIN_RIGHT >= 0:
            ok = ok & (cols <= diag + WIN_RIGHT)
        s = tl.where(ok, s, float("-inf"))
    if HAS_KPM:
        keep = tl.load(kpm_ptr + b * stride_kpm_b + cols, mask=cols < seqlen_k, other=0)
        s = tl.where(keep != 0, s, float("-inf"))
    if MASK_KIND != 0:
        m_ptrs = (mask_ptr + b * stride_mb + h * stride_mh + rows * stride_mm
                  + cols * stride_mn)
        in_bounds = (rows < seqlen_q) & (cols < seqlen_k)
        if MASK_KIND == 1:
            allowed = tl.load(m_ptrs, mask=in_bounds, other=0)
            s = tl.where(allowed != 0, s, float("-inf"))
        else:
            extra = tl.load(m_ptrs, mask=in_bounds, other=0.0).to(tl.float32)
            # Keep huge finite masks finite in base 2 (an HF mask's finfo.min times log2(e)
            # would overflow to -inf): a row masked only by them stays a uniform softmax, as
            # in the reference; -inf stays -inf.
            extra = tl.where(extra == float("-inf"), extra, tl.maximum(extra, -1.0e38))
            s = s + extra * 1.4426950408889634
    return s


@triton.jit
def load_rows(base, idx, stride, limit, DIM: tl.constexpr, BLOCK: tl.constexpr,
              CHECK_ROWS: tl.constexpr):
    """Load ``[len(idx), BLOCK]`` from ``base + idx * stride + d``; zeros past ``limit``/``DIM``.

    Masks only what can be out of range: rows when ``CHECK_ROWS``, columns when the head dim
    is padded (``BLOCK > DIM``); full interior tiles load without masks.
    """
    offs = tl.arange(0, BLOCK)
    ptrs = base + idx[:, None] * stride + offs[None, :]
    if CHECK_ROWS:
        if BLOCK == DIM:
            return tl.load(ptrs, mask=idx[:, None] < limit, other=0.0)
        return tl.load(ptrs, mask=(idx[:, None] < limit) & (offs[None, :] < DIM), other=0.0)
    if BLOCK == DIM:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=offs[None, :] < DIM, other=0.0)


@triton.jit
def tile_source(base, rows, stride, DIM: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_C: tl.constexpr, TMA: tl.constexpr):
    """Where ``load_tile`` reads ``[BLOCK_R, BLOCK_C]`` tiles of a ``[rows, DIM]`` matrix.

    With ``TMA`` a device-side tensor descriptor (Hopper's tensor memory accelerator copies the
    tile to shared memory asynchronously, without per-thread address registers, and fills
    rows past ``rows`` and columns past ``DIM`` with zeros); else ``base`` itself.
    ``stride`` is the row stride in elements; the launcher checks TMA's alignment rules
    (``tma_aligned``).
    """
    if TMA:  # a compile-time branch: only one of the two kinds is ever built
        src = tl.make_tensor_descriptor(base, shape=[tl.maximum(rows, 1), DIM],
                                        strides=[stride, 1], block_shape=[BLOCK_R, BLOCK_C])
    else:
        src = base
    return src


@triton.jit
def load_tile(src, start, idx, stride, limit, DIM: tl.constexpr, BLOCK: tl.constexpr,
              CHECK_ROWS: tl.constexpr, TMA: tl.constexpr):
    """Rows ``idx = start + arange`` of ``tile_source``'s matrix: ``[len(idx), BLOCK]``, zeros
    past ``limit`` rows and ``DIM`` columns (``load_rows`` when not ``TMA``)."""
    if TMA:  # compile-time: the other branch is never built for this kind of ``src``
        tile = src.load([start, 0])
    else:
        tile = load_rows(src, idx, stride, limit, DIM, BLOCK, CHECK_ROWS)
    return tile


@triton.jit
def scores(a, b, qk_scale, softcap_scale, SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr):
    """Base-2 scores ``a @ b`` (``q [M, D] @ k^T [D, N]`` or ``k [N, D] @ q^T [D, M]``).

    Returns ``(s, t)``: scaled (and softcapped) base-2 scores before masks, and with
    ``SOFTCAP`` the tanh value ``t`` (its derivative ``1 - t^2`` serves the backward).
    """
    qk = tl.dot(a, b, input_precision=DOT_PREC)
    if SOFTCAP:
        # softcap * tanh(x / softcap), x = scale * qk; tanh through exp2 (exact at +-inf).
        x = qk * qk_scale  # qk_scale = scale / softcap * 2 * log2(e) here
        t = 1.0 - 2.0 / (tl.exp2(x) + 1.0)
        return t * softcap_scale, t  # softcap_scale = softcap * log2(e)
    return qk * qk_scale, qk


@triton.jit
def tile_key_range(start_m, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr):
    """Key tiles of a query tile ``[start_m, start_m + BLOCK_M)``.

    Returns ``(lo, mid_lo, mid_hi, hi)``: keys ``[lo, hi)`` are visible to some row (``lo`` a
    multiple of BLOCK_N), tiles inside ``[mid_lo, mid_hi)`` are visible to every row of the tile
    and need no element-wise masks.
    """
    offset = seqlen_k - seqlen_q
    last = tl.minimum(start_m + BLOCK_M, seqlen_q) - 1  # last valid row of the tile
    lo = 0
    hi = seqlen_k
    full_lo = 0
    full_hi = seqlen_k
    if IS_CAUSAL:
        hi = tl.minimum(hi, last + offset + 1)
        full_hi = tl.minimum(full_hi, start_m + offset + 1)
    if WIN_RIGHT >= 0:
        hi = tl.minimum(hi, last + offset + WIN_RIGHT + 1)
        full_hi = tl.minimum(full_hi, start_m + offset + WIN_RIGHT + 1)
    if WIN_LEFT >= 0:
        lo = tl.maximum(lo, start_m + offset - WIN_LEFT)
        full_lo = tl.maximum(full_lo, last + offset - WIN_LEFT)
    lo = tl.maximum(lo, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.maximum(hi, lo)
    mid_lo = tl.minimum(tl.maximum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(tl.minimum((full_hi // BLOCK_N) * BLOCK_N, hi), mid_lo)
    # Tiles in [mid_lo, mid_hi) start at a multiple of BLOCK_N and end at or before full_hi.
    mid_hi = mid_lo + ((mid_hi - mid_lo) // BLOCK_N) * BLOCK_N
    return lo, mid_lo, mid_hi, hi


# Kernels that read their tiles through TMA descriptors by default on sm90+ (ATTNKIT_FLASH_TMA),
# from the H200 runs of benchmarks/NOTES-flash.md step 4: the dK/dV kernel gains 4-12% at 4k+
# tokens in the two-launch path (d 64, GQA, MLA; the launcher applies the length rule); the
# forward and the dQ kernel gain nothing in the suite (the forward loses 2-11%, and 56% at 1k
# causal, where device-side descriptor set-up per short program dominates).
TMA_DEFAULT = frozenset({"dkdv"})
TMA_KERNELS = ("fwd", "dkdv", "dq")


def _tma_setting() -> str:
    """``ATTNKIT_FLASH_TMA`` as set (stripped, lower case), ``auto`` when unset."""
    return os.environ.get("ATTNKIT_FLASH_TMA", "auto").strip().lower()


def tma_explicit() -> bool:
    """Whether ``ATTNKIT_FLASH_TMA`` names the kernels itself (anything but ``auto``): the
    launchers' measured rules (lengths, the interpreter) then give way to it."""
    return _tma_setting() != "auto"


def tma_kernels() -> frozenset:
    """The kernels that may use TMA descriptors: ``ATTNKIT_FLASH_TMA`` is ``auto`` (the
    measured ``TMA_DEFAULT``), ``none``, ``all`` or a comma list of ``fwd,dkdv,dq``.

    Raises:
        ValueError: for any other value.
    """
    return _parse_tma(_tma_setting())


@functools.lru_cache(maxsize=16)
def _parse_tma(mode: str) -> frozenset:
    """``tma_kernels`` for one setting (cached: launchers read it on every call)."""
    if mode == "auto":
        return TMA_DEFAULT
    if mode in ("none", "0", ""):
        return frozenset()
    if mode in ("all", "1"):
        return frozenset(TMA_KERNELS)
    names = frozenset(n.strip() for n in mode.split(","))
    if not names <= set(TMA_KERNELS):
        raise ValueError(f"ATTNKIT_FLASH_TMA: expected auto, none, all or a comma list of "
                         f"{', '.join(TMA_KERNELS)}; got {mode!r}")
    return names


def tma_aligned(*tensors: torch.Tensor) -> bool:
    """Whether tiles of these tensors can be read through TMA descriptors.

    TMA needs 16-bit inputs here (float32 keeps the pointer loads of its small tiles), a
    16-byte aligned start and 16-byte multiples for every stride used to reach a row (batch,
    sequence and head strides of dims longer than one), with the last dim contiguous.
    """
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.stride(-1) != 1:
            return False
        if t.data_ptr() % 16:
            return False
        if any((st * t.element_size()) % 16 for st, n in zip(t.stride()[:-1], t.shape[:-1])
               if n > 1):
            return False
    return True


def use_tma(kernel: str, *tensors: torch.Tensor, mask_kind: int = 0) -> bool:
    """Whether ``kernel`` (``fwd``, ``dkdv`` or ``dq``) reads ``tensors`` through TMA: chosen
    by ``tma_kernels``, on a GPU of compute capability 9.0+ (or the interpreter, when asked
    for explicitly), with ``tma_aligned`` tensors and no dense ``attn_mask`` (``mask_kind``
    0: with one, descriptors gave wrong results on an H200 with Triton 3.6). Sets Triton's
    scratch allocator (device-side descriptors live in global scratch memory) when none is
    set."""
    if kernel not in tma_kernels() or mask_kind != 0 or not tma_aligned(*tensors):
        return False
    if interpreting():
        return tma_explicit()
    if not tensors[0].is_cuda or device_capability(tensors[0].device)[0] < 9:
        return False
    _ensure_allocator()
    return True


# Triton releases attnkit's Gluon kernels (``flash_fwd_gluon``, ``flash_bwd_gluon``) were
# measured and tested with: Gluon's API is experimental and changes between releases.
GLUON_TRITON = ("3.6.",)


def gluon_setting() -> str:
    """``ATTNKIT_FLASH_GLUON``: ``auto`` (default: the Gluon kernels where they measured
    faster), ``0`` (never) or ``1`` (wherever they apply, whatever the length; tests use it).

    Raises:
        ValueError: for any other value.
    """
    mode = os.environ.get("ATTNKIT_FLASH_GLUON", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"ATTNKIT_FLASH_GLUON: expected auto, 0 or 1, got {mode!r}")
    return mode


def gluon_fits(*tensors: torch.Tensor,
               head_dims: tuple[tuple[int, int], ...] = ((128, 128),)) -> bool:
    """Whether attnkit's Gluon kernels can take ``tensors`` (q, k, v first): q's and k's head
    dim and v's one of ``head_dims`` (pairs; the forward also takes MLA's ``(192, 128)``);
    one 16-bit dtype; ``tma_aligned``; CUDA outside the interpreter, on a compute capability
    9.x GPU (their wgmma and TMA are Hopper's), with a Triton of ``GLUON_TRITON``. The
    launchers add their own rules (which variants, which lengths)."""
    q, k, v = tensors[:3]
    if not (q.shape[-1] == k.shape[-1] and (q.shape[-1], v.shape[-1]) in head_dims
            and q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16)):
        return False
    return (q.is_cuda and not interpreting() and device_capability(q.device)[0] == 9
            and triton.__version__.startswith(GLUON_TRITON) and tma_aligned(*tensors))


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Triton's global scratch for device-side descriptors, from PyTorch's caching allocator."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def device_capability(device: torch.device) -> tuple[int, int]:
    """``torch.cuda.get_device_capability(device)``, cached per device (read on every launch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def sm_count(device: torch.device) -> int:
    """The streaming multiprocessors of a CUDA ``device``, cached per device (launchers read
    it per call); 132 (an H100's) for any other device, where only the interpreter runs."""
    if device.type != "cuda":
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sms(index)


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _ensure_allocator() -> None:
    """Install ``_scratch`` as Triton's allocator in this thread's context if none is set
    (the setting is a context variable: autograd's backward thread needs its own)."""
    from triton.runtime import _allocation
    current = _allocation._allocator.get()
    if isinstance(current, _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def dot_precision(dtype: torch.dtype) -> str:
    """Precision of ``tl.dot``: float32 inputs use ``tf32x3`` (each product split into three
    tf32 tensor-core products: about float32 accuracy, within the tolerance rule against
    PyTorch's float32 math, at 3x the matmul work of tf32; measured on an H200, plain tf32
    was 2.5x PyTorch's tf32 error on the output). fp16/bf16 products are exact either way."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def seed_words(seed: int, dropout_p: float, like: torch.Tensor) -> torch.Tensor:
    """The 64-bit dropout seed as two int64 words ``[low, high]`` on ``like``'s device.

    Without dropout the kernels never read it: ``like`` itself is returned, so no host-to-device
    copy (which would stall the host on the stream) happens per call.
    """
    if dropout_p <= 0:
        return like
    words = torch.tensor([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=torch.int64)
    return words.to(like.device, non_blocking=True)


def mask_args(attn_mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor):
    """(tensor, kind, strides) of a 4-D ``attn_mask`` broadcast to ``[b, hq, sq, sk]``.

    Broadcast dims get stride 0, so the kernel reads the mask tile by tile in place.
    """
    if attn_mask is None:
        return q, 0, (0, 0, 0, 0)
    target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    view = attn_mask.expand(target)
    if view.dtype == torch.bool:
        view = view.view(torch.uint8)  # same item size: a view whatever the strides
        kind = 1
    else:
        kind = 2
    strides = tuple(0 if attn_mask.shape[i] == 1 else view.stride(i) for i in range(4))
    return view, kind, strides

