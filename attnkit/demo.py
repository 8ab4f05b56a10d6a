"""``attnkit demo``: each attention variant in a small decoder: prefill, decode, one training step.

On a fresh machine with no GPU it runs on the CPU (float32, a tiny model, a few seconds); on a
GPU it runs there (bfloat16, a larger model, Triton kernels). For every variant (MHA, GQA, MQA,
sliding window, MLA) it builds an ``attnkit.models.Decoder`` and

1. prefills a batch of prompts into a paged KV cache (for MLA, the paged latent cache),
2. decodes new tokens one at a time (greedy) through ``attnkit.decode_attention`` /
   ``attnkit.mla_decode_attention``,
3. runs one training step (full causal forward, cross-entropy, backward, SGD update) on a copy,

and prints tokens/s of each phase, the KV-cache bytes per token (all layers) and the largest
difference between the cached path's logits and a float64 full forward on the reference path.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from attnkit.cache import PagedKVCache
from attnkit.models import Decoder, DecoderConfig


def variants(hidden: int, heads: int, window: int) -> dict[str, dict]:
    """Decoder configs of each attention variant (sizes besides the attention)."""
    head_dim = hidden // heads
    return {
        "MHA": dict(num_kv_heads=heads),
        f"GQA {heads}:{heads // 4}": dict(num_kv_heads=heads // 4),
        "MQA": dict(num_kv_heads=1),
        f"window {window}": dict(num_kv_heads=heads // 4, window=window),
        "MLA": dict(attention="mla", kv_lora_rank=2 * head_dim,
                                   qk_nope_head_dim=head_dim, qk_rope_head_dim=head_dim // 2,
                                   v_head_dim=head_dim),
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--seq", type=int, default=None,
                        help="prompt length (default: 64 on CPU, 512 on GPU)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens decoded per prompt (default: 8 on CPU, 32 on GPU)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


@torch.no_grad()
def _serve(model: Decoder, prompts: torch.Tensor, new_tokens: int, device: torch.device):
    """Prefill + greedy decode; returns (all tokens, cached-path logits, times, bytes/token)."""
    b, s = prompts.shape
    cache = model.make_cache(kind="paged", batch=b, max_seq=s + new_tokens, block_size=16)
    step = {}
    if isinstance(cache, PagedKVCache):
        step = {"seq_ids": [cache.add_sequence() for _ in range(b)]}
    logits, prefill = _timed(device, lambda: model(prompts, cache=cache, **step))  # [b, s, V]
    pieces, tokens = [logits], [prompts]
    nxt = logits[:, -1].argmax(-1, keepdim=True)  # [b, 1]

    def decode():
        nonlocal nxt
        for _ in range(new_tokens):
            tokens.append(nxt)
            out = model(nxt, cache=cache, **step)  # [b, 1, V]
            pieces.append(out)
            nxt = out[:, -1].argmax(-1, keepdim=True)

    _, decode_time = _timed(device, decode)
    # The last step's logits predict a token past the sequence: drop them for the comparison.
    return (torch.cat(tokens, 1), torch.cat(pieces, 1)[:, :-1], prefill, decode_time,
            cache.bytes_per_token)


def _train_step(model: Decoder, tokens: torch.Tensor, device: torch.device) -> float:
    trainee = copy.deepcopy(model).train()
    opt = torch.optim.SGD(trainee.parameters(), lr=1e-3)

    def step():
        logits = trainee(tokens[:, :-1])  # [b, s - 1, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: the first backward allocates and compiles
    _, seconds = _timed(device, step)
    return seconds


def run(args: argparse.Namespace) -> int:
    """Run every variant and print the table."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    seq = args.seq or (512 if gpu else 64)
    new = args.new_tokens or (32 if gpu else 8)
    hidden, heads, layers, batch = (1024, 16, 4, 8) if gpu else (128, 8, 2, 2)
    window = max(4, seq // 4)
    table = Table(title=f"attnkit demo on {device} ({dtype}; batch {batch}, prompt {seq}, "
                        f"{new} new tokens, {layers} layers, hidden {hidden})")
    for column in ("variant", "prefill tok/s", "decode tok/s", "train tok/s",
                   "KV bytes/token", "max |logits - fp64 ref|"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, extra in variants(hidden, heads, window).items():
        torch.manual_seed(0)
        config = DecoderConfig(vocab_size=512, hidden_size=hidden, num_layers=layers,
                               num_heads=heads, **extra)
        model = Decoder(config).to(device=device, dtype=dtype).eval()
        prompts = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        _serve(model, prompts, 2, device)  # warm-up: kernels compile for these shapes
        tokens, logits, prefill, decode, kv_bytes = _serve(model, prompts, new, device)
        train = _train_step(model, tokens, device)
        with torch.no_grad():  # float64 runs on the reference backend everywhere
            reference = copy.deepcopy(model).double()(tokens)  # [b, s + new, V]
        error = (logits.double() - reference[:, :-1]).abs().max().item()
        table.add_row(name, f"{batch * seq / prefill:,.0f}", f"{batch * new / decode:,.0f}",
                      f"{batch * (tokens.shape[1] - 1) / train:,.0f}", f"{kv_bytes:,}",
                      f"{error:.2e}")
    Console().print(table)
    return 0


COMMAND = ("each attention variant in a small decoder: prefill, decode, one training step",
           _arguments, run)
