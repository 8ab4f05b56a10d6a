"""The two ceilings of the roofline, measured on the device of the run.

- ``bf16_matmul_TFLOPs``: an 8192 x 8192 x 8192 bf16 matrix product through ``torch.matmul``;
- ``d2d_copy_TBps``: a 1 GiB device-to-device copy, counting bytes read plus bytes written.

Both are CUDA-event medians on random data (never zeros, which run faster). On devices other than
CUDA nothing is measured and an empty dict is returned.

Example:
    >>> import torch
    >>> measure_ceilings(torch.device("cpu"))
    {}
"""

from __future__ import annotations

import torch

MATMUL_N = 8192
COPY_BYTES = 2**30


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """Measured bf16 matmul TFLOP/s and copy TB/s on ``device`` (CUDA), else ``{}``."""
    if device.type != "cuda":
        return {}
    matmul = _matmul_tflops(device)
    copy = _copy_tbps(device)
    torch.cuda.empty_cache()
    return {"bf16_matmul_TFLOPs": round(matmul, 2), "d2d_copy_TBps": round(copy, 3)}


def _matmul_tflops(device: torch.device) -> float:
    from triton.testing import do_bench

    a = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16)
    ms = do_bench(lambda: torch.matmul(a, b), warmup=100, rep=500, return_mode="median")
    return 2 * MATMUL_N**3 / (ms * 1e-3) / 1e12


def _copy_tbps(device: torch.device) -> float:
    from triton.testing import do_bench

    src = torch.randn(COPY_BYTES // 2, device=device, dtype=torch.bfloat16)  # bf16: 2 bytes
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=100, rep=500, return_mode="median")
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e12  # read + write
