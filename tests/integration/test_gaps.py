"""Explicit gaps on a real Prosody: on_gap / muc_guard_gap fires exactly when
recovery cannot fill an outage, and health() counts it.

The bot is kicked with 333 and kept out by refused joins while another
account talks; then the refusals end and the bot rejoins. What the room said
meanwhile comes back from the archive (mod_muc_mam) or the room's history,
unless the archive stops at ``archive_limit``, has expired our position, or
the history is shorter than what was said. Every scenario runs on both
front-ends (the ``frontend`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from guardkit import eventually, over_verified_tls, send_all, talker_in
from muc_guard import GapReason

pytestmark = pytest.mark.integration


async def _guarded(server, make_bot, account, room_jid, *, archive_limit: int | None = None):
    jid, pw = account("bot", server=server)
    bot = make_bot(jid, pw, server=server)
    bot.settings.set_backoff(0.3, 1.0)
    if archive_limit is not None:
        bot.settings.archive_limit = archive_limit
    await bot.start()
    await bot.join(room_jid, "bot")
    return bot


async def _out_while(server, bot, room_jid, said) -> None:
    """Kick the bot (333), keep it out while `said()` runs, let it back in."""
    await server.refuse_joins(room_jid, "remote-server-timeout", "wait")
    await server.kick_with_codes(room_jid, "bot", [333])
    await bot.wait_event("dropped", room_jid)

    async def refused() -> bool:
        return await server.refused_count(room_jid) >= 1
    assert await eventually(refused), bot.events     # out, and kept out
    await said()
    await server.clear_refusals(room_jid)
    await bot.wait_event("rejoined", room_jid, timeout=20)


async def _count(bot, n: int) -> bool:
    return len(bot.messages) >= n


def _room_health(bot):
    [room] = bot.guard.health().rooms
    return room


async def test_archive_limit_reached_with_more_in_the_archive_is_one_gap(
        prosody_factory, make_client, make_bot, account, room_jid, caplog):
    caplog.set_level(logging.INFO, logger="muc_guard.events")
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    bot = await _guarded(server, make_bot, account, room_jid, archive_limit=5)
    room = await talker_in(room_jid, server, account, make_client)
    await send_all(room, ["before"])
    assert await eventually(lambda: _count(bot, 1))
    missed = [f"missed {i}" for i in range(12)]
    await _out_while(server, bot, room_jid, lambda: send_all(room, missed))
    await send_all(room, ["after"])
    assert await eventually(lambda: _count(bot, 7), timeout=15)
    await asyncio.sleep(0.5)
    # the first archive_limit missed messages, then live traffic
    assert bot.bodies() == ["before", *missed[:5], "after"]
    [(gap_room, since, until, reason, at)] = bot.gaps
    assert reason is GapReason.ARCHIVE_LIMIT and at == 6      # after what was read
    assert since <= until <= time.time() + 5
    health = bot.guard.health()
    assert health.counters.gaps == {GapReason.ARCHIVE_LIMIT: 1}
    assert _room_health(bot).gaps == 1 and health.healthy
    [line] = [r for r in caplog.records if getattr(r, "muc_event", None) == "gap"]
    assert (line.muc_reason, line.muc_gap_since, line.muc_gap_until) == (
        "archive-limit", since, until)
    await bot.stop()


@over_verified_tls
async def test_a_history_shorter_than_the_outage_is_a_gap(
        prosody, make_client, make_bot, account, room_jid):
    """A room without archive replays its last 5 messages: the 12 said while
    the bot was out do not reach back to its last message."""
    await prosody.create_room(room_jid, history_length=5)
    bot = await _guarded(prosody, make_bot, account, room_jid)
    room = await talker_in(room_jid, prosody, account, make_client)
    await send_all(room, ["before"])
    assert await eventually(lambda: _count(bot, 1))
    position = time.time()
    missed = [f"missed {i}" for i in range(12)]
    await _out_while(prosody, bot, room_jid, lambda: send_all(room, missed))
    assert await eventually(lambda: _count(bot, 6), timeout=15)
    await asyncio.sleep(0.5)
    assert bot.bodies() == ["before", *missed[-5:]]
    [(_, since, until, reason, at)] = bot.gaps
    assert reason is GapReason.HISTORY_SHORT and at == 1     # before the replay
    # until: the first replayed message's stamp (whole seconds: may round below since)
    assert abs(since - position) < 3 and since <= until
    assert bot.guard.health().counters.gaps == {GapReason.HISTORY_SHORT: 1}
    await bot.stop()


@pytest.mark.parametrize("archive", [False, True], ids=["history", "archive"])
async def test_an_outage_the_archive_or_history_covers_is_no_gap(
        archive, prosody, prosody_factory, make_client, make_bot, account, room_jid):
    server = prosody_factory(mam=True) if archive else prosody
    # history of 20 (Prosody's default) holds the 10 missed and the last one seen
    await server.create_room(room_jid, **({} if archive else {"history_length": 20}))
    bot = await _guarded(server, make_bot, account, room_jid)
    room = await talker_in(room_jid, server, account, make_client)
    await send_all(room, ["before"])
    assert await eventually(lambda: _count(bot, 1))
    missed = [f"missed {i}" for i in range(10)]
    await _out_while(server, bot, room_jid, lambda: send_all(room, missed))
    assert await eventually(lambda: _count(bot, 11), timeout=15)
    await asyncio.sleep(0.5)
    assert bot.bodies() == ["before", *missed]
    assert bot.gaps == []
    counters = bot.guard.health().counters
    assert counters.gaps == {} and counters.rejoins == 1, counters
    assert counters.recovered == 10, ([(t, k) for t, k, _, _ in bot.events], counters.outage_sum, bot.messages)
    await bot.stop()


async def test_an_archive_that_expired_our_position_is_a_gap(
        prosody_factory, make_client, make_bot, account, room_jid):
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    bot = await _guarded(server, make_bot, account, room_jid)
    room = await talker_in(room_jid, server, account, make_client)
    await send_all(room, ["before"])
    assert await eventually(lambda: _count(bot, 1))
    kept = [f"kept {i}" for i in range(3)]

    async def said() -> None:
        await send_all(room, ["lost 0", "lost 1"])
        await asyncio.sleep(1.1)            # the archive stamps whole seconds
        await server.expire_archive(room_jid)    # forgets "before" and the lost ones
        await asyncio.sleep(1.1)
        await send_all(room, kept)
    await _out_while(server, bot, room_jid, said)
    assert await eventually(lambda: _count(bot, 4), timeout=15)
    await asyncio.sleep(0.5)
    assert bot.bodies() == ["before", *kept]
    [(_, since, until, reason, at)] = bot.gaps
    assert reason is GapReason.ARCHIVE_EXPIRED and at == 1
    assert until - since >= 1     # from "before" to "kept 0", 2.2 s later (whole seconds)
    assert bot.guard.health().counters.gaps == {GapReason.ARCHIVE_EXPIRED: 1}
    await bot.stop()
