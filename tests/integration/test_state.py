"""Room state that must never get stuck, on a real Prosody (issue #12).

Each scenario ends with the invariant check of muc_guard.core.invariants: a
wanted room that is not joined has exactly one join pending, a joined room a
self-ping pending, a given-up room neither.
"""

from __future__ import annotations

import asyncio

import aioxmpp
import pytest

import muc_guard
import muc_guard.store
from muc_guard import State
from muc_guard.aioxmpp import mam
from guardkit import Bot, eventually, occupant_nicks_of
from prosody import connected

pytestmark = pytest.mark.integration


async def speaker(room_jid, server, account, make_client):
    """Another account in the room (plain aioxmpp): ``await say(texts)``."""
    talker, password = account("talker", server=server)
    client = make_client(talker, password, server=server)
    muc = client.summon(aioxmpp.MUCClient)
    await connected(client)
    room, fut = muc.join(room_jid, "talker", autorejoin=False)
    await fut

    async def say(texts: list[str]) -> None:
        for text in texts:
            msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
            msg.body[None] = text
            await room.send_message(msg)
    return say


def on_archive_page(client: aioxmpp.Client, page: int, action) -> list[int]:
    """Run `action()` (a coroutine function) before `client` sends its
    `page`-th MAM query, once: the archive read is then certainly under way."""
    sent: list[int] = []
    original = client.send

    async def send(stanza, **kwargs):
        if isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, mam.Query):
            sent.append(1)
            if len(sent) == page:
                await action()
        return await original(stanza, **kwargs)

    client.send = send
    return sent


@pytest.mark.timeout(90)
async def test_a_drop_while_the_archive_is_read_is_rejoined(prosody_factory, make_client,
                                                            account, room_jid, tmp_path):
    """Issue #12, defect 1: after a restart the archive is read inside the
    join task; a 110+333 arriving meanwhile must still lead to a rejoin."""
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    db = tmp_path / "bot.db"
    say = await speaker(room_jid, server, account, make_client)
    # A message seen before the stop: a position to recover from.
    jid, pw = await known_room(server, make_client, account, room_jid, db, say=say)
    await say([f"missed {i}" for i in range(30)])

    second = Bot(make_client, jid, pw, server=server)
    second.guard.archive_page_size = 5          # several pages: a wide window
    await second.guard.open_store(db)

    async def kick_and_wait() -> None:
        await server.kick_with_codes(room_jid, "bot", [333])
        await second.wait_event("dropped", room_jid)

    pages = on_archive_page(second.client, 2, kick_and_wait)
    await second.start()
    await second.wait_event("dropped", room_jid, timeout=20)
    assert len(pages) >= 2, "the drop did not come while the archive was read"
    dropped_at = second.kinds(room_jid).index("dropped")
    await second.wait_event("rejoined", room_jid, after=dropped_at + 1, timeout=20)
    assert second.kinds(room_jid) == ["rejoined", "dropped", "rejoined"]
    assert second.info(room_jid).state is State.JOINED
    assert await occupant_nicks_of(server, room_jid, jid) == ["bot"]
    assert second.violations() == []
    await second.stop()


async def _true(value) -> bool:
    return bool(value)


async def _absent(server, room, jid) -> bool:
    return await occupant_nicks_of(server, room, jid) == []


# --- join() of a room known from the store (defects 5 and 6) ----------------------------


async def known_room(server, make_client, account, room_jid, db, *, kicks: int = 0,
                     say=None):
    """An account whose store knows `room_jid` (joined, `kicks` drops, a
    message from `say` seen, then a clean stop); returns (jid, password)."""
    jid, pw = account("bot", server=server)
    first = Bot(make_client, jid, pw, server=server)
    await first.guard.open_store(db)
    seen: list[str] = []
    first.guard.on_message.connect(lambda r, m, **kw: seen.append(m.body.any()))
    await first.start()
    await first.guard.join(room_jid, "bot")
    for _ in range(kicks):
        after = len(first.events)
        await server.kick_with_codes(room_jid, "bot", [333])
        await first.wait_event("rejoined", room_jid, after=after)
    if say is not None:
        await say(["before"])
        assert await eventually(lambda: _true(seen))
    await first.stop()
    assert await eventually(lambda: _absent(server, room_jid, jid))
    return jid, pw


async def restarted(server, make_client, jid, pw, db,
                    room_jid) -> tuple[Bot, asyncio.Future]:
    """The bot restarted as a configured bot does: open_store(), then join()
    while the stream comes up (the first attempt answers that join())."""
    bot = Bot(make_client, jid, pw, server=server)
    await bot.guard.open_store(db)
    bot.guard.backoff_min, bot.guard.backoff_max = 0.2, 0.4
    join = asyncio.ensure_future(bot.guard.join(room_jid, "bot"))
    return bot, join


async def test_a_transient_refusal_of_a_known_room_is_retried_while_join_waits(
        prosody, make_client, account, room_jid, tmp_path):
    db = tmp_path / "bot.db"
    jid, pw = await known_room(prosody, make_client, account, room_jid, db)
    await prosody.refuse_joins(room_jid, "forbidden", "auth")
    bot, join = await restarted(prosody, make_client, jid, pw, db, room_jid)
    await bot.start()
    assert await eventually(lambda: _refused(prosody, room_jid, 1))
    await prosody.clear_refusals(room_jid)
    room = await asyncio.wait_for(join, 10)
    assert room.muc_joined and bot.info(room_jid).state is State.JOINED
    assert "gave_up" not in bot.kinds()
    assert await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
    await bot.stop()


async def test_409_on_a_known_room_falls_back_while_join_waits(prosody, make_client, account,
                                                              room_jid, tmp_path):
    db = tmp_path / "bot.db"
    jid, pw = await known_room(prosody, make_client, account, room_jid, db)
    holder_jid, holder_pw = account("holder")
    holder = await Bot(make_client, holder_jid, holder_pw).start()
    await holder.guard.join(room_jid, "bot")             # holds our nick
    bot, join = await restarted(prosody, make_client, jid, pw, db, room_jid)
    await bot.start()
    room = await asyncio.wait_for(join, 15)
    assert room.muc_joined and bot.info(room_jid).state is State.JOINED
    assert bot.info(room_jid).nick == bot.guard.fallback_nick("bot", 1)
    assert "gave_up" not in bot.kinds()
    await bot.stop()
    await holder.stop()


async def test_a_known_room_refusing_for_good_gives_up_with_on_gave_up(
        prosody, make_client, account, room_jid, tmp_path):
    db = tmp_path / "bot.db"
    jid, pw = await known_room(prosody, make_client, account, room_jid, db)
    await prosody.refuse_joins(room_jid, "forbidden", "auth")
    bot, join = await restarted(prosody, make_client, jid, pw, db, room_jid)
    await bot.start()
    with pytest.raises(aioxmpp.errors.XMPPError):
        await asyncio.wait_for(join, 15)
    assert await prosody.refused_count(room_jid) == bot.guard.permanent_error_limit
    assert bot.kinds(room_jid) == ["gave_up"]
    info = bot.info(room_jid)
    assert (info.state, info.last_cause) == (State.GAVE_UP, muc_guard.Cause.JOIN_ERROR)
    await bot.stop()


async def test_join_before_open_store_keeps_what_the_store_knows(prosody, make_client,
                                                                 account, room_jid, tmp_path):
    """Defect 6: join() first, open_store() second: the stored position,
    drop count and last join still count, and what was said while the bot
    was down comes back (MUC history since the stored position)."""
    await prosody.create_room(room_jid, history_length=50)
    db = tmp_path / "bot.db"
    say = await speaker(room_jid, prosody, account, make_client)
    jid, pw = await known_room(prosody, make_client, account, room_jid, db, kicks=1,
                               say=say)
    await asyncio.sleep(0.5)
    missed = [f"missed {i}" for i in range(5)]
    await say(missed)

    bot = Bot(make_client, jid, pw)
    got: list[tuple[str, bool]] = []
    bot.guard.on_message.connect(
        lambda r, m, *, recovered, own: got.append((m.body.any(), recovered)))
    join = asyncio.ensure_future(bot.guard.join(room_jid, "bot"))
    await asyncio.sleep(0.1)
    await bot.guard.open_store(db)
    assert bot.info(room_jid).drops == 1
    await bot.start()
    await asyncio.wait_for(join, 10)
    assert await eventually(lambda: _true(len(got) >= len(missed)))
    await asyncio.sleep(0.3)
    assert got == [(text, True) for text in missed]
    await bot.stop()
    store = await muc_guard.store.Store.open(db)
    try:
        (stored,) = await store.load_rooms(str(jid.bare()))
    finally:
        await store.close()
    assert stored.drops == 1 and stored.position.last_ts is not None


async def _refused(server, room, n) -> bool:
    return await server.refused_count(room) >= n


# --- nick changes that never end (defect 4) --------------------------------------------


@pytest.fixture
async def joined_bot(prosody, make_client, account, room_jid):
    jid, pw = account("bot")
    bot = await Bot(make_client, jid, pw).start()
    bot.jid = jid
    await bot.guard.join(room_jid, "bot")
    yield bot
    await bot.stop()


async def test_set_nick_to_the_nick_we_hold_keeps_self_pings_going(prosody, joined_bot,
                                                                   room_jid):
    """A bot re-applying its configuration: no nick change is pending after
    it, so a later silent drop is still found by the self-ping."""
    bot = joined_bot
    bot.guard.ping_idle = 1.0
    await bot.guard.set_nick(room_jid, "bot")
    assert bot.info(room_jid).nick == "bot"
    await prosody.silent_remove(room_jid, "bot")
    await bot.wait_event("rejoined", room_jid, timeout=10)
    assert bot.kinds(room_jid) == ["dropped", "rejoined"]
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]


async def test_a_nick_change_refused_by_a_room_that_lost_us_is_checked_at_once(
        prosody, joined_bot, room_jid):
    """Prosody answers the nick change of a client it dropped silently with
    an error from the new nick: the guard self-pings at once (the idle ping
    is far away) and rejoins."""
    bot = joined_bot
    bot.guard.ping_idle = 300.0
    await prosody.silent_remove(room_jid, "bot")
    await bot.guard.set_nick(room_jid, "renamed")
    _, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    assert cause is muc_guard.Cause.PING
    await bot.wait_event("rejoined", room_jid, timeout=10)
    assert bot.info(room_jid).state is State.JOINED
