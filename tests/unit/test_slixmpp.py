"""The slixmpp front-end on a real slixmpp client that never connects (issue #14).

Literal stanzas go through the client's inbound path (``recv_stanza``: the
``'in'`` filters, then the handlers, ``xep_0045``'s included), exactly where
a server's stanzas would go. What the client sends is captured instead of
written to a socket. Joins complete when the test feeds the room's
self-presence.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

import slixmpp  # noqa: E402

import muc_guard.slixmpp  # noqa: E402
from muc_guard import Cause, State  # noqa: E402
from muc_guard.store import Store  # noqa: E402

ROOM = "room@conference.localhost"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
EVENTS = ("muc_guard_dropped", "muc_guard_rejoined", "muc_guard_gave_up", "muc_guard_message")


def self_available(room: str, nick: str, *codes: int) -> str:
    statuses = "".join(f"<status code='{code}'/>" for code in (110, *codes))
    return (f"<presence from='{room}/{nick}' to='bot@localhost/r'>"
            f"<x xmlns='{NS_MUC_USER}'>"
            f"<item affiliation='member' role='participant'/>{statuses}</x></presence>")


def self_unavailable(room: str, nick: str, *codes: int) -> str:
    statuses = "".join(f"<status code='{code}'/>" for code in codes)
    return (f"<presence from='{room}/{nick}' to='bot@localhost/r' type='unavailable'>"
            f"<x xmlns='{NS_MUC_USER}'><item affiliation='none' role='none'/>{statuses}</x>"
            "</presence>")


def presence_error(room: str, nick: str, condition: str, type_: str = "auth") -> str:
    return (f"<presence from='{room}/{nick}' to='bot@localhost/r' type='error'>"
            f"<x xmlns='http://jabber.org/protocol/muc'/>"
            f"<error type='{type_}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></presence>")


def groupchat(room: str, nick: str, body: str, stanza_id: str | None = None) -> str:
    sid = (f"<stanza-id xmlns='urn:xmpp:sid:0' by='{room}' id='{stanza_id}'/>"
           if stanza_id else "")
    return (f"<message from='{room}/{nick}' to='bot@localhost/r' type='groupchat'>"
            f"<body>{body}</body>{sid}</message>")


class SlixHarness:
    """An offline slixmpp client with the muc_guard plugin."""

    def __init__(self, **pconfig: Any) -> None:
        self.xmpp = slixmpp.ClientXMPP("bot@localhost/r", "unused")
        self.sent: list[Any] = []
        self.room_features: set[str] = {"http://jabber.org/protocol/muc"}
        self.xmpp.send = self._capture      # no socket: keep what would go out
        self.xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
        self.guard = self.xmpp.plugin["muc_guard"]
        self.events: list[tuple[str, dict[str, Any]]] = []
        for name in EVENTS:
            self.xmpp.add_event_handler(name, lambda data, name=name:
                                        self.events.append((name, data)))
        self.xmpp.event("session_start")

    def _capture(self, data: Any, use_filters: bool = True) -> None:
        self.sent.append(data)
        if not hasattr(data, "xml"):
            return
        # The server answers entity time (XEP-0202) at once, with our clock.
        if data.xml.tag.endswith("iq") and data.xml.find("{urn:xmpp:time}time") is not None:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            reply = (f"<iq type='result' id='{data['id']}' from='{data['to']}' "
                     "to='bot@localhost/r'><time xmlns='urn:xmpp:time'><tzo>Z</tzo>"
                     f"<utc>{now}</utc></time></iq>")
            asyncio.get_running_loop().call_soon(self.feed, reply)
        # The rooms answer disco#info at once: they advertise these features.
        query = data.xml.find("{http://jabber.org/protocol/disco#info}query")
        if data.xml.tag.endswith("iq") and data["type"] == "get" and query is not None:
            features = "".join(f"<feature var='{var}'/>" for var in self.room_features)
            reply = (f"<iq type='result' id='{data['id']}' from='{data['to']}' "
                     "to='bot@localhost/r'>"
                     f"<query xmlns='http://jabber.org/protocol/disco#info'>{features}"
                     "</query></iq>")
            asyncio.get_running_loop().call_soon(self.feed, reply)

    def feed(self, text: str) -> None:
        element = ET.fromstring(f"<stream xmlns='jabber:client'>{text}</stream>")[0]
        self.xmpp.recv_stanza(self.xmpp._build_stanza(element))

    async def settle(self) -> None:
        """Let the guard's tasks and timers due now run (a rejoin may first
        ask the room for its archive support: another round trip)."""
        for _ in range(25):
            await asyncio.sleep(0)

    def sent_presences(self, to: str) -> list[Any]:
        return [s for s in self.sent if s.xml.tag.endswith("presence") and s["to"] == to]

    def joins_sent(self, room: str = ROOM, nick: str = "bot") -> int:
        return sum(1 for s in self.sent_presences(f"{room}/{nick}")
                   if s.xml.find("{http://jabber.org/protocol/muc}x") is not None)

    def pings_sent(self) -> list[Any]:
        return [s for s in self.sent if s.xml.tag.endswith("iq")
                and s.xml.find("{urn:xmpp:ping}ping") is not None]

    async def joined(self, nick: str = "bot", *codes: int, asked: str = "bot") -> str:
        before = self.joins_sent(nick=asked)
        join = asyncio.ensure_future(self.guard.join(ROOM, asked))
        await self.join_sent(before + 1, asked)
        self.feed(self_available(ROOM, nick, *codes))
        return await asyncio.wait_for(join, 1)

    async def join_sent(self, count: int, nick: str = "bot", timeout: float = 2.0) -> None:
        """Wait until `count` joins went out (with a store, the guard first
        writes the room, in SQLite's thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.joins_sent(nick=nick) < count:
            assert loop.time() < deadline, f"no join number {count} was sent"
            await self.settle()
            await asyncio.sleep(0.005)
        assert self.joins_sent(nick=nick) == count

    def info(self) -> Any:
        info = self.guard.room_info(ROOM)
        assert info is not None
        return info

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
async def h():
    harness = SlixHarness()
    yield harness
    await harness.settle()
    assert harness.guard._guard.violations() == []
    await harness.guard.shutdown()


async def test_joins_through_xep_0045_when_the_room_answers(h):
    assert await h.joined() == "bot"
    info = h.info()
    assert (info.state, info.nick, info.drops) == (State.JOINED, "bot", 0)
    assert isinstance(info.jid, slixmpp.JID) and info.jid == ROOM
    assert ROOM in h.xmpp.plugin["xep_0045"].rooms[None]   # slixmpp's own table
    assert h.events == []


async def test_assigned_nick_210_is_the_nick_we_hold(h):
    assert await h.joined("bot_rewritten", 210) == "bot_rewritten"
    assert (h.info().nick, h.info().requested_nick) == ("bot_rewritten", "bot")


@pytest.mark.parametrize("codes, cause", [
    ((110, 333), Cause.SERVER_ERROR),
    ((110, 330), Cause.REMOTE_LOST),
    ((110,), Cause.UNEXPLAINED),
])
async def test_technical_removal_drops_and_rejoins(h, codes, cause):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", *codes))
    await h.settle()
    assert h.names() == ["muc_guard_dropped"]
    assert h.events[0][1] == {"room": ROOM, "cause": cause}
    assert h.info().state is State.REJOINING
    assert h.joins_sent() == 2                      # the rejoin went out at once
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert h.names() == ["muc_guard_dropped", "muc_guard_rejoined"]
    assert h.events[1][1] == {"room": ROOM, "nick": "bot"}
    assert h.info().state is State.JOINED and h.info().drops == 1
    assert ROOM in h.xmpp.plugin["xep_0045"].rooms[None]


async def test_a_rejoin_goes_out_in_the_turn_the_drop_came_in_after_xep_0045(h):
    """The drop's commands run right after slixmpp's handlers saw the
    presence (xep_0045 first: its events fire for the room as it was), in
    the same turn: no loop turn between the 110+333 and the rejoin."""
    await h.joined()
    await h.settle()                  # the room's archive support is known
    seen: list[tuple[str, int]] = []
    h.xmpp.add_event_handler(f"muc::{ROOM}::got_offline",
                             lambda _: seen.append(("got_offline", h.joins_sent())))
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    assert seen == [("got_offline", 1)]             # xep_0045's event, before our rejoin
    assert h.joins_sent() == 2                      # the rejoin: no await in between
    assert ROOM in h.xmpp.plugin["xep_0045"].rooms[None]
    assert h.names() == ["muc_guard_dropped"]
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert h.names() == ["muc_guard_dropped", "muc_guard_rejoined"]


async def test_a_join_waits_for_the_rooms_task_still_running_to_end(h):
    """A join while the room's previous I/O task still runs goes out from a
    task of its own, after that one's clean-up (which may forget xep_0045's
    table entry or send an unjoin), never before it."""
    await h.joined()
    await h.settle()
    runner = h.guard._guard.runner
    rec = h.guard._guard.core.rooms[ROOM]

    async def lingering(_: Any) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            runner.forget_table(ROOM)      # what a cancelled join's clean-up does

    runner._room_task(rec, lingering, None)
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    assert h.joins_sent() == 1                      # not yet: the old task ends first
    await h.settle()
    assert h.joins_sent() == 2
    assert ROOM in h.xmpp.plugin["xep_0045"].rooms[None]   # entered after the clean-up


@pytest.mark.parametrize("codes, cause", [
    ((110, 307), Cause.KICKED),
    ((110, 301), Cause.BANNED),
])
async def test_the_rooms_will_gives_up_without_a_join(h, codes, cause):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", *codes))
    await h.settle()
    assert h.names() == ["muc_guard_dropped", "muc_guard_gave_up"]
    assert h.events[1][1] == {"room": ROOM, "cause": cause}
    assert h.info().state is State.GAVE_UP
    assert h.joins_sent() == 1
    assert ROOM not in h.xmpp.plugin["xep_0045"].rooms[None]   # no longer in it


async def test_permanent_error_on_join_raises_and_is_not_kept(h):
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.settle()
    h.feed(presence_error(ROOM, "bot", "registration-required"))
    with pytest.raises(slixmpp.exceptions.PresenceError) as raised:
        await asyncio.wait_for(join, 1)
    assert raised.value.condition == "registration-required"
    assert h.guard.rooms() == []
    assert ROOM not in h.xmpp.plugin["xep_0045"].rooms[None]


async def test_an_error_from_the_room_is_checked_by_self_ping_and_a_refusal_rejoins(h):
    await h.joined()
    h.feed(f"<message from='{ROOM}' to='bot@localhost/r' type='error'>"
           "<error type='cancel'><not-acceptable "
           "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    await h.settle()
    pings = h.pings_sent()
    assert len(pings) == 1 and pings[0]["to"] == f"{ROOM}/bot"
    h.feed(f"<iq type='error' id='{pings[0]['id']}' from='{ROOM}/bot' to='bot@localhost/r'>"
           "<error type='cancel'><not-acceptable "
           "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    await h.settle()
    assert h.names() == ["muc_guard_dropped"]
    assert h.events[0][1]["cause"] is Cause.PING
    assert h.joins_sent() == 2


async def test_a_self_ping_answered_joined_keeps_the_room(h):
    await h.joined()
    h.feed(f"<message from='{ROOM}' to='bot@localhost/r' type='error'>"
           "<error type='cancel'><not-acceptable "
           "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    await h.settle()
    ping = h.pings_sent()[0]
    h.feed(f"<iq type='result' id='{ping['id']}' from='{ROOM}/bot' to='bot@localhost/r'/>")
    await h.settle()
    assert h.events == [] and h.info().state is State.JOINED


async def test_messages_are_delivered_once_by_stanza_id(h):
    await h.joined()
    h.feed(groupchat(ROOM, "alice", "hello", "id-1"))
    h.feed(groupchat(ROOM, "alice", "hello", "id-1"))      # the same message again
    h.feed(groupchat(ROOM, "bot", "mine", "id-2"))
    await h.settle()
    assert [(d["message"]["body"], d["recovered"], d["own"], d["room"])
            for _, d in h.events] == [("hello", False, False, ROOM), ("mine", False, True, ROOM)]


async def test_a_raising_handler_does_not_break_the_guard(h):
    def bad(data):
        raise RuntimeError("handler bug")

    async def bad_async(data):
        raise RuntimeError("async handler bug")

    h.xmpp.add_event_handler("muc_guard_message", bad)
    h.xmpp.add_event_handler("muc_guard_dropped", bad_async)
    await h.joined()
    h.feed(groupchat(ROOM, "alice", "one", "id-1"))
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    h.feed(groupchat(ROOM, "alice", "two", "id-2"))
    await h.settle()
    assert h.names() == ["muc_guard_message", "muc_guard_dropped", "muc_guard_rejoined",
                         "muc_guard_message"]


async def test_a_fresh_session_probes_then_refreshes_without_announcing(h):
    await h.joined()
    h.xmpp.event("session_end")
    h.xmpp.event("disconnected", "lost")
    assert h.info().state is State.REJOINING
    h.xmpp.event("session_start")
    await h.settle()
    pings = h.pings_sent()
    assert len(pings) == 1                                  # the probe
    h.feed(f"<iq type='result' id='{pings[0]['id']}' from='{ROOM}/bot' to='bot@localhost/r'/>")
    await h.settle()
    assert h.joins_sent() == 2                              # refreshed
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert h.events == [] and h.info().state is State.JOINED


async def test_a_resumed_session_keeps_the_rooms(h):
    await h.joined()
    h.xmpp.end_session_on_disconnect = False               # as xep_0198 sets it
    h.xmpp.event("disconnected", "lost")
    assert h.guard._guard.core.stream_up is False
    h.xmpp.event("session_resumed")
    await h.settle()
    assert h.guard._guard.core.stream_up is True
    assert h.info().state is State.JOINED and h.joins_sent() == 1 and h.events == []


async def test_a_suspension_never_resumed_is_a_lost_stream(h):
    await h.joined()
    h.xmpp.end_session_on_disconnect = False
    h.xmpp.event("disconnected", "lost")
    h.xmpp.end_session_on_disconnect = True
    h.xmpp.event("session_start")                           # bound afresh, no session_end
    await h.settle()
    assert h.info().state is State.REJOINING
    assert len(h.pings_sent()) == 1                         # the probe before the rejoin


async def test_leave_forgets_the_room_everywhere(h):
    await h.joined()
    leave = asyncio.ensure_future(h.guard.leave(ROOM))
    await h.settle()
    assert h.sent_presences(f"{ROOM}/bot")[-1]["type"] == "unavailable"
    h.feed(self_unavailable(ROOM, "bot", 110))
    await asyncio.wait_for(leave, 1)
    assert h.guard.rooms() == [] and h.events == []
    assert ROOM not in h.xmpp.plugin["xep_0045"].rooms[None]


async def test_set_nick_waits_for_the_room(h):
    await h.joined()
    change = asyncio.ensure_future(h.guard.set_nick(ROOM, "newbot"))
    await h.settle()
    assert h.sent_presences(f"{ROOM}/newbot")
    h.feed(self_unavailable(ROOM, "bot", 110, 303).replace(
        "role='none'/>", "role='none' nick='newbot'/>"))
    h.feed(self_available(ROOM, "newbot"))
    await asyncio.wait_for(change, 1)
    assert (h.info().nick, h.info().requested_nick) == ("newbot", "newbot")
    assert h.events == []


@pytest.mark.parametrize("bad", ["room@conference.localhost/res", "conference.localhost",
                                 "a@b@c", ""])
async def test_bad_room_jids_are_refused_clearly(h, bad):
    with pytest.raises(ValueError):
        await h.guard.join(bad, "bot")


async def test_every_setting_is_a_pconfig_key_with_the_aioxmpp_default():
    from muc_guard.core.settings import Settings
    defaults = Settings()
    plugin = muc_guard.slixmpp.MUCGuardPlugin
    assert plugin.default_config["ping_idle"] == defaults.ping_idle == 300.0
    assert plugin.default_config["ping_timeout"] == 30.0
    h = SlixHarness(ping_idle=60.0, backoff_max=10.0)
    try:
        assert h.guard._guard.settings.ping_idle == 60.0 == h.guard.ping_idle
        assert h.guard._guard.settings.backoff.maximum == 10.0
        h.guard.ping_timeout = 5.0
        assert h.guard._guard.settings.ping_timeout == 5.0
        with pytest.raises(ValueError):
            h.guard.max_concurrent_joins = 0
    finally:
        await h.guard.shutdown()


async def test_a_store_written_here_opens_in_the_aioxmpp_front_end(tmp_path):
    path = tmp_path / "bot.db"
    h = SlixHarness(store=str(path))
    try:
        await h.joined()
    finally:
        await h.guard.shutdown()
    import aioxmpp
    store = await Store.open(path)      # the aioxmpp front-end's reading
    try:
        (rec,) = await store.load_rooms("bot@localhost")
    finally:
        await store.close()
    assert rec.jid == aioxmpp.JID.fromstr(ROOM) and rec.nick == "bot"
    assert rec.service == "conference.localhost"
    # and back: a fresh slixmpp guard restores the room under its str key
    again = SlixHarness(store=str(path))
    try:
        await again.guard._store_ready()
        await again.join_sent(1)
        assert again.info().jid == ROOM and again.info().state is State.JOINING
        again.feed(self_available(ROOM, "bot"))
        await again.settle()
        assert again.names() == ["muc_guard_rejoined"]   # back after the restart
    finally:
        await again.guard.shutdown()


def test_import_needs_no_aioxmpp():
    code = ("import sys; sys.modules['aioxmpp'] = None\n"
            "import muc_guard, muc_guard.slixmpp\n"
            "assert muc_guard.slixmpp.muc_guard is muc_guard.slixmpp.MUCGuardPlugin\n"
            "try:\n    muc_guard.MUCGuard\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('MUCGuard without aioxmpp?')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(
                       filter(None, [root, os.environ.get("PYTHONPATH")]))})


async def test_a_rejoin_recovers_from_the_archive(h):
    h.room_features.add("urn:xmpp:mam:2")
    await h.joined()
    await h.settle()                  # archive support is learnt after the join
    assert h.guard._guard.core.rooms[ROOM].has_archive is True
    h.feed(groupchat(ROOM, "alice", "before", "id-1"))
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    rejoin = h.sent_presences(f"{ROOM}/bot")[-1]
    assert rejoin.xml.find("{http://jabber.org/protocol/muc}x/"
                           "{http://jabber.org/protocol/muc}history").get("maxchars") == "0"
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    queries = [s for s in h.sent if s.xml.tag.endswith("iq")
               and s.xml.find("{urn:xmpp:mam:2}query") is not None]
    assert len(queries) == 1
    query = queries[0].xml.find("{urn:xmpp:mam:2}query")
    rsm = "{http://jabber.org/protocol/rsm}"
    assert query.findtext(f"{rsm}set/{rsm}after") == "id-1"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    h.feed(f"<message from='{ROOM}' to='bot@localhost/r'>"
           f"<result xmlns='urn:xmpp:mam:2' queryid='{query.get('queryid')}' id='id-2'>"
           "<forwarded xmlns='urn:xmpp:forward:0'>"
           f"<delay xmlns='urn:xmpp:delay' stamp='{stamp}'/>"
           f"<message xmlns='jabber:client' from='{ROOM}/alice' type='groupchat'>"
           "<body>missed</body></message>"
           "</forwarded></result></message>")
    h.feed(f"<iq type='result' id='{queries[0]['id']}' from='{ROOM}' to='bot@localhost/r'>"
           "<fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='"
           "http://jabber.org/protocol/rsm'><first>id-2</first><last>id-2</last></set></fin>"
           "</iq>")
    await h.settle()
    assert h.names() == ["muc_guard_message", "muc_guard_dropped", "muc_guard_rejoined",
                         "muc_guard_message"]
    last = h.events[-1][1]
    assert (last["message"]["body"], last["recovered"], last["own"]) == ("missed", True, False)


async def test_a_store_written_by_the_aioxmpp_front_end_opens_here(tmp_path):
    import aioxmpp
    from muc_guard.core.record import RoomRecord
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    try:
        jid = aioxmpp.JID.fromstr(ROOM)
        await store.write("bot@localhost", [RoomRecord(jid=jid, requested_nick="bot",
                                                       nick="bot_", added=1.0,
                                                       last_joined=2.0, has_archive=False,
                                                       service=jid.domain)], [])
        await store.set_clean_exit("bot@localhost", True)
    finally:
        await store.close()
    h = SlixHarness(store=str(path))
    try:
        await h.guard._store_ready()
        await h.join_sent(1, "bot_")
        info = h.info()
        assert (info.jid, info.nick, info.requested_nick) == (ROOM, "bot_", "bot")
        assert isinstance(h.guard._guard.core.rooms[ROOM].jid, str)
        assert h.joins_sent(nick="bot_") == 1        # the nick the room gave us last time
    finally:
        await h.guard.shutdown()


async def test_an_unanswered_join_times_out_unjoins_and_is_tried_again():
    h = SlixHarness(join_timeout=0.05, backoff_min=0.01, backoff_max=0.02)
    try:
        join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
        await h.settle()
        assert h.joins_sent() == 1
        await asyncio.sleep(0.2)
        await h.settle()
        assert h.joins_sent() >= 2                      # tried again
        assert any(p["type"] == "unavailable" for p in h.sent_presences(f"{ROOM}/bot"))
        assert not join.done()                          # still waiting: transient
        h.guard.join_timeout = 30.0                     # the next attempt waits
        sent = h.joins_sent()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if h.joins_sent() > sent:
                break
        h.feed(self_available(ROOM, "bot"))
        assert await asyncio.wait_for(join, 1) == "bot"
    finally:
        await h.guard.shutdown()


async def test_a_room_our_rejoin_created_gets_the_default_configuration(h):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    assert h.joins_sent() == 2
    h.feed(self_available(ROOM, "bot", 201))
    await h.settle()
    owner = [s for s in h.sent if s.xml.tag.endswith("iq")
             and s.xml.find("{http://jabber.org/protocol/muc#owner}query/"
                            "{jabber:x:data}x[@type='submit']") is not None]
    assert len(owner) == 1 and owner[0]["to"] == ROOM
    h.feed(f"<iq type='result' id='{owner[0]['id']}' from='{ROOM}' to='bot@localhost/r'/>")
    await h.settle()
    assert h.names() == ["muc_guard_dropped", "muc_guard_rejoined"]
