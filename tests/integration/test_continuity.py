"""No message lost: one stable on_message stream across drops and restarts.

Another account talks in the room while the bot is out (dropped silently,
kicked with 333 and kept out by refused joins, or restarted). Afterwards the
bot's on_message must have delivered every message exactly once, in order,
with `recovered` set on those that came back through room history.

Every scenario runs on both front-ends (the ``frontend`` fixture).
"""

from __future__ import annotations

import asyncio

import pytest

from guardkit import eventually, occupant_nicks_of, send_all, talker_in

pytestmark = pytest.mark.integration

N = 200


@pytest.mark.parametrize("archive", [False, True], ids=["history", "archive"])
@pytest.mark.parametrize("how", ["silent", "kick333", "restart"])
async def test_every_message_once_in_order_across_a_drop(how, archive, prosody,
                                                         prosody_factory, make_client,
                                                         make_bot, account, room_jid,
                                                         tmp_path):
    if archive:
        # MUC history stays at Prosody's default 20: only the archive has all 200.
        prosody = prosody_factory(mam=True)
        await prosody.create_room(room_jid)
    else:
        await prosody.create_room(room_jid, history_length=N + 50)
    db = tmp_path / "bot.db"
    bot_jid, bot_pw = account("bot", server=prosody)
    bot = make_bot(bot_jid, bot_pw, server=prosody)
    bot.guard.ping_idle = 1.0
    await bot.open_store(db)
    await bot.start()
    await bot.join(room_jid, "bot")

    room = await talker_in(room_jid, prosody, account, make_client)

    before = [f"before {i}" for i in range(5)]
    missed = [f"missed {i}" for i in range(N)]
    after = [f"after {i}" for i in range(5)]
    await send_all(room, before)
    assert await eventually(lambda: _count(bot, 5))

    if how == "silent":
        await prosody.silent_remove(room_jid, "bot")
        await send_all(room, missed)
        await bot.wait_event("rejoined", room_jid, timeout=15)
    elif how == "kick333":
        await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
        await prosody.kick_with_codes(room_jid, "bot", [333])
        await bot.wait_event("dropped", room_jid)
        await send_all(room, missed)
        await prosody.clear_refusals(room_jid)
        await bot.wait_event("rejoined", room_jid, timeout=30)
    else:
        await bot.stop()
        assert await eventually(lambda: _gone(prosody, room_jid, bot_jid))
        await send_all(room, missed)
        delivered = bot.messages
        bot = make_bot(bot_jid, bot_pw, server=prosody)
        await bot.open_store(db)
        bot.messages = delivered                # one list across both processes
        await bot.start()
        await bot.wait_event("rejoined", room_jid, timeout=15)

    await send_all(room, after)
    expected = before + missed + after
    assert await eventually(lambda: _count(bot, len(expected)), timeout=15)
    await asyncio.sleep(0.5)                     # anything extra would show up now
    assert bot.bodies() == expected              # each once, in order
    recovered = [body for body, rec, _ in bot.messages if rec]
    assert recovered, "nothing was recovered"
    assert set(recovered) <= set(missed)
    assert all(not rec for body, rec, _ in bot.messages if body in before + after)
    assert not any(own for _, _, own in bot.messages)
    await bot.stop()


async def _count(bot, n: int) -> bool:
    return len(bot.messages) >= n


async def _gone(server, room, jid) -> bool:
    return await occupant_nicks_of(server, room, jid) == []


async def test_a_restarted_bot_comes_back_with_the_same_resource(prosody, make_bot, account,
                                                                  room_jid, tmp_path):
    db = tmp_path / "bot.db"
    jid, pw = account("stable")
    first = make_bot(jid, pw, resource=None)       # the server picks a resource
    await first.open_store(db)
    await first.start()
    await first.join(room_jid, "bot")
    bound = first.bound_jid
    assert bound.resource
    await first.stop()
    second = make_bot(jid, pw, resource=None)
    await second.open_store(db)
    await second.start()
    assert second.bound_jid == bound
    await second.wait_event("rejoined", room_jid)
    assert (await prosody.occupants(room_jid))["bot"] == [str(bound)]
    await second.stop()


async def test_ghost_of_our_crashed_session_is_taken_over(prosody_factory, make_bot, account,
                                                          room_jid, tmp_path):
    """With stream management the server keeps a crashed session (and its
    room occupant) hibernating. The restarted bot binds the same full JID, so
    the room sees one occupant with one real JID, not a ghost beside us."""
    server = prosody_factory(smacks=True)
    db = tmp_path / "bot.db"
    jid, pw = account("ghosted", server=server)
    first = make_bot(jid, pw, server=server, resource=None)
    await first.open_store(db)
    await first.start()
    await first.join(room_jid, "bot")
    bound = first.bound_jid
    await first.crash(server)                     # the bot "crashes" mid-stream
    sessions = await server.c2s_sessions(jid)
    assert [s["hibernating"] for s in sessions] == [True]
    assert (await server.occupants(room_jid))["bot"] == [str(bound)]   # the ghost

    second = make_bot(jid, pw, server=server, resource=None)
    await second.open_store(db)
    await second.start()
    assert second.bound_jid == bound
    await second.wait_event("rejoined", room_jid, timeout=15)
    assert await eventually(lambda: _only(server, room_jid, "bot", str(bound)))
    assert [s["hibernating"] for s in await server.c2s_sessions(jid)] == [False]
    await second.stop()


async def _only(server, room, nick, real_jid) -> bool:
    return (await server.occupants(room)) == {nick: [real_jid]}


@pytest.mark.parametrize("archive", [False, True], ids=["history", "archive"])
async def test_restart_of_a_bot_that_never_saw_a_message_recovers_from_its_join(
        archive, prosody, prosody_factory, make_client, make_bot, account, room_jid, tmp_path):
    """No message position was ever written (a quiet room, or a crash before
    the lazy write): recovery starts at the last join, stored at once."""
    server = prosody_factory(mam=True) if archive else prosody
    await server.create_room(room_jid, history_length=50)
    db = tmp_path / "bot.db"
    jid, pw = account("quiet", server=server)
    first = make_bot(jid, pw, server=server)
    await first.open_store(db)
    await first.start()
    await first.join(room_jid, "bot")
    await first.stop()
    room = await talker_in(room_jid, server, account, make_client)
    said = [f"while away {i}" for i in range(10)]
    await send_all(room, said)
    await _restart_recovers(make_bot(jid, pw, server=server), db, room_jid, said)


async def test_restart_after_the_archive_expired_our_position_recovers_by_time(
        prosody_factory, make_client, make_bot, account, room_jid, tmp_path):
    """The archive no longer holds the last message the bot saw (expired
    while the bot was down): Prosody 0.12 answers the ``after`` query with
    item-not-found, Prosody 13 with an empty, complete page. Either way what
    was said meanwhile comes back, by time."""
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    db = tmp_path / "bot.db"
    jid, pw = account("expired", server=server)
    first = make_bot(jid, pw, server=server)
    await first.open_store(db)
    await first.start()
    await first.join(room_jid, "bot")
    room = await talker_in(room_jid, server, account, make_client)
    await send_all(room, ["seen"])
    assert await eventually(lambda: _count(first, 1))
    await first.stop()
    await server.expire_archive(room_jid)         # the archive forgets "seen"
    said = [f"while away {i}" for i in range(3)]
    await send_all(room, said)
    await _restart_recovers(make_bot(jid, pw, server=server), db, room_jid, said)


async def _restart_recovers(second, db, room_jid, said: list[str]) -> None:
    """`second`, restarted from the store, rejoins and delivers exactly
    `said`, every message as recovered."""
    await second.open_store(db)
    await second.start()
    await second.wait_event("rejoined", room_jid)
    assert await eventually(lambda: _count(second, len(said)))
    await asyncio.sleep(0.3)                      # anything extra would show up now
    assert second.bodies() == said
    assert all(rec for _, rec, _ in second.messages)
    await second.stop()
