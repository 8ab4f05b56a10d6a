"""``attnkit demo``: run each attention variant once and print what it costs and how exact it is.

On a fresh machine with no GPU it runs on the CPU; on a GPU it runs there. For each variant it
runs a forward and a backward pass (one training step's attention), and compares the output with
a float64 run of the reference path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

import attnkit

Variant = tuple[str, Callable[[torch.device, torch.dtype], dict]]


def _dense(b, s, hq, hk, d, device, dtype, **opts):
    q = torch.randn(b, s, hq, d, device=device, dtype=dtype)
    k = torch.randn(b, s, hk, d, device=device, dtype=dtype)
    v = torch.randn(b, s, hk, d, device=device, dtype=dtype)
    return dict(q=q, k=k, v=v, opts=opts, tokens=b * s)


def _packed(lengths, hq, hk, d, device, dtype, **opts):
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                      device=device)
    q = torch.randn(total, hq, d, device=device, dtype=dtype)
    k = torch.randn(total, hk, d, device=device, dtype=dtype)
    v = torch.randn(total, hk, d, device=device, dtype=dtype)
    return dict(q=q, k=k, v=v, opts=dict(cu_seqlens_q=cu, cu_seqlens_k=cu, **opts), tokens=total)


def variants(size: int) -> list[Variant]:
    """The attention variants the demo runs; ``size`` is the sequence length."""
    return [
        ("MHA causal", lambda dev, dt: _dense(2, size, 8, 8, 64, dev, dt, causal=True)),
        ("GQA 8:2 causal", lambda dev, dt: _dense(2, size, 8, 2, 64, dev, dt, causal=True)),
        ("MQA bidirectional", lambda dev, dt: _dense(2, size, 8, 1, 64, dev, dt)),
        ("sliding window 64", lambda dev, dt: _dense(2, size, 8, 2, 64, dev, dt, causal=True,
                                                     window=(63, 0))),
        ("softcap 30", lambda dev, dt: _dense(2, size, 8, 2, 64, dev, dt, causal=True,
                                              softcap=30.0)),
        ("packed documents", lambda dev, dt: _packed([size // 2, size // 4, size // 4 + 3], 8, 2,
                                                     64, dev, dt, causal=True)),
    ]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--seq", type=int, default=None,
                        help="sequence length (default: 256 on CPU, 4096 on GPU)")


def run(args: argparse.Namespace) -> int:
    """Run every variant; print tokens/s of forward and backward and the max error."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = args.seq or (4096 if device.type == "cuda" else 256)
    table = Table(title=f"attnkit demo on {device} ({dtype}, seq {size})")
    for column in ("variant", "forward tok/s", "fwd+bwd tok/s", "max |out - fp64 ref|"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, make in variants(size):
        torch.manual_seed(0)
        case = make(device, dtype)
        q, k, v = (case[n].requires_grad_(True) for n in ("q", "k", "v"))
        _sync(device)
        start = time.perf_counter()
        out = attnkit.attention(q, k, v, **case["opts"])
        _sync(device)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        out = attnkit.attention(q, k, v, **case["opts"])
        out.float().square().mean().backward()
        _sync(device)
        both = time.perf_counter() - start
        with torch.no_grad():
            truth = attnkit.attention(q.double(), k.double(), v.double(), backend="reference",
                                      **case["opts"])
        error = (out.double() - truth).abs().max().item()
        table.add_row(name, f"{case['tokens'] / forward:,.0f}", f"{case['tokens'] / both:,.0f}",
                      f"{error:.2e}")
    Console().print(table)
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


COMMAND = ("run each attention variant: speed and error against the float64 reference",
           _arguments, run)
