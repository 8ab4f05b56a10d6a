"""``flash_common.launch``: an autotuned launch that skips Triton's autotuner once it has picked.

The flash kernels' autotuners hold one config under the interpreter, so the skip is tested here
on a small two-config kernel whose timing function prefers the second config.
"""

import functools
import os

import pytest
import torch
import triton
import triton.language as tl

from attnkit.kernels.flash_common import launch, next_power_of_2, tuned

BENCHED: list[int] = []


def _fake_bench(kernel_call, quantiles):
    """Runs the candidate once; the 32-wide config 'wins' (timing by call order: 2nd is faster)."""
    kernel_call()
    BENCHED.append(1)
    return [2.0 if len(BENCHED) % 2 else 1.0] * 3


@triton.autotune(configs=[triton.Config({"BLOCK": 16}, num_warps=4),
                          triton.Config({"BLOCK": 32}, num_warps=2)],
                 key=["N"], do_bench=_fake_bench)
@triton.jit
def _scale_kernel(x_ptr, y_ptr, N, factor, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=i < N) * factor, mask=i < N)


def _grid(n):
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)


def test_launch_tunes_once_then_skips_the_autotuner(monkeypatch):
    BENCHED.clear()
    _scale_kernel.cache.clear()
    tuner_runs = []
    real_run = _scale_kernel.run
    monkeypatch.setattr(_scale_kernel, "run", lambda *a, **k: tuner_runs.append(1) or
                        real_run(*a, **k))
    x = torch.randn(100)
    y = torch.full((100,), float("nan"))
    assert not tuned(_scale_kernel, x, y, 100, 3.0)
    launch(_scale_kernel, _grid(100), x, y, 100, 3.0)
    assert tuned(_scale_kernel, x, y, 100, -1.0)  # the key is N (and the dtypes) only
    assert not tuned(_scale_kernel, x, y, 37, 3.0)
    assert not tuned(_scale_kernel, x.double(), y.double(), 100, 3.0)
    assert torch.equal(y, x * 3.0)
    assert len(tuner_runs) == 1 and len(BENCHED) == 2
    assert _scale_kernel.best_config.kwargs == {"BLOCK": 32}

    for factor in (-1.5, 0.25):  # same key: no autotuner, same config, fresh result
        y.fill_(float("nan"))
        launch(_scale_kernel, _grid(100), x, y, 100, factor)
        assert torch.equal(y, x * factor)
    assert len(tuner_runs) == 1 and len(BENCHED) == 2

    x2, y2 = torch.randn(37), torch.empty(37)  # a new key: tuned again
    launch(_scale_kernel, _grid(37), x2, y2, 37, 2.0)
    assert torch.equal(y2, x2 * 2.0)
    assert len(tuner_runs) == 2 and len(BENCHED) == 4

    _scale_kernel.cache.clear()  # resetting the autotuner resets the picks
    assert not tuned(_scale_kernel, x, y, 100, 1.0)
    launch(_scale_kernel, _grid(100), x, y, 100, 1.0)
    assert torch.equal(y, x)
    assert len(tuner_runs) == 3 and len(BENCHED) == 6


@pytest.mark.parametrize("n,expected", [(0, 1), (1, 1), (2, 2), (3, 4), (80, 128), (128, 128),
                                        (129, 256), (192, 256), (1 << 20, 1 << 20)])
def test_next_power_of_2_matches_triton(n, expected):
    assert next_power_of_2(n) == expected
    if n >= 1:
        assert next_power_of_2(n) == triton.next_power_of_2(n)


def test_overlap_choice(monkeypatch):
    """The dQ kernel runs beside the dK/dV kernel up to 4k tokens or with a left window, only
    on CUDA; the override wins there."""
    from attnkit.kernels import flash_bwd
    cpu = torch.zeros(1)
    for value in ("auto", "0", "1"):
        monkeypatch.setenv("ATTNKIT_FLASH_OVERLAP", value)
        assert not flash_bwd._overlap(cpu, seq=1024, window=False)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(flash_bwd, "interpreting", lambda: False)
    monkeypatch.setenv("ATTNKIT_FLASH_OVERLAP", "auto")
    assert flash_bwd._overlap(cpu, seq=4096, window=False)
    assert flash_bwd._overlap(cpu, seq=16384, window=True)
    assert not flash_bwd._overlap(cpu, seq=16384, window=False)
    monkeypatch.setenv("ATTNKIT_FLASH_OVERLAP", "1")
    assert flash_bwd._overlap(cpu, seq=16384, window=False)
    monkeypatch.setenv("ATTNKIT_FLASH_OVERLAP", "0")
    assert not flash_bwd._overlap(cpu, seq=1024, window=False)


def test_the_key_reads_dtypes_where_tensors_were_and_rescans_otherwise():
    """``_picks_and_key`` reads dtypes at the positions where the kernel's first call had
    tensors; its key equals a full scan's, and a non-tensor found there triggers a rescan."""
    from attnkit.kernels import flash_common

    def full_scan(args, n):
        return (n, *[a.dtype for a in args if isinstance(a, torch.Tensor)])

    x, y = torch.randn(8), torch.randn(8, dtype=torch.float64)
    for args in ((x, y, 8, 1.0), (y, x, 8, 2.0), (x.half(), y, 8, 3.0)):
        assert flash_common._picks_and_key(_scale_kernel, args, {})[1] == full_scan(args, 8)
    moved = (x, 5, 8, y)  # the second tensor moved: the stale positions are dropped
    assert flash_common._picks_and_key(_scale_kernel, moved, {})[1] == full_scan(moved, 8)
    assert flash_common._picks_and_key(_scale_kernel, (x, y, 8, 1.0), {})[1] == \
        full_scan((x, y, 8, 1.0), 8)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the kernels on CPU")
def test_causal_and_windowed_calls_are_tuned_apart(monkeypatch):
    """Every flash kernel's autotune key tells a sliding window from plain causal attention
    (and one window size from another): a causal call's tiles must not serve a windowed one.
    (Before step 6 the key held only whether any window was set, and causal attention sets a
    right window of 0, so a windowed backward took the causal shape's tiles: 12% slower.)"""
    import attnkit
    from attnkit.kernels import flash_bwd, flash_common, flash_fwd

    keys: dict[str, dict] = {}  # call -> kernel name -> autotune key
    now = []  # the call being made
    real = flash_common.launch

    def spy(kernel, grid, *args, **kwargs):
        keys.setdefault(now[-1], {})[kernel.base_fn.__name__] = \
            flash_common._picks_and_key(kernel, args, kwargs)[1]
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(flash_fwd, "launch", spy)
    monkeypatch.setattr(flash_bwd, "launch", spy)
    monkeypatch.setenv("ATTNKIT_FLASH_DQ", "kernel")
    q = torch.randn(1, 40, 2, 32, dtype=torch.float16, requires_grad=True)
    for label, window in (("causal", (-1, -1)), ("window 7", (7, 0)), ("window 9", (9, 0))):
        now.append(label)
        attnkit.attention(q, q, q, causal=True, window=window, backend="triton").sum().backward()
    assert set(keys["causal"]) == {"_flash_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    for name in keys["causal"]:
        assert len({keys[label][name] for label in keys}) == 3, name


def test_every_variant_flag_is_in_the_autotune_keys():
    """Each flash kernel's autotune key holds every compile-time flag that changes the work of
    a program, so that no variant runs with tiles tuned for another. Left out: the tile sizes
    (what is tuned), the padded head dims and the dot precision (functions of ``D``/``DV``
    and the dtypes, which the key holds), head counts and, where a program serves one query
    head, the group size (the same work per program)."""
    import inspect

    from attnkit.kernels import flash_bwd, flash_fwd

    derived = {"BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV", "DOT_PREC", "HQ", "HK"}
    for kernel, per_query_head in ((flash_fwd._flash_fwd_kernel, True),
                                   (flash_bwd._bwd_dkdv_kernel, False),  # loops over the group
                                   (flash_bwd._bwd_dq_kernel, True)):
        params = inspect.signature(kernel.base_fn).parameters
        flags = {name for name, p in params.items() if "constexpr" in str(p.annotation)}
        missing = flags - derived - ({"GROUP"} if per_query_head else set()) - set(kernel.keys)
        assert not missing, (kernel.base_fn.__name__, sorted(missing))


def test_gluon_dkdv_choice(monkeypatch):
    """The Gluon dK/dV kernel serves plain MHA at head dim 128, 16-bit, from 1k tokens, on a
    9.x GPU with a measured Triton, when the dK/dV kernel may use descriptors; the override
    drops the length rule and takes GQA/MQA whose q and dO heads are adjacent, or turns it
    off, and a bad value is a ValueError; windows, MLA's 192/128 and head dim 64 (from 16k
    tokens, causal from 4k) serve under ``GLUON_WINDOWS``, ``GLUON_DKDV_MLA`` and
    ``GLUON_D64``."""
    from attnkit.kernels import flash_bwd, flash_common
    q = torch.zeros(1, 8, 2, 128, dtype=torch.bfloat16)
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON", raising=False)
    monkeypatch.delenv("ATTNKIT_FLASH_TMA", raising=False)
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)  # CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(flash_common, "interpreting", lambda: False)
    monkeypatch.setattr(flash_common, "device_capability", lambda device: (9, 0))
    monkeypatch.setattr(flash_common.triton, "__version__", flash_common.GLUON_TRITON[0] + "0")
    assert flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=1024)
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=1023)
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=False, seq=4096)
    gq, kv = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16), torch.zeros(1, 8, 1, 128,
                                                                         dtype=torch.bfloat16)
    assert not flash_bwd._gluon_dkdv(gq, kv, kv, gq, plain=True, seq=4096)  # MQA: not auto
    heads_first = torch.zeros(1, 4, 8, 128, dtype=torch.bfloat16).transpose(1, 2)
    assert flash_bwd._gluon_dkdv(heads_first, heads_first, heads_first, heads_first,
                                 plain=True, seq=1024)  # MHA reads each head on its own
    assert flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096, window=(1023, -1))
    monkeypatch.setattr(flash_bwd, "GLUON_WINDOWS", False)
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096, window=(1023, -1))
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=16, window=(3, 0))
    assert flash_bwd._gluon_dkdv(gq, kv, kv, gq, plain=True, seq=16)  # heads adjacent
    assert not flash_bwd._gluon_dkdv(heads_first, kv, kv, gq, plain=True, seq=1024)
    assert not flash_bwd._gluon_dkdv(gq, kv, kv, heads_first, plain=True, seq=1024)
    mla_q, mla_v = torch.zeros(1, 8, 4, 192, dtype=torch.bfloat16), gq
    mla_kv = torch.zeros(1, 8, 1, 192, dtype=torch.bfloat16)
    assert flash_bwd._gluon_dkdv(mla_q, mla_kv, kv, mla_v, plain=True, seq=16)  # MLA, MQA
    assert not flash_bwd._gluon_dkdv(mla_q, mla_kv, mla_kv, mla_q, plain=True, seq=16)  # dv 192
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON")
    mla_k = torch.zeros(1, 8, 4, 192, dtype=torch.bfloat16)
    assert flash_bwd._gluon_dkdv(mla_q, mla_k, gq, gq, plain=True, seq=4096)
    monkeypatch.setattr(flash_bwd, "GLUON_DKDV_MLA", False)
    assert not flash_bwd._gluon_dkdv(mla_q, mla_k, gq, gq, plain=True, seq=4096)
    d64 = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    assert flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=16384)
    assert not flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=16383)
    assert flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=4096, causal=True)
    assert not flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=4095, causal=True)
    monkeypatch.setattr(flash_bwd, "GLUON_D64", False)
    assert not flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=16384)
    d32 = torch.zeros(1, 8, 2, 32, dtype=torch.bfloat16)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert flash_bwd._gluon_dkdv(d64, d64, d64, d64, plain=True, seq=16)
    assert not flash_bwd._gluon_dkdv(d32, d32, d32, d32, plain=True, seq=4096)
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON")
    assert not flash_bwd._gluon_dkdv(q.float(), q.float(), q.float(), q.float(), plain=True,
                                     seq=4096)
    shifted = torch.zeros(q.numel() + 1, dtype=torch.bfloat16)[1:].view(q.shape)
    assert not flash_bwd._gluon_dkdv(shifted, q, q, q, plain=True, seq=4096)
    monkeypatch.setattr(flash_common, "device_capability", lambda device: (10, 0))
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)
    monkeypatch.setattr(flash_common, "device_capability", lambda device: (9, 0))
    monkeypatch.setattr(flash_common.triton, "__version__", "9.9.9")
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)
    monkeypatch.setattr(flash_common.triton, "__version__", flash_common.GLUON_TRITON[0] + "0")
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "none")
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)
    monkeypatch.delenv("ATTNKIT_FLASH_TMA")
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=16)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "0")
    assert not flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "yes")
    with pytest.raises(ValueError, match="ATTNKIT_FLASH_GLUON"):
        flash_bwd._gluon_dkdv(q, q, q, q, plain=True, seq=4096)


def test_gluon_fwd_choice(monkeypatch):
    """The Gluon forward serves plain dense inputs at head dim 128 or MLA's 192/128 (64 from
    4k tokens, causal from 16k), 16-bit, MHA or GQA, where ``flash_common.gluon_fits`` holds: from 1k tokens where the persistent
    kernel takes them, windows included; from 4k and without windows where only the one-tile
    kernel does (``flash_fwd_gluon.takes_persistent``); the override drops the rules."""
    from attnkit.kernels import flash_common, flash_fwd
    q = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16)
    kv = torch.zeros(1, 8, 2, 128, dtype=torch.bfloat16)
    mha = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16)

    def choice(q, k, v, *, plain=True, seq=4096, window=(-1, -1), causal=False):
        return flash_fwd._gluon_fwd(q, k, v, plain=plain, seq=seq, window=window,
                                    causal=causal)

    monkeypatch.delenv("ATTNKIT_FLASH_GLUON", raising=False)
    assert not choice(q, kv, kv)  # CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(flash_common, "interpreting", lambda: False)
    monkeypatch.setattr(flash_common, "device_capability", lambda device: (9, 0))
    monkeypatch.setattr(flash_common.triton, "__version__", flash_common.GLUON_TRITON[0] + "0")
    assert choice(q, kv, kv) and choice(q, mha, mha) and choice(q, kv, kv, seq=1024)
    assert not choice(q, kv, kv, seq=1023)
    assert choice(q, kv, kv, window=(1023, -1)) and choice(q, kv, kv, window=(-1, 0), seq=1024)
    monkeypatch.setattr(flash_fwd, "GLUON_WINDOWS", False)
    assert not choice(q, kv, kv, window=(1023, -1))
    monkeypatch.setattr(flash_fwd, "GLUON_WINDOWS", True)
    # two batches of 8 keys (part of a key tile): only the one-tile kernel takes them
    q2, kv2 = torch.zeros(2, 8, 4, 128, dtype=torch.bfloat16), torch.zeros(2, 8, 2, 128,
                                                                              dtype=torch.bfloat16)
    assert choice(q2, kv2, kv2, seq=4096) and not choice(q2, kv2, kv2, seq=4095)
    assert not choice(q2, kv2, kv2, window=(1023, -1))
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert choice(q2, kv2, kv2, seq=8, window=(3, -1)) and choice(q, kv, kv, seq=8)
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON")
    mla_q, mla_v = torch.zeros(1, 8, 4, 192, dtype=torch.bfloat16), kv
    mla_k = torch.zeros(1, 8, 2, 192, dtype=torch.bfloat16)
    assert choice(mla_q, mla_k, mla_v) and not choice(mla_q, mla_k, mla_k)  # dv 192: no
    monkeypatch.setattr(flash_fwd, "GLUON_MLA", False)
    assert not choice(mla_q, mla_k, mla_v)
    monkeypatch.setattr(flash_fwd, "GLUON_MLA", True)
    assert not choice(q, kv, kv, plain=False)
    assert not choice(q.half(), kv, kv)
    d64 = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    assert choice(d64, d64, d64) and not choice(d64, d64, d64, seq=4095)  # head dim 64: 4k
    assert choice(d64, d64, d64, seq=16384, causal=True)  # causal: 16k
    assert not choice(d64, d64, d64, seq=16383, causal=True)
    monkeypatch.setattr(flash_fwd, "GLUON_D64", False)
    assert not choice(d64, d64, d64)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    d32 = torch.zeros(1, 8, 2, 32, dtype=torch.bfloat16)
    assert choice(d64, d64, d64) and not choice(d32, d32, d32)
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON")
    shifted = torch.zeros(kv.numel() + 1, dtype=torch.bfloat16)[1:].view(kv.shape)
    assert not choice(q, shifted, kv)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert choice(q, kv, kv, seq=16) and choice(q, kv, kv, seq=16, window=(3, 5))
    assert choice(mla_q, mla_k, mla_v, seq=16)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "0")
    assert not choice(q, kv, kv)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "on")
    with pytest.raises(ValueError, match="ATTNKIT_FLASH_GLUON"):
        choice(q, kv, kv)


def test_gluon_persistent_forward_needs_flat_rows():
    """``flash_fwd_gluon.flat_rows``: contiguous tensors and merged-QKV views read as one
    ``[b * s, h * d]`` matrix; ``[b, h, s, d]`` tensors seen as ``[b, s, h, d]`` do not, nor
    do batches that are not one after the other."""
    try:
        from attnkit.kernels import flash_fwd_gluon
    except ImportError as exc:  # a Triton without Gluon's Hopper module
        pytest.skip(f"no Gluon: {exc}")
    qkv = torch.zeros(2, 33, 3, 4, 128)
    assert flash_fwd_gluon.flat_rows(torch.zeros(2, 33, 4, 128))
    assert all(flash_fwd_gluon.flat_rows(t) for t in qkv.unbind(2))
    assert not flash_fwd_gluon.flat_rows(torch.zeros(2, 4, 33, 128).transpose(1, 2))
    assert not flash_fwd_gluon.flat_rows(torch.zeros(2, 40, 4, 128)[:, :33])
    assert flash_fwd_gluon.flat_rows(torch.zeros(1, 40, 4, 128)[:, :33])
    assert flash_fwd_gluon.flat_rows(torch.zeros(2, 33, 1, 128).expand(2, 33, 1, 128))


def test_gluon_persistent_forward_takes_whole_key_tiles_past_one_batch():
    """``flash_fwd_gluon.takes_persistent``: flat rows, and with batches past one a key
    length of whole key tiles (no key tile reads the next batch); any length for one batch."""
    try:
        from attnkit.kernels import flash_fwd_gluon
    except ImportError as exc:  # a Triton without Gluon's Hopper module
        pytest.skip(f"no Gluon: {exc}")
    q = torch.zeros(2, 300, 4, 128)
    whole, partial = torch.zeros(2, 256, 2, 128), torch.zeros(2, 255, 2, 128)
    assert flash_fwd_gluon.takes_persistent(q, whole, whole)
    assert not flash_fwd_gluon.takes_persistent(q, partial, partial)
    assert flash_fwd_gluon.takes_persistent(q, partial, partial, block_n=85)
    assert flash_fwd_gluon.takes_persistent(q[:1], partial[:1], partial[:1])
    assert not flash_fwd_gluon.takes_persistent(q.transpose(1, 2).contiguous().transpose(1, 2),
                                                whole, whole)


def _persistent_walk(n_m: int, heads: int, programs: int) -> list[list[tuple[int, int]]]:
    """The tiles ``(batch x head, query tile)`` each program of the persistent forward walks,
    in order: ``flash_fwd_gluon._program_tiles`` and ``_tile_of`` mirrored in Python."""
    from attnkit.kernels.flash_common import cdiv
    from attnkit.kernels.flash_fwd_gluon import persistent_grid
    n_tiles = n_m * heads
    grid, pair = persistent_grid(n_tiles, programs)
    walks = []
    for pid in range(grid):
        units = cdiv(cdiv(n_tiles, pair) - pid, grid)
        last = pid + (units - 1) * grid
        count = pair * (units - 1) + min(n_tiles - pair * last, pair)
        walk = []
        for i in range(count):
            t = pair * (pid + (i // pair) * grid) + i % pair
            j = t % n_m
            walk.append((t // n_m, n_m - 1 - j // 2 if j % 2 == 0 else j // 2))
        walks.append(walk)
    return walks


@pytest.mark.parametrize("n_m,heads,programs", [(5, 3, 7), (5, 3, 1), (6, 8, 7), (6, 8, 40),
                                                (17, 16, 132), (128, 16, 132), (8, 256, 132),
                                                (1, 1, 132), (3, 1000, 132)])
def test_persistent_walk_takes_every_tile_once(n_m, heads, programs):
    """Every query tile of every head is walked by exactly one program, and no program walks
    nothing."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    walks = _persistent_walk(n_m, heads, programs)
    taken = [tile for walk in walks for tile in walk]
    assert sorted(taken) == [(bh, m) for bh in range(heads) for m in range(n_m)]
    assert all(walks) and len(walks) <= programs


@pytest.mark.parametrize("n_m,heads", [(8, 256), (32, 64), (128, 16), (32, 128), (64, 32)])
def test_persistent_walk_balances_causal_tiles(n_m, heads):
    """Causal tiles cost their key tiles (query tile ``m`` sees ``m + 1``): on 132 SMs the
    busiest program walks at most 4% more than the mean at the prefill shapes (16k tokens per
    batch, 1k to 16k long; the strided walk in plain order gave up to 57% more)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    loads = [sum(m + 1 for _, m in walk) for walk in _persistent_walk(n_m, heads, 132)]
    assert max(loads) <= 1.04 * sum(loads) / 132


def test_gluon_dq_choice(monkeypatch):
    """The Gluon dQ kernel serves plain dense inputs (GQA and MLA's 192/128 included) where
    ``flash_common.gluon_fits`` holds: from 4k tokens, causal or not, with a window only
    under ``GLUON_DQ_WINDOWS`` (``flash_bwd.GLUON_DQ_MIN_SEQ``); ``ATTNKIT_FLASH_GLUON=1``
    drops those rules, ``0`` and
    ``GLUON_DQ`` unset turn it off, ``GLUON_DQ_MLA`` unset leaves MLA out."""
    from attnkit.kernels import flash_bwd, flash_common
    q = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16)
    kv = torch.zeros(1, 8, 2, 128, dtype=torch.bfloat16)

    def choice(q, k, v, do, *, plain=True, seq=4096, causal=False, window=(-1, -1)):
        return flash_bwd._gluon_dq(q, k, v, do, plain=plain, seq=seq, causal=causal,
                                   window=window)

    monkeypatch.delenv("ATTNKIT_FLASH_GLUON", raising=False)
    assert not choice(q, kv, kv, q)  # CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(flash_common, "interpreting", lambda: False)
    monkeypatch.setattr(flash_common, "device_capability", lambda device: (9, 0))
    monkeypatch.setattr(flash_common.triton, "__version__", flash_common.GLUON_TRITON[0] + "0")
    assert choice(q, kv, kv, q) and choice(q, q, q, q) and not choice(q, kv, kv, q, seq=4095)
    assert choice(q, kv, kv, q, causal=True) and not choice(q, kv, kv, q, seq=4095, causal=True)
    assert not choice(q, kv, kv, q, seq=16384, window=(1023, -1))
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_WINDOWS", True)
    assert choice(q, kv, kv, q, seq=16384, window=(1023, -1))
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_WINDOWS", False)
    assert not choice(q, kv, kv, q, plain=False)
    assert not choice(q.half(), kv, kv, q)
    d64 = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    assert not choice(d64, d64, d64, d64, seq=16384)  # head dim 64: measured slower
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_D64", True)
    assert choice(d64, d64, d64, d64)
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_D64", False)
    # MLA: q and k 192 wide, v and dO 128 (not dv 192)
    mla_q, mla_k = torch.zeros(1, 8, 4, 192, dtype=torch.bfloat16), torch.zeros(
        1, 8, 2, 192, dtype=torch.bfloat16)
    assert choice(mla_q, mla_k, kv, q, causal=True) and not choice(mla_q, mla_k, kv, q, seq=4095)
    assert not choice(mla_q, mla_k, mla_k, mla_q)
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_MLA", False)
    assert not choice(mla_q, mla_k, kv, q) and choice(q, kv, kv, q)
    monkeypatch.setattr(flash_bwd, "GLUON_DQ_MLA", True)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    assert choice(q, kv, kv, q, seq=8, causal=True, window=(3, 0))
    monkeypatch.setattr(flash_bwd, "GLUON_DQ", False)
    assert not choice(q, kv, kv, q)
    monkeypatch.setattr(flash_bwd, "GLUON_DQ", True)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "0")
    assert not choice(q, kv, kv, q)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "x")
    with pytest.raises(ValueError, match="ATTNKIT_FLASH_GLUON"):
        choice(q, kv, kv, q)


def test_gluon_window_constexprs_drop_the_right_side_under_causal():
    """``gluon_sm90.window_constexprs``: a window passes through as it is, and with causal
    attention its right side (the diagonal bounds it) becomes unbounded."""
    gluon_sm90 = pytest.importorskip("attnkit.kernels.gluon_sm90")
    assert gluon_sm90.window_constexprs((64, 32), False) == (64, 32)
    assert gluon_sm90.window_constexprs((1023, 0), True) == (1023, -1)
    assert gluon_sm90.window_constexprs((-1, -1), True) == (-1, -1)


def test_q_slots_fall_back_to_one_where_two_do_not_fit():
    """``flash_fwd_gluon.q_slots_that_fit``: two Q slots beside two K/V slots at head dim 128
    (197 KB) and four at 64, but not beside three at 128 or at MLA's 192/128 (256 KB), where
    the persistent kernel keeps one."""
    flash_fwd_gluon = pytest.importorskip("attnkit.kernels.flash_fwd_gluon")
    fit = functools.partial(flash_fwd_gluon.q_slots_that_fit, block_m=128, block_n=128)
    assert fit(2, d=128, dv=128, stages=2) == 2 and fit(2, d=64, dv=64, stages=4) == 2
    assert fit(2, d=128, dv=128, stages=3) == 1 and fit(2, d=192, dv=128, stages=2) == 1
    assert fit(1, d=192, dv=128, stages=3) == 1


def test_forward_schedule_overlaps_where_it_measured_faster(monkeypatch):
    """``flash_fwd_gluon.schedule``: the overlapped softmax in 3 slots without a causal mask
    and from 4k causal tokens at head dim 128, 16k at 64; the plain walk in 2 below that,
    where 3 slots do not fit (MLA's 192/128) and with ``OVERLAP`` off."""
    flash_fwd_gluon = pytest.importorskip("attnkit.kernels.flash_fwd_gluon")
    schedule = functools.partial(flash_fwd_gluon.schedule, d=128, dv=128)
    assert schedule(causal=False, seq=1024) == (True, 3)
    assert schedule(causal=True, seq=16384) == (True, 3)
    assert schedule(causal=True, seq=4096) == (True, 3)
    assert schedule(causal=True, seq=4095) == (False, 2)
    assert flash_fwd_gluon.schedule(causal=True, seq=16383, d=64, dv=64) == (False, 2)
    assert flash_fwd_gluon.schedule(causal=False, seq=1024, d=64, dv=64) == (True, 3)
    assert flash_fwd_gluon.schedule(causal=False, seq=4096, d=192, dv=128) == (False, 2)
    assert flash_fwd_gluon.schedule(causal=True, seq=16384, d=64, dv=64) == (True, 3)
    monkeypatch.setattr(flash_fwd_gluon, "OVERLAP", False)
    assert schedule(causal=False, seq=16384) == (False, 2)
    fits = functools.partial(flash_fwd_gluon.shared_fits, q_slots=1, block_m=128, block_n=128)
    assert fits(stages=3, d=128, dv=128) and not fits(stages=4, d=128, dv=128)
    assert fits(stages=2, d=192, dv=128) and not fits(stages=3, d=192, dv=128)


def test_gluon_dkdv_defaults_by_head_dim_and_window(monkeypatch):
    """``flash_bwd_gluon``: 3 slots and 32-query tiles at MLA's 192, 2 and 64 at 128; the
    split walk with or without a window, not at MLA's 192; with ``SPLIT_MASKS`` off, with a
    window only."""
    fbg = pytest.importorskip("attnkit.kernels.flash_bwd_gluon")
    assert (fbg.stages_for(192), fbg.block_m_for(192)) == (3, 32)
    assert (fbg.stages_for(128), fbg.block_m_for(128), fbg.stages_for(64)) == (2, 64, 2)
    assert fbg.split_for((1023, -1)) and fbg.split_for((-1, 7))
    assert fbg.split_for((-1, -1)) and fbg.split_for((-1, -1), head_dim=64)
    assert not fbg.split_for((1023, -1), head_dim=192) and not fbg.split_for((-1, -1), 192)
    monkeypatch.setattr(fbg, "SPLIT_MASKS", False)
    assert not fbg.split_for((-1, -1)) and fbg.split_for((1023, -1))


def test_gluon_launchers_resolve_their_defaults(monkeypatch):
    """What ``gluon_fwd`` and ``gluon_dkdv`` launch with (``fast_launch.run`` recorded, CPU
    tensors): the forward's schedule where ``overlap`` is not given (overlapped in 3 slots at
    1k full, plain in 2 at 1k causal and for MLA), ``STAGES`` where it
    is, the split walk by default but for MLA; the dK/dV kernel's 3 slots and 32-query tiles
    at MLA's 192 and its split walk, not at MLA's 192; the dQ kernel's 128-key split walk, 64
    keys and no split at MLA's 192; the forward's ``EARLY_Q`` off unless asked for."""
    ffg = pytest.importorskip("attnkit.kernels.flash_fwd_gluon")
    fbg = pytest.importorskip("attnkit.kernels.flash_bwd_gluon")
    from attnkit.kernels import fast_launch
    launched = []
    monkeypatch.setattr(fast_launch, "run", lambda fn, grid, args, kw: launched.append(kw))
    monkeypatch.setattr(ffg, "_ensure_allocator", lambda: None)
    monkeypatch.setattr(fbg, "_ensure_allocator", lambda: None)

    def fwd(d=128, dv=128, **kw):
        q, kv = torch.zeros(1, 1024, 2, d, dtype=torch.bfloat16), torch.zeros(
            1, 1024, 2, dv, dtype=torch.bfloat16)
        ffg.gluon_fwd(q, torch.zeros_like(q), kv, torch.zeros_like(kv), torch.zeros(1, 2, 1024),
                      scale=0.1, **kw)
        got = launched.pop()
        return got["OVERLAP"], got["STAGES"], got["SPLIT_MASKS"], got["Q_SLOTS"]

    assert fwd(causal=False) == (True, 3, True, 1)
    assert fwd(causal=True) == (False, 2, True, 1)
    assert fwd(d=192, causal=False) == (False, 2, False, 1)  # MLA: no split yet
    assert fwd(causal=False, overlap=False) == (False, 2, True, 1)
    assert fwd(causal=True, overlap=True, split_masks=False, q_slots=2) == (True, 2, False, 2)
    assert fwd(causal=False, overlap=True, stages=3, q_slots=2) == (True, 3, True, 1)  # no fit
    q = torch.zeros(1, 1024, 2, 128, dtype=torch.bfloat16)
    ffg.gluon_fwd(q, q, q, torch.zeros_like(q), torch.zeros(1, 2, 1024), causal=True,
                  scale=0.1)
    assert launched.pop()["EARLY_Q"] is False and " early" not in ffg.tiling  # off until timed
    ffg.gluon_fwd(q, q, q, torch.zeros_like(q), torch.zeros(1, 2, 1024), causal=True,
                  scale=0.1, early_q=True)
    assert launched.pop()["EARLY_Q"] is True and ffg.tiling.endswith(" split early")

    def dkdv(d=128, **kw):
        q, v = torch.zeros(1, 256, 2, d, dtype=torch.bfloat16), torch.zeros(
            1, 256, 2, 128, dtype=torch.bfloat16)
        lse = torch.zeros(1, 2, 256)
        fbg.gluon_dkdv(q, q, v, v, lse, lse, torch.zeros_like(q), torch.zeros_like(v),
                       scale=0.1, **kw)
        got = launched.pop()
        return got["STAGES"], got["BLOCK_M"], got["SPLIT_MASKS"]

    assert dkdv(causal=True) == (2, 64, True)
    assert dkdv(d=192, causal=True) == (3, 32, False)
    assert dkdv(d=192, causal=True, window=(255, -1)) == (3, 32, False)
    assert dkdv(causal=True, window=(1023, -1)) == (2, 64, True)
    assert dkdv(causal=False, window=(64, 32), split_masks=False, stages=3) == (3, 64, False)

    fdq = pytest.importorskip("attnkit.kernels.flash_dq_gluon")
    monkeypatch.setattr(fdq, "_ensure_allocator", lambda: None)

    def dq(d=128, dv=128, **kw):
        q, v = torch.zeros(1, 256, 2, d, dtype=torch.bfloat16), torch.zeros(
            1, 256, 2, dv, dtype=torch.bfloat16)
        lse = torch.zeros(1, 2, 256)
        fdq.gluon_dq(q, q, v, v, lse, lse, torch.zeros_like(q), scale=0.1, **kw)
        got = launched.pop()
        return got["BLOCK_N"], got["SPLIT_MASKS"]

    assert dq(causal=True) == (128, True) and dq(causal=False) == (128, True)
    assert dq(d=192, causal=True) == (64, False)  # MLA: 64 keys, no split yet
    assert dq(causal=True, block_n=64, split_masks=False) == (64, False)
