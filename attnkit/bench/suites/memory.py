"""The memory suite: peak memory of forward and of forward+backward, one long sequence.

bf16, d 128, 16 heads, causal, batch 1, 8k / 16k / 32k / 64k / 128k tokens. Each op is run once
(forward and backward) to compile and warm up, then measured with ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``: the peak above what was allocated before the call (the inputs
and the output gradient), during the forward and during forward + backward.
"""

from __future__ import annotations

from attnkit.bench.cases import AttentionCase, make_inputs
from attnkit.bench.check import check_attention
from attnkit.bench.flops import attention_work
from attnkit.bench.peers import PEERS
from attnkit.bench.registry import Suite, register
from attnkit.bench.subject import ATTNKIT

LENGTHS = (8192, 16384, 32768, 65536, 131072)


def cases(quick: bool = False) -> list[AttentionCase]:
    """One causal sequence per length (``quick``: 8k and 16k only)."""
    lengths = LENGTHS[:2] if quick else LENGTHS
    return [AttentionCase(name=f"s{n // 1024}k", batch=1, seq=n, heads_q=16, heads_kv=16,
                          head_dim=128, causal=True) for n in lengths]


SUITE = register(Suite(
    name="memory",
    description="peak memory of forward and forward+backward, one causal sequence of 8k to "
                "128k tokens, d128, 16 heads, bf16",
    cases=cases,
    ops=[ATTNKIT, *PEERS],
    make_inputs=make_inputs,
    check=check_attention,
    work=attention_work,
    directions=("fwd", "bwd"),
    check_peers=True,
    measure="memory",
    unit="TFLOP/s",
    notes=("peak = max_memory_allocated during the call minus what was allocated before it",),
))
