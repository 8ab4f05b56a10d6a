"""``generate``: prefill then decode with a KV cache, greedy or sampled."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.cache import PagedKVCache
from attnkit.models.decoder import Decoder
from attnkit.ops._checks import check_choice, check_int, check_number


@torch.no_grad()
def generate(model: Decoder, prompts: Sequence[Sequence[int]] | torch.Tensor, *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, cache: str = "paged",
             block_size: int = 16) -> list[list[int]]:
    """Continue each prompt by ``max_new_tokens`` tokens.

    Prompts may have different lengths: each is prefilled on its own (one step per prompt), then
    all sequences decode together, one token per step, through ``attnkit.decode_attention`` (or
    the MLA latent decode). ``temperature == 0`` is greedy (argmax); otherwise tokens are
    sampled from ``softmax(logits / temperature)``, restricted to the ``top_k`` largest when
    given.

    Args:
        model: an ``attnkit.models.Decoder``.
        prompts: lists of token ids (at least one token each), or an int tensor ``[b, s]``.
        max_new_tokens: tokens to add per prompt (>= 1).
        temperature: 0 for greedy decoding, else the sampling temperature (> 0).
        top_k: sample among the ``top_k`` most likely tokens only.
        generator: the random generator of sampling (reproducible runs).
        cache: ``"paged"`` (block size ``block_size``; MLA models page their latent cache) or
            ``"static"`` (prompts of different lengths then run one at a time).

    Returns:
        One list per prompt: the prompt followed by its new tokens.

    Raises:
        TypeError, ValueError: empty prompts, bad sizes, negative temperature, unknown cache.

    Example:
        >>> import torch
        >>> from attnkit.models import Decoder, DecoderConfig, generate
        >>> _ = torch.manual_seed(0)
        >>> model = Decoder(DecoderConfig(vocab_size=50, hidden_size=32, num_layers=2,
        ...                               num_heads=4, num_kv_heads=2))
        >>> out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=4)
        >>> [len(seq) for seq in out]
        [7, 6]
    """
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    prompts = [list(p) for p in prompts]
    check_choice("cache", cache, ["paged", "static"])
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must hold at least one prompt of at least one token")
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    temperature = check_number("temperature", temperature, minimum=0.0)
    if top_k is not None:
        check_int("top_k", top_k, minimum=1)
    device = model.embed.weight.device
    longest = max(len(p) for p in prompts) + max_new_tokens
    kind = cache
    if cache == "static":
        if len({len(p) for p in prompts}) != 1:
            return [generate(model, [p], max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, generator=generator, cache=cache,
                             block_size=block_size)[0] for p in prompts]
    kv = model.make_cache(kind=kind, batch=len(prompts), max_seq=longest,
                          block_size=block_size)
    if isinstance(kv, PagedKVCache):
        ids = [kv.add_sequence() for _ in prompts]
        last = torch.cat([model(torch.tensor([p], device=device), cache=kv, seq_ids=[i])[:, -1]
                          for i, p in zip(ids, prompts)])  # [b, vocab]
        step = {"seq_ids": ids}
    else:
        last = model(torch.tensor(prompts, device=device), cache=kv)[:, -1]  # [b, vocab]
        step = {}
    outputs = [list(p) for p in prompts]
    for t in range(max_new_tokens):
        nxt = _pick(last, temperature, top_k, generator)  # [b]
        for seq, token in zip(outputs, nxt.tolist()):
            seq.append(token)
        if t + 1 < max_new_tokens:
            last = model(nxt[:, None], cache=kv, **step)[:, -1]
    return outputs


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row of ``logits [b, vocab]``: argmax, or a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # [b, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
