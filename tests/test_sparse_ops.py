"""The sparse attention ops against a brute-force per-query oracle written here.

The oracle loops over batch rows, queries and heads, builds each query's explicit list of keys
(block summaries, block tokens, top-f tokens, routed segments) from the definitions in the ops'
docstrings, and runs a softmax over that list in float64. It shares no code with
``attnkit.reference.sparse``: block scores are accumulated chunk by chunk over token ranges,
rankings use Python's sort, centroids are summed token by token.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.ops import sparse
from tests.tolerance import assert_exact64, assert_within_rule

F64 = torch.float64

# (batch, seq, hq, hk): odd lengths, lengths not multiples of any block, GQA groups 1 / 4 / 16.
DENSE_SHAPES = [(2, 37, 2, 2), (1, 50, 8, 2), (2, 23, 16, 1), (1, 1, 4, 1)]
SHAPE_IDS = ["b2-s37-g1", "b1-s50-g4", "b2-s23-g16", "b1-s1-g4"]
# packed documents, one of them empty
CU = [0, 19, 19, 44, 51]


def _rand(*shape, dtype=F64, grad=False):
    t = torch.randn(*shape, dtype=dtype)
    return t.requires_grad_(grad)


def _cu(values):
    return torch.tensor(values, dtype=torch.int32)


# ----------------------------------------------------------------------------------------------
# the oracle


def _attend(qv, keys, values, key_list, scale):
    """softmax(scale * qv . keys[j]) over j in key_list, then the weighted values; lse."""
    if not key_list:
        return torch.zeros(values.shape[-1], dtype=qv.dtype) + 0 * qv.sum(), -math.inf
    ks = torch.stack([keys[j] for j in key_list])  # [n, d]
    vs = torch.stack([values[j] for j in key_list])  # [n, dv]
    scores = (ks @ qv) * scale
    lse = torch.logsumexp(scores, dim=0)
    return torch.softmax(scores, dim=0) @ vs, float(lse.detach())


def _run_oracle(q, k, v, lists, scale):
    """``lists(b, t, h) -> key list``; q ``[b, s, hq, d]``, k/v ``[b, n, hk, *]``."""
    b, s, hq, _ = q.shape
    hk = k.shape[2]
    g = hq // hk
    out = torch.zeros(b, s, hq, v.shape[-1], dtype=F64)
    lse = torch.zeros(b, hq, s, dtype=F64)
    rows = []
    for bi in range(b):
        for t in range(s):
            for h in range(hq):
                o, l_ = _attend(q[bi, t, h], k[bi, :, h // g], v[bi, :, h // g],
                                lists(bi, t, h), scale)
                rows.append(o)
                lse[bi, h, t] = l_
    if rows:
        out = torch.stack(rows).view(b, s, hq, v.shape[-1])
    return out, lse


def oracle_compressed(q, kc, vc, block, stride, scale):
    def lists(bi, t, h):
        return [i for i in range(kc.shape[1]) if i * stride + block - 1 <= t]
    return _run_oracle(q, kc, vc, lists, scale)


def oracle_selected(q, k, v, idx, block, scale):
    g = q.shape[2] // k.shape[2]

    def lists(bi, t, h):
        listed = {int(x) for x in idx[bi, t, h // g].tolist() if x >= 0}
        return [j for j in range(t + 1) if j // block in listed]
    return _run_oracle(q, k, v, lists, scale)


def oracle_topk(q, k, v, f, scale):
    def lists(bi, t, h):
        g = q.shape[2] // k.shape[2]
        scored = [(-float((q[bi, t, h] @ k[bi, j, h // g]).detach()), j) for j in range(t + 1)]
        return sorted(j for _, j in sorted(scored)[:f])
    return _run_oracle(q, k, v, lists, scale)


def oracle_block_choice(q, kc, *, block, stride, sel, n, init, local, scale):
    """Per (b, t, kv head): the sorted selected block list, from the NSA rule."""
    b, s, hq, _ = q.shape
    hk = kc.shape[2]
    g = hq // hk
    nc = kc.shape[1]
    choice = {}
    for bi in range(b):
        for t in range(s):
            visible = [i for i in range(nc) if i * stride + block - 1 <= t]
            choice[(bi, t)] = [None] * hk
            own = t // sel
            for kh in range(hk):
                # group-summed probabilities of kv head kh
                gp = [0.0] * nc
                for h in range(kh * g, (kh + 1) * g):
                    if visible:
                        sc = torch.stack([kc[bi, i, kh] @ q[bi, t, h] for i in visible]) * scale
                        for i, p in zip(visible, torch.softmax(sc, 0).tolist()):
                            gp[i] += p
                # block score: every stride chunk of block j, every window holding that chunk
                score = [0.0] * (own + 1)
                for j in range(own + 1):
                    for c0 in range(j * sel, (j + 1) * sel, stride):
                        for i in range(nc):
                            if i * stride <= c0 and c0 + stride <= i * stride + block:
                                score[j] += gp[i]
                forced = [j for j in range(own + 1) if j < init or j > own - local]
                rest = sorted((-score[j], j) for j in range(own + 1) if j not in forced)
                picked = forced + [j for _, j in rest]
                choice[(bi, t)][kh] = sorted(picked[:n])
    return choice


def oracle_routes(q, k, *, seg, top_k):
    b, s, hq, _ = q.shape
    hk = k.shape[2]
    g = hq // hk
    routes = {}
    for bi in range(b):
        cents = {}
        for kh in range(hk):
            for m in range(-(-s // seg)):
                members = list(range(m * seg, min(s, (m + 1) * seg)))
                total = sum(k[bi, j, kh] for j in members)
                cents[(kh, m)] = total / len(members)
        for t in range(s):
            own = t // seg
            per_head = []
            for kh in range(hk):
                scored = []
                for m in range(own):
                    c = cents[(kh, m)]
                    cos = 0.0
                    for h in range(kh * g, (kh + 1) * g):
                        qv = q[bi, t, h]
                        dot = float((qv @ c).detach())
                        cos += dot / max(float((qv.norm() * c.norm()).detach()), 1e-8)
                    scored.append((-cos, m))
                per_head.append(sorted([m for _, m in sorted(scored)[:top_k]] + [own]))
            routes[(bi, t)] = per_head
    return routes


def _index_tensor(choice, b, s, hk, width):
    idx = torch.full((b, s, hk, width), -1, dtype=torch.int32)
    for (bi, t), per_head in choice.items():
        for kh, blocks in enumerate(per_head):
            idx[bi, t, kh, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
    return idx


def _mean_summaries(x, block, stride):
    """Block summaries by an explicit loop: mean of each complete window."""
    b, s, h, d = x.shape
    nc = 0 if s < block else (s - block) // stride + 1
    rows = [x[:, i * stride:i * stride + block].mean(dim=1) for i in range(nc)]
    return torch.stack(rows, dim=1) if rows else x.new_zeros(b, 0, h, d)


def _packed(fn, tensors, cu, cu_other=None):
    """Run ``fn`` on each document of packed tensors (``cu_other`` for the second group)."""
    outs, lses = [], []
    for n in range(len(cu) - 1):
        args = [t[cu[n]:cu[n + 1]][None] for t in tensors]
        o, lse = fn(*args)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def _grads(out, inputs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad((out * probe).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


# ----------------------------------------------------------------------------------------------
# compressed attention


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("block,stride", [(8, 4), (5, 5), (6, 2)], ids=["l8-d4", "l5-d5", "l6-d2"])
def test_compressed_matches_oracle(shape, block, stride):
    torch.manual_seed(1)
    b, s, hq, hk = shape
    nc = sparse.num_compressed_blocks(s, block=block, stride=stride)
    q, kc, vc = _rand(b, s, hq, 8, grad=True), _rand(b, nc, hk, 8, grad=True), \
        _rand(b, nc, hk, 6, grad=True)
    out, lse = sparse.compressed_attention(q, kc, vc, block=block, stride=stride,
                                           return_lse=True)
    want, want_lse = oracle_compressed(q, kc, vc, block, stride, 8 ** -0.5)
    assert_exact64("out", out, want)
    assert_exact64("lse", lse, want_lse.float())  # lse is float32 by contract
    if out.requires_grad:
        for got, ref in zip(_grads(out, (q, kc, vc)), _grads(want, (q, kc, vc))):
            assert_exact64("grad", got, ref)


def test_compressed_rows_before_first_window_are_zero():
    q, kc, vc = _rand(1, 9, 2, 4), _rand(1, 2, 2, 4), _rand(1, 2, 2, 4)
    out, lse = sparse.compressed_attention(q, kc, vc, block=6, stride=3, return_lse=True)
    assert torch.equal(out[:, :5], torch.zeros_like(out[:, :5]))
    assert torch.isinf(lse[..., :5]).all() and torch.isfinite(lse[..., 5:]).all()


def test_compressed_packed_matches_oracle():
    torch.manual_seed(2)
    block, stride = 6, 3
    lengths = [b - a for a, b in zip(CU[:-1], CU[1:])]
    ncs = [sparse.num_compressed_blocks(n, block=block, stride=stride) for n in lengths]
    cu_c = [0]
    for n in ncs:
        cu_c.append(cu_c[-1] + n)
    q = _rand(CU[-1], 8, 8, grad=True)
    kc, vc = _rand(cu_c[-1], 2, 8, grad=True), _rand(cu_c[-1], 2, 8, grad=True)
    out, lse = sparse.compressed_attention(q, kc, vc, block=block, stride=stride,
                                           cu_seqlens=_cu(CU), return_lse=True)
    outs, lses = [], []
    for n in range(len(lengths)):
        o, l_ = oracle_compressed(q[CU[n]:CU[n + 1]][None], kc[cu_c[n]:cu_c[n + 1]][None],
                                  vc[cu_c[n]:cu_c[n + 1]][None], block, stride, 8 ** -0.5)
        outs.append(o[0])
        lses.append(l_[0])
    assert_exact64("out", out, torch.cat(outs))
    assert_exact64("lse", lse, torch.cat(lses, dim=1).float())
    for got, ref in zip(_grads(out, (q, kc, vc)), _grads(torch.cat(outs), (q, kc, vc))):
        assert_exact64("grad", got, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compressed_low_precision_within_rule(dtype):
    torch.manual_seed(3)
    q, kc, vc = _rand(2, 41, 8, 16, dtype=dtype), _rand(2, 9, 2, 16, dtype=dtype), \
        _rand(2, 9, 2, 16, dtype=dtype)
    got = sparse.compressed_attention(q, kc, vc, block=8, stride=4)
    assert got.dtype == dtype
    truth, _ = oracle_compressed(q.double(), kc.double(), vc.double(), 8, 4, 0.25)
    # baseline: PyTorch's same-dtype math over the same summaries
    assert_within_rule("out", got, truth, _oracle_in_dtype(q, kc, vc), dtype=dtype)


def _oracle_in_dtype(q, kc, vc):
    """The compressed oracle's math (block 8, stride 4) run in the inputs' dtype."""
    b, s, hq, _ = q.shape
    dtype = q.dtype
    g = hq // kc.shape[2]
    out = torch.zeros(b, s, hq, vc.shape[-1], dtype=dtype)
    for t in range(s):
        vis = [i for i in range(kc.shape[1]) if i * 4 + 8 - 1 <= t]
        if not vis:
            continue
        ks = kc[:, vis].repeat_interleave(g, dim=2)  # [b, n, hq, d]
        vs = vc[:, vis].repeat_interleave(g, dim=2)
        sc = torch.einsum("bhd,bnhd->bhn", q[:, t], ks) * 0.25
        out[:, t] = torch.einsum("bhn,bnhd->bhd", torch.softmax(sc, -1), vs)
    return out


def test_compression_windows_are_the_blocks():
    x = _rand(2, 13, 3, 4)
    w = sparse.compression_windows(x, block=4, stride=2)
    assert w.shape == (2, 5, 3, 4, 4)
    for i in range(5):
        assert torch.equal(w[:, i], x[:, 2 * i:2 * i + 4].permute(0, 2, 1, 3))
    packed = sparse.compression_windows(x[0, :9].contiguous(), block=4, stride=2,
                                        cu_seqlens=_cu([0, 3, 9]))
    assert packed.shape == (2, 3, 4, 4)  # 0 windows in 3 tokens, 2 in the next 6
    assert torch.equal(packed[1], x[0, 5:9].permute(1, 0, 2))


# ----------------------------------------------------------------------------------------------
# block selection


SELECT_CONFIGS = [
    dict(block=4, stride=2, sel=4, n=3, init=1, local=2),
    dict(block=4, stride=2, sel=8, n=3, init=1, local=1),
    dict(block=6, stride=3, sel=3, n=4, init=0, local=1),
    dict(block=2, stride=2, sel=2, n=5, init=2, local=0),
]
SELECT_IDS = ["l4-d2-sel4", "l4-d2-sel8", "l6-d3-sel3", "l2-d2-sel2-init2"]


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("cfg", SELECT_CONFIGS, ids=SELECT_IDS)
def test_select_blocks_matches_oracle(shape, cfg):
    torch.manual_seed(4)
    b, s, hq, hk = shape
    k = _rand(b, s, hk, 8)
    q = _rand(b, s, hq, 8)
    kc = _mean_summaries(k, cfg["block"], cfg["stride"])
    idx = sparse.select_blocks(q, kc, compress_block=cfg["block"], compress_stride=cfg["stride"],
                               select_block=cfg["sel"], num_selected=cfg["n"],
                               init_blocks=cfg["init"], local_blocks=cfg["local"])
    choice = oracle_block_choice(q, kc, block=cfg["block"], stride=cfg["stride"], sel=cfg["sel"],
                                 n=cfg["n"], init=cfg["init"], local=cfg["local"],
                                 scale=8 ** -0.5)
    assert idx.dtype == torch.int32 and not idx.requires_grad
    assert torch.equal(idx, _index_tensor(choice, b, s, hk, cfg["n"]))


def test_select_blocks_packed_restarts_per_document():
    torch.manual_seed(5)
    cfg = SELECT_CONFIGS[0]
    q, k = _rand(CU[-1], 8, 8), _rand(CU[-1], 2, 8)
    docs = [(a, b) for a, b in zip(CU[:-1], CU[1:])]
    kcs = [_mean_summaries(k[a:b][None], 4, 2)[0] for a, b in docs]
    idx = sparse.select_blocks(q, torch.cat(kcs), compress_block=4, compress_stride=2,
                               select_block=4, num_selected=3, cu_seqlens=_cu(CU))
    for (a, b), kc in zip(docs, kcs):
        choice = oracle_block_choice(q[a:b][None], kc[None], block=4, stride=2, sel=cfg["sel"],
                                     n=3, init=1, local=2, scale=8 ** -0.5)
        assert torch.equal(idx[a:b], _index_tensor(choice, 1, b - a, 2, 3)[0])


def test_select_blocks_ties_go_to_lower_blocks():
    # identical summaries: every visible window gets the same probability; at t = 33 there are
    # 16 visible windows, so p = 1/16 and every block score is an exact binary fraction: blocks
    # 1..7 tie exactly, and the free slots go to the lowest of them after the forced ones
    q = _rand(1, 40, 4, 8)
    kc = _rand(1, 1, 2, 8).expand(1, 19, 2, 8).contiguous()
    idx = sparse.select_blocks(q, kc, compress_block=4, compress_stride=2, select_block=4,
                               num_selected=5, init_blocks=1, local_blocks=1)
    assert idx[0, 33, 0].tolist() == [0, 1, 2, 3, 8]
    assert idx[0, 2, 1].tolist() == [0, -1, -1, -1, -1]  # sees no summary yet


# ----------------------------------------------------------------------------------------------
# selected-block attention


def _random_indices(b, s, hk, n, block, gen):
    """Random distinct blocks per row (some -1), any order: the op must not care."""
    nb = -(-s // block)
    idx = torch.full((b, s, hk, n), -1, dtype=torch.int64)
    for bi in range(b):
        for t in range(s):
            for h in range(hk):
                count = int(torch.randint(0, min(n, nb) + 1, (1,), generator=gen))
                idx[bi, t, h, :count] = torch.randperm(nb, generator=gen)[:count]
    return idx


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("block", [4, 7], ids=["blk4", "blk7"])
def test_selected_matches_oracle(shape, block):
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    b, s, hq, hk = shape
    q, k, v = _rand(b, s, hq, 8, grad=True), _rand(b, s, hk, 8, grad=True), \
        _rand(b, s, hk, 5, grad=True)
    idx = _random_indices(b, s, hk, 3, block, gen)
    out, lse = sparse.selected_attention(q, k, v, idx, block=block, return_lse=True)
    want, want_lse = oracle_selected(q, k, v, idx, block, 8 ** -0.5)
    assert_exact64("out", out, want)
    assert_exact64("lse", lse, want_lse.float())
    for got, ref in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        assert_exact64("grad", got, ref)


def test_selected_packed_matches_oracle():
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    q, k, v = _rand(CU[-1], 8, 8, grad=True), _rand(CU[-1], 2, 8, grad=True), \
        _rand(CU[-1], 2, 8, grad=True)
    idx = torch.cat([_random_indices(1, b - a, 2, 3, 4, gen)[0]
                     for a, b in zip(CU[:-1], CU[1:])])
    out, lse = sparse.selected_attention(q, k, v, idx, block=4, cu_seqlens=_cu(CU),
                                         return_lse=True)
    want, want_lse = _packed(lambda q1, k1, v1, i1: oracle_selected(q1, k1, v1, i1, 4, 8 ** -0.5),
                             (q, k, v, idx), CU)
    assert_exact64("out", out, want)
    assert_exact64("lse", lse, want_lse.float())
    for got, ref in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        assert_exact64("grad", got, ref)


def test_selected_fp32_within_rule():
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    q, k, v = _rand(2, 45, 8, 16), _rand(2, 45, 2, 16), _rand(2, 45, 2, 16)
    idx = _random_indices(2, 45, 2, 4, 8, gen)
    got = sparse.selected_attention(q.float(), k.float(), v.float(), idx, block=8)
    truth, _ = oracle_selected(q, k, v, idx, 8, 0.25)
    dense_keep = torch.zeros(2, 8, 45, 45, dtype=torch.bool)
    for bi in range(2):
        for t in range(45):
            for h in range(8):
                listed = set(idx[bi, t, h // 4].tolist())
                for j in range(t + 1):
                    dense_keep[bi, h, t, j] = j // 8 in listed
    base = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().repeat_interleave(4, 2).transpose(1, 2),
        v.float().repeat_interleave(4, 2).transpose(1, 2), attn_mask=dense_keep).transpose(1, 2)
    base = torch.nan_to_num(base)  # rows with no key: zeros, as the op's contract
    assert_within_rule("out", got, truth, base, dtype=torch.float32)


def test_selected_order_is_free_duplicates_rejected():
    q, k, v = _rand(1, 8, 2, 4), _rand(1, 8, 2, 4), _rand(1, 8, 2, 4)
    ordered = torch.tensor([0, 1], dtype=torch.int32).expand(1, 8, 2, 2)
    swapped = torch.tensor([1, 0], dtype=torch.int32).expand(1, 8, 2, 2)
    assert torch.equal(sparse.selected_attention(q, k, v, ordered, block=4),
                       sparse.selected_attention(q, k, v, swapped, block=4))
    with pytest.raises(ValueError, match=r"block_indices must list each block at most once"):
        sparse.selected_attention(q, k, v, torch.ones(1, 8, 2, 2, dtype=torch.int32), block=4)


# ----------------------------------------------------------------------------------------------
# top-f token attention


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("top", [1, 5], ids=["f1", "f5"])
def test_topk_tokens_matches_oracle(shape, top):
    torch.manual_seed(9)
    b, s, hq, hk = shape
    q, k, v = _rand(b, s, hq, 8, grad=True), _rand(b, s, hk, 8, grad=True), \
        _rand(b, s, hk, 8, grad=True)
    out, lse = sparse.topk_token_attention(q, k, v, top_tokens=top, return_lse=True)
    want, want_lse = oracle_topk(q, k, v, top, 8 ** -0.5)
    assert_exact64("out", out, want)
    assert_exact64("lse", lse, want_lse.float())
    for got, ref in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        assert_exact64("grad", got, ref)


def test_topk_tokens_packed_matches_oracle():
    torch.manual_seed(10)
    q, k, v = _rand(CU[-1], 4, 8, grad=True), _rand(CU[-1], 1, 8, grad=True), \
        _rand(CU[-1], 1, 8, grad=True)
    out = sparse.topk_token_attention(q, k, v, top_tokens=4, cu_seqlens=_cu(CU))
    want, _ = _packed(lambda *t: oracle_topk(*t, 4, 8 ** -0.5), (q, k, v), CU)
    assert_exact64("out", out, want)
    for got, ref in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        assert_exact64("grad", got, ref)


# ----------------------------------------------------------------------------------------------
# routing


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("seg,top_k", [(4, 2), (5, 1)], ids=["S4-k2", "S5-k1"])
def test_route_segments_matches_oracle(shape, seg, top_k):
    torch.manual_seed(11)
    b, s, hq, hk = shape
    q, k = _rand(b, s, hq, 8), _rand(b, s, hk, 8)
    idx = sparse.route_segments(q, k, segment_size=seg, top_k=top_k)
    want = _index_tensor(oracle_routes(q, k, seg=seg, top_k=top_k), b, s, hk, top_k + 1)
    assert torch.equal(idx, want)


def test_route_segments_ties_go_to_lower_segments():
    # all keys 1 and integer queries: every centroid is exactly 1 and every cosine the same
    q = torch.randint(-3, 4, (1, 30, 4, 8)).to(F64)
    k = torch.ones(1, 30, 2, 8, dtype=F64)
    idx = sparse.route_segments(q, k, segment_size=4, top_k=3)
    assert idx[0, 29, 0].tolist() == [0, 1, 2, 7]
    assert idx[0, 5, 1].tolist() == [0, 1, -1, -1]


@pytest.mark.parametrize("shape", DENSE_SHAPES[:3], ids=SHAPE_IDS[:3])
def test_routed_attention_matches_oracle(shape):
    torch.manual_seed(12)
    b, s, hq, hk = shape
    q, k, v = _rand(b, s, hq, 8, grad=True), _rand(b, s, hk, 8, grad=True), \
        _rand(b, s, hk, 8, grad=True)
    rq, rk = _rand(b, s, hq, 8), _rand(b, s, hk, 8)  # routing on other projections
    out = sparse.routed_attention(q, k, v, segment_size=4, top_k=2, route_q=rq, route_k=rk)
    routes = oracle_routes(rq, rk, seg=4, top_k=2)
    g = hq // hk
    want, _ = _run_oracle(q, k, v, lambda bi, t, h: [j for j in range(t + 1)
                                                     if j // 4 in routes[(bi, t)][h // g]],
                          8 ** -0.5)
    assert_exact64("out", out, want)
    for got, ref in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        assert_exact64("grad", got, ref)


def test_routed_packed_matches_oracle():
    torch.manual_seed(13)
    q, k, v = _rand(CU[-1], 8, 8), _rand(CU[-1], 2, 8), _rand(CU[-1], 2, 8)
    out = sparse.routed_attention(q, k, v, segment_size=3, top_k=2, cu_seqlens=_cu(CU))

    def one(q1, k1, v1):
        routes = oracle_routes(q1, k1, seg=3, top_k=2)
        return _run_oracle(q1, k1, v1, lambda bi, t, h: [
            j for j in range(t + 1) if j // 3 in routes[(bi, t)][h // 4]], 8 ** -0.5)
    want, _ = _packed(one, (q, k, v), CU)
    assert_exact64("out", out, want)


# ----------------------------------------------------------------------------------------------
# equal to dense causal attention when nothing is left out


def test_selecting_every_block_is_dense_causal():
    torch.manual_seed(14)
    q, k, v = _rand(2, 45, 8, 8), _rand(2, 45, 2, 8), _rand(2, 45, 2, 8)
    kc = _mean_summaries(k, 4, 2)
    idx = sparse.select_blocks(q, kc, compress_block=4, compress_stride=2, select_block=4,
                               num_selected=12)  # ceil(45 / 4) = 12 blocks
    assert int((idx >= 0).sum(-1)[:, -1].min()) == 12
    dense = attnkit.attention(q, k, v, causal=True)
    assert_exact64("selected", sparse.selected_attention(q, k, v, idx, block=4), dense)
    assert_exact64("topk", sparse.topk_token_attention(q, k, v, top_tokens=45), dense)


def test_routing_to_every_segment_is_dense_causal():
    torch.manual_seed(15)
    q, k, v = _rand(2, 29, 8, 8), _rand(2, 29, 2, 8), _rand(2, 29, 2, 8)
    out = sparse.routed_attention(q, k, v, segment_size=4, top_k=7)  # 8 segments, 7 past
    assert_exact64("routed", out, attnkit.attention(q, k, v, causal=True))
    qp, kp, vp = q.reshape(58, 8, 8), k.reshape(58, 2, 8), v.reshape(58, 2, 8)
    cu = _cu([0, 29, 58])
    packed = sparse.routed_attention(qp, kp, vp, segment_size=4, top_k=7, cu_seqlens=cu)
    assert_exact64("packed", packed, attnkit.attention(qp, kp, vp, causal=True, cu_seqlens_q=cu,
                                                       cu_seqlens_k=cu))


# ----------------------------------------------------------------------------------------------
# errors


def _qkv(s=8):
    return _rand(1, s, 4, 8), _rand(1, s, 2, 8), _rand(1, s, 2, 8)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(block=4, stride=8), ValueError, r"compress_stride \(8\) must be <= compress_block \(4\)"),
    (dict(block=6, stride=4), ValueError, r"compress_block \(6\) must be a multiple of "
                                          r"compress_stride \(4\)"),
    (dict(block=0, stride=1), ValueError, r"compress_block must be >= 1, got 0"),
    (dict(block=4.0, stride=2), TypeError, r"compress_block must be an int"),
], ids=["stride-gt-block", "stride-not-dividing", "block-zero", "block-float"])
def test_block_config_errors(kwargs, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        sparse.compressed_attention(q, k[:, :3], v[:, :3], **kwargs)


def test_compressed_errors():
    q, k, v = _qkv(9)
    with pytest.raises(ValueError, match=r"k_cmp must hold 3 summaries .* got 2"):
        sparse.compressed_attention(q, k[:, :2], v[:, :3], block=4, stride=2)
    with pytest.raises(TypeError, match=r"v_cmp must have the dtype of q"):
        sparse.compressed_attention(q, k[:, :3], v[:, :3].float(), block=4, stride=2)
    with pytest.raises(ValueError, match=r"q's heads \(4\) must be a multiple of k's heads \(3\)"):
        sparse.compressed_attention(q, _rand(1, 3, 3, 8), _rand(1, 3, 3, 8), block=4, stride=2)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        sparse.compressed_attention(q, k[:, :3], v[:, :3], block=4, stride=2, backend="cuda")
    with pytest.raises(ValueError, match=r"backend='triton' cannot serve this "
                                         r"compressed_attention call \(triton: no triton"):
        sparse.compressed_attention(q, k[:, :3], v[:, :3], block=4, stride=2, backend="triton")


def test_select_blocks_errors():
    q, k, _ = _qkv(16)
    kc = k[:, :7]
    opts = dict(compress_block=4, compress_stride=2, select_block=4, num_selected=3)
    with pytest.raises(ValueError, match=r"select_block \(5\) must be a multiple of "
                                         r"compress_stride \(2\)"):
        sparse.select_blocks(q, kc, **{**opts, "select_block": 5})
    with pytest.raises(ValueError, match=r"num_selected \(2\) must be >= init_blocks \+ "
                                         r"local_blocks \(1 \+ 2\)"):
        sparse.select_blocks(q, kc, **{**opts, "num_selected": 2})
    with pytest.raises(ValueError, match=r"num_selected must be >= 1, got 0"):
        sparse.select_blocks(q, kc, **{**opts, "num_selected": 0, "init_blocks": 0,
                                       "local_blocks": 0})
    with pytest.raises(ValueError, match=r"local_blocks must be >= 0, got -1"):
        sparse.select_blocks(q, kc, **{**opts, "local_blocks": -1})


def test_selected_and_topk_errors():
    q, k, v = _qkv(8)
    idx = torch.zeros(1, 8, 2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"block_indices entries must be -1 \(unused\) or a block "
                                         r"of the query's document in \[0, 2\), got 2"):
        sparse.selected_attention(q, k, v, idx + 2, block=4)
    with pytest.raises(TypeError, match=r"block_indices must be int32 or int64, got torch.float"):
        sparse.selected_attention(q, k, v, idx.float(), block=4)
    with pytest.raises(ValueError, match=r"block_indices must be \[1, 8, kv_heads=2, n\]"):
        sparse.selected_attention(q, k, v, idx[:, :, :1], block=4)
    with pytest.raises(ValueError, match=r"k must have q's \[batch, seq\] \[1, 8\] "
                                         r"\(self-attention over one sequence\), got \[1, 7\]"):
        sparse.selected_attention(q, k[:, :7], v[:, :7], idx, block=4)
    with pytest.raises(ValueError, match=r"block must be >= 1, got 0"):
        sparse.selected_attention(q, k, v, idx, block=0)
    with pytest.raises(ValueError, match=r"top_tokens must be >= 1, got 0"):
        sparse.topk_token_attention(q, k, v, top_tokens=0)
    with pytest.raises(ValueError, match=r"q must be packed \[total, heads, head_dim\] when "
                                         r"cu_seqlens is given"):
        sparse.topk_token_attention(q, k, v, top_tokens=2, cu_seqlens=_cu([0, 8]))
    with pytest.raises(ValueError, match=r"cu_seqlens must end at the number of packed tokens "
                                         r"\(8\), got 7"):
        sparse.topk_token_attention(q[0], k[0], v[0], top_tokens=2, cu_seqlens=_cu([0, 7]))


def test_routing_errors():
    q, k, v = _qkv(8)
    with pytest.raises(ValueError, match=r"top_k must be >= 1, got 0"):
        sparse.routed_attention(q, k, v, segment_size=2, top_k=0)
    with pytest.raises(ValueError, match=r"segment_size must be >= 1, got 0"):
        sparse.route_segments(q, k, segment_size=0, top_k=1)
    with pytest.raises(ValueError, match=r"route_k must have the shape of k \[1, 8, 2, 8\]"):
        sparse.routed_attention(q, k, v, segment_size=2, top_k=1, route_k=k[:, :4])


def test_row_blocks_and_recompute_match_oracle(monkeypatch):
    """Long sequences run in query blocks, recomputed in backward: same numbers."""
    from attnkit.reference import sparse as reference_sparse
    monkeypatch.setattr(reference_sparse, "_SCORE_BUDGET", 1)  # 16 query rows per block
    torch.manual_seed(16)
    gen = torch.Generator().manual_seed(16)
    q, k, v = _rand(1, 35, 2, 8, grad=True), _rand(1, 35, 1, 8, grad=True), \
        _rand(1, 35, 1, 8, grad=True)
    idx = _random_indices(1, 35, 1, 3, 4, gen)
    for got, want in ((sparse.selected_attention(q, k, v, idx, block=4),
                       oracle_selected(q, k, v, idx, 4, 8 ** -0.5)[0]),
                      (sparse.topk_token_attention(q, k, v, top_tokens=6),
                       oracle_topk(q, k, v, 6, 8 ** -0.5)[0])):
        assert_exact64("out", got, want)
        for g_got, g_want in zip(_grads(got, (q, k, v)), _grads(want, (q, k, v))):
            assert_exact64("grad", g_got, g_want)
    kc = _mean_summaries(k.detach(), 4, 2)
    choice = oracle_block_choice(q.detach(), kc, block=4, stride=2, sel=4, n=3, init=1, local=2,
                                 scale=8 ** -0.5)
    got_idx = sparse.select_blocks(q, kc, compress_block=4, compress_stride=2, select_block=4,
                                   num_selected=3)
    assert torch.equal(got_idx, _index_tensor(choice, 1, 35, 1, 3))
