"""A guarded bot for integration tests: client + guard + timestamped events.

:class:`Bot` is aioxmpp's client with MUCGuard, :class:`SlixGuardBot` slixmpp's
with the muc_guard plugin; both record the guard's signals the same way
(:class:`GuardEvents`), so a test written against one runs with the other.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pathlib
import time
from typing import Any

import aioxmpp
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
#: Run a test once with each front-end (its ``frontend`` argument).
over_frontends = pytest.mark.parametrize("frontend", ["aioxmpp", "slixmpp"])


class GuardEvents:
    """The guard's signals as (monotonic time, kind, room, argument), kind one
    of "dropped", "rejoined", "gave_up"; rooms compare by their text."""

    guard: Any

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any, Any]] = []
        self._changed = asyncio.Event()

    def _record(self, kind: str, jid: Any, arg: Any) -> None:
        self.events.append((time.monotonic(), kind, jid, arg))
        self._changed.set()

    def violations(self) -> list[str]:
        """Broken invariants of the guard's rooms (muc_guard.core.invariants)."""
        return self.guard._guard.violations()

    def check_invariants(self) -> None:
        assert self.violations() == []

    def kinds(self, jid: Any = None) -> list[str]:
        return [kind for _, kind, j, _ in self.events if jid is None or str(j) == str(jid)]

    async def wait_event(self, kind: str, jid: Any, *, after: int = 0,
                         timeout: float = 15.0) -> tuple[float, Any]:
        """Wait for the first `kind` event for `jid` at index >= `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, k, j, arg in self.events[after:]:
                if k == kind and str(j) == str(jid):
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
        info = self.guard.room_info(self.room(jid))
        assert info is not None, f"{jid} not tracked"
        return info

    def room(self, jid: Any) -> Any:
        """A room JID as this front-end's guard takes it."""
        return jid

    async def join(self, jid: Any, nick: str) -> Any:
        return await self.guard.join(self.room(jid), nick)


class Bot(GuardEvents):
    """One account's aioxmpp client with a summoned guard; records every guard signal."""

    def __init__(self, make_client: Any, jid: aioxmpp.JID, password: str,
                 server: ProsodyServer | None = None, resource: str | None = "bot") -> None:
        super().__init__()
        full = jid.replace(resource=resource) if resource else jid.bare()
        self.client = make_client(full, password, server=server)
        self.guard: muc_guard.MUCGuard = self.client.summon(muc_guard.MUCGuard)
        for kind in ("dropped", "rejoined", "gave_up"):
            getattr(self.guard, f"on_{kind}").connect(functools.partial(self._record, kind))

    def on_message(self, handler: Any) -> None:
        """handler(room, body, recovered) for every message the guard delivers."""
        self.guard.on_message.connect(
            lambda room, message, *, recovered, own: handler(room, message.body.any(),
                                                             recovered))

    async def start(self) -> "Bot":
        await connected(self.client)
        return self

    async def stop(self) -> None:
        self.check_invariants()
        await self.guard.shutdown()
        await stop_client(self.client)


class SlixGuardBot(GuardEvents):
    """The same with slixmpp and the muc_guard plugin (tests/integration/slixkit.py):
    the client reconnects after a lost connection, as the example bots do."""

    def __init__(self, server: ProsodyServer, jid: aioxmpp.JID, password: str,
                 resource: str = "bot", **pconfig: Any) -> None:
        super().__init__()
        from slixkit import guarded_client

        self.client, self.guard = guarded_client(server.host, server.port,
                                                 f"{jid.bare()}/{resource}", password, **pconfig)
        for kind in ("dropped", "rejoined", "gave_up"):
            self.client.add_event_handler(
                f"muc_guard_{kind}", functools.partial(self._record_data, kind))
        self._session = asyncio.Event()
        self.client.add_event_handler("session_start", lambda _: self._session.set())

    def _record_data(self, kind: str, data: dict[str, Any]) -> None:
        self._record(kind, data["room"], data.get("cause", data.get("nick")))

    def room(self, jid: Any) -> Any:
        return str(jid)

    def on_message(self, handler: Any) -> None:
        """handler(room, body, recovered) for every message the guard delivers."""
        self.client.add_event_handler("muc_guard_message", lambda data: handler(
            data["room"], data["message"]["body"], data["recovered"]))

    async def start(self) -> "SlixGuardBot":
        self.client.keep_connected()
        await asyncio.wait_for(self._session.wait(), 10)
        return self

    async def stop(self) -> None:
        self.check_invariants()
        await self.guard.shutdown()
        await self.client.close()


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
