"""The cached cu_seqlens value checks of attnkit.attention: read once, re-read after writes."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.ops import _cu_seqlens


def _packed(total: int, heads: int = 2, d: int = 16):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(total, heads, d, generator=g) for _ in range(3))


def test_values_are_cached_per_tensor_and_version():
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    assert _cu_seqlens.longest_segment("cu_seqlens_q", cu, total=10) == 7
    version, values = _cu_seqlens._CHECKED[cu]
    assert (version, values) == (cu._version, (0, 3, 10))
    other = torch.tensor([0, 3, 10], dtype=torch.int32)  # same values, another tensor
    assert other not in _cu_seqlens._CHECKED


def test_in_place_write_is_checked_again():
    q, k, v = _packed(10)
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    first = attnkit.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True)
    cu.view(-1)[1] = 8  # through a view: the shared version counter moves
    second = attnkit.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True)
    # The new split [0, 8) + [8, 10) gives other outputs for tokens 3..9.
    assert not torch.allclose(first[3:], second[3:])
    cu[2] = 9
    with pytest.raises(ValueError, match=r"cu_seqlens_q must end at the number of packed "
                                         r"tokens \(10\), got 9"):
        attnkit.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu)


def test_entries_go_with_their_tensors():
    import gc
    cu = torch.tensor([0, 4], dtype=torch.int32)
    _cu_seqlens.longest_segment("cu_seqlens_k", cu, total=4)
    before = len(_cu_seqlens._CHECKED)
    del cu
    gc.collect()
    assert len(_cu_seqlens._CHECKED) == before - 1
