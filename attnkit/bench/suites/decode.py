"""Decode suites: ``decode`` (``attnkit.decode_attention``) and ``mla-decode``, in TB/s.

Decode is bound by memory: a step reads the whole KV cache once. The rate printed is the K+V
bytes of the valid cache entries divided by the time (``work(...).bytes``), as PEERS.md measures
its peers. Shapes (bf16):

- ``decode``: batch 64, 32 query heads over 8 KV heads, d 128, one new token, context 2k / 8k /
  32k on a paged cache (block 64, pages shuffled through the pool); at 8k also block sizes 16 and
  256, a contiguous cache, 4 speculative tokens, and ragged lengths (uniform 1..16k, seed 0).
- ``mla-decode``: the absorbed MLA decode: 128 heads, latent 512 + rope 64, batch 64, one new
  token, context 4k / 8k / 16k / 32k.

attnkit's op is timed as a model runs it: validation once per step (``validate`` here, outside
the timed region: all layers of a step share the lengths and block table), then the kernel
launch per layer (``attnkit.kernels.decode.decode_fwd``). Peers read the same keys from a
contiguous ``[b, h, s, d]`` cache (SDPA has no paged input): SDPA flash and cuDNN with
``enable_gqa``, and compiled FlexAttention; they run uniform lengths only (ragged cases raise
``Unsupported``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from attnkit.bench.registry import Check, Op, Settings, Suite, Unsupported, Work, register

FLOOR = {torch.bfloat16: 1e-2, torch.float16: 1e-3, torch.float32: 1e-5}


@dataclass(frozen=True)
class DecodeCase:
    """One decode shape: ``batch`` sequences of ``context`` cached tokens (ragged: lengths drawn
    uniformly from 1..context), ``new`` query tokens each; ``block_size`` None = contiguous.
    ``latent`` > 0 makes it an MLA case (``heads_kv`` 1, K = latent + rope, V = latent)."""

    name: str
    batch: int
    context: int
    heads_q: int
    heads_kv: int
    head_dim: int
    new: int = 1
    block_size: int | None = 64
    ragged: bool = False
    latent: int = 0
    rope: int = 0
    dtype: str = "bfloat16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def describe(self) -> dict:
        """The case as plain JSON values."""
        return asdict(self)


def _lengths(case: DecodeCase, seed: int) -> list[int]:
    if not case.ragged:
        return [case.context] * case.batch
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, case.context + 1, (case.batch,), generator=gen).tolist()


def make_inputs(case: DecodeCase, device: torch.device, seed: int) -> dict:
    """Random q and cache (never zeros); a paged pool in shuffled page order when paged."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dt = case.torch_dtype
    lengths = _lengths(case, seed)
    b, hk = case.batch, case.heads_kv
    d = case.latent + case.rope if case.latent else case.head_dim
    q = torch.randn(b, case.new, case.heads_q, d, device=device, dtype=dt, generator=gen)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    if case.block_size is None:
        k = torch.randn(b, case.context, hk, d, device=device, dtype=dt, generator=gen)
        v = None if case.latent else torch.randn_like(k)
        table = None
    else:
        bs = case.block_size
        width = -(-case.context // bs)
        k = torch.randn(b * width, bs, hk, d, device=device, dtype=dt, generator=gen)
        v = None if case.latent else torch.randn_like(k)
        order = torch.randperm(b * width, device=device, generator=gen)
        table = order.view(b, width).to(torch.int32)
    if case.latent:
        v = k[..., :case.latent]  # values are the latent itself: a view, no copy
    return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens, block_table=table,
                lengths=lengths)


def _contiguous(cache: torch.Tensor, table: torch.Tensor | None, batch: int) -> torch.Tensor:
    """``[b, s, h, d]`` view of the cache, gathering pages when paged (for peers and checks)."""
    if table is None:
        return cache
    return cache[table.long()].flatten(1, 2)  # [b, pages * bs, h, d]


def _attnkit_build(case: DecodeCase, inputs: dict, settings: Settings
                   ) -> Callable[[], torch.Tensor]:
    from attnkit.ops import decode as decode_op
    call = decode_op.validate(inputs["q"], inputs["k_cache"], inputs["v_cache"],
                              cache_seqlens=inputs["cache_seqlens"],
                              block_table=inputs["block_table"], causal=True, window=(-1, -1),
                              softcap=0.0, scale=None, return_lse=False,
                              backend=settings.backend)
    backend = decode_op.select_backend(call, settings.backend)
    if case.latent:
        from attnkit.ops import mla_decode as mla_op
        q, k, r = inputs["q"], inputs["k_cache"][:, :, 0], case.latent  # k: [.., .., r + p]
        mla_call = mla_op.validate(q[..., :r], q[..., r:], k[..., :r], k[..., r:],
                                   cache_seqlens=inputs["cache_seqlens"],
                                   block_table=inputs["block_table"], causal=True,
                                   scale=q.shape[-1] ** -0.5, backend=settings.backend,
                                   return_lse=False)
        mla_backend = mla_op.BACKENDS["triton" if q.is_cuda else "reference"]

        def forward() -> torch.Tensor:
            return mla_backend.run(mla_call)[0]
        forward.detail = f"MLA backend {mla_backend.name}; validated once per step"
        return forward
    else:
        def forward() -> torch.Tensor:
            return backend.run(call)[0]
    forward.detail = f"backend {backend.name}; validated once per step, outside the timing"
    return forward


ATTNKIT = Op(name="attnkit", build=_attnkit_build, subject=True,
             label="attnkit.decode_attention kernel (paged when the case is)")


def _uniform(case: DecodeCase, what: str) -> None:
    if case.ragged:
        raise Unsupported(f"{what} takes one length per batch here (ragged lengths would need "
                          "a mask per sequence)")


def _peer_tensors(case: DecodeCase, inputs: dict):
    k = _contiguous(inputs["k_cache"], inputs["block_table"], case.batch)
    v = _contiguous(inputs["v_cache"], inputs["block_table"], case.batch)
    # Peers get their own contiguous copy in [b, h, s, d], as they would keep it.
    return (inputs["q"].transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
            v.transpose(1, 2).contiguous())


def _sdpa(name: str, backend_name: str) -> Op:
    def build(case: DecodeCase, inputs: dict, settings: Settings) -> Callable[[], torch.Tensor]:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if settings.device.type != "cuda":
            raise Unsupported(f"SDPA {backend_name} is timed on CUDA only")
        _uniform(case, "SDPA")
        if case.latent:
            raise Unsupported(f"SDPA {backend_name} takes head dims <= 256 (MLA's absorbed "
                              f"decode reads {case.latent + case.rope}-dim keys)")
        if case.new != 1:
            raise Unsupported("SDPA's is_causal aligns top-left; n > 1 would need a mask")
        backend = getattr(SDPBackend, backend_name)
        q, k, v = _peer_tensors(case, inputs)
        gqa = case.heads_q != case.heads_kv
        scale = q.shape[-1] ** -0.5

        def forward() -> torch.Tensor:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, scale=scale)
            return out.transpose(1, 2)  # [b, n, hq, dv]
        return forward
    return Op(name=name, build=build, label=f"F.scaled_dot_product_attention ({backend_name})")


def _flex_build(case: DecodeCase, inputs: dict, settings: Settings) -> Callable[[], torch.Tensor]:
    if settings.device.type != "cuda":
        raise Unsupported("FlexAttention is timed on CUDA only")
    _uniform(case, "FlexAttention")
    if case.latent:
        raise Unsupported("flex_attention's kernel runs out of shared memory for 576-dim keys "
                          "and 512-dim values on an H100 (seen in a run on 2026-11-22)")
    if case.new != 1:
        raise Unsupported("the flex peer runs one new token")
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.config.cache_size_limit = 1024
    compiled = torch.compile(flex_attention, dynamic=False)
    q, k, v = _peer_tensors(case, inputs)
    gqa = case.heads_q != case.heads_kv

    def forward() -> torch.Tensor:
        return compiled(q, k, v, enable_gqa=gqa).transpose(1, 2)
    return forward


PEERS = [_sdpa("sdpa-flash", "FLASH_ATTENTION"), _sdpa("sdpa-cudnn", "CUDNN_ATTENTION"),
         Op(name="flex", build=_flex_build, label="compiled flex_attention, enable_gqa")]


def check(case: DecodeCase, inputs: dict, run: Callable[[], torch.Tensor],
          settings: Settings) -> Check:
    """attnkit against the reference decode in fp32 (truth) and in the case's dtype (baseline),
    on the first, last and up to 6 other sequences."""
    from attnkit.reference.decode import decode_attention as reference
    out = run()  # [b, n, hq, dv]
    b = case.batch
    picks = sorted({0, b - 1, *torch.randperm(b, generator=torch.Generator().manual_seed(0))
                    [:6].tolist()})
    sel = torch.tensor(picks, device=out.device)
    q = inputs["q"][sel]
    table = None if inputs["block_table"] is None else inputs["block_table"][sel]
    kc, vc = inputs["k_cache"], inputs["v_cache"]
    if table is None:
        kc, vc = kc[sel], vc[sel]
    lens = inputs["cache_seqlens"][sel]
    scale = q.shape[-1] ** -0.5
    # fp32 q makes the reference return fp32 (it upcasts the cache itself).
    truth, _ = reference(q.float(), kc, vc, cache_seqlens=lens, block_table=table, scale=scale)
    base = _same_dtype_math(q, kc, vc, lens, table, scale)
    got = out[sel]
    err = float((got.double() - truth.double()).abs().max())
    bound = 2 * float((base.double() - truth.double()).abs().max()) + FLOOR[case.torch_dtype]
    return Check(ok=err <= bound, errors={"out": (err, bound)},
                 detail=f"{len(picks)} of {b} sequences vs reference fp32")


def _same_dtype_math(q, kc, vc, lens, table, scale) -> torch.Tensor:
    """PyTorch's own same-dtype attention (SDPA math) per sequence: the rule's baseline."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnkit.reference.decode import gather_keys
    outs = []
    for i, length in enumerate(lens.tolist()):
        k = gather_keys(kc, i, length, table).transpose(0, 1)[None]  # [1, hk, L, d]
        v = gather_keys(vc, i, length, table).transpose(0, 1)[None]
        with sdpa_kernel([SDPBackend.MATH]):
            o = F.scaled_dot_product_attention(q[i:i + 1].transpose(1, 2), k, v, scale=scale,
                                               enable_gqa=True)
        outs.append(o.transpose(1, 2))
    return torch.cat(outs)


def work(case: DecodeCase, direction: str) -> Work:
    """K+V bytes of the valid cache (the latent once for MLA) and the FLOPs of one step."""
    lengths = _lengths(case, 0)
    item = torch.empty((), dtype=case.torch_dtype).element_size()
    keys = sum(lengths)
    if case.latent:
        width = case.latent + case.rope
        return Work(flops=2.0 * keys * case.new * case.heads_q * (width + case.latent),
                    bytes=float(keys * width * item))
    return Work(flops=4.0 * keys * case.new * case.heads_q * case.head_dim,
                bytes=float(2 * keys * case.heads_kv * case.head_dim * item))


def decode_cases(quick: bool = False) -> list[DecodeCase]:
    """Every decode shape; ``quick`` keeps the three paged contexts."""
    base = dict(batch=64, heads_q=32, heads_kv=8, head_dim=128)
    paged = [DecodeCase(name=f"paged64 ctx{c // 1024}k gqa32:8", context=c, **base)
             for c in (2048, 8192, 32768)]
    if quick:
        return paged
    extra = [DecodeCase(name=f"paged{bs} ctx8k gqa32:8", context=8192, block_size=bs, **base)
             for bs in (16, 256)]
    extra += [DecodeCase(name="contiguous ctx8k gqa32:8", context=8192, block_size=None, **base),
              DecodeCase(name="paged64 ctx8k spec4", context=8192, new=4, **base),
              DecodeCase(name="paged64 ragged<=16k", context=16384, ragged=True, **base)]
    return paged + extra


def mla_cases(quick: bool = False) -> list[DecodeCase]:
    """MLA absorbed decode: 128 heads over the shared latent 512 + rope 64."""
    contexts = (4096, 32768) if quick else (4096, 8192, 16384, 32768)
    return [DecodeCase(name=f"mla ctx{c // 1024}k", batch=64, context=c, heads_q=128,
                       heads_kv=1, head_dim=576, latent=512, rope=64, block_size=64)
            for c in contexts]


NOTES = ("rate = K+V bytes of valid cache entries / median time (MLA: latent + rope once)",
         "peers read a contiguous copy of the same cache; attnkit reads the paged pool",
         "attnkit validated once per step outside the timed region (shared by all layers)")

SUITE = register(Suite(
    name="decode", description="bf16 decode, batch 64, GQA 32:8, d128: paged 2k/8k/32k, block "
    "sizes, contiguous, speculative, ragged", cases=decode_cases, ops=[ATTNKIT, *PEERS],
    make_inputs=make_inputs, check=check, work=work, directions=("fwd",), measure="time",
    unit="TB/s", notes=NOTES))

MLA_SUITE = register(Suite(
    name="mla-decode", description="bf16 MLA absorbed decode: 128 heads, latent 512 + rope 64, "
    "batch 64, ctx 4k-32k", cases=mla_cases, ops=[ATTNKIT, *PEERS], make_inputs=make_inputs,
    check=check, work=work, directions=("fwd",), measure="time", unit="TB/s", notes=NOTES))
