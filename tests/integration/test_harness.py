"""Proof that the Prosody test harness (muc_guard.testing.prosody + mod_muc_guard_test)
does what it claims, observed with plain aioxmpp clients only.

Each fault is checked from both sides: what the client receives (Room.on_exit
arguments and the raw presence) and what the server's room object holds
afterwards (ProsodyServer.occupants / room_info).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import aioxmpp
import aioxmpp.connector
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.ping
import pytest

from prosody import (
    PROSODY_ENV,
    ProsodyAdminError,
    ProsodyServer,
    ProsodyStartError,
    connected,
    free_port,
    listening_sockets,
    lua_string,
    pid_running,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

log = logging.getLogger(__name__)

EXIT_TIMEOUT = 5.0
E = aioxmpp.errors.ErrorCondition


@pytest.fixture(autouse=True)
def _time_each_test(request: pytest.FixtureRequest):
    t0 = time.monotonic()
    yield
    log.info("%s took %.3f s", request.node.nodeid, time.monotonic() - t0)


def ints(codes: Any) -> set[int]:
    return {int(getattr(c, "value", c)) for c in codes or ()}


@dataclass
class Member:
    """A client joined to a room, with everything it received from the room."""

    client: aioxmpp.PresenceManagedClient
    room: aioxmpp.muc.Room
    room_jid: aioxmpp.JID
    nick: str
    enter_codes: set[int]
    presences: list[aioxmpp.Presence] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def occupant_jid(self) -> aioxmpp.JID:
        return self.room_jid.replace(resource=self.nick)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> dict[str, Any]:
        await asyncio.wait_for(self.exited.wait(), timeout)
        return self.exits[0]

    def self_unavailable(self) -> aioxmpp.Presence:
        """The last unavailable presence from our own occupant JID."""
        for pres in reversed(self.presences):
            if pres.type_ == aioxmpp.PresenceType.UNAVAILABLE and pres.from_ == self.occupant_jid:
                return pres
        raise AssertionError(f"no unavailable self-presence among {self.presences!r}")


async def join(
    make_client: Callable[..., aioxmpp.PresenceManagedClient],
    account: Callable[..., tuple[aioxmpp.JID, str]],
    room_jid: aioxmpp.JID,
    nick: str,
    *,
    server: ProsodyServer | None = None,
    creds: tuple[aioxmpp.JID, str] | None = None,
) -> Member:
    """Connect a fresh client and join `room_jid` as `nick` (autorejoin off)."""
    jid, password = creds or account(nick, server=server)
    client = make_client(jid, password, server=server)
    presences: list[aioxmpp.Presence] = []

    def capture(stanza: aioxmpp.Presence) -> aioxmpp.Presence:
        if stanza.from_ is not None and stanza.from_.bare() == room_jid:
            presences.append(stanza)
        return stanza

    client.stream.app_inbound_presence_filter.register(capture, 0)
    await connected(client)
    muc = client.summon(aioxmpp.MUCClient)
    room, fut = muc.join(room_jid, nick, autorejoin=False)
    enter_codes: set[int] = set()
    room.on_muc_enter.connect(lambda *a, muc_status_codes=(), **kw: enter_codes.update(ints(muc_status_codes)))
    member = Member(client, room, room_jid, nick, enter_codes, presences)

    def on_exit(*args: Any, **kwargs: Any) -> None:
        member.exits.append(kwargs)
        member.exited.set()

    room.on_exit.connect(on_exit)
    await asyncio.wait_for(fut, EXIT_TIMEOUT)
    if room.me is not None:
        member.nick = room.me.nick
    return member


async def self_ping(member: Member) -> aioxmpp.errors.XMPPError | None:
    """XEP-0410 self-ping to our occupant JID: None on a result, else the error."""
    try:
        await asyncio.wait_for(aioxmpp.ping.ping(member.client, member.occupant_jid), EXIT_TIMEOUT)
    except aioxmpp.errors.XMPPError as exc:
        log.info("self-ping %s -> %s %r", member.occupant_jid, exc.condition, exc.text)
        return exc
    return None


# --- the admin channel ------------------------------------------------------------


async def test_admin_returns_output_and_raises_lua_errors(prosody: ProsodyServer) -> None:
    assert await prosody.admin("return 6 * 7") == "42"
    assert await prosody.admin("print('a'); print('b'); return 'c'") == "a\nb\nc"
    # a single expression is run as "return <line>": print() returns true
    assert await prosody.admin("print('only printed')") == "only printed\ntrue"
    assert await prosody.admin("local x = 1; print('only printed')") == "only printed"
    with pytest.raises(ProsodyAdminError, match="boom"):
        await prosody.admin("error('boom')")
    with pytest.raises(ProsodyAdminError, match="couldn't understand"):
        await prosody.admin("this is not lua")
    with pytest.raises(ProsodyAdminError, match="no such room"):
        await prosody.kick(f"absent@{prosody.muc_domain}", "nobody")
    # the module's table is reachable from the global environment
    assert await prosody.admin("return type(muc_guard_test)") == "table"
    t0 = time.monotonic()
    for _ in range(20):
        await prosody.admin("return 1")
    log.info("admin round trip: %.2f ms", (time.monotonic() - t0) / 20 * 1000)


async def test_version_is_the_running_servers(prosody: ProsodyServer) -> None:
    assert await prosody.admin("return prosody.version") == prosody.version
    assert prosody.version_info >= (0, 12)
    assert prosody.version in repr(prosody)


def test_a_named_prosody_that_is_missing_is_an_error(tmp_path, monkeypatch) -> None:
    """Never a silent fallback to another version (a CI that meant to test
    Prosody 13 must not pass on 0.12)."""
    missing = tmp_path / "no-prosody"
    with pytest.raises(ProsodyStartError, match="no-prosody"):
        ProsodyServer(tmp_path / "a", prosody=missing)
    monkeypatch.setenv(PROSODY_ENV, str(missing))
    with pytest.raises(ProsodyStartError, match="no-prosody"):
        ProsodyServer(tmp_path / "b")


async def test_server_listens_on_loopback_c2s_only(prosody: ProsodyServer) -> None:
    assert prosody.pid is not None and pid_running(prosody.pid)
    assert listening_sockets(prosody.pid) == [("127.0.0.1", prosody.port)]


async def test_clients_stay_on_loopback(make_client, account, prosody) -> None:
    """A client whose pinned peer is down fails instead of trying DNS/SRV."""
    assert aioxmpp.node.discover_connectors.__name__ == "_no_discovery"
    jid, password = account("nowhere")
    dead = types.SimpleNamespace(host="127.0.0.1", port=free_port(), tls=None)  # all make_client reads
    client = make_client(jid, password, server=dead, max_initial_attempts=1)
    with pytest.raises(aioxmpp.errors.MultiOSError) as err:
        await connected(client, timeout=5)
    assert len(err.value.exceptions) == 1 and isinstance(err.value.exceptions[0], ConnectionRefusedError)


async def test_occupants_and_room_info(prosody, make_client, account, room_jid) -> None:
    assert await prosody.occupants(room_jid) == {}
    assert (await prosody.room_info(room_jid)) == {"exists": False}
    assert await prosody.create_room(room_jid) is True
    alice = await join(make_client, account, room_jid, "alice")
    occupants = await prosody.occupants(room_jid)
    assert occupants == {"alice": [str(alice.client.local_jid)]}
    info = await prosody.room_info(room_jid)
    assert info["persistent"] is True and info["members_only"] is False
    assert info["occupants"]["alice"]["role"] == "participant"
    assert info["affiliations"] == {}  # created server-side: no owner


# --- removals with status codes ---------------------------------------------------------


@pytest.mark.parametrize("codes", [[333], [330], [332]], ids=lambda c: "+".join(map(str, c)))
async def test_kick_with_codes(prosody, make_client, account, room_jid, codes) -> None:
    await prosody.create_room(room_jid)
    victim = await join(make_client, account, room_jid, "victim")
    observer = await join(make_client, account, room_jid, "observer")

    removed = await prosody.kick_with_codes(room_jid, "victim", codes, reason="link lost")

    assert removed == [str(victim.client.local_jid)]
    exit_info = await victim.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, *codes}
    pres = victim.self_unavailable()
    assert ints(pres.xep0045_muc_user.status_codes) == {110, *codes}
    assert pres.status.any() == "link lost"
    assert await prosody.occupants(room_jid) == {"observer": [str(observer.client.local_jid)]}
    # the others see the unavailable too, without 110
    victim_jid = room_jid.replace(resource="victim")

    def seen_leaving() -> list[aioxmpp.Presence]:
        return [
            p for p in observer.presences
            if p.from_ == victim_jid and p.type_ == aioxmpp.PresenceType.UNAVAILABLE
        ]

    for _ in range(100):
        if seen_leaving():
            break
        await asyncio.sleep(0.02)
    left = seen_leaving()
    assert len(left) == 1 and ints(left[0].xep0045_muc_user.status_codes) == set(codes)
    assert left[0].status.any() == "link lost"
    if codes == [333]:
        assert exit_info["muc_leave_mode"] == aioxmpp.muc.LeaveMode.ERROR


async def test_kick_with_codes_removes_every_session(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    creds = account("multi")
    first = await join(make_client, account, room_jid, "multi", creds=creds)
    second = await join(make_client, account, room_jid, "multi", creds=creds)
    assert sorted((await prosody.occupants(room_jid))["multi"]) == sorted(
        [str(first.client.local_jid), str(second.client.local_jid)]
    )
    await prosody.kick_with_codes(room_jid, "multi", [333])
    for member in (first, second):
        assert ints((await member.wait_exit())["muc_status_codes"]) == {110, 333}
    assert await prosody.occupants(room_jid) == {}


async def test_bounce_error_is_prosodys_own_333(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "bounced")
    await prosody.bounce_error(room_jid, "bounced")
    exit_info = await member.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, 333}
    assert member.self_unavailable().status.any() == "Kicked: recipient unavailable"
    assert await prosody.occupants(room_jid) == {}


async def test_kick(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "kicked")
    await prosody.kick(room_jid, "kicked", reason="behave")
    exit_info = await member.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, 307}
    assert exit_info["muc_leave_mode"] == aioxmpp.muc.LeaveMode.KICKED
    assert exit_info["muc_reason"] == "behave"
    assert await prosody.occupants(room_jid) == {}


async def test_ban(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "banned")
    await prosody.ban(room_jid, member.client.local_jid, reason="spam")
    exit_info = await member.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, 301}
    assert exit_info["muc_leave_mode"] == aioxmpp.muc.LeaveMode.BANNED
    assert await prosody.occupants(room_jid) == {}
    info = await prosody.room_info(room_jid)
    assert info["affiliations"] == {str(member.client.local_jid.bare()): "outcast"}
    # a rejoin is refused
    _, fut = member.client.summon(aioxmpp.MUCClient).join(room_jid, "banned", autorejoin=False)
    with pytest.raises(aioxmpp.errors.XMPPError) as err:
        await asyncio.wait_for(fut, EXIT_TIMEOUT)
    assert err.value.condition == E.FORBIDDEN


async def test_destroy(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "doomed")
    alternate = room_jid.replace(localpart=room_jid.localpart + "-new")
    await prosody.destroy(room_jid, reason="moving", alternate=alternate)
    exit_info = await member.wait_exit()
    pres = member.self_unavailable()
    destroy = pres.xep0045_muc_user.destroy
    assert destroy is not None and destroy.jid == alternate and destroy.reason == "moving"
    assert ints(exit_info["muc_status_codes"]) == {110}
    assert await prosody.occupants(room_jid) == {}
    info = await prosody.room_info(room_jid)
    assert info["exists"] and info["destroyed"]  # Prosody leaves a tombstone (muc_tombstones)
    # the tombstone answers pings and joins with <gone/> (+ xmpp:<alternate>?join)
    err = await self_ping(member)
    assert err is not None and err.condition == E.GONE
    _, fut = member.client.summon(aioxmpp.MUCClient).join(room_jid, "doomed", autorejoin=False)
    with pytest.raises(aioxmpp.errors.XMPPError) as join_err:
        await asyncio.wait_for(fut, EXIT_TIMEOUT)
    assert join_err.value.condition == E.GONE


async def test_silent_remove(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "ghosted")
    assert await self_ping(member) is None  # joined: Prosody answers the self-ping itself
    received_before = len(member.presences)
    await prosody.silent_remove(room_jid, "ghosted")
    await asyncio.sleep(1.0)
    assert len(member.presences) == received_before and not member.exited.is_set()
    assert await prosody.occupants(room_jid) == {}
    err = await self_ping(member)
    assert err is not None
    assert err.condition == E.NOT_ACCEPTABLE
    assert err.text == "You are not currently connected to this chat"


async def test_drop_room(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "orphan")
    received_before = len(member.presences)
    assert await prosody.drop_room(room_jid) is True
    assert await prosody.room_info(room_jid) == {"exists": False}
    err = await self_ping(member)
    assert err is not None and err.condition == E.ITEM_NOT_FOUND
    assert len(member.presences) == received_before and not member.exited.is_set()
    # a (re)join simply creates a new room, with the joiner as its owner
    other = await join(make_client, account, room_jid, "newcomer")
    assert 201 in other.enter_codes
    assert set(await prosody.occupants(room_jid)) == {"newcomer"}


async def test_set_members_only_gives_322(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "outsider")
    assert await prosody.set_members_only(room_jid) is True
    exit_info = await member.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, 322}
    assert await prosody.occupants(room_jid) == {}


async def test_revoke_membership_gives_321(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    member = await join(make_client, account, room_jid, "former")
    await prosody.revoke_membership(room_jid, member.client.local_jid)
    exit_info = await member.wait_exit()
    assert ints(exit_info["muc_status_codes"]) == {110, 321}
    assert exit_info["muc_leave_mode"] == aioxmpp.muc.LeaveMode.AFFILIATION_CHANGE
    assert await prosody.occupants(room_jid) == {}
    assert (await prosody.room_info(room_jid))["members_only"] is True


async def test_rewrite_nick_gives_210(prosody, make_client, account, room_jid) -> None:
    await prosody.create_room(room_jid)
    await prosody.rewrite_nick(room_jid, "wanted", "assigned")
    try:
        member = await join(make_client, account, room_jid, "wanted")
    finally:
        await prosody.clear_rewrites()
    assert member.room.me.nick == "assigned"
    assert 210 in member.enter_codes
    assert set(await prosody.occupants(room_jid)) == {"assigned"}
    # the self-ping must go to the assigned nick
    assert await self_ping(member) is None
    # while the rule holds, a (desync) rejoin to the requested nick is taken
    # as a presence update of the assigned occupant, not as a nick change
    await prosody.rewrite_nick(room_jid, "wanted", "assigned")
    before = len(member.presences)
    rejoin = aioxmpp.Presence(type_=aioxmpp.PresenceType.AVAILABLE, to=room_jid.replace(resource="wanted"))
    rejoin.xep0045_muc = aioxmpp.muc.xso.GenericExt()
    await member.client.send(rejoin)
    for _ in range(50):
        if len(member.presences) > before:
            break
        await asyncio.sleep(0.02)
    await prosody.clear_rewrites(room_jid)
    echo = member.presences[before]
    assert echo.from_ == room_jid.replace(resource="assigned") and echo.type_ == aioxmpp.PresenceType.AVAILABLE
    assert 110 in ints(echo.xep0045_muc_user.status_codes)
    assert set(await prosody.occupants(room_jid)) == {"assigned"} and not member.exited.is_set()
    other = await join(make_client, account, room_jid, "wanted")  # rule cleared
    assert other.room.me.nick == "wanted" and 210 not in other.enter_codes


# --- process control (private servers) -----------------------------------------------


async def test_hard_restart_keeps_persistent_room(private_prosody, make_client, account, room_jid) -> None:
    server = private_prosody
    port, first_pid = server.port, server.pid
    await server.create_room(room_jid)
    member = await join(make_client, account, room_jid, "survivor", server=server)
    destroyed = asyncio.Event()
    member.client.on_stream_destroyed.connect(lambda *a, **kw: destroyed.set())

    t0 = time.monotonic()
    await server.restart(hard=True)
    log.info("hard restart took %.3f s", time.monotonic() - t0)

    assert not pid_running(first_pid) and not pathlib.Path(f"/proc/{first_pid}").exists()
    assert server.pid != first_pid and server.port == port
    await asyncio.wait_for(destroyed.wait(), EXIT_TIMEOUT)
    exit_info = await member.wait_exit()
    assert exit_info["muc_leave_mode"] == aioxmpp.muc.LeaveMode.DISCONNECTED
    info = await server.room_info(room_jid)
    assert info["exists"] and info["persistent"] and not info["destroyed"]
    assert info["occupants"] == {}


async def test_graceful_restart_and_stop_reap_every_process(private_prosody, make_client, account) -> None:
    server = private_prosody
    client = make_client(*account("graceful", server=server), server=server)
    await connected(client)
    destroyed = asyncio.Event()
    client.on_stream_destroyed.connect(lambda *a, **kw: destroyed.set())
    suspended: list[Any] = []
    client.on_stream_suspended.connect(lambda reason=None, *a, **kw: suspended.append(reason))
    t0 = time.monotonic()
    await server.restart()
    log.info("graceful restart took %.3f s", time.monotonic() - t0)
    await asyncio.wait_for(destroyed.wait(), EXIT_TIMEOUT)
    # Usually the stream ends with <system-shutdown/>.  Now and then (~1 in
    # 40 here) Prosody's shutdown closes the socket before that error is
    # flushed: a bare EOF, which aioxmpp reports by on_stream_destroyed only.
    # Rarer (once in CI under load, 1 ms after the client bound its
    # resource): the socket is closed with our first stanzas still unread,
    # and the kernel answers them with a reset.
    if suspended and isinstance(suspended[0], ConnectionResetError):
        log.warning("graceful stop: connection reset, our stanzas were still unread")
    elif suspended:
        assert isinstance(suspended[0], aioxmpp.errors.StreamError)
        assert suspended[0].condition == aioxmpp.errors.StreamErrorCondition.SYSTEM_SHUTDOWN
    else:
        log.warning("graceful stop: bare EOF, no <system-shutdown/> reached the client")
    await server.astop()
    server.stop()  # idempotent
    assert server.pid is None and len(server.started_pids) == 2
    for pid in server.started_pids:
        assert not pathlib.Path(f"/proc/{pid}").exists(), pid
    await server.astart()  # the fixture stops it again
    assert server.running


async def test_sever_c2s_is_a_bare_eof(private_prosody, make_client, account, room_jid) -> None:
    """sever_c2s closes the TCP connection with no stream error or footer.
    Without smacks Prosody ends the session (the occupant leaves the room);
    aioxmpp 0.13.3 then fires only on_stream_destroyed and never reconnects
    (running, not established): a client-side trap the library must handle."""
    server = private_prosody
    await server.create_room(room_jid)
    member = await join(make_client, account, room_jid, "cut", server=server)
    client = member.client
    events: list[str] = []
    for name in ("on_stream_destroyed", "on_stream_suspended", "on_failure", "on_stream_established"):
        getattr(client, name).connect(lambda *a, name=name, **kw: events.append(name))
    await server.sever_c2s(client.local_jid)
    await member.wait_exit()  # aioxmpp: DISCONNECTED (autorejoin off)
    for _ in range(50):
        if await server.occupants(room_jid) == {}:
            break
        await asyncio.sleep(0.02)
    assert await server.occupants(room_jid) == {}
    assert await server.c2s_sessions(client.local_jid.bare()) == []
    await asyncio.sleep(1.5)  # more than aioxmpp's first reconnect back-off (1 s)
    assert events == ["on_stream_destroyed"]
    assert client.running and not client.established


async def test_expire_archive(prosody_factory, make_client, account, room_jid) -> None:
    server = prosody_factory(mam=True)
    await server.create_room(room_jid, mam=True)
    member = await join(make_client, account, room_jid, "talker", server=server)
    archived = (f">local a = require'core.storagemanager'.open({lua_string(server.muc_domain)}, "
                f"'muc_log', 'archive'); local it = a:find({lua_string(room_jid.localpart)}); "
                "local n = 0; for _ in it do n = n + 1 end; return n")
    msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    msg.body[None] = "old"
    await member.room.send_message(msg)
    for _ in range(50):
        if await server.admin(archived) == "1":
            break
        await asyncio.sleep(0.02)
    assert await server.admin(archived) == "1"
    await server.expire_archive(room_jid, age=3600)        # nothing that old
    assert await server.admin(archived) == "1"
    await server.expire_archive(room_jid)
    assert await server.admin(archived) in ("0", "nil")


async def test_smacks_and_mam_options(prosody_factory, make_client, account, room_jid) -> None:
    server = prosody_factory(smacks=True, mam=True, smacks_hibernation_time=1)
    await server.create_room(room_jid, mam=True)
    member = await join(make_client, account, room_jid, "sm", server=server)
    assert member.client.stream.sm_enabled
    full_jid = member.client.local_jid
    sessions = await server.c2s_sessions(full_jid)
    assert sessions == [{"full_jid": str(full_jid), "hibernating": False, "smacks": True}]
    disco = member.client.summon(aioxmpp.DiscoClient)
    info = await disco.query_info(room_jid)
    assert "urn:xmpp:mam:2" in info.features
    # A ghost: the client can no longer reach the server (dead port), and a
    # server-side cut makes Prosody hibernate the session (XEP-0198) ...
    member.client.override_peer = [(server.host, free_port(), aioxmpp.connector.STARTTLSConnector())]
    await server.sever_c2s(full_jid)
    for _ in range(50):
        sessions = await server.c2s_sessions(full_jid)
        if sessions and sessions[0]["hibernating"]:
            break
        await asyncio.sleep(0.02)
    assert sessions == [{"full_jid": str(full_jid), "hibernating": True, "smacks": True}]
    # ... while the occupant stays in the room, until smacks_hibernation_time
    assert await server.occupants(room_jid) == {"sm": [str(full_jid)]}
    t0 = time.monotonic()
    for _ in range(150):
        if await server.occupants(room_jid) == {}:
            break
        await asyncio.sleep(0.02)
    assert await server.occupants(room_jid) == {}
    log.info("ghost expired %.2f s after the cut was observed", time.monotonic() - t0)
    assert not member.exited.is_set()  # the client never heard about any of it
