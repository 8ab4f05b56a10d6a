"""``fast_launch.run``: a kept compiled kernel is launched only for a call that Triton would
specialise exactly as the call that compiled it.

Triton cannot launch on this machine, so a stand-in for a jitted function records what
Triton's ``fn.run`` and a compiled kernel's launcher would have been given; the GPU test
``tests/gpu/test_flash_gpu.py::test_fast_launch_matches_the_oracle_across_calls`` runs the real
kernels through it.
"""

from types import SimpleNamespace

import pytest
import torch

from attnkit.kernels import fast_launch


class _Compiled:
    """Stand-in for a ``CompiledKernel``: ``compiled[grid](*all_args)`` records the launch."""

    function = object()

    def __init__(self, log: list):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("kept", grid, args))


class _Jit:
    """Stand-in for a ``triton.jit`` function ``f(x_ptr, y_ptr, n, scale, BLOCK, FLAG=False)``
    (the last two constexprs)."""

    def __init__(self, names=("x_ptr", "y_ptr", "n", "scale", "BLOCK", "FLAG"),
                 defaults=None):
        defaults = {"FLAG": False} if defaults is None else defaults
        self.params = [SimpleNamespace(name=n, has_default=n in defaults,
                                       default=defaults.get(n)) for n in names]
        self.log: list = []

    def run(self, *args, grid, warmup, **kwargs):
        self.log.append(("triton", grid, args, kwargs))
        return _Compiled(self.log)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)


@pytest.fixture
def enabled(monkeypatch):
    device = [0]
    monkeypatch.setattr(fast_launch, "ENABLED", True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: device[0])
    fast_launch.clear()
    yield device
    fast_launch.clear()


def _grid(meta):
    return (40 // meta["BLOCK"],)


def test_a_repeated_call_launches_the_kept_kernel_with_every_argument_in_order(enabled):
    fn = _Jit()
    x, y = torch.randn(40), torch.randn(40)
    fast_launch.run(fn, _grid, (x, y, 40, 0.5), {"BLOCK": 8, "num_warps": 4})
    assert [e[0] for e in fn.log] == ["triton"]
    x2, y2 = torch.randn(40), torch.randn(40)  # fresh tensors, same dtypes and alignment
    fast_launch.run(fn, _grid, (x2, y2, 40, 0.5), {"BLOCK": 8, "num_warps": 4})
    kind, grid, args = fn.log[-1]
    assert kind == "kept" and grid == (5, 1, 1)
    # Positional arguments, then the remaining parameters by name or default: what Triton's
    # binder hands the compiled kernel (the launch options are not parameters).
    assert args[:4] == (x2, y2, 40, 0.5) and args[4:] == (8, False)
    assert args[0] is x2 and args[1] is y2


@pytest.mark.parametrize("change", ["dtype", "alignment", "int value", "int as bool",
                                    "float as int", "constexpr", "launch option", "device"])
def test_any_change_triton_could_specialise_on_goes_through_triton(enabled, change):
    fn = _Jit()
    base = torch.randn(64)
    x, y = base[:40], torch.randn(40)
    args, kwargs = (x, y, 32, 0.5), {"BLOCK": 8, "num_warps": 4}
    fast_launch.run(fn, _grid, args, kwargs)
    if change == "dtype":
        args = (x.double(), y, 32, 0.5)
    elif change == "alignment":
        args = (base[1:41], y, 32, 0.5)  # 4 bytes past a 16-byte boundary
    elif change == "int value":
        args = (x, y, 33, 0.5)
    elif change == "int as bool":
        fast_launch.run(fn, _grid, (x, y, 1, 0.5), kwargs)
        args = (x, y, True, 0.5)
    elif change == "float as int":
        fast_launch.run(fn, _grid, (x, y, 32, 1.0), kwargs)
        args = (x, y, 32, 1)
    elif change == "constexpr":
        kwargs = {"BLOCK": 8, "FLAG": True, "num_warps": 4}
    elif change == "launch option":
        kwargs = {"BLOCK": 8, "num_warps": 8}
    else:
        enabled[0] = 1
    before = sum(e[0] == "triton" for e in fn.log)
    fast_launch.run(fn, _grid, args, kwargs)
    assert fn.log[-1][0] == "triton"
    assert sum(e[0] == "triton" for e in fn.log) == before + 1
    fast_launch.run(fn, _grid, args, kwargs)  # and that call's kernel is kept in turn
    assert fn.log[-1][0] == "kept"


def test_a_tensor_in_another_position_is_keyed_by_dtype_not_identity(enabled):
    fn = _Jit()
    x, y = torch.randn(40), torch.randn(40)
    fast_launch.run(fn, _grid, (x, y, 40, 0.5), {"BLOCK": 8})
    fast_launch.run(fn, _grid, (x, 40, y, 0.5), {"BLOCK": 8})  # y moved into an int's slot
    assert fn.log[-1][0] == "triton"
    fast_launch.run(fn, _grid, (x, 40, y, 0.5), {"BLOCK": 8})  # rescanned: keyed again
    assert fn.log[-1][0] == "kept"
    assert fn.log[-1][2][2] is y


def test_a_parameter_neither_given_nor_defaulted_is_never_kept(enabled):
    fn = _Jit(defaults={})
    x, y = torch.randn(40), torch.randn(40)
    for _ in range(3):
        fast_launch.run(fn, _grid, (x, y, 40, 0.5), {"BLOCK": 8})
    assert [e[0] for e in fn.log] == ["triton"] * 3


def test_disabled_it_is_the_plain_launch(enabled, monkeypatch):
    monkeypatch.setattr(fast_launch, "ENABLED", False)
    fn = _Jit()
    x, y = torch.randn(40), torch.randn(40)
    for _ in range(2):
        fast_launch.run(fn, _grid, (x, y, 40, 0.5), {"BLOCK": 8})
    assert [e[0] for e in fn.log] == ["triton"] * 2


def test_the_table_is_bounded(enabled, monkeypatch):
    monkeypatch.setattr(fast_launch, "MAX_ENTRIES", 4)
    fn = _Jit()
    x, y = torch.randn(40), torch.randn(40)
    for n in range(10):
        fast_launch.run(fn, _grid, (x, y, n, 0.5), {"BLOCK": 8})
    assert len(fast_launch._TABLES[id(fn)]) <= 4
