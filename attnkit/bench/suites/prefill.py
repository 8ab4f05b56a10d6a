"""The prefill suite: training/prefill attention, forward and backward, in TFLOP/s.

bf16, hidden 2048 (heads = 2048 / d), 16384 tokens per batch (batch = 16384 / seq):

- MHA, d 64 and 128, seq 1k / 4k / 16k, causal and not;
- GQA 32:8 query to KV heads, d 128, seq 4k, causal and not;
- packed variable-length: random document lengths (256 to 4096, seed 0) summing to 16384, causal;
- sliding window 1024 (``window=(1023, 0)``, causal) at 16k, compared by time with full causal
  attention at 16k (the window should be at least 8x faster); its FLOPs count the visible area;
- MLA shapes: q/k head dim 192 with v head dim 128, 16 heads, seq 4k, causal and not.

Backward time is autograd's backward alone (``out.backward(dout, retain_graph=True)`` over one
saved forward graph, gradients reset to None before each run), not fwd+bwd minus fwd.
"""

from __future__ import annotations

from attnkit.bench.cases import AttentionCase, make_inputs, random_doc_lengths
from attnkit.bench.check import check_attention
from attnkit.bench.flops import attention_work
from attnkit.bench.peers import PEERS
from attnkit.bench.registry import Suite, register
from attnkit.bench.subject import ATTNKIT

TOKENS = 16384
HIDDEN = 2048


def _seq_label(seq: int) -> str:
    return f"s{seq // 1024}k" if seq % 1024 == 0 else f"s{seq}"


def _mha(d: int, seq: int, causal: bool) -> AttentionCase:
    heads = HIDDEN // d
    return AttentionCase(name=f"mha d{d} {_seq_label(seq)} {'causal' if causal else 'full'}",
                         batch=TOKENS // seq, seq=seq, heads_q=heads, heads_kv=heads,
                         head_dim=d, causal=causal)


def cases(quick: bool = False) -> list[AttentionCase]:
    """Every prefill shape (``quick``: one of each kind, at 4k or the full 16k tokens)."""
    mha = [_mha(d, seq, causal) for d in (64, 128) for seq in (1024, 4096, 16384)
           for causal in (False, True)]
    gqa = [AttentionCase(name=f"gqa 32:8 d128 s4k {'causal' if causal else 'full'}",
                         batch=TOKENS // 4096, seq=4096, heads_q=32, heads_kv=8, head_dim=128,
                         causal=causal) for causal in (False, True)]
    docs = random_doc_lengths(TOKENS, low=256, high=4096, seed=0)
    varlen = AttentionCase(name=f"varlen {len(docs)} docs d128 causal", batch=1, seq=TOKENS,
                           heads_q=16, heads_kv=16, head_dim=128, causal=True, doc_lengths=docs)
    window = AttentionCase(name="window 1024 d128 s16k causal", batch=1, seq=TOKENS, heads_q=16,
                           heads_kv=16, head_dim=128, causal=True, window=(1023, 0),
                           baseline=_mha(128, 16384, True).name)
    mla = [AttentionCase(name=f"mla d192/128 s4k {'causal' if causal else 'full'}",
                         batch=TOKENS // 4096, seq=4096, heads_q=16, heads_kv=16, head_dim=192,
                         head_dim_v=128, causal=causal) for causal in (False, True)]
    if quick:
        keep = {"mha d128 s4k full", "mha d128 s4k causal", "mha d128 s16k causal"}
        return [c for c in mha if c.name in keep] + [gqa[1], varlen, window, mla[1]]
    return [*mha, *gqa, varlen, window, *mla]


SUITE = register(Suite(
    name="prefill",
    description="bf16 attention forward and backward at 16k tokens per batch: MHA d64/d128 at "
                "1k/4k/16k, GQA 32:8, packed documents, sliding window 1024, MLA 192/128",
    cases=cases,
    ops=[ATTNKIT, *PEERS],
    make_inputs=make_inputs,
    check=check_attention,
    work=attention_work,
    directions=("fwd", "bwd"),
    check_peers=True,
    measure="time",
    unit="TFLOP/s",
    notes=("backward = autograd backward alone with retain_graph=True (not fwd+bwd minus fwd)",
           "causal FLOPs are half the square; sliding windows count their visible area",
           "SDPA peers run a sliding window as a dense bool mask (no window option in SDPA)",
           "every op, peers too, is checked against SDPA math in fp32 before it is timed"),
))
