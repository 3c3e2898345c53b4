"""The guard on a real aioxmpp client that never connects, fed literal stanzas.

The stanzas go through the client's inbound path (the stream's filter chains,
then MUCClient), exactly where a server's stanzas would go. Joins complete
when the test feeds the room's self-presence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioxmpp
import aioxmpp.ping
import pytest

from muc_guard import Cause, State
from stanzas import parse, self_available, self_unavailable

from harness import ROOM, ROOM_JID, Harness


@pytest.fixture
async def h():
    harness = Harness()
    yield harness
    await harness.settle()
    assert harness.violations() == []
    await harness.guard.shutdown()


async def test_joins_when_the_room_answers(h):
    room = await h.joined()
    info = h.state()
    assert (info.state, info.nick, info.drops, info.room) == (State.JOINED, "bot", 0, room)
    assert h.events == []


async def test_assigned_nick_210_is_the_nick_we_hold(h):
    await h.joined("bot_rewritten", 210)
    assert (h.state().nick, h.state().requested_nick) == ("bot_rewritten", "bot")


@pytest.mark.parametrize("codes, cause", [
    ((110, 333), Cause.SERVER_ERROR),
    ((110, 307, 333), Cause.SERVER_ERROR),
    ((110, 330), Cause.REMOTE_LOST),
    ((110,), Cause.UNEXPLAINED),
])
async def test_technical_removal_drops_and_rejoins_at_once(h, codes, cause):
    old = await h.joined()
    h.feed(self_unavailable(ROOM, "bot", *codes))
    await h.settle()
    assert h.events == [("dropped", ROOM_JID, cause)]
    assert h.state().state is State.REJOINING
    assert h.muc.get_muc(ROOM_JID) is not old          # a fresh join is pending
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    kind, jid, new = h.events[-1]
    assert (kind, jid) == ("rejoined", ROOM_JID) and new is not old
    info = h.state()
    assert (info.state, info.drops, info.last_cause, info.room) == (State.JOINED, 1, cause, new)


@pytest.mark.parametrize("codes, destroy, cause", [
    ((110, 307), False, Cause.KICKED),
    ((110, 301), False, Cause.BANNED),
    ((110, 301, 333), False, Cause.BANNED),
    ((110, 321), False, Cause.AFFILIATION),
    ((110, 322, 333), False, Cause.MEMBERS_ONLY),
    ((110,), True, Cause.DESTROYED),
])
async def test_the_rooms_will_gives_up_without_a_join(h, codes, destroy, cause):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", *codes, destroy=destroy))
    await h.settle()
    assert h.events == [("dropped", ROOM_JID, cause), ("gave_up", ROOM_JID, cause)]
    info = h.state()
    assert (info.state, info.drops, info.last_cause) == (State.GAVE_UP, 1, cause)
    with pytest.raises(KeyError):
        h.muc.get_muc(ROOM_JID)                        # no join was attempted


async def test_nick_change_303_is_not_a_drop_and_is_followed(h):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 303).replace(
        "<item affiliation='none' role='none'/>",
        "<item affiliation='none' role='participant' nick='bot2'/>"))
    h.feed(self_available(ROOM, "bot2"))
    await h.settle()
    assert h.events == []
    assert (h.state().state, h.state().nick) == (State.JOINED, "bot2")


@pytest.mark.parametrize("xml", [
    # another account's directed presence claiming 110+333
    self_unavailable(ROOM, "bot", 110, 333).replace(f"from='{ROOM}/bot'",
                                                    "from='mallory@localhost/x'"),
    # the tracked room's name on another domain
    self_unavailable("room@evil.example", "bot", 110, 333),
    # another occupant of our room claiming to be us
    self_unavailable(ROOM, "someone", 110, 333),
    # 110 from a room we never joined
    self_unavailable("never@conference.localhost", "bot", 110, 333),
    # the room's bare JID
    self_unavailable(ROOM, "bot", 110, 333).replace(f"from='{ROOM}/bot'", f"from='{ROOM}'"),
    # no from at all
    self_unavailable(ROOM, "bot", 110, 333).replace(f"from='{ROOM}/bot' ", ""),
])
async def test_presences_not_from_our_occupant_jid_are_ignored(h, xml):
    await h.joined()
    h.feed(xml)
    await h.settle()
    assert h.events == []
    assert h.state().state is State.JOINED


async def test_own_leave_fires_nothing_and_forgets(h):
    room = await h.joined()
    leaving = asyncio.ensure_future(h.guard.leave(ROOM))
    await h.settle()
    h.feed(self_unavailable(ROOM, "bot", 110))        # the room confirms
    await asyncio.wait_for(leaving, 1)
    assert h.events == [] and h.guard.rooms() == []
    assert not room.muc_joined


async def test_leave_of_an_unknown_room_is_a_no_op(h):
    await h.guard.leave("nowhere@conference.localhost")


async def test_permanent_error_on_join_raises_and_is_not_kept(h):
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.settle()
    h.feed(f"<presence from='{ROOM}/bot' type='error'><x xmlns='http://jabber.org/protocol/muc'/>"
           "<error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
           "</presence>")
    with pytest.raises(aioxmpp.errors.XMPPAuthError):
        await asyncio.wait_for(join, 1)
    assert h.guard.rooms() == []


async def test_cancelling_join_keeps_the_room_wanted(h):
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.settle()
    join.cancel()
    await h.settle()
    assert h.state().state is State.JOINING
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert h.state().state is State.JOINED


@pytest.mark.parametrize("bad", ["", "not a jid@@", "room@conference.localhost/nick",
                                 "conference.localhost", "r@b@c", "r@b c"])
async def test_bad_room_jids_are_refused_clearly(h, bad):
    with pytest.raises(ValueError):
        await h.guard.join(bad, "bot")


async def test_a_raising_listener_does_not_break_the_guard(h):
    def boom(*args):
        raise RuntimeError("user bug")
    h.guard.on_dropped.connect(boom)
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert [e[0] for e in h.events] == ["dropped", "rejoined"]
    assert h.state().state is State.JOINED


async def test_mixin_in_a_users_own_service_behaves_the_same():
    from userservice.bot import EchoService
    client = aioxmpp.Client(aioxmpp.JID.fromstr("bot@localhost/r"),
                            aioxmpp.make_security_layer("unused"))
    svc = client.summon(EchoService)
    svc._guard.core.stream_up = True
    dropped = []
    svc.on_dropped.connect(lambda j, c: dropped.append(c))
    join = asyncio.ensure_future(svc.join(ROOM, "bot"))
    for _ in range(5):
        await asyncio.sleep(0)
    client.stream._process_incoming_presence(parse(self_available(ROOM, "bot")))
    await asyncio.wait_for(join, 1)
    client.stream._process_incoming_presence(parse(self_unavailable(ROOM, "bot", 110, 332)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert dropped == [Cause.SERVICE_SHUTDOWN]
    assert svc.room_info(ROOM).state is State.REJOINING
    assert svc.own_events == ["dropped"]          # the user's own handler ran too
    await svc.shutdown()
    assert svc.shut_down_own


async def test_mixin_without_mucclient_dependency_is_a_clear_error():
    from userservice.bot import Forgetful
    client = aioxmpp.Client(aioxmpp.JID.fromstr("bot@localhost/r"),
                            aioxmpp.make_security_layer("unused"))
    with pytest.raises(TypeError, match="ORDER_AFTER"):
        client.summon(Forgetful)


async def test_downtime_is_recorded_at_the_rejoin_that_ends_the_outage(h):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    await asyncio.sleep(0.2)                           # out for a moment
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    info = h.state()
    assert 0.2 <= info.last_downtime < 1.0
    assert info.last_downtime == pytest.approx(info.last_joined - info.last_dropped)


async def test_only_rooms_joined_when_the_last_process_ended_are_probed(tmp_path):
    """Restored rooms whose last record is a join may still hold our occupant
    (XEP-0410 probe first); a room last dropped, or given up, is not probed."""
    from muc_guard.store import Store, StoreWriter
    from muc_guard.core.record import RoomRecord

    db = tmp_path / "probe.db"
    store = await Store.open(db)
    writer = StoreWriter(store, "bot@localhost")
    rows = {
        "joined@conference.localhost": dict(last_joined=20.0, last_dropped=10.0),
        "dropped@conference.localhost": dict(last_joined=10.0, last_dropped=20.0),
        "never@conference.localhost": dict(),
        "gaveup@conference.localhost": dict(last_joined=20.0, state=State.GAVE_UP),
    }
    for jid, fields in rows.items():
        rec = RoomRecord(jid=aioxmpp.JID.fromstr(jid), requested_nick="bot", nick="bot",
                          added=1.0, **fields)
        writer.mark(rec)
    await writer.close()
    await store.close()

    harness = Harness()
    harness.guard._guard.core.stream_up = False    # offline: joins wait, flags stay
    await harness.guard.open_store(db)
    probed = {str(jid): rec.probe for jid, rec in harness.guard._guard.core.rooms.items()}
    assert probed == {"joined@conference.localhost": True,
                      "dropped@conference.localhost": False,
                      "never@conference.localhost": False,
                      "gaveup@conference.localhost": False}
    await harness.guard.shutdown()      # a clean shutdown: nothing left behind

    again = Harness()
    again.guard._guard.core.stream_up = False
    await again.guard.open_store(db)
    assert not any(rec.probe for rec in again.guard._guard.core.rooms.values())
    await again.guard.shutdown()


async def test_idle_pings_of_rooms_joined_together_are_paced(h):
    """30 rooms fall idle in the same instant: their pings go out one slot
    apart (1.2 x rooms / ping_idle per second), not in one burst."""
    loop = asyncio.get_running_loop()
    engine = h.guard._guard
    engine.settings.min_ping_rate = 1.0
    h.guard.ping_idle = 1.0
    sent: list[float] = []

    async def fake_send(stanza, timeout=None):
        if isinstance(stanza.payload, aioxmpp.ping.Ping):
            sent.append(loop.time())
        return None                      # an IQ result: joined

    h.client.send = fake_send
    rooms = [f"r{i}@conference.localhost" for i in range(30)]
    joins = [asyncio.ensure_future(h.guard.join(r, "bot")) for r in rooms]
    await h.settle()
    for r in rooms:
        h.feed(self_available(r, "bot"))
    await asyncio.wait_for(asyncio.gather(*joins), 1)
    await asyncio.sleep(1.0 + 30 / 36 + 0.3)
    first = sorted(sent)[:30]
    assert len(first) == 30
    gaps = [b - a for a, b in zip(first, first[1:])]
    assert min(gaps) >= 1 / 36 * 0.8            # one slot apart (1.2 x 30 / 1 s = 36/s)
    assert first[-1] - first[0] >= 29 / 36 * 0.8


def join_pending(h) -> bool:
    try:
        h.muc.get_muc(ROOM_JID)
    except KeyError:
        return False
    return True


async def kicked_333(h) -> None:
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()


async def test_a_room_that_drops_again_right_after_its_rejoin_backs_off(h):
    """A flapping room (110+333 right after every rejoin) must not get one
    join per removal: each drop soon after the rejoin that ended the last
    one waits like a failed attempt, with a growing ceiling."""
    h.guard.backoff_min, h.guard.backoff_max = 0.2, 2.0
    await h.joined()
    await kicked_333(h)
    assert join_pending(h)                     # the first drop: at once
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    waits = []
    for _ in range(3):
        await kicked_333(h)                    # again, right after the rejoin
        assert h.state().state is State.REJOINING
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not join_pending(h):
            await asyncio.sleep(0.01)
        waits.append(loop.time() - start)
        h.feed(self_available(ROOM, "bot"))
        await h.settle()
    # ceilings 0.4, 0.8, 1.6: each wait at least half of its ceiling
    assert [w >= low for w, low in zip(waits, (0.2, 0.4, 0.8))] == [True] * 3, waits
    assert [event[0] for event in h.events].count("rejoined") == 4


async def test_a_room_that_stayed_joined_for_backoff_max_rejoins_at_once_again(h):
    h.guard.backoff_min, h.guard.backoff_max = 0.2, 0.5
    await h.joined()
    for _ in range(2):                         # flapping: flaps counted up
        await kicked_333(h)
        while not join_pending(h):
            await asyncio.sleep(0.01)
        h.feed(self_available(ROOM, "bot"))
        await h.settle()
    await asyncio.sleep(0.6)                   # stayed joined longer than backoff_max
    await kicked_333(h)
    assert join_pending(h)                     # at once again


async def test_a_stream_loss_is_not_counted_as_a_flap(h):
    h.guard.probe_before_rejoin = False   # a stream loss is a drop at once
    h.guard.backoff_min, h.guard.backoff_max = 5.0, 10.0
    await h.joined()
    await kicked_333(h)
    h.feed(self_available(ROOM, "bot"))        # rejoined after a drop
    await h.settle()
    h.guard._guard._on_stream_destroyed()      # the connection went away
    h.guard._guard._on_stream_established()   # and came back at once
    await h.settle()
    assert join_pending(h)                     # rejoining at once, not in 5 s
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    # The room itself drops us again soon after the rejoin that ended its
    # last drop: a flap, whatever the stream did in between.
    await kicked_333(h)
    assert not join_pending(h)


def live_groupchat(body: str, sid: str) -> str:
    return (f"<message from='{ROOM}/alice' to='bot@localhost/r' type='groupchat'>"
            f"<body>{body}</body><stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{ROOM}'/>"
            "</message>")


async def test_a_stream_lost_while_reading_the_archive_moves_no_position(h, monkeypatch):
    """Live messages wait while the archive is read. When the stream dies
    during that read, they must not be delivered: they would move the
    position past what the archive has not returned, and the next rejoin's
    recovery would skip it. The next recovery returns them, in order."""
    import datetime

    from muc_guard.aioxmpp import mam

    delivered: list[str] = []
    h.guard.on_message.connect(
        lambda room, message, *, recovered, own: delivered.append(message.body.any()))
    await h.joined()
    rec = h.guard._guard.core.rooms[ROOM_JID]
    rec.has_archive = True
    h.client.stream._process_incoming_message(parse(live_groupchat("one", "s1")))
    assert delivered == ["one"]

    reading: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answers: list[Any] = [ConnectionError("stream lost"), []]
    calls: list[str | None] = []

    async def fetch(client, room, *, after_id=None, **kwargs):
        calls.append(after_id)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            await reading
            raise answer
        return answer, True

    monkeypatch.setattr(mam, "fetch", fetch)
    await kicked_333(h)
    h.feed(self_available(ROOM, "bot"))               # rejoined: the archive is read
    await h.settle()
    h.client.stream._process_incoming_message(parse(live_groupchat("missed", "s2")))
    h.client.stream._process_incoming_message(parse(live_groupchat("three", "s3")))
    reading.set_result(None)                          # ... and the stream dies meanwhile
    await h.settle()
    assert delivered == ["one"]
    assert rec.position.last_id == "s1"

    stamp = datetime.datetime.now(datetime.timezone.utc)
    answers[0] = [mam.ArchivedMessage(sid, stamp, parse(live_groupchat(body, sid)))
                  for body, sid in (("missed", "s2"), ("three", "s3"))]
    h.guard.backoff_min, h.guard.backoff_max = 0.01, 0.02
    await kicked_333(h)
    await asyncio.sleep(0.05)
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert calls == ["s1", "s1"]                      # both reads start after "one"
    assert delivered == ["one", "missed", "three"]


async def test_aioxmpp_self_ping_is_off_and_arms_no_timers(h):
    """aioxmpp's MUC self-ping would rejoin behind our back; switched off, its
    monitor must not even re-arm timers on each stanza (steady-state CPU)."""
    room = await h.joined()
    other = f"{ROOM}/alice"
    h.feed(f"<presence xmlns='jabber:client' from='{other}' to='bot@localhost/r'>"
           "<x xmlns='http://jabber.org/protocol/muc#user'>"
           "<item affiliation='none' role='participant'/></x></presence>")
    await h.settle()
    monitor = room._monitor
    timers = monitor._monitor
    assert (timers.deadtime_soft_limit, timers.deadtime_hard_limit) == (None, None)
    assert (timers._soft_limit_timer, timers._hard_limit_timer) == (None, None)
    monitor.disable()
    monitor.enable()     # as aioxmpp does around a rejoin of its own
    assert (timers.deadtime_soft_limit, timers.deadtime_hard_limit) == (None, None)


async def test_an_unanswered_join_times_out_and_is_tried_again(h, caplog):
    h.guard.join_timeout = 0.05
    h.guard.backoff_min, h.guard.backoff_max = 0.01, 0.02
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.pending()
    first = h.muc.get_muc(ROOM_JID)
    with caplog.at_level("INFO", logger="muc_guard"):
        await asyncio.sleep(0.3)                 # several attempts time out
    timeouts = [r for r in caplog.records if "failed (timeout)" in r.getMessage()]
    assert len(timeouts) >= 2
    assert not join.done() and h.state().state is State.JOINING
    await h.pending()
    assert h.muc.get_muc(ROOM_JID) is not first  # a fresh attempt, not the first one
    h.feed(self_available(ROOM, "bot"))
    room = await asyncio.wait_for(join, 1)
    assert h.state().state is State.JOINED and h.state().room is room


async def test_shutdown_during_a_join_attempt_is_not_a_timeout(h, caplog):
    h.guard.join_timeout = 60
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.pending()
    with caplog.at_level("INFO", logger="muc_guard"):
        await h.guard.shutdown()
    with pytest.raises(ConnectionError):
        await join
    # (asyncio logs that aioxmpp cannot send the unjoin: this client is offline)
    assert not [r for r in caplog.records if r.name.startswith("muc_guard")
                and ("failed (timeout)" in r.getMessage() or r.levelname == "ERROR")]
    with pytest.raises(KeyError):
        h.muc.get_muc(ROOM_JID)                  # the pending join was withdrawn


def record_sends(h) -> list[Any]:
    """Replace the client's send: stanzas are recorded, pings answered (joined)."""
    sent: list[Any] = []

    async def fake_send(stanza, timeout=None):
        sent.append(stanza)
        return None

    h.client.send = fake_send
    return sent


def pings(sent: list[Any]) -> int:
    return sum(isinstance(getattr(s, "payload", None), aioxmpp.ping.Ping) for s in sent)


async def test_an_unanswered_nick_change_ends_after_ping_timeout(h):
    """No answer to a nick change: after ping_timeout it is over, and the
    self-pings it held back go out (one at once: the room may have lost us)."""
    await h.joined()
    sent = record_sends(h)
    h.guard.ping_idle = 60.0
    h.guard.ping_timeout = 0.2
    await h.guard.set_nick(ROOM, "bot2")
    assert pings(sent) == 0
    await asyncio.sleep(0.4)
    assert pings(sent) == 1
    assert h.state().nick == "bot"


@pytest.mark.parametrize("answer", [
    self_unavailable(ROOM, "bot2", 110),
    self_unavailable(ROOM, "bot2"),
    f"<presence from='{ROOM}/bot2' type='error'><error type='cancel'>"
    "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
])
async def test_a_nick_change_answered_unavailable_or_error_pings_at_once(h, answer):
    await h.joined()
    sent = record_sends(h)
    h.guard.ping_idle = 60.0
    await h.guard.set_nick(ROOM, "bot2")
    h.feed(answer)
    await h.settle()
    assert pings(sent) == 1
    assert (h.state().state, h.state().nick) == (State.JOINED, "bot")


async def test_set_nick_to_the_held_nick_sends_nothing(h):
    await h.joined("bot_given", 210)
    sent = record_sends(h)
    await h.guard.set_nick(ROOM, "bot_given")
    assert sent == []
    assert (h.state().nick, h.state().requested_nick) == ("bot_given", "bot_given")


async def test_a_self_presence_under_the_old_nick_ends_a_nick_change(h):
    """The room kept us under the old nick (it ignored the change)."""
    await h.joined()
    sent = record_sends(h)
    h.guard.ping_idle = 0.2
    await h.guard.set_nick(ROOM, "bot2")
    h.feed(self_available(ROOM, "bot"))
    await asyncio.sleep(0.4)
    assert pings(sent) >= 1
    assert h.state().nick == "bot"


async def test_110_from_a_nick_we_did_not_ask_for_is_not_adopted(h):
    await h.joined()
    record_sends(h)
    await h.guard.set_nick(ROOM, "bot2")
    h.feed(self_available(ROOM, "someone"))
    await h.settle()
    assert h.state().nick == "bot"
