"""The persistent Gluon forward's barrier protocol, simulated on the CPU.

``flash_fwd_gluon.gluon_fwd_persistent_kernel`` hands Q tiles and K/V tiles from its loader
partition to two compute partitions through mbarriers: ``Q_SLOTS`` Q slots (``q_bar`` /
``q_empty``) and a ring of ``STAGES`` K/V slots (``k_ready`` / ``empty``), with the phase
formulas of ``_loader_persistent`` and ``_compute_persistent``, handing a Q slot back after
the tile's walk or, with ``EARLY_Q``, after its last ``Q K^T``. Here the three partitions run
as Python generators in random interleavings against a model of mbarrier phases. A wrong
phase formula either deadlocks (no partition can go on) or lets the loader overwrite a slot
that a compute partition has not finished reading; both fail the test.

The model of an mbarrier: a count of expected arrivals and a phase; when the arrivals of the
current phase reach the count, the phase completes and the next one begins.
``wait(bar, parity)`` returns once the phase of that parity has completed, so that on a
fresh barrier ``wait(bar, 1)`` returns at once (the kernels' "free at the first use").
"""

from __future__ import annotations

import functools
import random

import pytest


class _Barrier:
    def __init__(self, count: int):
        self.count, self.arrived, self.phase = count, 0, 0

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.arrived, self.phase = 0, self.phase + 1

    def passes(self, parity: int) -> bool:
        """Whether ``wait(self, parity)`` returns: the current phase is not ``parity``'s."""
        return self.phase % 2 != parity


def _loader(items, q_slots, stages, q_bar, q_empty, k_ready, empty, q_data, kv_data, *,
            wait_q=True):
    """``_loader_persistent``: per item, its Q slot once free, then its key tiles
    (``wait_q=False``: a broken loader that does not wait for the Q slot)."""
    c = 0
    for it, n_keys in enumerate(items):
        qs = it % q_slots
        while wait_q and not q_empty[qs].passes(((it // q_slots) & 1) ^ 1):
            yield
        q_data[qs] = it  # the TMA load of the item's Q tile
        q_bar[qs].arrive()
        for j in range(n_keys):
            slot = c % stages
            while not empty[slot].passes(((c // stages) & 1) ^ 1):
                yield
            kv_data[slot] = (it, j)
            k_ready[slot].arrive()
            c += 1
        yield


def _compute(items, q_slots, stages, q_bar, q_empty, k_ready, empty, q_data, kv_data, *,
             early_q=False, early_too_soon=False):
    """``_compute_persistent`` with ``_attend``: per item, wait for its Q slot, read every key
    tile in turn (``Q K^T`` reads Q and K, then ``P V`` reads V; each read spans a yield: the
    other partitions run meanwhile), free each K/V slot, then hand the Q slot back; with
    ``early_q``, right after the last tile's ``Q K^T`` (at once for an item with no key
    tile). ``early_too_soon``: a broken partition that hands it back before that read."""
    c = 0
    for it, n_keys in enumerate(items):
        qs = it % q_slots
        while not q_bar[qs].passes((it // q_slots) & 1):
            yield
        if early_q and n_keys == 0:
            q_empty[qs].arrive()
        for j in range(n_keys):
            slot = c % stages
            while not k_ready[slot].passes((c // stages) & 1):
                yield
            last = j == n_keys - 1
            if early_too_soon and last:
                q_empty[qs].arrive()
            assert q_data[qs] == it, f"Q slot {qs} overwritten before item {it} was done"
            assert kv_data[slot] == (it, j), f"K/V slot {slot} holds {kv_data[slot]}"
            yield  # Q K^T reads Q and K
            assert q_data[qs] == it, f"Q slot {qs} overwritten while item {it} read it"
            if early_q and last and not early_too_soon:
                q_empty[qs].arrive()
            yield  # P V reads V
            assert kv_data[slot] == (it, j), f"K/V slot {slot} overwritten while read"
            empty[slot].arrive()
            c += 1
        if not (early_q or early_too_soon):
            q_empty[qs].arrive()
        yield  # the epilogue


def _run(items, q_slots, stages, seed, loader=_loader, compute=_compute):
    q_bar = [_Barrier(1) for _ in range(q_slots)]
    q_empty = [_Barrier(2) for _ in range(q_slots)]  # both compute partitions
    k_ready = [_Barrier(1) for _ in range(stages)]
    empty = [_Barrier(2) for _ in range(stages)]
    q_data, kv_data = [None] * q_slots, [None] * stages
    args = (items, q_slots, stages, q_bar, q_empty, k_ready, empty, q_data, kv_data)
    actors = [loader(*args), compute(*args), compute(*args)]
    rng = random.Random(seed)
    steps = 0
    while actors:
        actor = rng.choice(actors)
        try:
            next(actor)
        except StopIteration:
            actors.remove(actor)
        steps += 1
        assert steps < 200_000, "no partition can go on: the protocol deadlocks"


@pytest.mark.parametrize("early_q", [False, True], ids=["after-walk", "early-q"])
@pytest.mark.parametrize("q_slots", [1, 2])
@pytest.mark.parametrize("stages", [2, 3])
def test_q_and_kv_slots_are_never_overwritten_in_use(q_slots, stages, early_q):
    """Items of 0 to 9 key tiles (short ones, as at 1k causal or with a window, where two Q
    slots and ``EARLY_Q`` matter; 0: rows that see no key), over many interleavings, with
    the Q slot handed back after the walk and after the last ``Q K^T``."""
    compute = functools.partial(_compute, early_q=early_q)
    for seed in range(40):
        rng = random.Random(seed)
        items = [rng.randint(0, 9) for _ in range(rng.randint(1, 12))]
        _run(items, q_slots, stages, seed, compute=compute)


def test_a_loader_that_does_not_wait_is_caught():
    """The simulation can fail: a loader that does not wait for ``q_empty`` overwrites a Q
    slot still in use."""
    with pytest.raises(AssertionError, match="overwritten"):
        for seed in range(40):
            _run([3, 1, 2, 4, 1, 2], 2, 2, seed, loader=functools.partial(_loader, wait_q=False))


def test_a_q_slot_handed_back_too_soon_is_caught():
    """The simulation sees ``EARLY_Q`` done wrong: handing the Q slot back before the last
    ``Q K^T`` has read it lets the loader overwrite it."""
    with pytest.raises(AssertionError, match="overwritten"):
        for seed in range(40):
            _run([1, 3, 1, 2, 1, 1], 1, 2, seed,
                 compute=functools.partial(_compute, early_too_soon=True))
