"""Old aioxmpp Room objects must not outlive their occupant (issue #13).

aioxmpp keeps every Room it ever created alive: a Signal descriptor holds
each instance's connections in a WeakKeyDictionary, and MUCClient.join()
connects ``room.on_exit`` to ``partial(MUCClient._muc_exited, room)`` (and
the Room's self-ping monitor connects its AlivenessMonitor's signals to its
own methods): the value keeps its weak key alive. Every drop or leave would
then leave a Room (its occupants, its monitor, ~5-15 KB) behind for good.

These tests count live Room objects of one room after drops of every kind,
a leave and refused joins, with ``gc``: the guard must keep exactly the
Room of its current occupant.
"""

from __future__ import annotations

import asyncio
import gc

import aioxmpp
import aioxmpp.muc
import pytest

from muc_guard import Cause
from guardkit import Bot

pytestmark = pytest.mark.integration

DROPS = 5


@pytest.fixture
async def bot(make_client, account):
    jid, password = account("bot")
    b = await Bot(make_client, jid, password).start()
    # A drop within backoff_max of the last rejoin is flapping (a pause on
    # purpose); these tests drop one room again and again.
    b.guard.backoff_min, b.guard.backoff_max = 0.01, 0.05
    yield b
    b.check_invariants()
    await b.guard.shutdown()


def live_rooms(bot: Bot, room_jid: aioxmpp.JID) -> int:
    """Live aioxmpp Room objects of `room_jid` in the bot's MUCClient. The
    Bot records every signal's argument (on_rejoined's Room included):
    those references are the test's, not the guard's, and are let go."""
    bot.events = [(t, kind, jid, None) for t, kind, jid, _ in bot.events]
    muc = bot.client.summon(aioxmpp.MUCClient)
    gc.collect()
    return sum(1 for obj in gc.get_objects()
               if type(obj) is aioxmpp.muc.Room and obj.service is muc
               and obj.jid == room_jid)


async def drop_and_rejoin(prosody, bot: Bot, room_jid: aioxmpp.JID, how: str) -> None:
    after = len(bot.events)
    await asyncio.sleep(0.1)    # past backoff_max: not flapping
    if how == "kick":
        await prosody.kick_with_codes(room_jid, "bot", [333])
    else:
        await prosody.silent_remove(room_jid, "bot")
    _, cause = await bot.wait_event("dropped", room_jid, after=after)
    assert cause is (Cause.SERVER_ERROR if how == "kick" else Cause.PING)
    await bot.wait_event("rejoined", room_jid, after=after)


@pytest.mark.parametrize("how", ["kick", "silent"])
async def test_drops_leave_one_room_object_alive(prosody, bot, room_jid, how):
    """110+333 kicks, or silent removals found by the self-ping: after each
    rejoin only the current Room is alive (not one more per drop)."""
    if how == "silent":
        bot.guard.ping_idle = 0.2
    await bot.guard.join(room_jid, "bot")
    assert live_rooms(bot, room_jid) == 1
    for _ in range(DROPS):
        await drop_and_rejoin(prosody, bot, room_jid, how)
    assert bot.kinds(room_jid) == ["dropped", "rejoined"] * DROPS
    assert live_rooms(bot, room_jid) == 1
    assert bot.info(room_jid).room.muc_joined


async def test_leave_keeps_no_room_object(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await drop_and_rejoin(prosody, bot, room_jid, "kick")
    await bot.guard.leave(room_jid)
    assert live_rooms(bot, room_jid) == 0


async def test_refused_rejoins_keep_no_room_object(prosody, bot, room_jid):
    """Every refused rejoin attempt made a Room of its own: none is kept."""
    bot.guard.backoff_max, bot.guard.backoff_min = 0.2, 0.1
    await bot.guard.join(room_jid, "bot")
    await prosody.refuse_joins(room_jid, "forbidden", "auth")
    await prosody.kick_with_codes(room_jid, "bot", [333])
    await bot.wait_event("gave_up", room_jid, timeout=10)
    assert await prosody.refused_count(room_jid) == bot.guard.permanent_error_limit
    assert live_rooms(bot, room_jid) == 0
