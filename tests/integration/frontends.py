"""The slixmpp test bot, the twin of guardkit.Bot (aioxmpp): one interface
(guardkit.GuardedBot) over both front-ends, so a scenario runs on either.

The ``frontend`` and ``make_bot`` fixtures (tests/integration/conftest.py)
build the one a test is parametrised with.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioxmpp
import slixmpp
import slixmpp.exceptions
from slixmpp.xmlstream import ET

import muc_guard.slixmpp
from guardkit import GuardedBot, room_key

EVENTS = {"muc_guard_dropped": ("dropped", "cause"),
          "muc_guard_rejoined": ("rejoined", "nick"),
          "muc_guard_gave_up": ("gave_up", "cause")}
_PING = "{urn:xmpp:ping}ping"
_MUC_USER_STATUS = "{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}status"


class SlixBot(GuardedBot):
    """A slixmpp client with the muc_guard plugin, pinned to a test server.

    Connects as a production bot does: STARTTLS required and the server's
    certificate verified against the test CA when the server has TLS; else
    SASL (SCRAM) over plain TCP on loopback. XEP-0198 is enabled, as aioxmpp
    enables it. After a lost connection the plugin reconnects (its
    ``reconnect`` pconfig, on by default), as aioxmpp does by itself."""

    frontend = "slixmpp"
    JoinRefused: type[Exception] = slixmpp.exceptions.XMPPError

    def __init__(self, server: Any, jid: aioxmpp.JID, password: str,
                 resource: str | None = "bot", **pconfig: Any) -> None:
        super().__init__()
        self.server = server
        self.jid = jid.bare()
        full = jid.replace(resource=resource) if resource else jid.bare()
        self.xmpp = slixmpp.ClientXMPP(str(full), password)
        self.xmpp.enable_direct_tls = False
        tls = getattr(server, "tls", None)
        if tls is not None:
            self.xmpp.enable_starttls = True
            self.xmpp.enable_plaintext = False
            self.xmpp.ca_certs = tls.ca_file
        else:
            self.xmpp.enable_starttls = False
            self.xmpp.enable_plaintext = True
            mechanisms = self.xmpp.plugin["feature_mechanisms"]
            mechanisms.unencrypted_scram = True
            mechanisms.unencrypted_plain = True
        self.xmpp.register_plugin("xep_0198")
        self.xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
        self.guard = self.xmpp.plugin["muc_guard"]
        for name, (kind, field) in EVENTS.items():
            self.xmpp.add_event_handler(
                name, lambda data, kind=kind, field=field:
                self._record(kind, data["room"], data[field]))
        self.xmpp.add_event_handler("muc_guard_gap", lambda data: self._record_gap(
            data["room"], data["since"], data["until"], data["reason"]))
        self.xmpp.add_event_handler("muc_guard_message", lambda data: self._record_message(
            data["message"]["body"], data["recovered"], data["own"]))
        self._started = asyncio.Event()
        #: sessions started so far (a resumption is not a new session)
        self.sessions = 0
        self.xmpp.add_event_handler("session_start", self._on_session_start)

    def _on_session_start(self, _: Any) -> None:
        self.sessions += 1
        self._started.set()

    def _room(self, jid: Any) -> str:
        return room_key(jid)

    async def start(self) -> "SlixBot":
        self.xmpp.connect(host=self.server.host, port=self.server.port)
        await asyncio.wait_for(self._started.wait(), 15)
        return self

    async def close(self) -> None:
        """Shut the guard down and end the stream (idempotent; no checks)."""
        await self.guard.shutdown()
        if self.xmpp.transport is None:
            self.xmpp.cancel_connection_attempt()
            return
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)
        except (asyncio.TimeoutError, ConnectionError):
            self.xmpp.abort()

    async def crash(self, server: Any) -> None:
        """End as a process killed mid-stream would: the server sees the
        connection cut (no stream close, no unavailable presence), and
        nothing reconnects (the guard, which would, is shut down)."""
        await server.sever_c2s(self.bound_jid)
        await self.guard.shutdown()
        self.xmpp.abort()

    @property
    def bound_jid(self) -> aioxmpp.JID:
        return aioxmpp.JID.fromstr(self.xmpp.boundjid.full)

    @staticmethod
    def nick_of(joined: str) -> str:
        assert isinstance(joined, str)
        return joined

    def check_fresh_room(self, room: Any, before: Any, after: Any) -> None:
        """After a rejoin: the nick the signal names is the one the guard
        holds (slixmpp has no Room objects: RoomInfo.room is None)."""
        info = self.info(room)
        assert (after, info.room) == (info.nick, None)

    @staticmethod
    def condition(error: Exception) -> str:
        return error.condition

    def record_pings(self, rooms: list[Any]) -> list[str]:
        keys = {room_key(room) for room in rooms}
        pings: list[str] = []

        def record(stanza: Any) -> Any:
            xml = stanza.xml
            to = xml.get("to", "")
            if xml.tag.endswith("}iq") and xml.find(_PING) is not None \
                    and to.partition("/")[0] in keys:
                pings.append(to)
            return stanza
        self.xmpp.add_filter("out", record)
        return pings

    def record_room_presences(self) -> list[tuple[str, str, set[int]]]:
        seen: list[tuple[str, str, set[int]]] = []

        def record(stanza: Any) -> Any:
            xml: ET.Element = stanza.xml
            if xml.tag.endswith("}presence"):
                codes = {int(s.get("code", "0")) for s in xml.findall(_MUC_USER_STATUS)}
                kind = "unavailable" if xml.get("type") == "unavailable" else "available"
                seen.append((xml.get("from", ""), kind, codes))
            return stanza
        self.xmpp.add_filter("in", record)
        return seen

    @property
    def sm_enabled(self) -> bool:
        return bool(self.xmpp.plugin["xep_0198"].enabled_out)

    def stream_resumed(self) -> asyncio.Future[float]:
        resumed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler(
            "session_resumed", lambda _: resumed.done() or resumed.set_result(time.monotonic()))
        return resumed
