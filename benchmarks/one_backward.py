"""One forward and one backward of a dense MHA prefill shape, for a profiler to watch.

Made for Nsight Compute: with ``ATTNKIT_FLASH_TUNE=0`` each kernel runs its tile table's first
config (no autotuning launches to skip), so ``ncu --kernel-name regex:_bwd_dkdv --launch-count 1``
profiles exactly one dK/dV launch. ``ATTNKIT_FLASH_DQ`` and ``ATTNKIT_FLASH_TMA`` pick the path.

Usage (CUDA)::

    ATTNKIT_FLASH_TUNE=0 ATTNKIT_FLASH_DQ=kernel ATTNKIT_FLASH_TMA=none PYTHONPATH=. \\
        ncu --kernel-name regex:_bwd_dkdv --launch-count 1 --section SpeedOfLight \\
        python benchmarks/one_backward.py --seq 16384 --d 128
"""

from __future__ import annotations

import argparse

import torch

from attnkit.kernels import flash_bwd, flash_fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    heads = 2048 // args.d
    shape = (args.tokens // args.seq, args.seq, heads, args.d)  # [b, s, h, d]
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    opts = dict(causal=args.causal, window=(-1, -1), scale=args.d ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=args.seq, max_seqlen_k=args.seq, dropout_p=0.0, dropout_seed=0)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    dq, dk, dv = flash_bwd.flash_bwd(torch.randn_like(out), q, k, v, out, lse,
                                     deterministic=False, **opts)
    torch.cuda.synchronize()
    print("dk norm", float(dk.float().norm()), "tiles", flash_bwd._bwd_dkdv_kernel.best_config)


if __name__ == "__main__":
    main()
