"""The slixmpp front-end against a real Prosody (issue #14): join, a 110+333
kick, the rejoin."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardkit import eventually, occupant_nicks_of, send_all, talker_in

slixmpp = pytest.importorskip("slixmpp")

import muc_guard.slixmpp  # noqa: E402
from muc_guard import Cause, State  # noqa: E402
from muc_guard.store import Store  # noqa: E402

pytestmark = pytest.mark.integration

EVENTS = ("muc_guard_dropped", "muc_guard_rejoined", "muc_guard_gave_up")


class SlixBot:
    """A slixmpp client with the muc_guard plugin, on the test server's
    plain c2s port (no TLS, SCRAM without it, no DNS)."""

    def __init__(self, server: Any, jid: Any, password: str, **pconfig: Any) -> None:
        self.server = server
        self.xmpp = slixmpp.ClientXMPP(str(jid), password)
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = False
        self.xmpp.enable_plaintext = True
        mechanisms = self.xmpp.plugin["feature_mechanisms"]
        mechanisms.unencrypted_scram = True
        mechanisms.unencrypted_plain = True
        self.xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
        self.guard = self.xmpp.plugin["muc_guard"]
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        for name in EVENTS:
            self.xmpp.add_event_handler(name, lambda data, name=name:
                                        self.events.put_nowait((name, data)))
        self.messages: list[tuple[str, bool]] = []
        self.xmpp.add_event_handler("muc_guard_message", lambda data: self.messages.append(
            (data["message"]["body"], data["recovered"])))
        self.started = asyncio.Event()
        self.xmpp.add_event_handler("session_start", lambda _: self.started.set())

    async def start(self) -> None:
        self.xmpp.connect(host=self.server.host, port=self.server.port)
        await asyncio.wait_for(self.started.wait(), 15)

    async def next_event(self, timeout: float = 15.0) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def stop(self) -> None:
        await self.guard.shutdown()
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)
        except (asyncio.TimeoutError, ConnectionError):
            self.xmpp.abort()


async def test_joins_and_rejoins_after_a_333_kick(prosody, account, room_jid):
    await prosody.create_room(room_jid)
    jid, password = account("slixbot")
    bot = SlixBot(prosody, jid, password)
    try:
        await bot.start()
        assert await asyncio.wait_for(bot.guard.join(str(room_jid), "bot"), 15) == "bot"
        assert await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
        assert str(room_jid) in bot.xmpp.plugin["xep_0045"].rooms[None]

        assert await prosody.kick_with_codes(room_jid, "bot", [333])
        name, data = await bot.next_event()
        assert name == "muc_guard_dropped"
        assert (data["room"], data["cause"]) == (str(room_jid), Cause.SERVER_ERROR)
        name, data = await bot.next_event()
        assert (name, data) == ("muc_guard_rejoined", {"room": str(room_jid), "nick": "bot"})

        async def back() -> bool:
            return await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
        assert await eventually(back)
        (info,) = bot.guard.rooms()
        assert (info.state, info.drops, info.last_cause) == (State.JOINED, 1,
                                                             Cause.SERVER_ERROR)
        assert bot.guard._guard.violations() == []
    finally:
        await bot.stop()


@pytest.mark.parametrize("archive", [False, True], ids=["history", "archive"])
async def test_what_was_said_while_kept_out_comes_back_once(archive, prosody, prosody_factory,
                                                            make_client, account, room_jid):
    if archive:
        prosody = prosody_factory(mam=True)
        await prosody.create_room(room_jid)
    else:
        await prosody.create_room(room_jid, history_length=100)
    jid, password = account("slixbot", server=prosody)
    bot = SlixBot(prosody, jid, password)
    try:
        await bot.start()
        await asyncio.wait_for(bot.guard.join(str(room_jid), "bot"), 15)
        room = await talker_in(room_jid, prosody, account, make_client)
        before = [f"before {i}" for i in range(3)]
        missed = [f"missed {i}" for i in range(30)]
        after = [f"after {i}" for i in range(3)]
        await send_all(room, before)

        async def got(n: int) -> bool:
            return len(bot.messages) >= n
        assert await eventually(lambda: got(3))
        await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
        await prosody.kick_with_codes(room_jid, "bot", [333])
        assert (await bot.next_event())[0] == "muc_guard_dropped"
        await send_all(room, missed)
        await prosody.clear_refusals(room_jid)
        assert (await bot.next_event(30))[0] == "muc_guard_rejoined"
        await send_all(room, after)
        expected = before + missed + after
        assert await eventually(lambda: got(len(expected)), timeout=15)
        await asyncio.sleep(0.5)                  # anything extra would show up now
        assert [body for body, _ in bot.messages] == expected
        recovered = [body for body, rec in bot.messages if rec]
        assert recovered and set(recovered) <= set(missed)
        rec = bot.guard._guard.core.rooms[str(room_jid)]
        assert rec.has_archive is archive
    finally:
        await bot.stop()


async def test_a_cut_connection_resumed_by_xep_0198_keeps_the_rooms(prosody_factory, account):
    """slixmpp fires no session_end when stream management may resume: the
    cut is a suspension (StreamSuspended), the resumption (session_resumed)
    keeps the rooms: no drop, no rejoin. slixmpp does not reconnect by
    itself: the plugin does (pconfig "reconnect")."""
    server = prosody_factory(smacks=True)
    jid, password = account("smacked", server=server)
    bot = SlixBot(server, jid, password, reconnect_min=0.1, reconnect_max=0.5)
    bot.xmpp.register_plugin("xep_0198")
    resumed = asyncio.Event()
    bot.xmpp.add_event_handler("session_resumed", lambda _: resumed.set())
    room = f"smacked@{server.muc_domain}"
    try:
        await bot.start()
        await asyncio.wait_for(bot.guard.join(room, "bot"), 15)
        joins = bot.guard._guard.core.new_attempt()      # the attempt counter so far
        await server.sever_c2s(bot.xmpp.boundjid.full)
        await asyncio.wait_for(resumed.wait(), 15)
        assert bot.guard._guard.core.stream_up
        await asyncio.sleep(1.0)
        assert bot.events.empty()
        (info,) = bot.guard.rooms()
        assert (info.state, info.drops) == (State.JOINED, 0)
        assert bot.guard._guard.core.new_attempt() == joins + 1   # no join, probe or ping
        occupants = await server.occupants(room)
        assert list(occupants) == ["bot"]
        assert bot.guard._keeper.attempts == 1
    finally:
        await bot.stop()


async def test_a_cut_connection_without_resumption_rejoins_on_the_next_session(
        prosody, account, room_jid):
    """session_end then session_start: StreamDown, StreamUp; the rooms are
    rejoined and announced (stable_resource binds the same resource again:
    a probe first, which finds us gone).
    Here the application reconnects by itself, with the plugin's off."""
    await prosody.create_room(room_jid)
    jid, password = account("cut")
    bot = SlixBot(prosody, jid, password, reconnect=False)
    reconnect = True
    bot.xmpp.add_event_handler("disconnected", lambda _: reconnect and bot.xmpp.connect(
        host=prosody.host, port=prosody.port))
    try:
        await bot.start()
        await asyncio.wait_for(bot.guard.join(str(room_jid), "bot"), 15)
        resource = bot.xmpp.boundjid.resource
        await prosody.sever_c2s(bot.xmpp.boundjid.full)
        name, data = await bot.next_event()
        assert (name, data["cause"]) == ("muc_guard_dropped", Cause.STREAM_LOST)
        assert (await bot.next_event())[0] == "muc_guard_rejoined"
        assert bot.xmpp.boundjid.resource == resource

        async def back() -> bool:
            return await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
        assert await eventually(back)
        assert bot.guard._guard.violations() == []
    finally:
        reconnect = False
        await bot.stop()


@pytest.mark.parametrize("hard", [True, False], ids=["killed", "stopped"])
async def test_the_plugin_reconnects_after_a_server_restart_and_the_rooms_come_back(
        hard, private_prosody, account):
    """slixmpp alone stays offline after the server goes away (SIGKILL: the
    connection just ends; SIGTERM: the server closes the stream first). The
    plugin reconnects with backoff while the server is down and after it is
    back, and every room is rejoined and announced once."""
    server = private_prosody
    jid, password = account("phoenix", server=server)
    bot = SlixBot(server, jid, password, reconnect_min=0.2, reconnect_max=1.0)
    rooms = [f"phoenix{i}@{server.muc_domain}" for i in range(2)]
    try:
        await bot.start()
        for room in rooms:
            await asyncio.wait_for(bot.guard.join(room, "bot"), 15)
        await asyncio.sleep(0.5)
        if hard:
            await server.kill()
        else:
            await server.astop()
        keeper = bot.guard._keeper

        async def retried() -> bool:
            return keeper.attempts >= 2            # at least once more while down
        assert await eventually(retried, timeout=10)
        assert not bot.xmpp.is_connected() and bot.events.empty()
        resource = bot.xmpp.boundjid.resource
        await server.astart()
        got = [await bot.next_event(30) for _ in range(2 * len(rooms))]
        dropped = {str(data["room"]): data["cause"] for name, data in got
                   if name == "muc_guard_dropped"}
        rejoined = {str(data["room"]): data["nick"] for name, data in got
                    if name == "muc_guard_rejoined"}
        assert dropped == {room: Cause.STREAM_LOST for room in rooms}
        assert rejoined == {room: "bot" for room in rooms}
        for room in rooms:
            async def back(room: str = room) -> bool:
                return await occupant_nicks_of(server, room, jid) == ["bot"]
            assert await eventually(back)
        assert keeper.failures == 0 and not keeper.scheduled
        assert bot.xmpp.boundjid.resource == resource     # stable_resource
        assert [info.state for info in bot.guard.rooms()] == [State.JOINED] * len(rooms)
        assert bot.guard._guard.violations() == []
        await asyncio.sleep(0.5)
        assert bot.events.empty()                       # nothing announced twice
    finally:
        await bot.stop()


async def test_the_users_disconnect_shuts_the_guard_down_and_does_not_reconnect(
        prosody, account, room_jid, tmp_path):
    await prosody.create_room(room_jid)
    jid, password = account("leaver")
    db = tmp_path / "bot.db"
    bot = SlixBot(prosody, jid, password, reconnect_min=0.1, reconnect_max=0.2)
    try:
        await bot.guard.open_store(db)
        await bot.start()
        await asyncio.wait_for(bot.guard.join(str(room_jid), "bot"), 15)
        await asyncio.wait_for(bot.xmpp.disconnect(wait=2.0), 10)
        assert bot.guard._guard._closed and bot.guard._keeper.stopped
        await asyncio.sleep(0.5)                        # past any reconnect delay
        assert not bot.xmpp.is_connected() and not bot.xmpp.is_connecting()
        assert bot.guard._keeper.attempts == 0 and bot.events.empty()
        store = await Store.open(db)
        try:
            assert await store.take_clean_exit(str(jid.bare()))
            assert [str(r.jid) for r in await store.load_rooms(str(jid.bare()))] == \
                [str(room_jid)]                          # still wanted next time
        finally:
            await store.close()
    finally:
        await bot.stop()

