"""A guarded bot for integration tests: client + MUCGuard + timestamped events."""

from __future__ import annotations

import asyncio
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


class Bot:
    """One account's client with a summoned guard; records every guard signal."""

    def __init__(self, make_client: Any, jid: aioxmpp.JID, password: str,
                 server: ProsodyServer | None = None, resource: str | None = "bot") -> None:
        full = jid.replace(resource=resource) if resource else jid.bare()
        self.client = make_client(full, password, server=server)
        self.guard: muc_guard.MUCGuard = self.client.summon(muc_guard.MUCGuard)
        self.events: list[tuple[float, str, aioxmpp.JID, Any]] = []
        self._changed = asyncio.Event()
        for kind in ("dropped", "rejoined", "gave_up"):
            getattr(self.guard, f"on_{kind}").connect(self._recorder(kind))

    def _recorder(self, kind: str):
        def record(jid: aioxmpp.JID, arg: Any) -> None:
            self.events.append((time.monotonic(), kind, jid, arg))
            self._changed.set()
        return record

    async def start(self) -> "Bot":
        await connected(self.client)
        return self

    async def stop(self) -> None:
        self.check_invariants()
        await self.guard.shutdown()
        await stop_client(self.client)

    def violations(self) -> list[str]:
        """Broken invariants of the guard's rooms (muc_guard.core.invariants)."""
        return self.guard._guard.violations()

    def check_invariants(self) -> None:
        assert self.violations() == []

    def kinds(self, jid: aioxmpp.JID | None = None) -> list[str]:
        return [kind for _, kind, j, _ in self.events if jid is None or j == jid]

    async def wait_event(self, kind: str, jid: aioxmpp.JID, *, after: int = 0,
                         timeout: float = 15.0) -> tuple[float, Any]:
        """Wait for the first `kind` event for `jid` at index >= `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, k, j, arg in self.events[after:]:
                if k == kind and j == jid:
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

    def info(self, jid: aioxmpp.JID) -> muc_guard.RoomInfo:
        info = self.guard.room_info(jid)
        assert info is not None, f"{jid} not tracked"
        return info


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
