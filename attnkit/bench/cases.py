"""Attention shapes of the benchmark suites, their random inputs and their visibility.

One ``AttentionCase`` describes a dense batch ``[b, s, h, d]`` or, with ``doc_lengths``, a packed
batch of documents ``[total, h, d]`` (``b`` is then 1 and ``seq`` the total). Causal masks are
bottom-right aligned as everywhere in attnkit; every case here has ``seq_q == seq_k``.

Example:
    >>> case = AttentionCase(name="d128 s1k", batch=2, seq=1024, heads_q=16, heads_kv=16,
    ...                      head_dim=128, causal=True)
    >>> case.tokens, case.visible_pairs()
    (2048, 1048576.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class AttentionCase:
    """One attention shape.

    Attributes:
        name: readable label (unique within a suite).
        batch, seq: dense batch size and sequence length (packed: 1 and the total tokens).
        heads_q, heads_kv: query and key/value heads (``heads_q % heads_kv == 0``).
        head_dim, head_dim_v: q/k and v head dims (``head_dim_v`` None = ``head_dim``).
        causal: bottom-right causal mask.
        window: ``(left, right)`` sliding window, ``-1`` = unbounded.
        doc_lengths: packed documents (their lengths sum to ``seq``), or None for dense.
        dtype: name of the input dtype (a key of ``DTYPES``).
        baseline: name of another case of the suite this one is compared with by time
            (e.g. a sliding window against full causal attention at the same length).
    """

    name: str
    batch: int
    seq: int
    heads_q: int
    heads_kv: int
    head_dim: int
    head_dim_v: int | None = None
    causal: bool = False
    window: tuple[int, int] = (-1, -1)
    doc_lengths: tuple[int, ...] | None = None
    dtype: str = "bfloat16"
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.heads_kv < 1 or self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q ({self.heads_q}) must be a multiple of heads_kv "
                             f"({self.heads_kv})")
        if self.doc_lengths is not None:
            if self.batch != 1 or sum(self.doc_lengths) != self.seq:
                raise ValueError(f"a packed case needs batch 1 and doc_lengths summing to seq "
                                 f"({self.seq}), got batch {self.batch} and sum "
                                 f"{sum(self.doc_lengths)}")

    @property
    def dv(self) -> int:
        """The value head dim."""
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    @property
    def packed(self) -> bool:
        """True for a packed variable-length batch."""
        return self.doc_lengths is not None

    @property
    def tokens(self) -> int:
        """Query tokens in the batch."""
        return self.batch * self.seq

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def segments(self) -> list[int]:
        """Lengths of the independent sequences: the documents, or ``batch`` times ``seq``."""
        return list(self.doc_lengths) if self.packed else [self.seq] * self.batch

    def visible_pairs(self) -> float:
        """(query, key) pairs that are computed, summed over sequences (not heads).

        Plain causal counts half of the square, as FlashAttention's benchmarks do; a sliding
        window counts its exact visible area.
        """
        return float(sum(_pairs(n, causal=self.causal, window=self.window)
                         for n in self.segments))

    def describe(self) -> dict:
        """The case as plain JSON values."""
        out = asdict(self)
        out["window"] = list(self.window)
        out["doc_lengths"] = None if self.doc_lengths is None else list(self.doc_lengths)
        return out


def _pairs(n: int, *, causal: bool, window: tuple[int, int]) -> float:
    """Visible pairs of one sequence of ``n`` queries and ``n`` keys."""
    if window == (-1, -1):
        return n * n * (0.5 if causal else 1.0)
    left, right = window
    total = 0
    for i in range(n):  # query i sees keys lo..hi (seq_q == seq_k: the diagonal is i)
        lo = 0 if left < 0 else max(0, i - left)
        hi = i if causal else (n - 1 if right < 0 else min(n - 1, i + right))
        if causal and right >= 0:
            hi = min(hi, i + right)
        total += max(0, hi - lo + 1)
    return float(total)


def random_doc_lengths(total: int, *, low: int, high: int, seed: int) -> tuple[int, ...]:
    """Random document lengths in ``[low, high]`` summing exactly to ``total`` (last one cut).

    Example:
        >>> sum(random_doc_lengths(16384, low=256, high=4096, seed=0))
        16384
    """
    gen = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        n = int(torch.randint(low, high + 1, (1,), generator=gen))
        lengths.append(min(n, total - sum(lengths)))
    return tuple(lengths)


def make_inputs(case: AttentionCase, device: torch.device, seed: int) -> dict:
    """Fresh random inputs of ``case``: q, k, v requiring grad, dout, and packing metadata.

    Returns:
        ``{"q", "k", "v", "dout"}`` with dense shapes ``[b, s, h, d]`` (packed ``[total, h, d]``),
        plus for packed cases ``"cu_seqlens"`` (int32 ``[n + 1]``), ``"max_seqlen"`` (int) and
        ``"doc_ids"`` (int32 ``[total]``, the document of each token).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = case.torch_dtype
    lead = (case.seq,) if case.packed else (case.batch, case.seq)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    inputs = {
        "q": rand(*lead, case.heads_q, case.head_dim).requires_grad_(),
        "k": rand(*lead, case.heads_kv, case.head_dim).requires_grad_(),
        "v": rand(*lead, case.heads_kv, case.dv).requires_grad_(),
        "dout": rand(*lead, case.heads_q, case.dv),
    }
    if case.packed:
        lengths = torch.tensor(case.doc_lengths)
        cu = torch.zeros(len(case.doc_lengths) + 1, dtype=torch.int32)
        cu[1:] = lengths.cumsum(0)
        inputs["cu_seqlens"] = cu.to(device)
        inputs["max_seqlen"] = int(lengths.max())
        inputs["doc_ids"] = torch.repeat_interleave(
            torch.arange(len(lengths), dtype=torch.int32), lengths).to(device)
    return inputs


def visibility(case: AttentionCase, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Bool ``[len(rows), seq]``: which keys each query row in ``rows`` sees (True = attend).

    Spelled out from the definitions (bottom-right causal, window, same document), for the
    correctness check; ``rows`` index the sequence (packed: the concatenated tokens).
    """
    i = rows.to(device).view(-1, 1)  # [m, 1]
    j = torch.arange(case.seq, device=device).view(1, -1)  # [1, s]
    vis = torch.ones(i.shape[0], case.seq, dtype=torch.bool, device=device)
    if case.packed:
        lengths = torch.tensor(case.doc_lengths, device=device)
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        vis &= doc[i] == doc[j]
    left, right = case.window
    if case.causal:
        vis &= j <= i
    if left >= 0:
        vis &= j >= i - left
    if right >= 0:
        vis &= j <= i + right
    return vis


def shapes_summary(cases: Sequence[AttentionCase]) -> list[str]:
    """One line per case, for ``attnkit bench --list``."""
    lines = []
    for c in cases:
        dims = f"d={c.head_dim}" + (f"/dv={c.dv}" if c.dv != c.head_dim else "")
        mask = "causal" if c.causal else "full"
        if c.window != (-1, -1):
            mask += f" window={c.window}"
        layout = (f"packed {len(c.doc_lengths)} docs, {c.seq} tokens" if c.packed
                  else f"b={c.batch} s={c.seq}")
        lines.append(f"{c.name}: {layout}, heads {c.heads_q}:{c.heads_kv}, {dims}, {mask}, "
                     f"{c.dtype}")
    return lines
