"""Sweep the MLA decode kernel's launch options on a GPU: each checked against the reference,
then timed (K+V bytes = latent + rope once). ``PYTHONPATH=. python benchmarks/mla_sweep.py``."""

from __future__ import annotations

import torch
import triton.testing

from attnkit.kernels import mla_decode as mk
from attnkit.ops import mla_decode as mop
from attnkit.reference.mla_decode import mla_decode_attention as reference

CONFIGS = [  # BLOCK_M, BLOCK_N, warps, stages, VSPLIT, QC
    (64, 64, 8, 1, 1, 512), (64, 32, 8, 2, 1, 128), (64, 64, 8, 1, 1, 128),
    (64, 32, 8, 2, 2, 128), (64, 64, 8, 2, 2, 64), (64, 64, 4, 2, 4, 64),
    (64, 32, 8, 2, 1, 64), (64, 32, 16, 2, 1, 128), (64, 32, 16, 2, 2, 128),
    (64, 16, 8, 2, 1, 128), (128, 32, 16, 2, 2, 128), (128, 32, 8, 2, 4, 128),
]


def main() -> None:
    dev, dt = torch.device("cuda"), torch.bfloat16
    b, h, r, p, ctx = 64, 128, 512, 64, 8192
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(b, 1, h, r + p, device=dev, dtype=dt, generator=g)
    pool = torch.randn(b * ctx // 64, 64, r + p, device=dev, dtype=dt, generator=g)
    table = torch.randperm(b * ctx // 64, device=dev, generator=g).view(b, -1).int()
    lens = torch.full((b,), ctx, dtype=torch.int32, device=dev)
    call = mop.validate(q[..., :r], q[..., r:], pool[..., :r], pool[..., r:], cache_seqlens=lens,
                        block_table=table, causal=True, scale=192 ** -0.5, backend="triton",
                        return_lse=False)
    sub = slice(0, 2)
    truth, _ = reference(q[sub, ..., :r].float(), q[sub, ..., r:].float(), pool[..., :r],
                         pool[..., r:], cache_seqlens=lens[sub], block_table=table[sub],
                         scale=192 ** -0.5)
    nbytes = b * ctx * (r + p) * 2
    for bm, bn, w, st, vs, qc in CONFIGS:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st, VSPLIT=vs, QC=qc)
        for splits in (1, None):
            try:
                out = mk.mla_decode_fwd(call, num_splits=splits, config=cfg)[0]
                err = float((out[sub].float() - truth).abs().max())
                ms = triton.testing.do_bench(
                    lambda c=cfg, n=splits: mk.mla_decode_fwd(call, num_splits=n, config=c),
                    warmup=10, rep=40, return_mode="median")
                print(f"mla {cfg} splits={splits} err={err:.2e} TB/s={nbytes / ms / 1e9:.3f}",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - a config that does not compile
                print(f"mla {cfg} splits={splits} failed: {str(exc)[:90]}", flush=True)


if __name__ == "__main__":
    main()
