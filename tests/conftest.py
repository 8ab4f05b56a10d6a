"""Test-session setup.

Without a GPU, Triton kernels run under Triton's interpreter: TRITON_INTERPRET must be set before
any ``triton.jit`` decorator runs, so it is set here, before the tests import attnkit's kernels.
Kernel tests on the CPU pass ``backend="triton"`` explicitly ("auto" never picks the interpreter).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_descriptor_reduce() -> None:
    """Give Triton's interpreter the reductions of tensor descriptors (``desc.atomic_add``,
    a TMA bulk reduction on sm90), which it lacks: an element-wise atomic add over the
    descriptor's in-bounds elements, the same result up to the order of float additions. The
    dK/dV kernel's atomic dQ path on descriptors then runs in the CPU tests too."""
    try:
        from triton._C.libtriton import ir
        from triton.runtime import interpreter
    except ImportError:  # no Triton: the kernel tests skip
        return
    builder = interpreter.InterpreterBuilder
    if hasattr(builder, "create_descriptor_reduce"):
        return

    def create_descriptor_reduce(self, kind, desc, value, indices):
        if kind != ir.DESCRIPTOR_REDUCE_KIND.ADD:
            raise NotImplementedError(f"descriptor reduction {kind} in the interpreter")
        ptrs, mask = desc.materialize_pointers(indices)
        return self.create_atomic_rmw(ir.ATOMIC_OP.FADD, ptrs, value, mask,
                                      ir.MEM_SEMANTIC.RELAXED, ir.MEM_SYNC_SCOPE.GPU)

    builder.create_descriptor_reduce = create_descriptor_reduce


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_descriptor_reduce()
