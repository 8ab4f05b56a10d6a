"""Position helpers: offsets (static and per-sequence) and document-wise positions."""

from __future__ import annotations

import pytest
import torch

from attnkit.ops.positions import (
    positions_from_boundaries,
    positions_from_cu_seqlens,
    positions_from_offset,
)


def test_int_offset():
    pos = positions_from_offset(4, 7)
    assert pos.dtype == torch.int64
    assert pos.tolist() == [7, 8, 9, 10]


def test_int_offset_with_batch():
    pos = positions_from_offset(3, 2, batch=2)
    assert pos.tolist() == [[2, 3, 4], [2, 3, 4]]


def test_scalar_tensor_offset():
    pos = positions_from_offset(3, torch.tensor(5, dtype=torch.int32))
    assert pos.dtype == torch.int64
    assert pos.tolist() == [5, 6, 7]


def test_per_sequence_offset():
    pos = positions_from_offset(2, torch.tensor([0, 9, 3]))
    assert pos.tolist() == [[0, 1], [9, 10], [3, 4]]


def test_zero_length():
    assert positions_from_offset(0, 3).shape == (0,)


def test_cu_seqlens_restart_with_empty_segment():
    cu = torch.tensor([0, 3, 3, 5, 9], dtype=torch.int32)
    pos = positions_from_cu_seqlens(cu)
    assert pos.dtype == torch.int64
    assert pos.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]


def test_cu_seqlens_matches_loop():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 6, (9,), generator=gen)
    cu = torch.cat((torch.zeros(1, dtype=torch.int64), lengths.cumsum(0))).to(torch.int32)
    expected = torch.cat([torch.arange(int(n)) for n in lengths])
    assert torch.equal(positions_from_cu_seqlens(cu), expected)


def test_cu_seqlens_only_zero():
    assert positions_from_cu_seqlens(torch.zeros(1, dtype=torch.int32)).shape == (0,)


def test_boundaries_indices():
    assert positions_from_boundaries([3, 5], 7).tolist() == [0, 1, 2, 0, 1, 0, 1]
    # unordered, duplicated, includes 0, tensor form
    pos = positions_from_boundaries(torch.tensor([5, 0, 3, 3]), 7)
    assert pos.tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert positions_from_boundaries([], 3).tolist() == [0, 1, 2]


def test_boundaries_mask_batched():
    mask = torch.tensor([[False, False, True, False, True],
                         [True, False, False, False, False]])
    pos = positions_from_boundaries(mask, 5)
    assert pos.tolist() == [[0, 1, 0, 1, 0], [0, 1, 2, 3, 4]]


def test_boundaries_agree_with_cu_seqlens():
    cu = torch.tensor([0, 4, 4, 6, 11], dtype=torch.int32)
    starts = [int(c) for c in cu[:-1] if int(c) < 11]
    assert torch.equal(positions_from_boundaries(starts, 11), positions_from_cu_seqlens(cu))


# ----------------------------------------------------------------------------------- errors


def test_offset_errors():
    with pytest.raises(ValueError, match=r"offset must be >= 0, got -1"):
        positions_from_offset(3, -1)
    with pytest.raises(ValueError, match=r"offset must be >= 0, got \[0, -2\]"):
        positions_from_offset(3, torch.tensor([0, -2]))
    with pytest.raises(TypeError, match=r"offset must be an int or an int tensor \[batch\], got float"):
        positions_from_offset(3, 1.5)
    with pytest.raises(TypeError, match=r"offset must be an integer tensor .* got torch.float32"):
        positions_from_offset(3, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"offset must be a 0-D int tensor or an int tensor \[batch\], got a 2-D"):
        positions_from_offset(3, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"offset must have one entry per sequence \(batch=3\), got shape \(2,\)"):
        positions_from_offset(3, torch.tensor([0, 1]), batch=3)
    with pytest.raises(ValueError, match=r"seq_len must be >= 0, got -2"):
        positions_from_offset(-2)
    with pytest.raises(ValueError, match=r"offset must be on device \(meta\), got cpu"):
        positions_from_offset(3, torch.tensor([1]), device="meta")


def test_cu_seqlens_errors():
    with pytest.raises(TypeError, match=r"cu_seqlens must be int32, got torch.int64"):
        positions_from_cu_seqlens(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match=r"cu_seqlens must be a torch.Tensor, got list"):
        positions_from_cu_seqlens([0, 2])
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D \[num_docs \+ 1\], got a 2-D"):
        positions_from_cu_seqlens(torch.zeros(1, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens must start at 0, got 1"):
        positions_from_cu_seqlens(torch.tensor([1, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens must be non-decreasing, got \[0, 3, 2\]"):
        positions_from_cu_seqlens(torch.tensor([0, 3, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens must have at least one entry"):
        positions_from_cu_seqlens(torch.zeros(0, dtype=torch.int32))


def test_boundaries_errors():
    with pytest.raises(ValueError, match=r"boundaries must lie in \[0, seq_len=4\), got \[1, 4\]"):
        positions_from_boundaries([1, 4], 4)
    with pytest.raises(ValueError, match=r"boundaries must lie in \[0, seq_len=4\), got \[-1\]"):
        positions_from_boundaries(torch.tensor([-1]), 4)
    with pytest.raises(ValueError, match=r"bool mask must have shape \[\.\.\., seq_len=4\], got \(2, 5\)"):
        positions_from_boundaries(torch.zeros(2, 5, dtype=torch.bool), 4)
    with pytest.raises(TypeError, match=r"boundaries\[1\] must be an int, got float"):
        positions_from_boundaries([1, 2.0], 4)
    with pytest.raises(TypeError, match=r"boundaries must be an integer tensor .* got torch.float32"):
        positions_from_boundaries(torch.tensor([1.0]), 4)
    with pytest.raises(TypeError, match=r"boundaries must be a sequence of ints, .* got int"):
        positions_from_boundaries(3, 4)
