"""A guarded bot for integration tests: client + MUCGuard + timestamped events."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

import aioxmpp
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.ping
import pytest

import muc_guard
from prosody import ProsodyServer, connected, stop_client

#: the root of this checkout
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH: a child process must run
    the muc_guard under test, not whichever one is installed."""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    return env


#: Run a test against the shared server with TLS required and the certificate
#: verified against the session's test CA, as a bot in production connects
#: (see the ``prosody`` fixture in tests/conftest.py).
over_verified_tls = pytest.mark.parametrize("prosody", ["verified-tls"], indirect=True)
#: Run a test twice: over plain TCP and over verified TLS.
over_both = pytest.mark.parametrize("prosody", ["plain", "verified-tls"], indirect=True)
#: Run a test once with each front-end, for tests that take ``frontend`` as
#: a plain argument (child-process bots); in-process bots come from the
#: ``frontend`` and ``make_bot`` fixtures (tests/integration/conftest.py).
over_frontends = pytest.mark.parametrize("frontend", ["aioxmpp", "slixmpp"])


def room_key(room: Any) -> str:
    """A room as both front-ends' JIDs (aioxmpp.JID, slixmpp.JID, str) compare:
    its normalised bare JID text."""
    return str(aioxmpp.JID.fromstr(str(room)).bare())


class GuardedBot:
    """What every front-end's test bot shares: the guard's signals, recorded
    with a timestamp, and the messages it delivered.

    ``events`` holds ``(monotonic time, kind, room, arg)``; ``room`` is the
    front-end's own JID type, compared by :func:`room_key`; ``arg`` is the
    Cause of a drop or give-up, and what the front-end hands over on a rejoin
    (aioxmpp: the new Room; slixmpp: the nick). ``messages`` holds
    ``(body, recovered, own)`` of every message the guard delivered (a list
    that a restarted bot may take over, to check continuity across both)."""

    frontend: str

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any, Any]] = []
        self.messages: list[tuple[str, bool, bool]] = []
        #: (room, since, until, reason) of every gap reported, and the number
        #: of messages delivered before it (kept apart from ``events``, whose
        #: exact sequences older tests check)
        self.gaps: list[tuple[Any, float, float, Any, int]] = []
        self._changed = asyncio.Event()

    def _record_gap(self, room: Any, since: float, until: float, reason: Any) -> None:
        self.gaps.append((room, since, until, reason, len(self.messages)))

    def _record(self, kind: str, room: Any, arg: Any) -> None:
        self.events.append((time.monotonic(), kind, room, arg))
        self._changed.set()

    def _record_message(self, body: str, recovered: bool, own: bool) -> None:
        self.messages.append((body, recovered, own))

    def bodies(self) -> list[str]:
        return [body for body, _, _ in self.messages]

    @property
    def settings(self) -> Any:
        """The running guard's muc_guard.core.settings.Settings (both
        front-ends keep it at guard._guard.settings)."""
        return self.guard._guard.settings

    async def stop(self) -> None:
        """Check the guard's invariants, then close (see :meth:`close`)."""
        self.check_invariants()
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError

    def violations(self) -> list[str]:
        """Broken invariants of the guard's rooms (muc_guard.core.invariants)."""
        return self.guard._guard.violations()

    def check_invariants(self) -> None:
        assert self.violations() == []

    def kinds(self, jid: Any = None) -> list[str]:
        key = None if jid is None else room_key(jid)
        return [kind for _, kind, j, _ in self.events if key is None or room_key(j) == key]

    async def wait_event(self, kind: str, jid: Any, *, after: int = 0,
                         timeout: float = 15.0) -> tuple[float, Any]:
        """Wait for the first `kind` event for `jid` at index >= `after`."""
        key = room_key(jid)
        deadline = time.monotonic() + timeout
        while True:
            for t, k, j, arg in self.events[after:]:
                if k == kind and room_key(j) == key:
                    return t, arg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} for {jid} within {timeout} s; events: "
                                     f"{[(k, str(j), a) for _, k, j, a in self.events]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def info(self, jid: Any) -> muc_guard.RoomInfo:
        info = self.guard.room_info(self._room(jid))
        assert info is not None, f"{jid} not tracked"
        return info

    def rooms(self) -> dict[str, muc_guard.RoomInfo]:
        """Every tracked room's snapshot, by :func:`room_key`."""
        return {room_key(info.jid): info for info in self.guard.rooms()}

    def figure_name(self, name: str) -> str:
        """A measured figure's name, told apart by front-end."""
        return name if self.frontend == "aioxmpp" else f"{name} [{self.frontend}]"

    def _room(self, jid: Any) -> Any:
        """`jid` as this front-end's API takes a room."""
        return jid

    async def join(self, room: Any, nick: str, *, password: str | None = None) -> Any:
        """The guard's join(): what it returns (aioxmpp: the Room; slixmpp: the nick)."""
        return await self.guard.join(self._room(room), nick, password=password)

    async def leave(self, room: Any) -> None:
        await self.guard.leave(self._room(room))

    async def set_nick(self, room: Any, nick: str) -> None:
        await self.guard.set_nick(self._room(room), nick)

    async def open_store(self, path: Any) -> None:
        await self.guard.open_store(path)


class Bot(GuardedBot):
    """One account's aioxmpp client with a summoned guard; records every guard signal."""

    frontend = "aioxmpp"
    #: what join() raises when the room refuses us for good
    JoinRefused: type[Exception] = aioxmpp.errors.XMPPError

    def __init__(self, make_client: Any, jid: aioxmpp.JID, password: str,
                 server: ProsodyServer | None = None, resource: str | None = "bot") -> None:
        super().__init__()
        self.jid = jid.bare()
        full = jid.replace(resource=resource) if resource else jid.bare()
        self.client = make_client(full, password, server=server)
        self.guard: muc_guard.MUCGuard = self.client.summon(muc_guard.MUCGuard)
        for kind in ("dropped", "rejoined", "gave_up"):
            getattr(self.guard, f"on_{kind}").connect(self._recorder(kind))
        self.guard.on_gap.connect(self._record_gap)
        self.guard.on_message.connect(
            lambda room, message, *, recovered, own:
            self._record_message(message.body.any(), recovered, own))

    def _recorder(self, kind: str):
        def record(jid: aioxmpp.JID, arg: Any) -> None:
            self._record(kind, jid, arg)
        return record

    async def start(self) -> "Bot":
        await connected(self.client)
        return self

    async def close(self) -> None:
        """Shut the guard down and stop the client (idempotent; no checks)."""
        await self.guard.shutdown()
        await stop_client(self.client)

    async def crash(self, server: Any) -> None:
        """End as a process killed mid-stream would: the server sees the
        connection cut (no stream close, no unavailable presence)."""
        await server.sever_c2s(self.bound_jid)
        await self.guard.shutdown()
        self.client.stop()

    @property
    def bound_jid(self) -> aioxmpp.JID:
        return self.client.local_jid

    @staticmethod
    def nick_of(joined: aioxmpp.muc.Room) -> str:
        """The nick a join() result or rejoin signal says we hold, checking
        that the Room is live."""
        assert joined.muc_joined
        return joined.me.nick

    def check_fresh_room(self, room: Any, before: Any, after: Any) -> None:
        """After a rejoin: a new, joined Room, the one the guard reports."""
        assert after is not before and after.muc_joined
        assert self.info(room).room is after

    @staticmethod
    def condition(error: Exception) -> str:
        """The XMPP error condition of a refusal, e.g. "conflict"."""
        return error.condition.value[1]

    def record_pings(self, rooms: list[Any]) -> list[str]:
        """From now on, the occupant JIDs of our self-pings to `rooms`."""
        keys = {room_key(room) for room in rooms}
        pings: list[str] = []
        send = self.client.send

        async def counting_send(stanza, **kwargs):
            if (isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, aioxmpp.ping.Ping)
                    and room_key(stanza.to) in keys):
                pings.append(str(stanza.to))
            return await send(stanza, **kwargs)
        self.client.send = counting_send
        return pings

    def record_room_presences(self) -> list[tuple[str, str, set[int]]]:
        """From now on, every presence received: (from, type, MUC status codes)."""
        seen: list[tuple[str, str, set[int]]] = []

        def record(p: aioxmpp.Presence) -> aioxmpp.Presence:
            user = getattr(p, "xep0045_muc_user", None)
            codes = ({int(getattr(c, "value", c)) for c in user.status_codes}
                     if user is not None else set())
            kind = "unavailable" if p.type_ == aioxmpp.PresenceType.UNAVAILABLE else "available"
            seen.append((str(p.from_), kind, codes))
            return p
        self.client.stream.service_inbound_presence_filter.register(record, 0)
        return seen

    @property
    def sm_enabled(self) -> bool:
        """Whether the stream has XEP-0198 stream management on."""
        return self.client.stream.sm_enabled

    def stream_resumed(self) -> asyncio.Future[float]:
        """Resolves (with the time) at the next XEP-0198 resumption."""
        resumed = asyncio.get_running_loop().create_future()
        self.client.on_stream_resumed.connect(
            lambda: resumed.done() or resumed.set_result(time.monotonic()))
        return resumed


async def occupant_nicks_of(server: ProsodyServer, room: aioxmpp.JID,
                            account: aioxmpp.JID) -> list[str]:
    """Nicks the server's room holds for `account` (any of its sessions)."""
    occupants = await server.occupants(room)
    prefix = str(account.bare())
    return sorted(nick for nick, jids in occupants.items()
                  if any(j.split("/")[0] == prefix for j in jids))


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def groupchat(text: str) -> aioxmpp.Message:
    msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    msg.body[None] = text
    return msg


class Inbox:
    """What a bot's on_message delivered: (body, recovered, own)."""

    def __init__(self, bot: Bot) -> None:
        self.items: list[tuple[str, bool, bool]] = []
        bot.guard.on_message.connect(self.record)

    def record(self, room_jid, message, *, recovered, own):
        self.items.append((message.body.any(), recovered, own))

    def bodies(self) -> list[str]:
        return [body for body, _, _ in self.items]


async def talker_in(room_jid, server, account, make_client) -> aioxmpp.muc.Room:
    """Another account, in the room with plain aioxmpp, ready to talk."""
    jid, password = account("talker", server=server)
    client = make_client(jid.replace(resource="t"), password, server=server)
    muc = client.summon(aioxmpp.MUCClient)
    await connected(client)
    room, fut = muc.join(room_jid, "talker", autorejoin=False)
    await fut
    return room


async def send_all(room, texts, pause: float = 0.0):
    for text in texts:
        await room.send_message(groupchat(text))
        if pause:
            await asyncio.sleep(pause)
