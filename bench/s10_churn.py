"""
Scenario 10: memory under churn. A guard in 40 rooms is dropped again and
again for two minutes, by 110+333 kicks and by silent removals, while the
rooms talk; its memory must stay flat (tracemalloc).

The soak: one guard client in every room (``ping_idle`` = 1 s, a store
open), one plain aioxmpp client posting groupchat messages into the rooms in
turn (20 a second in all), and drops at 2 a second in all, alternately a
110+333 kick and a silent removal (``silent_remove``: found by the guard's
self-ping). A drop goes to a random room that is not waiting for its
rejoin and was last rejoined more than ``backoff_max`` + 0.5 s ago: a room
dropped again sooner counts as flapping, and its rejoin would wait on
purpose. The guard's ``backoff_min``/``backoff_max`` are set to 0.2 s / 2 s
for the soak, so that a room can be dropped again within seconds (each room
is dropped every 20 s or so).

Measured: the process's memory traced by ``tracemalloc`` (started before
the warm-up; everything in the process counts: the guard, aioxmpp, the
talker, the harness). The soak runs in two phases: a warm-up (20 s of the
same churn), then the measured soak (120 s). After each phase, the drops and
the messages stop, every dropped room is waited for until it is back, and
the process settles (1 s, then ``gc.collect()``); the traced memory is read
at those two points, so both are taken in the same state. Growth = the
second minus the first; it is also given per drop of the measured phase.
The harness keeps counters only (no per-event records), so that its own
bookkeeping does not grow with the drops.

Also counted at both points, with ``gc``: the live ``aioxmpp.muc.Room``
objects of the guard's client (its ``MUCClient``); one per tracked room is
what a bot needs, and every extra one is a Room kept alive after its
occupant was gone. The largest growth sites (``tracemalloc`` snapshot comparison)
are reported.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aioxmpp
import aioxmpp.muc

from .common import Context, ScenarioResult, fmt

TITLE = "Memory under churn: 40 rooms, 2 min of drops and messages"

LIMIT_PER_ROOM = 2048
LIMIT_TOTAL = 1024 * 1024
BACKOFF_MIN = 0.2
BACKOFF_MAX = 2.0
#: growth sites reported
TOP_SITES = 4


class Churn:
    """Drives the drops and the messages; counts (does not record) them."""

    def __init__(self, ctx: Context, rooms: list[aioxmpp.JID], talker: aioxmpp.Client,
                 seed: int) -> None:
        self.ctx = ctx
        self.rooms = rooms
        self.talker = talker
        self.rng = random.Random(seed)
        #: rooms dropped by us and not back yet
        self.pending: set[aioxmpp.JID] = set()
        #: monotonic time each room was last rejoined after a drop (a first
        #: join does not count towards flapping)
        self.back_at: dict[aioxmpp.JID, float] = {r: -float("inf") for r in rooms}
        self.kicks = 0
        self.silent = 0
        self.skipped = 0
        self.messages = 0
        self.delivered = 0
        self.rejoined = 0
        self.gave_up = 0
        self._back = asyncio.Event()
        self._serial = 0

    def on_rejoined(self, room: aioxmpp.JID, *args: Any, **kwargs: Any) -> None:
        self.rejoined += 1
        self.back_at[room] = time.monotonic()
        self.pending.discard(room)
        if not self.pending:
            self._back.set()

    def on_gave_up(self, room: aioxmpp.JID, *args: Any, **kwargs: Any) -> None:
        self.gave_up += 1

    def on_message(self, room: aioxmpp.JID, message: Any, **kwargs: Any) -> None:
        self.delivered += 1

    @property
    def drops(self) -> int:
        return self.kicks + self.silent

    async def drops_for(self, seconds: float, rate: float) -> None:
        async for now in _paced(seconds, rate):
            eligible = [r for r in self.rooms if r not in self.pending
                        and now - self.back_at[r] > BACKOFF_MAX + 0.5]
            if not eligible:
                self.skipped += 1
                continue
            room = self.rng.choice(eligible)
            self.pending.add(room)
            self._back.clear()
            if self.drops % 2 == 0:
                self.kicks += 1
                await self.ctx.server.kick_with_codes(room, "bot", [333], "churn")
            else:
                self.silent += 1
                await self.ctx.server.silent_remove(room, "bot")

    async def messages_for(self, seconds: float, rate: float) -> None:
        async for _ in _paced(seconds, rate):
            self._serial += 1
            msg = aioxmpp.Message(to=self.rooms[self._serial % len(self.rooms)],
                                  type_=aioxmpp.MessageType.GROUPCHAT)
            msg.body[None] = f"churn message {self._serial}"
            self.talker.enqueue(msg)
            self.messages += 1

    async def phase(self, seconds: float, drop_rate: float, message_rate: float) -> None:
        await asyncio.gather(self.drops_for(seconds, drop_rate),
                             self.messages_for(seconds, message_rate))

    async def all_back(self, timeout: float) -> bool:
        if not self.pending:
            return True
        try:
            await asyncio.wait_for(self._back.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


async def _paced(seconds: float, rate: float) -> AsyncIterator[float]:
    """Yield the monotonic time `rate` times a second for `seconds`, on a
    fixed schedule (a slow step does not push the later ones back)."""
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while True:
        next_at += 1.0 / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        if now >= end:
            return
        yield now


def _live_rooms(muc: aioxmpp.MUCClient) -> int:
    """Live aioxmpp Room objects of this MUCClient (gc.collect() first)."""
    return sum(1 for obj in gc.get_objects()
               if type(obj) is aioxmpp.muc.Room and obj.service is muc)


async def _settle(seconds: float) -> int:
    await asyncio.sleep(seconds)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _site(stat: Any) -> str:
    frame = stat.traceback[0]
    return (f"{'/'.join(frame.filename.split('/')[-2:])}:{frame.lineno} "
            f"{stat.size_diff / 1024:+,.1f} KiB ({stat.count_diff:+,} blocks)")


async def run(ctx: Context, res: ScenarioResult) -> None:
    from muc_guard import State

    sz = ctx.sizes
    n = sz.s10_rooms
    rooms = await ctx.rooms("s10r", n)

    # no Probe: it keeps a record of every self-ping, which would grow
    bot = ctx.client(await ctx.account("s10bot"), "bench")
    guard = ctx.guard(bot)
    guard.ping_idle = sz.s10_ping_idle
    guard.backoff_min = BACKOFF_MIN
    guard.backoff_max = BACKOFF_MAX
    await guard.open_store(str(ctx.workdir / "s10.db"))
    talker = ctx.client(await ctx.account("s10talk"), "talk")
    talker_muc = talker.summon(aioxmpp.MUCClient)
    await asyncio.gather(ctx.connect(bot), ctx.connect(talker))
    for room in rooms:
        _, fut = talker_muc.join(room, "talker", autorejoin=False)
        await asyncio.wait_for(fut, 10)
    await asyncio.wait_for(asyncio.gather(*(guard.join(r, "bot") for r in rooms)), 60)
    bot_muc = bot.summon(aioxmpp.MUCClient)

    churn = Churn(ctx, rooms, talker, seed=10)
    guard.on_rejoined.connect(churn.on_rejoined)
    guard.on_gave_up.connect(churn.on_gave_up)
    guard.on_message.connect(churn.on_message)
    await asyncio.sleep(1.0)   # the guard's one-off archive probes (disco#info) settle

    tracemalloc.start(1)
    try:
        t0 = time.monotonic()
        await churn.phase(sz.s10_warmup, sz.s10_drop_rate, sz.s10_message_rate)
        warm_back = await churn.all_back(30)
        mem_warm = await _settle(sz.s10_settle)
        rooms_warm = _live_rooms(bot_muc)
        snap_warm = tracemalloc.take_snapshot()
        # the snapshot is alive at both readings: it cancels out of the growth
        mem_warm = tracemalloc.get_traced_memory()[0]
        drops_warm, rejoined_warm = churn.drops, churn.rejoined
        kicks_warm = churn.kicks
        msgs_warm, delivered_warm = churn.messages, churn.delivered
        t1 = time.monotonic()
        await churn.phase(sz.s10_seconds, sz.s10_drop_rate, sz.s10_message_rate)
        soak = time.monotonic() - t1
        end_back = await churn.all_back(30)
        mem_end = await _settle(sz.s10_settle)
        rooms_end = _live_rooms(bot_muc)
        snap_end = tracemalloc.take_snapshot()
        peak = tracemalloc.get_traced_memory()[1]
        elapsed = time.monotonic() - t0
    finally:
        tracemalloc.stop()

    infos = guard.rooms()
    joined = sum(1 for info in infos if info.state is State.JOINED)
    on_server = 0
    for room in rooms:
        on_server += "bot" in await ctx.server.occupants(room)
    drops = churn.drops - drops_warm
    rejoins = churn.rejoined - rejoined_warm
    growth = mem_end - mem_warm
    top = snap_end.compare_to(snap_warm, "lineno")[:TOP_SITES]
    del snap_warm, snap_end

    res.figure("traced memory after the warm-up (all back, settled)", "KiB", [mem_warm / 1024])
    res.figure(f"retained growth over the soak ({drops} drops)", "KiB", [growth / 1024])
    res.figure("retained growth per drop of the soak", "B",
               [growth / drops] if drops else [])
    res.figure("retained growth per room", "B", [growth / n])
    res.figure("live aioxmpp Room objects of the guard's client, after the warm-up", "",
               [rooms_warm])
    res.figure("live aioxmpp Room objects of the guard's client, at the end", "",
               [rooms_end])

    limit = LIMIT_PER_ROOM * n + LIMIT_TOTAL
    res.check(f"no growth per drop or rejoin: ≤ 2 KiB per room + 1 MiB over the soak "
              f"(≤ {fmt(limit / 1024)} KiB here)",
              f"{fmt(growth / 1024)} KiB over {drops} drops and {rejoins} rejoins "
              f"= {fmt(growth / drops) if drops else '—'} B per drop",
              growth <= limit and drops > 0)
    res.check(f"every room back at the end ({n} rooms)",
              f"{joined}/{n} joined (guard), {on_server}/{n} on the server; "
              f"back after the warm-up: {warm_back}, at the end: {end_back}; "
              f"gave up: {churn.gave_up}",
              joined == n and on_server == n and warm_back and end_back
              and churn.gave_up == 0)
    res.check("one live aioxmpp Room per tracked room at the end (gc)",
              f"{rooms_end} Room objects for {len(infos)} tracked rooms "
              f"(after the warm-up: {rooms_warm})",
              rooms_end == len(infos))
    res.note(f"{n} rooms; warm-up {sz.s10_warmup:g} s ({drops_warm} drops, {msgs_warm} "
             f"messages), soak {fmt(soak)} s: {drops} drops ({churn.kicks - kicks_warm} kicks, "
             f"{drops - churn.kicks + kicks_warm} silent removals), {rejoins} rejoins, "
             f"{churn.messages - msgs_warm} messages posted and "
             f"{churn.delivered - delivered_warm} delivered by on_message; "
             f"{churn.skipped} drop slots skipped (no eligible room); ping_idle = "
             f"{sz.s10_ping_idle:g} s; tracemalloc on for {fmt(elapsed)} s, "
             f"peak {fmt(peak / 1024)} KiB.")
    if top:
        res.note("Largest growth sites over the soak: " + "; ".join(_site(s) for s in top))
