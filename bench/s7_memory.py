"""
Scenario 7: the guard's own memory per tracked room, at 10,000 rooms
(tracemalloc; the rooms are simulated).

The guard runs its real code paths on an aioxmpp client that never
connects: ``guard.join()`` for every room, with aioxmpp's MUCClient replaced
by a stand-in whose joins succeed at once with a stand-in ``Room`` (created,
like the message objects, outside the measurement: they are aioxmpp's memory,
not the guard's). What is measured is everything allocated while the guard
tracks the rooms and still alive afterwards: its room records, JIDs, message
streams, ping timers, finished join tasks.

Stages (``tracemalloc`` current size after ``gc.collect()``):

1. joined, no message yet;
2. one groupchat message per room through the guard's inbound filter;
3. busy rooms: 600 messages each in a subset of the rooms, one a second
   (simulated clock), without stanza-ids (Prosody without MAM);
4. the same with stanza-ids (a room with MAM stamps every message);
5. very busy rooms: 600 messages at ten a second;
6. flooded rooms: 600 messages at once, which fills the deduplication window
   to its cap (``WINDOW_MAX``): the worst case, reported, not a target.

The deduplication window holds what was delivered in the last 10 s of a
room (at least the newest ``WINDOW_MIN``), 12 bytes a message, so memory
follows the message rate, not the room count. The target is checked on the
states most of 10,000 rooms are in (stages 1-4).

No store is open: SQLite's memory is outside Python (its page cache is
bounded by SQLite itself).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import unittest.mock
from typing import Any

import aioxmpp
import aioxmpp.misc

from .common import PASSWORD, Context, ScenarioResult, fmt

TITLE = "Memory per tracked room at 10,000 rooms"

LIMIT = 2048


class _Me:
    __slots__ = ("nick",)

    def __init__(self, nick: str) -> None:
        self.nick = nick


class _EnteredSignal:
    """Stands in for Room.on_muc_enter: a stand-in room is entered already,
    so nothing connected to it ever fires (aioxmpp's would fire once)."""

    __slots__ = ()

    def connect(self, listener: Any, mode: Any = None) -> None:
        return None


class _Room:
    """Stands in for aioxmpp.muc.Room: what the guard reads of a joined room."""

    __slots__ = ("jid", "me", "muc_joined", "__weakref__")
    on_muc_enter = _EnteredSignal()

    def __init__(self, jid: aioxmpp.JID, nick: str) -> None:
        self.jid = jid
        self.me = _Me(nick)
        self.muc_joined = True


class _MUC:
    """Stands in for aioxmpp.MUCClient: every join succeeds at once."""

    def __init__(self, rooms: dict[aioxmpp.JID, tuple[_Room, "asyncio.Future[Any]"]]) -> None:
        self.rooms = rooms

    def join(self, jid: aioxmpp.JID, nick: str, **kwargs: Any) -> tuple[_Room, Any]:
        return self.rooms[jid]

    def get_muc(self, jid: aioxmpp.JID) -> _Room:
        raise KeyError(jid)


async def _traced() -> int:
    for _ in range(3):          # let finished tasks of ours be released
        await asyncio.sleep(0)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def run(ctx: Context, res: ScenarioResult) -> None:
    import muc_guard
    from muc_guard.testing.prosody import security_layer

    sz = ctx.sizes
    n = sz.s7_rooms
    first = min(1000, n // 10)
    busy = sz.s7_busy_rooms
    per_busy = sz.s7_busy_messages
    loop = asyncio.get_running_loop()
    domain = ctx.muc_domain

    client = aioxmpp.PresenceManagedClient(aioxmpp.JID("memory", "localhost", "sim"),
                                           security_layer(PASSWORD))
    guard = client.summon(muc_guard.MUCGuard)
    engine = guard._guard
    delivered = 0

    def on_message(*args: Any, **kwargs: Any) -> None:
        nonlocal delivered
        delivered += 1

    guard.on_message.connect(on_message)
    names = [f"sim{i}@{domain}" for i in range(n)]
    # aioxmpp's side of each room, made before measuring: not the guard's memory
    stand_ins: dict[aioxmpp.JID, tuple[_Room, Any]] = {}
    for name in names:
        jid = aioxmpp.JID.fromstr(name)
        fut = loop.create_future()
        room = _Room(jid, "bot")
        fut.set_result(None)
        stand_ins[jid] = (room, fut)
    engine.muc = _MUC(stand_ins)
    engine.core.stream_up = True     # as if connected; nothing is ever sent
    engine.settings.use_archive = False  # no disco#info probe (it would need the stream)
    message = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    room_jids = list(stand_ins)

    clock = [time.time()]

    def deliver(jid: aioxmpp.JID, i: int, stanza_id: bool, rate: float | None = None) -> None:
        if rate is not None:
            clock[0] += 1 / rate
        message.from_ = jid.replace(resource="someone")
        message.body[None] = f"message number {i} in {jid.localpart}"
        if stanza_id:
            message.xep0359_stanza_ids[:] = [aioxmpp.misc.StanzaID(id_=f"id-{i}", by=jid)]
        else:
            message.xep0359_stanza_ids[:] = []
        engine._message_filter(message)

    tracemalloc.start(1)
    try:
        t0 = time.monotonic()
        base = await _traced()
        await asyncio.wait_for(asyncio.gather(*(guard.join(x, "bot") for x in names[:first])), 300)
        at_first = await _traced()
        await asyncio.wait_for(asyncio.gather(*(guard.join(x, "bot") for x in names[first:])), 600)
        joined = await _traced()
        for i, jid in enumerate(room_jids):
            deliver(jid, i, False)
        one_msg = await _traced()
        # The guard stamps live messages with time.time(): a simulated clock
        # lets 600 messages span ten minutes without waiting for them.
        with unittest.mock.patch.object(time, "time", lambda: clock[0]):
            for jid in room_jids[:busy]:
                for i in range(per_busy):
                    deliver(jid, i, False, rate=1.0)
            busy_plain = await _traced()
            for jid in room_jids[busy:2 * busy]:
                for i in range(per_busy):
                    deliver(jid, i, True, rate=1.0)
            busy_ids = await _traced()
            for jid in room_jids[2 * busy:3 * busy]:
                for i in range(per_busy):
                    deliver(jid, i, False, rate=10.0)
            very_busy = await _traced()
            for jid in room_jids[3 * busy:4 * busy]:
                for i in range(per_busy):
                    deliver(jid, i, False)
            flooded = await _traced()
        snapshot = tracemalloc.take_snapshot()
        elapsed = time.monotonic() - t0
    finally:
        tracemalloc.stop()
    states = {r.state for r in engine.core.rooms.values()}

    joined_per = (joined - base) / n
    one_per = (one_msg - base) / n
    marginal = (joined - at_first) / (n - first)
    busy_extra = (busy_plain - one_msg) / busy
    busy_ids_extra = (busy_ids - busy_plain) / busy
    very_busy_extra = (very_busy - busy_ids) / busy
    flooded_extra = (flooded - very_busy) / busy

    res.figure(f"per room, joined, no message yet ({n:,} rooms)", "B", [joined_per])
    res.figure(f"per room, joined, after one message ({n:,} rooms)", "B", [one_per])
    res.figure(f"per room, marginal from {first:,} to {n:,} rooms (joined)", "B", [marginal])
    res.figure(f"per busy room, {per_busy} messages at 1/s, no stanza-ids", "B",
               [one_per + busy_extra])
    res.figure(f"per busy room, {per_busy} messages at 1/s, with stanza-ids (MAM)", "B",
               [one_per + busy_ids_extra])
    res.figure(f"(info) per very busy room, {per_busy} messages at 10/s", "B",
               [one_per + very_busy_extra])
    res.figure(f"(info) per flooded room, {per_busy} messages at once (window cap)", "B",
               [one_per + flooded_extra])

    res.check(f"the guard's memory per tracked room at {n:,} rooms ≤ 2 KiB",
              f"{fmt(joined_per)} B joined and quiet, {fmt(one_per)} B after one message, "
              f"{fmt(one_per + busy_extra)} B for a room at one message a second "
              f"({fmt(one_per + busy_ids_extra)} B with stanza-ids); info: "
              f"{fmt(one_per + very_busy_extra)} B at ten a second, "
              f"{fmt(one_per + flooded_extra)} B for a flooded room (the window's cap)",
              max(joined_per, one_per, one_per + busy_extra, one_per + busy_ids_extra) <= LIMIT)
    top = snapshot.statistics("lineno")[:6]
    res.note("Largest allocation sites at the end (all rooms): " + "; ".join(
        f"{'/'.join(s.traceback[0].filename.split('/')[-2:])}"
        f":{s.traceback[0].lineno} {s.size / 1024:,.0f} KiB" for s in top))
    res.note(f"{n:,} rooms simulated in {fmt(elapsed)} s (tracemalloc on); states: "
             f"{sorted(s.value for s in states)}; messages delivered: {delivered:,}; busy rooms "
             f"measured: {busy} without and {busy} with stanza-ids.")
    await guard.shutdown()
