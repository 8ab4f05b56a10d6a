"""Every validation error of attnkit.attention names the argument, the expectation and the value."""

from __future__ import annotations

import pytest
import torch

import attnkit


def _qkv(b=2, sq=5, sk=6, hq=4, hk=2, d=8, dv=8, dtype=torch.float32):
    return (torch.randn(b, sq, hq, d, dtype=dtype), torch.randn(b, sk, hk, d, dtype=dtype),
            torch.randn(b, sk, hk, dv, dtype=dtype))


def _packed():
    q, k, v = torch.randn(7, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 9], dtype=torch.int32)
    return q, k, v, cu_q, cu_k


def test_non_tensor():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"k must be a torch.Tensor, got list"):
        attnkit.attention(q, [1, 2], v)


def test_wrong_rank():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q must be \[batch, seq_q, heads, head_dim\], got a 3-D"):
        attnkit.attention(q[0], k, v)
    q, k, v, cu_q, cu_k = _packed()
    with pytest.raises(ValueError, match=r"k must be packed \[total_k, kv_heads, head_dim\] when "
                                         r"cu_seqlens are given, got a 4-D"):
        attnkit.attention(q, k[None], v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def test_heads_not_divisible():
    q, k, v = _qkv(hq=6, hk=4)
    with pytest.raises(ValueError, match=r"q's heads \(6\) must be a multiple of k's heads \(4\)"):
        attnkit.attention(q, k, v)


def test_shape_mismatches():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"k's head_dim must equal q's \(8\), got 16"):
        attnkit.attention(q, torch.randn(2, 6, 2, 16), v)
    with pytest.raises(ValueError, match=r"k and v must have the same number of keys, got 6 and 5"):
        attnkit.attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match=r"v must have the kv heads of k \(2\), got 1"):
        attnkit.attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match=r"share the batch size, got q 2, k 1, v 2"):
        attnkit.attention(q, k[:1], v)


def test_dtype_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"v must have the dtype of q \(torch.float32\), got "
                                        r"torch.float16"):
        attnkit.attention(q, k, v.half())
    with pytest.raises(TypeError, match=r"q must be float16, bfloat16, float32 or float64, got "
                                        r"torch.int64"):
        attnkit.attention(q.long(), k, v)


def test_device_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"k must be on the device of q \(cpu\), got meta"):
        attnkit.attention(q, k.to("meta"), v)


@pytest.mark.parametrize("window, message", [
    ((-2, 0), r"window left must be >= -1 \(-1 = unbounded\), got -2"),
    ((3, -5), r"window right must be >= -1 \(-1 = unbounded\), got -5"),
    ((1,), r"window must be a \(left, right\) pair, got \(1,\)"),
    ((1.5, 0), r"window left must be an int, got float \(1.5\)"),
])
def test_window_out_of_range(window, message):
    q, k, v = _qkv()
    with pytest.raises((ValueError, TypeError), match=message):
        attnkit.attention(q, k, v, window=window)


def test_scalar_options():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"dropout_p must be < 1.0, got 1.0"):
        attnkit.attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"softcap must be >= 0.0, got -1.0"):
        attnkit.attention(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match=r"scale must be a positive finite number, got -0.5"):
        attnkit.attention(q, k, v, scale=-0.5)
    with pytest.raises(TypeError, match=r"causal must be a bool, got int"):
        attnkit.attention(q, k, v, causal=1)


@pytest.mark.parametrize("cu_q, message, error", [
    (torch.tensor([0, 3, 7], dtype=torch.int64), r"cu_seqlens_q must be int32, got torch.int64",
     TypeError),
    (torch.tensor([1, 3, 7], dtype=torch.int32), r"cu_seqlens_q must start at 0, got 1",
     ValueError),
    (torch.tensor([0, 5, 3, 7], dtype=torch.int32),
     r"cu_seqlens_q must be non-decreasing, got 5 then 3 at index 1", ValueError),
    (torch.tensor([0, 3, 8], dtype=torch.int32),
     r"cu_seqlens_q must end at the number of packed tokens \(7\), got 8", ValueError),
    (torch.tensor([0], dtype=torch.int32),
     r"cu_seqlens_q must be 1-D \[num_segments \+ 1\] with at least 2 entries, got shape \(1,\)",
     ValueError),
])
def test_cu_seqlens_out_of_range(cu_q, message, error):
    q, k, v, _, cu_k = _packed()
    with pytest.raises(error, match=message):
        attnkit.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def test_packed_argument_errors():
    q, k, v, cu_q, cu_k = _packed()
    with pytest.raises(ValueError, match=r"cu_seqlens_k is required with packed inputs"):
        attnkit.attention(q, k, v, cu_seqlens_q=cu_q)
    with pytest.raises(ValueError, match=r"max_seqlen_q \(3\) is smaller than the longest "
                                         r"segment \(4\)"):
        attnkit.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=3)
    with pytest.raises(ValueError, match=r"same number of segments, got 2 and 1"):
        attnkit.attention(q, k, v, cu_seqlens_q=cu_q,
                          cu_seqlens_k=torch.tensor([0, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"key_padding_mask and attn_mask apply to dense"):
        attnkit.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                          attn_mask=torch.ones(7, 9, dtype=torch.bool))
    dq, dk, dv = _qkv()
    with pytest.raises(ValueError, match=r"max_seqlen_k applies to packed inputs"):
        attnkit.attention(dq, dk, dv, max_seqlen_k=6)


def test_mask_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"key_padding_mask must be bool \(True = attend\), got "
                                        r"torch.float32"):
        attnkit.attention(q, k, v, key_padding_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[batch, seq_k\] = \[2, 6\], "
                                         r"got \[2, 5\]"):
        attnkit.attention(q, k, v, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \[3, 6\] does not broadcast to "
                                         r"\[b, hq, sq, sk\] = \[2, 4, 5, 6\]"):
        attnkit.attention(q, k, v, attn_mask=torch.ones(3, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask must be bool .* or float .*, got torch.int32"):
        attnkit.attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"attn_mask must have rank 2 to 4"):
        attnkit.attention(q, k, v, attn_mask=torch.ones(6, dtype=torch.bool))


def test_backend_errors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors without Triton's interpreter
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'triton', 'reference', "
                                         r"got 'cuda'"):
        attnkit.attention(q, k, v, backend="cuda")
    # The Triton kernels need CUDA tensors (or TRITON_INTERPRET=1): the message says why and
    # lists the backend that can serve the call.
    with pytest.raises(ValueError, match=r"backend='triton' cannot serve this call \(triton: .+; "
                                         r"reference: can serve it\)"):
        attnkit.attention(q, k, v, backend="triton")
