"""The attention implementations PyTorch ships, as benchmark ops: what a user would pick instead.

- ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``: ``F.scaled_dot_product_attention`` pinned to
  one backend with ``torch.nn.attention.sdpa_kernel``; GQA through ``enable_gqa``; a sliding
  window as a dense bool ``attn_mask`` (SDPA has no window option, so such a peer computes the
  whole square and reads the mask); packed documents as nested (jagged) tensors.
- ``flex``: ``flex_attention`` compiled once with ``torch.compile`` (dynamo's recompile limits
  raised so that every shape of a run compiles instead of falling back to eager), with a
  ``create_block_mask`` for causal, window and document masks (built once per case, outside the
  timed region, as a model reuses it across layers), GQA through ``enable_gqa``.

Inputs arrive in attnkit's layout ``[b, s, h, d]`` (packed ``[total, h, d]``); peers that want
``[b, h, s, d]`` get transposed views, as a user with attnkit's layout would pass them. A peer
that cannot run a case raises ``Unsupported`` with the reason (or fails on its first call, and the
harness records torch's own explanation); nothing here crashes a run.

Example:
    >>> [op.name for op in PEERS]
    ['sdpa-flash', 'sdpa-cudnn', 'sdpa-efficient', 'flex']
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnkit.bench.cases import AttentionCase, visibility
from attnkit.bench.registry import Op, Settings, Unsupported

# High enough for every shape and mask of a full run to compile its own graph.
RECOMPILE_LIMIT = 1024


def _needs_cuda(settings: Settings, what: str) -> None:
    if settings.device.type != "cuda":
        raise Unsupported(f"{what} is timed on CUDA only, got device {settings.device}")


def _sdpa_op(name: str, backend: SDPBackend, label: str) -> Op:
    def build(case: AttentionCase, inputs: dict, settings: Settings) -> Callable[[], torch.Tensor]:
        _needs_cuda(settings, f"SDPA {backend.name}")
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        gqa = case.heads_q != case.heads_kv
        if case.packed:
            if case.window != (-1, -1):
                raise Unsupported("SDPA takes no window with nested (packed) inputs")
            return _sdpa_nested(backend, case, inputs, gqa)
        mask, causal = None, case.causal
        if case.window != (-1, -1):
            rows = torch.arange(case.seq, device=q.device)
            mask, causal = visibility(case, rows, q.device), False  # [s, s] bool

        def forward() -> torch.Tensor:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [b, h, s, d]
                    attn_mask=mask, is_causal=causal, enable_gqa=gqa)
            return out.transpose(1, 2)  # [b, s, hq, dv]

        forward.detail = "dense bool attn_mask for the window" if mask is not None else ""
        return forward

    return Op(name=name, build=build, label=label)


def _sdpa_nested(backend: SDPBackend, case: AttentionCase, inputs: dict,
                 gqa: bool) -> Callable[[], torch.Tensor]:
    """SDPA over a packed batch through nested jagged tensors ``[n, j, h, d]``."""
    offsets = inputs["cu_seqlens"].long()
    lengths = case.doc_lengths

    def nested(x: torch.Tensor) -> torch.Tensor:  # [total, h, d] -> [n, h, j, d]
        return torch.nested.nested_tensor_from_jagged(
            x, offsets=offsets, min_seqlen=min(lengths), max_seqlen=max(lengths)).transpose(1, 2)

    def forward() -> torch.Tensor:
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(
                nested(inputs["q"]), nested(inputs["k"]), nested(inputs["v"]),
                is_causal=case.causal, enable_gqa=gqa)
        return out.transpose(1, 2).values()  # [total, hq, dv]

    forward.detail = "nested jagged tensors"
    return forward


def raise_compile_limits(limit: int = RECOMPILE_LIMIT) -> None:
    """Let dynamo compile ``limit`` graphs per function (and 4x that in all) before giving up."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 4 * limit))


@functools.cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    raise_compile_limits()
    # The harness times backward alone with retain_graph=True, which compiled graphs with
    # donated buffers refuse; donation only saves memory, never time.
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    return torch.compile(flex_attention, dynamic=False)


def flex_mask_mod(case: AttentionCase, doc_ids: torch.Tensor | None) -> Callable | None:
    """The ``mask_mod`` of ``case`` (True = attend), or None when every pair is visible."""
    from torch.nn.attention.flex_attention import and_masks

    left, right = case.window
    mods = []
    if case.causal:
        mods.append(lambda b, h, qi, ki: qi >= ki)
    if left >= 0:
        mods.append(lambda b, h, qi, ki: qi - ki <= left)
    if right >= 0:
        mods.append(lambda b, h, qi, ki: ki - qi <= right)
    if doc_ids is not None:
        mods.append(lambda b, h, qi, ki: doc_ids[qi] == doc_ids[ki])
    if not mods:
        return None
    return mods[0] if len(mods) == 1 else and_masks(*mods)


def _block_mask(case: AttentionCase, inputs: dict, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    mod = flex_mask_mod(case, inputs.get("doc_ids"))
    if mod is None:
        return None
    opts = {}
    # Compiled mask creation avoids materialising an [s, s] mask; worth its compile time only
    # for long sequences.
    if "_compile" in inspect.signature(create_block_mask).parameters and case.seq > 16384:
        opts["_compile"] = True
    return create_block_mask(mod, B=None, H=None, Q_LEN=case.seq, KV_LEN=case.seq,
                             device=device, **opts)


def _flex_build(case: AttentionCase, inputs: dict, settings: Settings) -> Callable[[], torch.Tensor]:
    _needs_cuda(settings, "FlexAttention (compiled)")
    block_mask = _block_mask(case, inputs, settings.device)
    flex = _compiled_flex()
    gqa = case.heads_q != case.heads_kv
    batched = (lambda t: t[None]) if case.packed else (lambda t: t)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]

    def forward() -> torch.Tensor:
        out = flex(batched(q).transpose(1, 2), batched(k).transpose(1, 2),  # [b, h, s, d]
                   batched(v).transpose(1, 2), block_mask=block_mask, enable_gqa=gqa)
        out = out.transpose(1, 2)  # [b, s, hq, dv]
        return out[0] if case.packed else out

    forward.detail = "compiled, block mask" if block_mask is not None else "compiled"
    return forward


PEERS: list[Op] = [
    _sdpa_op("sdpa-flash", SDPBackend.FLASH_ATTENTION,
             "F.scaled_dot_product_attention, FLASH_ATTENTION backend (FlashAttention-2)"),
    _sdpa_op("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION,
             "F.scaled_dot_product_attention, CUDNN_ATTENTION backend"),
    _sdpa_op("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION,
             "F.scaled_dot_product_attention, EFFICIENT_ATTENTION backend (xFormers)"),
    Op(name="flex", build=_flex_build,
       label="torch.nn.attention.flex_attention compiled, create_block_mask"),
]
