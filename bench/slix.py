"""
slixmpp in the benchmark process: a client pinned to the private Prosody,
the probe that timestamps what it receives and the self-pings it sends, and
the rejoin loop a slixmpp user writes without muc_guard.

The probe is an ``'in'`` filter added before any plugin is registered, so
it runs before muc_guard's filter (slixmpp runs filters in the order they
were added; ``add_filter(order=0)`` appends), plus a wrapper around
``xmpp.send``, the call every stanza goes through on its way to the send
queue. It keys rooms by bare aioxmpp JID, like :class:`bench.common.Probe`,
so that the scenarios measure both front-ends with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aioxmpp
import slixmpp
import slixmpp.exceptions
from slixmpp.plugins.xep_0410 import PingStatus

from .botproc_slix import is_self_ping, plain_tcp_client
from .common import PASSWORD, Events, ProbeRecords, SendTimes

log = logging.getLogger("bench.slix")

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class JIDCache:
    """slixmpp JID text -> aioxmpp JID, parsed once per distinct text."""

    def __init__(self) -> None:
        self._jids: dict[str, aioxmpp.JID] = {}

    def __call__(self, text: Any) -> aioxmpp.JID:
        text = str(text)
        jid = self._jids.get(text)
        if jid is None:
            jid = self._jids[text] = aioxmpp.JID.fromstr(text)
        return jid


def self_presence_codes(xml: Any) -> set[str]:
    """The status codes of a MUC presence (as text)."""
    x = xml.find(f"{{{MUC_USER_NS}}}x")
    if x is None:
        return set()
    return {status.get("code", "") for status in x.findall(f"{{{MUC_USER_NS}}}status")}


class SlixProbe(ProbeRecords):
    """:class:`bench.common.Probe` for a slixmpp client."""

    def __init__(self, xmpp: slixmpp.ClientXMPP) -> None:
        super().__init__()
        self.xmpp = xmpp
        self.jid = JIDCache()
        ns = xmpp.default_ns
        self._ns = ns
        self._presence_tag = f"{{{ns}}}presence"
        self._message_tag = f"{{{ns}}}message"
        self._iq_tag = f"{{{ns}}}iq"
        #: id of a self-ping in flight -> its record
        self._in_flight: dict[str, Any] = {}
        xmpp.add_filter("in", self._inbound)
        original = xmpp.send

        def send(data: Any, *args: Any, **kwargs: Any) -> None:
            if not isinstance(data, str) and is_self_ping(data, ns):
                self._in_flight[data.xml.get("id", "")] = self.ping_sent(
                    self.jid(data.xml.get("to", "")))
            original(data, *args, **kwargs)

        xmpp.send = send  # type: ignore[method-assign]

    def _inbound(self, stanza: Any) -> Any:
        xml = stanza.xml
        sender = xml.get("from")
        if not sender:
            return stanza
        now = time.monotonic()
        tag = xml.tag
        if tag == self._iq_tag:
            record = self._in_flight.pop(xml.get("id", ""), None)
            if record is not None:
                record.answered = now
                if xml.get("type") == "error":
                    record.condition = self._condition(xml)
                else:
                    self.last_rx[record.to.bare()] = now
            return stanza
        if tag not in (self._presence_tag, self._message_tag):
            return stanza
        room = self.jid(sender.partition("/")[0])
        self.last_rx[room] = now
        if tag == self._presence_tag and "110" in self_presence_codes(xml):
            kind = xml.get("type")
            if kind in (None, "unavailable"):
                self.self_presence(room, kind is None, now)
        return stanza

    def _condition(self, xml: Any) -> str:
        error = xml.find(f"{{{self._ns}}}error")
        if error is not None:
            for child in error:
                if child.tag.startswith(f"{{{STANZAS_NS}}}") and not child.tag.endswith("}text"):
                    return child.tag.rpartition("}")[2]
        return "?"


def hook_send_times(xmpp: slixmpp.ClientXMPP, times: SendTimes) -> SendTimes:
    """Fill `times` from ``xmpp.send``: self-pings, and join presences."""
    ns = xmpp.default_ns
    presence_tag = f"{{{ns}}}presence"
    join_tag = f"{{{MUC_NS}}}x"
    jid = JIDCache()
    original = xmpp.send

    def send(data: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(data, str):
            xml = data.xml
            if is_self_ping(data, ns):
                times.pings.append(time.monotonic())
            elif (xml.tag == presence_tag and xml.get("type") is None
                  and xml.find(join_tag) is not None):
                room = jid(xml.get("to", "").partition("/")[0])
                times.joins.setdefault(room, []).append(time.monotonic())
        original(data, *args, **kwargs)

    xmpp.send = send  # type: ignore[method-assign]
    return times


class SlixClient:
    """A slixmpp client on the bench's Prosody: plain TCP to 127.0.0.1 (the
    bench's aioxmpp clients use plain TCP too), SCRAM without TLS, no DNS.
    The probe is installed before any plugin."""

    def __init__(self, ctx: Any, jid: aioxmpp.JID, resource: str) -> None:
        self.server = ctx.server
        xmpp = plain_tcp_client(f"{jid.bare()}/{resource}", PASSWORD)
        self.xmpp = xmpp
        self.probe = SlixProbe(xmpp)
        xmpp.register_plugin("xep_0045")
        self.muc = xmpp.plugin["xep_0045"]
        self.guard: Any = None
        self._started = asyncio.Event()
        xmpp.add_event_handler("session_start", lambda _: self._started.set())
        ctx.on_cleanup(self.stop)

    def add_guard(self, **pconfig: Any) -> Any:
        import muc_guard.slixmpp

        self.xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
        self.guard = self.xmpp.plugin["muc_guard"]
        return self.guard

    async def connect(self, timeout: float = 30.0) -> None:
        self.xmpp.connect(host=self.server.host, port=self.server.port)
        await asyncio.wait_for(self._started.wait(), timeout)

    def post(self, room: aioxmpp.JID, body: str) -> None:
        self.xmpp.send_message(mto=str(room), mbody=body, mtype="groupchat")

    async def stop(self) -> None:
        if self.guard is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.guard.shutdown(), 30)
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)
        except (asyncio.TimeoutError, ConnectionError):
            self.xmpp.abort()
        # slixmpp cancels its send-queue task only in __del__, which a
        # reference cycle delays until asyncio reports it destroyed pending
        sending = getattr(self.xmpp, "_run_out_filters", None)
        if sending is not None:
            sending.cancel()


class RejoinLoop:
    """The best a slixmpp user writes alone: slixmpp's ``xep_0410`` self-ping
    (``enable_self_ping``) at `interval`, and on an unavailable self-presence
    (``muc::<room>::self-presence``) or a self-ping that says we are out
    (``muc_ping_changed`` to DISCONNECTED): ``join_muc_wait`` again at once,
    then with a doubling backoff between failed attempts. The self-ping is
    restarted after each rejoin: ``muc_ping_changed`` only fires on a change,
    so a second drop would go unnoticed otherwise.

    Records ``dropped`` (the self-presence or the ping result came in) and
    ``rejoined`` (``join_muc_wait`` returned) in `events`."""

    BACKOFF = (0.5, 30.0)

    def __init__(self, client: SlixClient, events: Events, interval: float | None,
                 timeout: float) -> None:
        self.client = client
        self.xmpp = client.xmpp
        self.events = events
        self.interval = interval
        self.timeout = timeout
        #: room (bare JID text) -> our nick
        self.wanted: dict[str, str] = {}
        self._rejoining: set[str] = set()
        if interval is not None:
            self.xmpp.register_plugin("xep_0410")
            self.xmpp.add_event_handler("muc_ping_changed", self._ping_changed)

    async def join(self, room: aioxmpp.JID, nick: str) -> None:
        key = str(room)
        self.wanted[key] = nick
        self.xmpp.add_event_handler(f"muc::{key}::self-presence",
                                    lambda pr, key=key: self._self_presence(key, pr))
        await self._join(key)

    async def _join(self, key: str) -> None:
        nick = self.wanted[key]
        await self.client.muc.join_muc_wait(slixmpp.JID(key), nick, maxchars=0, timeout=30)
        if self.interval is not None:
            self.xmpp.plugin["xep_0410"].enable_self_ping(
                slixmpp.JID(f"{key}/{nick}"), interval=self.interval, timeout=self.timeout)

    def _self_presence(self, key: str, presence: Any) -> None:
        if presence["type"] == "unavailable" and 303 not in presence["muc"]["status_codes"]:
            self._dropped(key)

    def _ping_changed(self, data: dict[str, Any]) -> None:
        if data["result"] is PingStatus.DISCONNECTED:
            self._dropped(str(data["key"][0].bare))

    def _dropped(self, key: str) -> None:
        if key not in self.wanted or key in self._rejoining:
            return
        self.events.add("dropped", self.client.probe.jid(key))
        if self.interval is not None:
            nick = self.wanted[key]
            self.xmpp.plugin["xep_0410"].disable_self_ping(slixmpp.JID(f"{key}/{nick}"))
        self._rejoining.add(key)
        asyncio.ensure_future(self._rejoin(key))

    async def _rejoin(self, key: str) -> None:
        delay = self.BACKOFF[0]
        try:
            while key in self.wanted:
                try:
                    await self._join(key)
                except (slixmpp.exceptions.PresenceError, asyncio.TimeoutError) as exc:
                    log.info("%s: rejoin failed (%r); again in %g s", key, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, self.BACKOFF[1])
                    continue
                self.events.add("rejoined", self.client.probe.jid(key))
                return
        finally:
            self._rejoining.discard(key)
