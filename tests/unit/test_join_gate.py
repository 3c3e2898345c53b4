"""JoinGate: a bound on the joins in flight that lets the waiting ones out in waves.

Pure: rooms enter and leave; no event loop."""

import random

import pytest

from muc_guard.core.gate import JoinGate


class Joins:
    """Rooms entering the gate, and leaving it one by one."""

    def __init__(self, gate: JoinGate) -> None:
        self.gate = gate
        self.inside: list[int] = []
        self.peak = 0
        self.count = 0

    def start(self, n: int) -> None:
        for i in range(self.count, self.count + n):
            if self.gate.enter(i):
                self._admit(i)
        self.count += n

    def _admit(self, i: int) -> None:
        self.inside.append(i)
        self.peak = max(self.peak, self.gate.in_flight)

    def finish(self, *ids: int) -> None:
        for i in ids:
            self.inside.remove(i)
            for admitted in self.gate.leave():
                self._admit(admitted)


def test_the_next_wave_waits_for_half_of_the_last():
    joins = Joins(JoinGate(4))
    joins.start(10)
    assert joins.inside == [0, 1, 2, 3]
    joins.finish(0)
    assert joins.inside == [1, 2, 3]          # a semaphore would admit 4 here
    joins.finish(1)
    assert sorted(joins.inside) == [2, 3, 4, 5]   # half answered: a wave of two
    joins.finish(2, 3, 4, 5)
    assert sorted(joins.inside) == [6, 7, 8, 9]
    joins.finish(6, 7, 8, 9)
    assert joins.inside == [] and joins.gate.in_flight == 0
    assert joins.peak == 4


def test_under_the_limit_joins_go_at_once():
    joins = Joins(JoinGate(256))
    joins.start(100)
    assert len(joins.inside) == 100
    joins.finish(*range(100))
    assert joins.gate.in_flight == 0


def test_a_withdrawn_room_takes_no_slot():
    gate = JoinGate(2)
    joins = Joins(gate)
    joins.start(5)
    gate.withdraw(2)
    gate.withdraw(3)
    joins.finish(0, 1)
    assert joins.inside == [4]
    assert gate.in_flight == 1 and gate.waiting == 0
    joins.finish(4)
    assert gate.in_flight == 0


def test_a_raised_limit_applies_to_the_next_admission():
    gate = JoinGate(1)
    joins = Joins(gate)
    joins.start(4)
    assert joins.inside == [0]
    gate.limit = 3
    joins.finish(0)
    assert sorted(joins.inside) == [1, 2, 3]
    joins.finish(1, 2, 3)
    assert gate.in_flight == 0


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_random_finishing_order_never_exceeds_the_limit(limit):
    rng = random.Random(limit)
    joins = Joins(JoinGate(limit))
    joins.start(40)
    while joins.inside:
        joins.finish(rng.choice(joins.inside))
    assert joins.peak == limit
    assert joins.gate.in_flight == 0 and joins.gate.waiting == 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True, None])
async def test_max_concurrent_joins_takes_only_a_positive_int(bad):
    from harness import Harness

    h = Harness()
    try:
        with pytest.raises(ValueError, match="max_concurrent_joins"):
            h.guard.max_concurrent_joins = bad
        assert h.guard.max_concurrent_joins == 1024
    finally:
        await h.guard.shutdown()
