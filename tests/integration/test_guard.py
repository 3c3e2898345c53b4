"""MUCGuard against a real Prosody: every way of losing a room, seen from both sides.

Each scenario injects the fault through Prosody itself (muc_guard/testing/prosody.py) and
checks the outcome twice: in the guard's signals and state, and in the
server's own occupant list. The scenarios marked ``over_both`` (a signalled
drop, a silent drop, a restart from the store) also run over TLS with the
server's certificate verified, as a bot in production connects.

Every scenario runs on both front-ends (the ``frontend`` fixture: aioxmpp's
MUCGuard and the slixmpp plugin) but one: the mixin (``GuardMixin`` is
aioxmpp's). Within a scenario, only what a front-end lacks by design is
checked on one side: Room objects (slixmpp's RoomInfo.room is None, join()
returns the nick) and aioxmpp's stream watchdog (slixmpp leaves reconnecting
to the application: the test bot reconnects on ``disconnected``). The other
accounts in a room (talkers, thieves) stay plain aioxmpp.
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
from guardkit import Bot, eventually, occupant_nicks_of, over_both, room_key
from prosody import connected

pytestmark = pytest.mark.integration


@pytest.fixture
async def bot(make_bot, account):
    """A started bot of the test's front-end (closed by make_bot)."""
    jid, password = account("bot")
    b = await make_bot(jid, password).start()
    yield b
    b.check_invariants()


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
    room = await bot.join(room_jid, "bot")
    assert bot.nick_of(room) == "bot"
    assert await in_room(prosody, room_jid, bot.jid, "bot")
    kicked_at = time.monotonic()
    await prosody.kick_with_codes(room_jid, "bot", codes, reason="fault injected")
    _, got = await bot.wait_event("dropped", room_jid)
    t_rejoined, new_room = await bot.wait_event("rejoined", room_jid)
    figure(bot.figure_name(f"kick {'+'.join(map(str, [110] + codes))} -> on_rejoined"),
           t_rejoined - kicked_at)
    assert got is cause
    bot.check_fresh_room(room_jid, room, new_room)
    assert bot.nick_of(new_room) == "bot"
    info = bot.info(room_jid)
    assert (info.state, info.drops, info.last_cause) == (State.JOINED, 1, cause)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]


async def test_rejoins_after_332_with_a_jittered_pause(prosody, bot, room_jid):
    bot.settings.backoff._rng = random.Random(7)   # deterministic jitter
    expected = random.Random(7).uniform(1.0, 10.0)
    await bot.join(room_jid, "bot")
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
    await bot.join(room_jid, "bot")
    removed_at = time.monotonic()
    await prosody.silent_remove(room_jid, "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []
    t_dropped, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    t_rejoined, _ = await bot.wait_event("rejoined", room_jid, timeout=10)
    figure(bot.figure_name("silent drop -> on_dropped (ping_idle=1)"), t_dropped - removed_at)
    figure(bot.figure_name("silent drop: on_dropped -> on_rejoined"), t_rejoined - t_dropped)
    assert cause is Cause.PING
    assert t_dropped - removed_at <= 1.0 + 1.0   # idle time + a loopback round trip
    assert await in_room(prosody, room_jid, bot.jid, "bot")


async def test_item_not_found_twice_means_the_room_forgot_us(prosody, bot, room_jid, figure):
    """Prosody answers item-not-found for a room that no longer exists: the
    first is inconclusive (XEP-0410: a nick change), the second decides."""
    bot.guard.ping_idle = 1.0
    await bot.join(room_jid, "bot")
    vanished_at = time.monotonic()
    assert await prosody.drop_room(room_jid)
    t_dropped, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    assert cause is Cause.PING
    assert t_dropped - vanished_at >= 2 * 1.0 - 0.05        # not on the first reply
    figure(bot.figure_name("room vanished -> on_dropped (ping_idle=1, 2 pings)"),
           t_dropped - vanished_at)
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
        prosody_factory, make_client, make_bot, account, room_jid):
    """With room locking on (Prosody's default), the room our rejoin
    re-creates (201) would refuse everyone else with item-not-found until
    configured: the guard accepts the default configuration (XEP-0045
    §10.1.2, an instant room), so the room is usable again."""
    server = prosody_factory(room_locking=True)
    assert await server.create_room(room_jid)       # exists before the bot, no owner
    jid, pw = account("bot", server=server)
    bot = await make_bot(jid, pw, server=server).start()
    bot.guard.ping_idle = 1.0
    await bot.join(room_jid, "bot")
    assert await server.drop_room(room_jid)
    await bot.wait_event("dropped", room_jid, timeout=10)
    await bot.wait_event("rejoined", room_jid, timeout=10)
    await _join_as(make_client, account, server, room_jid, "alice")
    assert sorted(await server.occupants(room_jid)) == ["alice", "bot"]
    await bot.stop()


async def test_first_join_that_creates_a_room_leaves_it_to_the_bot(
        prosody_factory, make_client, make_bot, account, room_jid, caplog):
    """A room the bot's own first join() creates is the bot's to configure
    (it may want it members-only, say): the guard does not open it, and says
    so in the log."""
    server = prosody_factory(room_locking=True)
    jid, pw = account("bot", server=server)
    bot = await make_bot(jid, pw, server=server).start()
    await bot.join(room_jid, "bot")
    with pytest.raises(aioxmpp.errors.XMPPCancelError) as info:
        await _join_as(make_client, account, server, room_jid, "alice")
    assert info.value.condition == aioxmpp.ErrorCondition.ITEM_NOT_FOUND
    assert any("created" in r.getMessage() and str(room_jid) in r.getMessage()
               for r in caplog.records if r.name.startswith("muc_guard"))
    await bot.stop()


async def test_join_while_offline_waits_for_the_stream(prosody, make_bot, account, room_jid):
    jid, pw = account("late")
    late = make_bot(jid, pw)
    join = asyncio.ensure_future(late.join(room_jid, "late"))
    await asyncio.sleep(0.3)
    assert not join.done() and late.info(room_jid).state is State.JOINING
    await late.start()
    room = await asyncio.wait_for(join, 10)
    assert late.nick_of(room) == "late" and await in_room(prosody, room_jid, jid, "late")
    assert late.events == []                 # a first join is not a rejoin
    await late.stop()


async def test_no_ping_while_the_room_talks(prosody, bot, room_jid, make_client, account):
    bot.guard.ping_idle = 1.0
    await bot.join(room_jid, "bot")
    pings = bot.record_pings([room_jid])
    talker_jid, pw = account("talker")
    talker = await Bot(make_client, talker_jid, pw).start()
    talk_room = await talker.join(room_jid, "talker")
    for i in range(8):                      # 3.2 s of traffic, a message every 0.4 s
        await talk_room.send_message(_groupchat(f"hello {i}"))
        await asyncio.sleep(0.4)
    assert pings == []
    await asyncio.sleep(1.3)                # 1.7 s of silence: one ping, answered "joined"
    assert pings == [str(room_jid.replace(resource="bot"))]
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
    await bot.join(room_jid, "bot")
    await prosody.kick(room_jid, "bot", reason="behave")
    await _gave_up(prosody, bot, room_jid, Cause.KICKED)


async def test_ban_301_gives_up(prosody, bot, room_jid):
    await bot.join(room_jid, "bot")
    await prosody.ban(room_jid, bot.jid, reason="spam")
    await _gave_up(prosody, bot, room_jid, Cause.BANNED)


async def test_ban_with_333_still_gives_up(prosody, bot, room_jid):
    await bot.join(room_jid, "bot")
    await prosody.kick_with_codes(room_jid, "bot", [301, 333])
    await _gave_up(prosody, bot, room_jid, Cause.BANNED)


async def test_destroy_gives_up(prosody, bot, room_jid):
    await bot.join(room_jid, "bot")
    await prosody.destroy(room_jid, reason="closing")
    await _gave_up(prosody, bot, room_jid, Cause.DESTROYED)


async def test_members_only_322_gives_up(prosody, bot, room_jid):
    await prosody.create_room(room_jid)   # so the bot joins unaffiliated, not as owner
    await bot.join(room_jid, "bot")
    assert await prosody.set_members_only(room_jid)
    await _gave_up(prosody, bot, room_jid, Cause.MEMBERS_ONLY)


async def test_membership_revoked_321_gives_up(prosody, bot, room_jid):
    await prosody.create_room(room_jid)   # so the bot joins unaffiliated, not as owner
    await bot.join(room_jid, "bot")
    await prosody.revoke_membership(room_jid, bot.jid)
    await _gave_up(prosody, bot, room_jid, Cause.AFFILIATION)


async def test_own_leave_fires_nothing_and_never_rejoins(prosody, bot, room_jid):
    await bot.join(room_jid, "bot")
    await bot.leave(room_jid)
    assert await eventually(lambda: _absent(prosody, room_jid, bot.jid))
    await asyncio.sleep(1.0)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == []
    assert bot.events == [] and bot.guard.rooms() == []


async def _absent(server, room, jid):
    return await occupant_nicks_of(server, room, jid) == []


# --- nicks -----------------------------------------------------------------------------


async def test_assigned_nick_210_is_kept_across_a_rejoin(prosody, bot, room_jid):
    await prosody.rewrite_nick(room_jid, "bot", "bot-assigned")
    room = await bot.join(room_jid, "bot")
    assert bot.nick_of(room) == "bot-assigned"
    assert (bot.info(room_jid).nick, bot.info(room_jid).requested_nick) == ("bot-assigned",
                                                                             "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot-assigned"]
    await prosody.clear_rewrites(room_jid)
    await prosody.kick_with_codes(room_jid, "bot-assigned", [333])
    await bot.wait_event("rejoined", room_jid)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot-assigned"]
    assert bot.info(room_jid).nick == "bot-assigned"


async def test_set_nick_is_stored_when_it_returns_and_kept_across_a_rejoin(
        prosody, make_bot, account, tmp_path, room_jid):
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    bot = make_bot(jid, pw)
    await bot.open_store(db)
    await bot.start()
    try:
        await bot.join(room_jid, "bot")
        await bot.set_nick(room_jid, "renamed")
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
    with pytest.raises(bot.JoinRefused) as info:
        await asyncio.wait_for(bot.join(room_jid, "bot"), 10)
    assert bot.condition(info.value) == "registration-required"
    assert bot.guard.rooms() == []


async def test_join_conflict_with_another_account_raises(prosody, bot, room_jid, make_client,
                                                         account):
    other_jid, pw = account("other")
    other = await Bot(make_client, other_jid, pw).start()
    await other.join(room_jid, "taken")
    with pytest.raises(bot.JoinRefused) as info:
        await asyncio.wait_for(bot.join(room_jid, "taken"), 10)
    assert bot.condition(info.value) == "conflict"
    assert bot.guard.rooms() == []
    await other.stop()


async def test_unreachable_remote_room_is_retried_without_a_storm(prosody, bot, room_jid):
    """A remote MUC that cannot be reached (remote-server-timeout) is retried
    with backoff while join() waits: a handful of attempts in 10 s, then in."""
    await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
    join = asyncio.ensure_future(bot.join(room_jid, "bot"))
    await asyncio.sleep(10.0)
    attempts = await prosody.refused_count(room_jid)
    assert 2 <= attempts <= 5, attempts
    assert not join.done() and bot.info(room_jid).state is State.JOINING
    await prosody.clear_refusals(room_jid)
    room = await asyncio.wait_for(join, bot.guard.backoff_max + 5)
    assert bot.nick_of(room) == "bot" and await in_room(prosody, room_jid, bot.jid, "bot")


async def test_rejoin_gives_up_after_permanent_refusals(prosody, bot, room_jid):
    bot.guard.backoff_min, bot.guard.backoff_max = 0.1, 0.2
    await bot.join(room_jid, "bot")
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
        await asyncio.wait_for(bot.join(room_jid, "bot"), 0.5)
    assert bot.info(room_jid).state is State.JOINING
    await prosody.clear_refusals(room_jid)
    assert await eventually(lambda: _has(prosody, room_jid, bot.jid, "bot"),
                            timeout=bot.guard.backoff_max + 5)
    assert bot.info(room_jid).state is State.JOINED


# --- restarts --------------------------------------------------------------------------


async def test_server_killed_and_restarted_rooms_come_back(private_prosody, make_bot,
                                                           account, tmp_path, figure):
    server = private_prosody
    jid, pw = account("bot", server=server)
    bot = await make_bot(jid, pw, server=server).start()
    rooms = [aioxmpp.JID(f"restart{i}", server.muc_domain, None) for i in range(3)]
    for room in rooms:
        await bot.join(room, "bot")
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
    figure(bot.figure_name("server kill+restart -> all rejoined"), last - killed_at)
    if bot.frontend == "aioxmpp":
        assert bot.guard._guard._watchdog.kicks >= 1    # aioxmpp alone would hang here
    assert bot.kinds().count("rejoined") == len(rooms)     # no duplicate joins
    assert [r.state for r in bot.guard.rooms()] == [State.JOINED] * 3
    assert [r.drops for r in bot.guard.rooms()] == [1] * 3
    await bot.stop()


async def _all_states(bot, rooms, state):
    return all(bot.info(room).state is state for room in rooms)


@over_both
async def test_bot_restart_rejoins_from_the_store_without_join(prosody, make_bot, account,
                                                               tmp_path, room_jid):
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    gone_room = room_jid.replace(localpart=room_jid.localpart + "-gone")
    first = make_bot(jid, pw)
    await first.open_store(db)
    await first.start()
    await prosody.rewrite_nick(room_jid, "bot", "bot-given")
    await first.join(room_jid, "bot")
    await prosody.clear_rewrites(room_jid)
    await first.join(gone_room, "bot")
    await prosody.kick(gone_room, "bot")
    await first.wait_event("gave_up", gone_room)
    await first.stop()        # the process ends: no leave
    assert await eventually(lambda: _absent(prosody, room_jid, jid))

    second = make_bot(jid, pw)
    await second.open_store(db)
    restored = second.rooms()
    assert restored[room_key(room_jid)].state is State.JOINING
    assert restored[room_key(gone_room)].state is State.GAVE_UP
    assert restored[room_key(gone_room)].last_cause is Cause.KICKED
    await second.start()
    _, room = await second.wait_event("rejoined", room_jid)
    assert second.nick_of(room) == "bot-given"
    assert await occupant_nicks_of(prosody, room_jid, jid) == ["bot-given"]
    await asyncio.sleep(1.0)
    assert await occupant_nicks_of(prosody, gone_room, jid) == []   # gave up stays given up
    assert second.kinds() == ["rejoined"]            # a restore is not a drop
    # An explicit join() wants the given-up room again.
    again = await second.join(gone_room, "bot")
    assert second.nick_of(again) == "bot" and second.info(gone_room).state is State.JOINED
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
        prosody, make_client, make_bot, account, tmp_path, room_jid, caplog):
    """XEP-0410 probe before rejoin: the server kept our occupant while the
    bot was down. The restarted bot sends a fresh join presence (aioxmpp
    needs one for its Room) but announces no rejoin and counts no drop."""
    db = tmp_path / "bot.db"
    jid, pw = account("bot")
    first = make_bot(jid, pw)
    await first.open_store(db)
    await first.start()
    await first.join(room_jid, "bot")
    full = first.bound_jid
    await first.stop()
    assert await eventually(lambda: _absent(prosody, room_jid, jid))
    # As if the first process had crashed (a clean shutdown skips the probe):
    store = await muc_guard.store.Store.open(db)
    assert await store.take_clean_exit(str(jid.bare())) is True
    await store.close()
    assert await prosody.keep_occupant(room_jid, "bot", full) == [str(full)]

    second = make_bot(jid, pw)
    await second.open_store(db)
    await second.start()
    assert second.bound_jid == full
    assert await eventually(
        lambda: _all_states(second, [room_jid], State.JOINED), timeout=10)
    assert "still an occupant" in caplog.text
    assert second.events == []                # no on_dropped, no on_rejoined
    assert second.info(room_jid).drops == 0
    if second.frontend == "aioxmpp":
        assert second.info(room_jid).room.muc_joined
    assert await prosody.occupants(room_jid) == {"bot": [str(full)]}
    await _say(make_client, account, room_jid, "still here?")
    assert await eventually(lambda: _async(second.messages), timeout=5)
    assert second.messages == [("still here?", False, False)]
    await second.stop()


async def test_lost_stream_probe_finds_a_kept_occupant_and_announces_nothing(
        prosody, bot, room_jid, caplog):
    await bot.join(room_jid, "bot")
    old_room = bot.info(room_jid).room
    full = bot.bound_jid
    await prosody.sever_c2s(full)
    assert await eventually(lambda: _absent(prosody, room_jid, bot.jid))
    await prosody.keep_occupant(room_jid, "bot", full)   # before the client reconnects (>= 1 s)
    assert await eventually(
        lambda: _fresh_room(bot, room_jid, old_room), timeout=15)
    assert "still an occupant" in caplog.text
    assert bot.events == [] and bot.info(room_jid).drops == 0
    assert await prosody.occupants(room_jid) == {"bot": [str(full)]}


async def test_lost_stream_probe_finds_the_room_let_us_go_and_rejoins(prosody, bot, room_jid):
    await bot.join(room_jid, "bot")
    await prosody.sever_c2s(bot.bound_jid)
    _, cause = await bot.wait_event("dropped", room_jid)
    assert cause is Cause.STREAM_LOST
    await bot.wait_event("rejoined", room_jid)
    assert bot.kinds() == ["dropped", "rejoined"] and bot.info(room_jid).drops == 1
    assert await in_room(prosody, room_jid, bot.jid, "bot")


async def _fresh_room(bot, room_jid, old_room):
    """Back in the room in a new session (aioxmpp: with a new Room)."""
    info = bot.info(room_jid)
    if bot.frontend == "slixmpp":
        return info.state is State.JOINED and bot.sessions == 2 and bot.guard._guard.stream_up
    return info.state is State.JOINED and info.room is not None and info.room is not old_room


async def _async(value):
    return value


async def test_two_accounts_share_one_store(prosody, make_bot, account, tmp_path, room_jid):
    db = tmp_path / "shared.db"
    bots = []
    for name in ("alice", "bob"):
        jid, pw = account(name)
        b = make_bot(jid, pw)
        await b.open_store(db)
        await b.start()
        await b.join(room_jid.replace(localpart=f"{room_jid.localpart}-{name}"), name)
        bots.append((b, jid, pw, name))
    for b, *_ in bots:
        await b.stop()
    for _, jid, pw, name in bots:
        b = make_bot(jid, pw)
        await b.open_store(db)
        assert [(key.partition("@")[0].rsplit("-", 1)[-1], r.nick)
                for key, r in b.rooms().items()] == [(name, name)]
        await b.close()


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
        await bot.join(room, "bot")
    for room in rooms[1:]:
        await prosody.silent_remove(room, "bot")
    pings = bot.record_pings(rooms)
    await prosody.kick_with_codes(rooms[0], "bot", [333])
    t_first, _ = await bot.wait_event("dropped", rooms[0])
    detected = []
    for room in rooms[1:]:
        t, cause = await bot.wait_event("dropped", room, timeout=5)
        assert cause is Cause.PING
        detected.append(t - t_first)
    figure(bot.figure_name("correlated: 20 silent drops found after first"), max(detected))
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
    await bot.join(room_jid, "bot")
    await prosody.silent_remove(room_jid, "bot")
    thief_jid, pw = account("thief")
    thief = await Bot(make_client, thief_jid, pw).start()
    await thief.join(room_jid, "bot")             # the nick is free on the server
    _, cause = await bot.wait_event("dropped", room_jid, timeout=10)
    assert cause is Cause.PING
    await bot.wait_event("rejoined", room_jid, timeout=15)
    assert bot.info(room_jid).nick == "bot_"
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot_"]
    await thief.leave(room_jid)
    await thief.stop()
    assert await eventually(lambda: _nick_is(bot, room_jid, "bot"), timeout=5)
    assert await in_room(prosody, room_jid, bot.jid, "bot")
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]
    # the self-ping now targets the nick we really hold: no spurious drop
    await asyncio.sleep(2.5)
    assert bot.kinds(room_jid) == ["dropped", "rejoined"]


async def _nick_is(bot, room_jid, nick):
    return bot.info(room_jid).nick == nick


async def test_connection_cut_with_stream_management_is_resumed(prosody_factory, make_bot,
                                                                account, figure):
    """A connection cut under XEP-0198 is resumed, and the rooms were never
    left: no drop, no rejoin, no join, probe or ping sent. (When the cut
    reaches aioxmpp as a bare EOF instead of a reset, the stream watchdog
    makes it reconnect; slixmpp fires no session_end when it may resume: the
    cut is a suspension, and the application reconnects.)"""
    server = prosody_factory(smacks=True)
    jid, pw = account("smacked", server=server)
    bot = await make_bot(jid, pw, server=server).start()
    # slixmpp starts the session before the server's <enabled/> arrives
    assert await eventually(lambda: _async(bot.sm_enabled), timeout=5)
    if bot.frontend == "aioxmpp":
        bot.guard._guard._watchdog.interval = 0.5
    room = aioxmpp.JID("smacked", server.muc_domain, None)
    await bot.join(room, "bot")
    joins = bot.guard._guard.core.new_attempt()      # the attempt counter so far
    resumed = bot.stream_resumed()
    cut_at = time.monotonic()
    await server.sever_c2s(bot.bound_jid)
    resumed_at = await asyncio.wait_for(resumed, 10)
    figure(bot.figure_name("smacks connection cut -> stream resumed"), resumed_at - cut_at)
    assert bot.guard._guard.core.stream_up
    assert await in_room(server, room, jid, "bot")
    await asyncio.sleep(1.0)
    assert bot.events == [] and bot.info(room).state is State.JOINED
    assert bot.guard._guard.core.new_attempt() == joins + 1   # no join, probe or ping
    assert list(await server.occupants(room)) == ["bot"]
    await bot.stop()
