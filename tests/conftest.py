"""Test-session setup.

Without a GPU, Triton kernels run under Triton's interpreter: TRITON_INTERPRET must be set before
any ``triton.jit`` decorator runs, so it is set here, before the tests import attnkit's kernels.
Kernel tests on the CPU pass ``backend="triton"`` explicitly ("auto" never picks the interpreter).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
