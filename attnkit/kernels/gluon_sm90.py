"""What attnkit's Gluon kernels for Hopper share (``flash_fwd_gluon``, ``flash_bwd_gluon``,
``flash_dq_gluon``).

Their partitions: a TMA loader of one warp (rounded up to a warpgroup by the compiler) with
the fewest registers a warp may have, and compute warpgroups that take what it leaves
(``setmaxnreg``: 240 each beside a 24-register loader within a 168-register launch of three
warpgroups); the wgmma accumulator layout; and the window constexprs a launcher passes.
Importing this module needs a Triton with Gluon; ``flash_common.gluon_fits`` says when the kernels may run.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LOADER_WARPS = gl.constexpr(1)
LOADER_REGS = gl.constexpr(24)
COMPUTE_REGS = gl.constexpr(240)  # a compute warpgroup that is a worker partition
MAXNREG = 168  # the launch's registers per thread: 3 warpgroups within the 64k of an SM


@gluon.constexpr_function
def mma_layout(cols, num_warps):
    """The wgmma accumulator layout of a ``[rows, cols]`` tile whose rows split over the
    warpgroups (``num_warps`` along the rows)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                     instr_shape=[16, cols, 16])


def window_constexprs(window: tuple[int, int], causal: bool) -> tuple[int, int]:
    """``(WIN_LEFT, WIN_RIGHT)`` of a ``(left, right)`` window (-1: unbounded) for the Gluon
    kernels: with causal attention the diagonal bounds the right side already, so it is
    dropped (each value compiles its own kernel).

    Example:
        >>> window_constexprs((1023, 0), True), window_constexprs((64, 32), False)
        ((1023, -1), (64, 32))
    """
    left, right = window
    return left, -1 if causal else right


def column_split(head_dim: int) -> int:
    """The width ``D1`` of a head dim's second column tile in the Gluon kernels (Gluon's
    block shapes are powers of two): 64 for MLA's 192 (read as 128 + 64,
    ``flash_fwd_gluon._qk_tiles``), 0 (one tile) for a power of two.

    Example:
        >>> column_split(192), column_split(128), column_split(64)
        (64, 0, 0)
    """
    return head_dim - 128 if head_dim == 192 else 0


@gluon.jit
def walk_part(PART: gl.constexpr, b0, b1, b2, b3):
    """``(lo, hi)`` of part ``PART`` (0, 1 or 2) of a walk over ``[b0, b3)`` split at ``b1``
    and ``b2``: the kernels' split walks mask parts 0 and 2 and not part 1 (``_unmasked_tiles``
    of the forward and dQ kernels, ``_unmasked_query_tiles`` of the dK/dV kernel)."""
    if PART == 0:
        lo, hi = b0, b1
    elif PART == 1:
        lo, hi = b1, b2
    else:
        lo, hi = b2, b3
    return lo, hi
