"""
Where a slow trial's time went: pauses of the benchmark process itself.

A latency scenario's tail can come from the code under test or from the
process it runs in: a garbage collection of a heap holding 1,000 rooms takes
0.1 s, and an event loop blocked for any other reason delays every answer
that arrives meanwhile. :class:`StallWatch` records both while a scenario
runs, so that each slow trial can be told apart from a slow *process*:

* every collection (``gc.callbacks``): when, how long, which generation;
* every late wake-up of a task that sleeps :data:`TICK` in a loop (the event
  loop was busy or the process was not scheduled) by more than
  :data:`LATE`.

:class:`ServerLagWatch` does the same inside Prosody: a timer in the
server's own loop (installed through the admin socket) that notes every late
wake-up, on the same clock (CLOCK_MONOTONIC: ``util.time.monotonic`` there,
``time.monotonic`` here). A slow trial during which neither process stalled
was slow on the way (the kernel, the network stack).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

#: the sampler's sleep; every wake-up costs some microseconds
TICK = 0.005
#: a wake-up later than this is a stall of the process
LATE = 0.003


class ServerLagWatch:
    """Late wake-ups of a timer in Prosody's event loop (its GC, its work, or
    the process not being scheduled), as intervals on our monotonic clock."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.stalls: list[tuple[float, float]] = []

    async def start(self) -> "ServerLagWatch":
        await self.server.admin(
            "local timer, time = require 'util.timer', require 'util.time'; "
            "local t = { stop = false, lags = {} }; rawset(_G, 'muc_guard_bench_lag', t); "
            "local last = time.monotonic(); "
            f"timer.add_task({TICK}, function() "
            "  if t.stop then return nil end; "
            "  local now = time.monotonic(); "
            f"  if now - last > {TICK + LATE} then "
            "    t.lags[#t.lags + 1] = string.format('%.6f %.6f', last + "
            f"{TICK}, now) end; "
            f"  last = now; return {TICK} end); return 'ok'")
        return self

    async def stop(self) -> None:
        text = await self.server.admin(
            "local t = rawget(_G, 'muc_guard_bench_lag'); t.stop = true; rawset(_G, 'muc_guard_bench_lag', nil); "
            "return table.concat(t.lags, ';')")
        for item in filter(None, text.strip().split(";")):
            start, end = item.split()
            self.stalls.append((float(start), float(end)))

    def during(self, start: float, end: float) -> float:
        """Seconds of server stall overlapping [start, end]."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.stalls)


class StallWatch:
    """Collections and event-loop stalls of this process, as time intervals."""

    def __init__(self) -> None:
        self.collections: list[tuple[float, float, int]] = []
        self.stalls: list[tuple[float, float]] = []
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> "StallWatch":
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_started = now
        else:
            self.collections.append((self._gc_started, now, info["generation"]))

    async def _sample(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK)
            after = time.monotonic()
            if after - before > TICK + LATE:
                self.stalls.append((before + TICK, after))

    def during(self, start: float, end: float) -> tuple[float, float]:
        """(seconds of collection, seconds of event-loop stall) overlapping
        the interval [start, end]."""
        def overlap(intervals: Any) -> float:
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b, *_ in intervals)
        return overlap(self.collections), overlap(self.stalls)

    def full_collections(self) -> list[float]:
        """Durations of the generation-2 collections seen."""
        return [b - a for a, b, gen in self.collections if gen == 2]
