"""MUCGuard against a real Prosody: every way of losing a room, seen from both sides.

Each scenario injects the fault through Prosody itself (muc_guard/testing/prosody.py) and
checks the outcome twice: in the guard's signals and state, and in the
server's own occupant list. The scenarios marked ``over_both`` (a signalled
drop, a silent drop, a restart from the store) also run over TLS with the
server's certificate verified, as a bot in production connects.
"""

from __future__ import annotations

import asyncio
import random
import time

import aioxmpp
import aioxmpp.ping
import pytest

import muc_guard
import muc_guard.store
from muc_guard import Cause, State
from guardkit import Bot, eventually, occupant_nicks_of, over_both
from prosody import connected

pytestmark = pytest.mark.integration


@pytest.fixture
async def bot(make_client, account):
    jid, password = account("bot")
    b = await Bot(make_client, jid, password).start()
    b.jid = jid
    yield b
    b.check_invariants()
    await b.guard.shutdown()


async def in_room(server, room, jid, nick):
    return await eventually(lambda: _has(server, room, jid, nick))


async def _has(server, room, jid, nick):
    return nick in await occupant_nicks_of(server, room, jid)


# --- server-signalled technical removals: rejoin at once ------------------------------


@over_both
@pytest.mark.parametrize("codes, cause", [
    ([333], Cause.SERVER_ERROR),
    ([307, 333], Cause.SERVER_ERROR),
    ([330], Cause.REMOTE_LOST),
    ([], Cause.UNEXPLAINED),
])
async def test_rejoins_after_technical_removal(prosody, bot, room_jid, codes, cause, figure):
    room = await bot.guard.join(room_jid, "bot")
    assert await in_room(prosody, room_jid, bot.jid, "bot")
    kicked_at = time.monotonic()
    await prosody.kick_with_codes(room_jid, "bot", codes, reason="fault injected")
    _, got = await bot.wait_event("dropped", room_jid)
    t_rejoined, new_room = await bot.wait_event("rejoined", room_jid)
    figure(f"kick {'+'.join(map(str, [110] + codes))} -> on_rejoined", t_rejoined - kicked_at)
    assert got is cause
    assert new_room is not room and new_room.muc_joined
    info = bot.info(room_jid)
    assert (info.state, info.drops, info.last_cause, info.room) == (State.JOINED, 1, cause,
                                                                     new_room)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]


async def test_rejoins_after_332_with_a_jittered_pause(prosody, bot, room_jid):
    bot.guard._guard.settings.backoff._rng = random.Random(7)   # deterministic jitter
    expected = random.Random(7).uniform(1.0, 10.0)
    await bot.guard.join(room_jid, "bot")
    await prosody.kick_with_codes(room_jid, "bot", [332])
    t_dropped, cause = await bot.wait_event("dropped", room_jid)
    assert cause is Cause.SERVICE_SHUTDOWN
    await asyncio.sleep(0.5)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []   # not at once
    t_rejoined, _ = await bot.wait_event("rejoined", room_jid, timeout=15)
    assert expected - 0.1 <= t_rejoined - t_dropped <= expected + 1.5
    assert await in_room(prosody, room_jid, bot.jid, "bot")


@over_both
async def test_silent_drop_is_found_by_self_ping(prosody, bot, room_jid, figure):
    bot.guard.ping_idle = 1.0
    bot.guard.ping_timeout = 5.0
    await bot.guard.join(room_jid, "bot")
    removed_at = time.monotonic()
    await prosody.silent_remove(room_jid, "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []
    t_dropped, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    t_rejoined, _ = await bot.wait_event("rejoined", room_jid, timeout=10)
    figure("silent drop -> on_dropped (ping_idle=1)", t_dropped - removed_at)
    figure("silent drop: on_dropped -> on_rejoined", t_rejoined - t_dropped)
    assert cause is Cause.PING
    assert t_dropped - removed_at <= 1.0 + 1.0   # idle time + a loopback round trip
    assert await in_room(prosody, room_jid, bot.jid, "bot")


async def test_item_not_found_twice_means_the_room_forgot_us(prosody, bot, room_jid, figure):
    """Prosody answers item-not-found for a room that no longer exists: the
    first is inconclusive (XEP-0410: a nick change), the second decides."""
    bot.guard.ping_idle = 1.0
    await bot.guard.join(room_jid, "bot")
    vanished_at = time.monotonic()
    assert await prosody.drop_room(room_jid)
    t_dropped, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    assert cause is Cause.PING
    assert t_dropped - vanished_at >= 2 * 1.0 - 0.05        # not on the first reply
    figure("room vanished -> on_dropped (ping_idle=1, 2 pings)", t_dropped - vanished_at)
    await bot.wait_event("rejoined", room_jid, timeout=10)
    assert await in_room(prosody, room_jid, bot.jid, "bot")


async def _join_as(make_client, account, server, room_jid, nick):
    """Another account joins `room_jid` with plain aioxmpp; its client is
    returned (stopped by make_client at teardown). Raises the room's refusal."""
    jid, pw = account(nick, server=server)
    client = make_client(jid, pw, server=server)
    muc = client.summon(aioxmpp.MUCClient)
    await connected(client)
    room, fut = muc.join(room_jid, nick, history=aioxmpp.muc.xso.History(maxstanzas=0))
    await asyncio.wait_for(fut, 10)
    assert room.muc_joined
    return client


async def test_rejoin_that_recreates_a_vanished_room_unlocks_it(
        prosody_factory, make_client, account, room_jid):
    """With room locking on (Prosody's default), the room our rejoin
    re-creates (201) would refuse everyone else with item-not-found until
    configured: the guard accepts the default configuration (XEP-0045
    §10.1.2, an instant room), so the room is usable again."""
    server = prosody_factory(room_locking=True)
    assert await server.create_room(room_jid)       # exists before the bot, no owner
    jid, pw = account("bot", server=server)
    bot = await Bot(make_client, jid, pw, server=server).start()
    try:
        bot.guard.ping_idle = 1.0
        await bot.guard.join(room_jid, "bot")
        assert await server.drop_room(room_jid)
        await bot.wait_event("dropped", room_jid, timeout=10)
        await bot.wait_event("rejoined", room_jid, timeout=10)
        await _join_as(make_client, account, server, room_jid, "alice")
        assert sorted(await server.occupants(room_jid)) == ["alice", "bot"]
    finally:
        await bot.guard.shutdown()


async def test_first_join_that_creates_a_room_leaves_it_to_the_bot(
        prosody_factory, make_client, account, room_jid, caplog):
    """A room the bot's own first join() creates is the bot's to configure
    (it may want it members-only, say): the guard does not open it, and says
    so in the log."""
    server = prosody_factory(room_locking=True)
    jid, pw = account("bot", server=server)
    bot = await Bot(make_client, jid, pw, server=server).start()
    try:
        await bot.guard.join(room_jid, "bot")
        with pytest.raises(aioxmpp.errors.XMPPCancelError) as info:
            await _join_as(make_client, account, server, room_jid, "alice")
        assert info.value.condition == aioxmpp.ErrorCondition.ITEM_NOT_FOUND
        assert any("created" in r.getMessage() and str(room_jid) in r.getMessage()
                   for r in caplog.records if r.name.startswith("muc_guard"))
    finally:
        await bot.guard.shutdown()


async def test_join_while_offline_waits_for_the_stream(prosody, make_client, account,
                                                      room_jid):
    jid, pw = account("late")
    late = Bot(make_client, jid, pw)
    join = asyncio.ensure_future(late.guard.join(room_jid, "late"))
    await asyncio.sleep(0.3)
    assert not join.done() and late.info(room_jid).state is State.JOINING
    await late.start()
    room = await asyncio.wait_for(join, 10)
    assert room.muc_joined and await in_room(prosody, room_jid, jid, "late")
    assert late.events == []                 # a first join is not a rejoin
    await late.stop()


async def test_no_ping_while_the_room_talks(prosody, bot, room_jid, make_client, account):
    bot.guard.ping_idle = 1.0
    await bot.guard.join(room_jid, "bot")
    pings: list[aioxmpp.JID] = []
    send = bot.client.send

    async def counting_send(stanza, **kwargs):
        if (isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, aioxmpp.ping.Ping)
                and stanza.to.bare() == room_jid):
            pings.append(stanza.to)
        return await send(stanza, **kwargs)
    bot.client.send = counting_send
    talker_jid, pw = account("talker")
    talker = await Bot(make_client, talker_jid, pw).start()
    talk_room = await talker.guard.join(room_jid, "talker")
    for i in range(8):                      # 3.2 s of traffic, a message every 0.4 s
        await talk_room.send_message(_groupchat(f"hello {i}"))
        await asyncio.sleep(0.4)
    assert pings == []
    await asyncio.sleep(1.3)                # 1.7 s of silence: one ping, answered "joined"
    assert pings == [room_jid.replace(resource="bot")]
    assert bot.events == []
    await talker.stop()


def _groupchat(text: str) -> aioxmpp.Message:
    msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    msg.body[None] = text
    return msg


# --- the room's will: never rejoin ------------------------------------------------------


async def _gave_up(prosody, bot, room_jid, cause):
    _, got = await bot.wait_event("dropped", room_jid)
    _, gave_up = await bot.wait_event("gave_up", room_jid)
    assert got is cause and gave_up is cause
    await asyncio.sleep(1.5)              # a rejoin would be there by now
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []
    info = bot.info(room_jid)
    assert (info.state, info.last_cause, info.drops) == (State.GAVE_UP, cause, 1)
    assert bot.kinds(room_jid) == ["dropped", "gave_up"]


async def test_kick_307_gives_up(prosody, bot, room_jid, make_client, account):
    await bot.guard.join(room_jid, "bot")
    await prosody.kick(room_jid, "bot", reason="behave")
    await _gave_up(prosody, bot, room_jid, Cause.KICKED)


async def test_ban_301_gives_up(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await prosody.ban(room_jid, bot.jid, reason="spam")
    await _gave_up(prosody, bot, room_jid, Cause.BANNED)


async def test_ban_with_333_still_gives_up(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await prosody.kick_with_codes(room_jid, "bot", [301, 333])
    await _gave_up(prosody, bot, room_jid, Cause.BANNED)


async def test_destroy_gives_up(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await prosody.destroy(room_jid, reason="closing")
    await _gave_up(prosody, bot, room_jid, Cause.DESTROYED)


async def test_members_only_322_gives_up(prosody, bot, room_jid):
    await prosody.create_room(room_jid)   # so the bot joins unaffiliated, not as owner
    await bot.guard.join(room_jid, "bot")
    assert await prosody.set_members_only(room_jid)
    await _gave_up(prosody, bot, room_jid, Cause.MEMBERS_ONLY)


async def test_own_leave_fires_nothing_and_never_rejoins(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await bot.guard.leave(room_jid)
    assert await eventually(lambda: _absent(prosody, room_jid, bot.jid))
    await asyncio.sleep(1.0)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []
    assert bot.events == [] and bot.guard.rooms() == []


async def _absent(server, room, jid):
    return await occupant_nicks_of(server, room, jid) == []


# --- nicks -----------------------------------------------------------------------------


async def test_assigned_nick_210_is_kept_across_a_rejoin(prosody, bot, room_jid):
    await prosody.rewrite_nick(room_jid, "bot", "bot-assigned")
    room = await bot.guard.join(room_jid, "bot")
    assert room.me.nick == "bot-assigned"
    assert (bot.info(room_jid).nick, bot.info(room_jid).requested_nick) == ("bot-assigned",
                                                                             "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot-assigned"]
    await prosody.clear_rewrites(room_jid)
    await prosody.kick_with_codes(room_jid, "bot-assigned", [333])
    await bot.wait_event("rejoined", room_jid)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot-assigned"]
    assert bot.info(room_jid).nick == "bot-assigned"


async def test_set_nick_is_stored_when_it_returns_and_kept_across_a_rejoin(
        prosody, make_client, account, tmp_path, room_jid):
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    bot = Bot(make_client, jid, pw)
    await bot.guard.open_store(db)
    await bot.start()
    try:
        await bot.guard.join(room_jid, "bot")
        await bot.guard.set_nick(room_jid, "renamed")
        store = await muc_guard.store.Store.open(db)   # a second reader, as after a crash
        try:
            (stored,) = await store.load_rooms(str(jid.bare()))
        finally:
            await store.close()
        assert stored.requested_nick == "renamed"
        async def followed() -> bool:
            return bot.info(room_jid).nick == "renamed"

        assert await eventually(followed)
        assert await occupant_nicks_of(prosody, room_jid, jid) == ["renamed"]
        await prosody.kick_with_codes(room_jid, "renamed", [333])
        await bot.wait_event("rejoined", room_jid)
        assert await occupant_nicks_of(prosody, room_jid, jid) == ["renamed"]
    finally:
        await bot.stop()


# --- join() contract ------------------------------------------------------------------


async def test_join_refused_raises_and_does_not_keep_the_room(prosody, bot, room_jid):
    await prosody.create_room(room_jid, members_only=True)
    with pytest.raises(aioxmpp.errors.XMPPError) as info:
        await asyncio.wait_for(bot.guard.join(room_jid, "bot"), 10)
    assert info.value.condition == aioxmpp.ErrorCondition.REGISTRATION_REQUIRED
    assert bot.guard.rooms() == []


async def test_join_conflict_with_another_account_raises(prosody, bot, room_jid, make_client,
                                                         account):
    other_jid, pw = account("other")
    other = await Bot(make_client, other_jid, pw).start()
    await other.guard.join(room_jid, "taken")
    with pytest.raises(aioxmpp.errors.XMPPError) as info:
        await asyncio.wait_for(bot.guard.join(room_jid, "taken"), 10)
    assert info.value.condition == aioxmpp.ErrorCondition.CONFLICT
    assert bot.guard.rooms() == []
    await other.stop()


async def test_unreachable_remote_room_is_retried_without_a_storm(prosody, bot, room_jid):
    """A remote MUC that cannot be reached (remote-server-timeout) is retried
    with backoff while join() waits: a handful of attempts in 10 s, then in."""
    await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
    join = asyncio.ensure_future(bot.guard.join(room_jid, "bot"))
    await asyncio.sleep(10.0)
    attempts = await prosody.refused_count(room_jid)
    assert 2 <= attempts <= 5, attempts
    assert not join.done() and bot.info(room_jid).state is State.JOINING
    await prosody.clear_refusals(room_jid)
    room = await asyncio.wait_for(join, bot.guard.backoff_max + 5)
    assert room.muc_joined and await in_room(prosody, room_jid, bot.jid, "bot")


async def test_rejoin_gives_up_after_permanent_refusals(prosody, bot, room_jid):
    bot.guard.backoff_min, bot.guard.backoff_max = 0.1, 0.2
    await bot.guard.join(room_jid, "bot")
    await prosody.refuse_joins(room_jid, "forbidden", "auth")
    await prosody.kick_with_codes(room_jid, "bot", [333])
    _, cause = await bot.wait_event("gave_up", room_jid, timeout=10)
    assert cause is Cause.JOIN_ERROR
    assert await prosody.refused_count(room_jid) == bot.guard.permanent_error_limit
    assert bot.kinds(room_jid) == ["dropped", "gave_up"]
    assert bot.info(room_jid).state is State.GAVE_UP


async def test_cancelled_join_keeps_the_room_wanted(prosody, bot, room_jid):
    await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(bot.guard.join(room_jid, "bot"), 0.5)
    assert bot.info(room_jid).state is State.JOINING
    await prosody.clear_refusals(room_jid)
    assert await eventually(lambda: _has(prosody, room_jid, bot.jid, "bot"),
                            timeout=bot.guard.backoff_max + 5)
    assert bot.info(room_jid).state is State.JOINED


# --- restarts --------------------------------------------------------------------------


async def test_server_killed_and_restarted_rooms_come_back(private_prosody, make_client,
                                                           account, tmp_path, figure):
    server = private_prosody
    jid, pw = account("bot", server=server)
    bot = await Bot(make_client, jid, pw, server=server).start()
    rooms = [aioxmpp.JID(f"restart{i}", server.muc_domain, None) for i in range(3)]
    for room in rooms:
        await bot.guard.join(room, "bot")
    # Let all traffic settle: a server killed with unread data resets the
    # connection (aioxmpp copes); killed idle, it ends with a bare EOF, the
    # case aioxmpp alone never recovers from.
    await asyncio.sleep(0.5)
    killed_at = time.monotonic()
    await server.kill()
    # Out of reach at once; whether the rooms let us go is known only once
    # the server answers the probe, so on_dropped waits for it.
    assert await eventually(
        lambda: _all_states(bot, rooms, State.REJOINING), timeout=10)
    assert bot.events == []
    await server.astart()
    for room in rooms:
        await bot.wait_event("dropped", room, timeout=60)
    assert {arg for _, k, _, arg in bot.events if k == "dropped"} == {Cause.STREAM_LOST}
    last = 0.0
    for room in rooms:
        t, _ = await bot.wait_event("rejoined", room, timeout=60)
        last = max(last, t)
        assert await in_room(server, room, jid, "bot")
    figure("server kill+restart -> all rejoined", last - killed_at)
    assert bot.guard._guard._watchdog.kicks >= 1    # aioxmpp alone would hang here
    assert bot.kinds().count("rejoined") == len(rooms)     # no duplicate joins
    assert [r.state for r in bot.guard.rooms()] == [State.JOINED] * 3
    assert [r.drops for r in bot.guard.rooms()] == [1] * 3
    await bot.stop()


async def _all_states(bot, rooms, state):
    return all(bot.info(room).state is state for room in rooms)


@over_both
async def test_bot_restart_rejoins_from_the_store_without_join(prosody, make_client, account,
                                                               tmp_path, room_jid):
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    gone_room = room_jid.replace(localpart=room_jid.localpart + "-gone")
    first = Bot(make_client, jid, pw)
    await first.guard.open_store(db)
    await first.start()
    await prosody.rewrite_nick(room_jid, "bot", "bot-given")
    await first.guard.join(room_jid, "bot")
    await prosody.clear_rewrites(room_jid)
    await first.guard.join(gone_room, "bot")
    await prosody.kick(gone_room, "bot")
    await first.wait_event("gave_up", gone_room)
    await first.stop()        # the process ends: no leave
    assert await eventually(lambda: _absent(prosody, room_jid, jid))

    second = Bot(make_client, jid, pw)
    await second.guard.open_store(db)
    restored = {r.jid: r for r in second.guard.rooms()}
    assert restored[room_jid].state is State.JOINING
    assert restored[gone_room].state is State.GAVE_UP
    assert restored[gone_room].last_cause is Cause.KICKED
    await second.start()
    _, room = await second.wait_event("rejoined", room_jid)
    assert room.me.nick == "bot-given"
    assert await occupant_nicks_of(prosody, room_jid, jid) == ["bot-given"]
    await asyncio.sleep(1.0)
    assert await occupant_nicks_of(prosody, gone_room, jid) == []   # gave up stays given up
    assert second.kinds() == ["rejoined"]            # a restore is not a drop
    # An explicit join() wants the given-up room again.
    again = await second.guard.join(gone_room, "bot")
    assert again.muc_joined and second.info(gone_room).state is State.JOINED
    await second.stop()


async def _say(make_client, account, room, text):
    """Another account joins `room` and says `text` (live, not history)."""
    jid, pw = account("alice")
    from prosody import connected, stop_client
    client = make_client(jid, pw)
    muc = client.summon(aioxmpp.MUCClient)
    await connected(client)
    try:
        r, fut = muc.join(room, "alice", history=aioxmpp.muc.xso.History(maxstanzas=0))
        await fut
        msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
        msg.body[None] = text
        await r.send_message(msg)
        await r.leave()
    finally:
        await stop_client(client)


async def test_restart_probe_finds_a_kept_occupant_and_only_refreshes(
        prosody, make_client, account, tmp_path, room_jid, caplog):
    """XEP-0410 probe before rejoin: the server kept our occupant while the
    bot was down. The restarted bot sends a fresh join presence (aioxmpp
    needs one for its Room) but announces no rejoin and counts no drop."""
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    first = Bot(make_client, jid, pw)
    await first.guard.open_store(db)
    await first.start()
    await first.guard.join(room_jid, "bot")
    full = first.client.local_jid
    await first.stop()
    assert await eventually(lambda: _absent(prosody, room_jid, jid))
    # As if the first process had crashed (a clean shutdown skips the probe):
    store = await muc_guard.store.Store.open(db)
    assert await store.take_clean_exit(str(jid.bare())) is True
    await store.close()
    assert await prosody.keep_occupant(room_jid, "bot", full) == [str(full)]

    second = Bot(make_client, jid, pw)
    got: list = []
    second.guard.on_message.connect(
        lambda room, msg, *, recovered, own: got.append((str(msg.body.any()), recovered)))
    await second.guard.open_store(db)
    await second.start()
    assert second.client.local_jid == full
    assert await eventually(
        lambda: _all_states(second, [room_jid], State.JOINED), timeout=10)
    assert "still an occupant" in caplog.text
    assert second.events == []                # no on_dropped, no on_rejoined
    assert second.info(room_jid).drops == 0
    assert second.info(room_jid).room.muc_joined
    assert await prosody.occupants(room_jid) == {"bot": [str(full)]}
    await _say(make_client, account, room_jid, "still here?")
    assert await eventually(lambda: _async(got), timeout=5)
    assert got == [("still here?", False)]
    await second.stop()


async def test_lost_stream_probe_finds_a_kept_occupant_and_announces_nothing(
        prosody, bot, room_jid, caplog):
    await bot.guard.join(room_jid, "bot")
    old_room = bot.info(room_jid).room
    full = bot.client.local_jid
    await prosody.sever_c2s(full)
    assert await eventually(lambda: _absent(prosody, room_jid, bot.jid))
    await prosody.keep_occupant(room_jid, "bot", full)   # before aioxmpp reconnects (1 s)
    assert await eventually(
        lambda: _fresh_room(bot, room_jid, old_room), timeout=15)
    assert "still an occupant" in caplog.text
    assert bot.events == [] and bot.info(room_jid).drops == 0
    assert await prosody.occupants(room_jid) == {"bot": [str(full)]}


async def test_lost_stream_probe_finds_the_room_let_us_go_and_rejoins(prosody, bot, room_jid):
    await bot.guard.join(room_jid, "bot")
    await prosody.sever_c2s(bot.client.local_jid)
    _, cause = await bot.wait_event("dropped", room_jid)
    assert cause is Cause.STREAM_LOST
    await bot.wait_event("rejoined", room_jid)
    assert bot.kinds() == ["dropped", "rejoined"] and bot.info(room_jid).drops == 1
    assert await in_room(prosody, room_jid, bot.jid, "bot")


async def _fresh_room(bot, room_jid, old_room):
    info = bot.info(room_jid)
    return info.state is State.JOINED and info.room is not None and info.room is not old_room


async def _async(value):
    return value


async def test_two_accounts_share_one_store(prosody, make_client, account, tmp_path, room_jid):
    db = tmp_path / "shared.db"
    bots = []
    for name in ("alice", "bob"):
        jid, pw = account(name)
        b = Bot(make_client, jid, pw)
        await b.guard.open_store(db)
        await b.start()
        await b.guard.join(room_jid.replace(localpart=f"{room_jid.localpart}-{name}"), name)
        bots.append((b, jid, pw, name))
    for b, *_ in bots:
        await b.stop()
    for _, jid, pw, name in bots:
        b = Bot(make_client, jid, pw)
        await b.guard.open_store(db)
        assert [(str(r.jid.localpart).rsplit("-", 1)[-1], r.nick) for r in b.guard.rooms()] \
            == [(name, name)]
        await b.guard.shutdown()


async def test_mixin_service_rejoins_like_mucguard(prosody, make_client, account, room_jid):
    from userservice.bot import EchoService
    from prosody import connected
    jid, pw = account("mixin")
    client = make_client(jid.replace(resource="m"), pw)
    svc = client.summon(EchoService)
    rejoined = asyncio.get_running_loop().create_future()
    svc.on_rejoined.connect(lambda j, r: rejoined.done() or rejoined.set_result(r))
    await connected(client)
    await svc.join(room_jid, "mixer")
    await prosody.kick_with_codes(room_jid, "mixer", [333])
    room = await asyncio.wait_for(rejoined, 10)
    assert room.muc_joined and svc.own_events == ["dropped"]
    assert await in_room(prosody, room_jid, jid, "mixer")
    await svc.shutdown()


async def test_a_drop_in_one_room_checks_the_others_on_its_service(prosody, bot, room_jid,
                                                                   figure):
    """20 rooms on one service lose us silently; a 333 in a 21st reveals the
    trouble, and all 20 are found within a ping round trip, not ping_idle."""
    bot.guard.ping_idle = 300.0
    rooms = [room_jid.replace(localpart=f"{room_jid.localpart}-{i}") for i in range(21)]
    for room in rooms:
        await bot.guard.join(room, "bot")
    for room in rooms[1:]:
        await prosody.silent_remove(room, "bot")
    pings: list[aioxmpp.JID] = []
    send = bot.client.send

    async def counting_send(stanza, **kwargs):
        if (isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, aioxmpp.ping.Ping)
                and stanza.to.bare() in rooms):
            pings.append(stanza.to)
        return await send(stanza, **kwargs)
    bot.client.send = counting_send
    await prosody.kick_with_codes(rooms[0], "bot", [333])
    t_first, _ = await bot.wait_event("dropped", rooms[0])
    detected = []
    for room in rooms[1:]:
        t, cause = await bot.wait_event("dropped", room, timeout=5)
        assert cause is Cause.PING
        detected.append(t - t_first)
    figure("correlated: 20 silent drops found after first", max(detected))
    assert max(detected) < 1.0                   # one loopback ping round, not 300 s
    assert len(pings) == 20                      # one ping each: no cascade
    for room in rooms:
        await bot.wait_event("rejoined", room, timeout=10)
    for room in rooms:
        assert await in_room(prosody, room, bot.jid, "bot")


async def test_409_on_rejoin_falls_back_and_wins_the_nick_back(prosody, bot, room_jid,
                                                               make_client, account):
    bot.guard.ping_idle = 1.0
    bot.guard.backoff_min, bot.guard.backoff_max = 0.2, 0.4
    bot.guard.nick_reclaim_interval = 1.0
    await bot.guard.join(room_jid, "bot")
    await prosody.silent_remove(room_jid, "bot")
    thief_jid, pw = account("thief")
    thief = await Bot(make_client, thief_jid, pw).start()
    await thief.guard.join(room_jid, "bot")             # the nick is free on the server
    _, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    assert cause is Cause.PING
    await bot.wait_event("rejoined", room_jid, timeout=15)
    assert bot.info(room_jid).nick == "bot_"
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot_"]
    await thief.guard.leave(room_jid)
    await thief.stop()
    assert await eventually(lambda: _nick_is(bot, room_jid, "bot"), timeout=5)
    assert await in_room(prosody, room_jid, bot.jid, "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]
    # the self-ping now targets the nick we really hold: no spurious drop
    await asyncio.sleep(2.5)
    assert bot.kinds(room_jid) == ["dropped", "rejoined"]


async def _nick_is(bot, room_jid, nick):
    return bot.info(room_jid).nick == nick


async def test_connection_cut_with_stream_management_is_resumed(prosody_factory, make_client,
                                                                account, figure):
    """A connection cut under XEP-0198 is resumed, and the rooms were never
    left: no drop, no rejoin. (When the cut reaches aioxmpp as a bare EOF
    instead of a reset, the stream watchdog makes it reconnect.)"""
    server = prosody_factory(smacks=True)
    jid, pw = account("smacked", server=server)
    bot = await Bot(make_client, jid, pw, server=server).start()
    assert bot.client.stream.sm_enabled
    bot.guard._guard._watchdog.interval = 0.5
    room = aioxmpp.JID("smacked", server.muc_domain, None)
    await bot.guard.join(room, "bot")
    resumed = asyncio.get_running_loop().create_future()
    bot.client.on_stream_resumed.connect(
        lambda: resumed.done() or resumed.set_result(time.monotonic()))
    cut_at = time.monotonic()
    await server.sever_c2s(bot.client.local_jid)
    resumed_at = await asyncio.wait_for(resumed, 10)
    figure("smacks connection cut -> stream resumed", resumed_at - cut_at)
    assert await in_room(server, room, jid, "bot")
    await asyncio.sleep(1.0)
    assert bot.events == [] and bot.info(room).state is State.JOINED
    await bot.stop()
