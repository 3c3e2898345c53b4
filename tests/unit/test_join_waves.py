"""JoinWaves: a bound on the joins in flight that lets the waiting ones out in waves."""

import asyncio

import pytest

from muc_guard.rejoin import JoinWaves


class Joins:
    """Tasks that enter the gate and stay in until released one by one."""

    def __init__(self, waves: JoinWaves) -> None:
        self.waves = waves
        self.inside: list[int] = []
        self.peak = 0
        self.leave: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task] = {}

    def start(self, n: int) -> None:
        for i in range(len(self.tasks), len(self.tasks) + n):
            self.leave[i] = asyncio.Event()
            self.tasks[i] = asyncio.ensure_future(self._one(i))

    async def _one(self, i: int) -> None:
        async with self.waves:
            self.inside.append(i)
            self.peak = max(self.peak, self.waves.in_flight)
            try:
                await self.leave[i].wait()
            finally:
                self.inside.remove(i)

    async def finish(self, *ids: int) -> None:
        for i in ids:
            self.leave[i].set()
        for _ in range(5):
            await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_next_wave_waits_for_half_of_the_last():
    joins = Joins(JoinWaves(4))
    joins.start(10)
    await settle()
    assert joins.inside == [0, 1, 2, 3]
    await joins.finish(0)
    assert joins.inside == [1, 2, 3]          # a semaphore would admit 4 here
    await joins.finish(1)
    assert sorted(joins.inside) == [2, 3, 4, 5]   # half answered: a wave of two
    await joins.finish(2, 3, 4, 5)
    assert sorted(joins.inside) == [6, 7, 8, 9]
    await joins.finish(6, 7, 8, 9)
    assert joins.inside == [] and joins.waves.in_flight == 0
    assert joins.peak == 4
    assert all(t.done() for t in joins.tasks.values())


async def test_under_the_limit_joins_go_at_once():
    joins = Joins(JoinWaves(256))
    joins.start(100)
    await settle()
    assert len(joins.inside) == 100
    await joins.finish(*range(100))
    assert joins.waves.in_flight == 0


async def test_a_cancelled_waiter_takes_no_slot():
    waves = JoinWaves(2)
    joins = Joins(waves)
    joins.start(5)
    await settle()
    joins.tasks[2].cancel()
    joins.tasks[3].cancel()
    await settle()
    await joins.finish(0, 1)
    assert joins.inside == [4]
    assert waves.in_flight == 1 and waves.waiting == 0
    await joins.finish(4)
    assert waves.in_flight == 0


async def test_cancelled_after_admission_gives_the_slot_back():
    waves = JoinWaves(1)
    await waves.__aenter__()              # one join in flight
    second = asyncio.ensure_future(waves.__aenter__())
    third = asyncio.ensure_future(waves.__aenter__())
    await settle()
    assert waves.waiting == 2
    waves.release()                       # admits the second ...
    second.cancel()                       # ... which is cancelled before it runs
    await settle()
    assert second.cancelled()
    assert third.done() and not third.cancelled()   # its slot went to the third
    assert waves.in_flight == 1 and waves.waiting == 0


async def test_a_raised_limit_applies_to_the_next_admission():
    waves = JoinWaves(1)
    joins = Joins(waves)
    joins.start(4)
    await settle()
    assert joins.inside == [0]
    waves.limit = 3
    await joins.finish(0)
    assert sorted(joins.inside) == [1, 2, 3]
    await joins.finish(1, 2, 3)
    assert waves.in_flight == 0


@pytest.mark.parametrize("limit", [1, 3, 8])
async def test_random_finishing_order_never_exceeds_the_limit(limit):
    import random

    rng = random.Random(limit)
    joins = Joins(JoinWaves(limit))
    joins.start(40)
    await settle()
    while joins.inside:
        await joins.finish(rng.choice(joins.inside))
    assert joins.peak == limit
    assert all(t.done() for t in joins.tasks.values())
    assert joins.waves.in_flight == 0


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
