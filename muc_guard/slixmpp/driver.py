"""
The slixmpp front-end: stanzas and stream events in, the core's commands run.

The twin of :mod:`muc_guard.aioxmpp.driver`. :class:`GuardDriver` sits
beside slixmpp's ``xep_0045``:

* It reads every inbound stanza in an ``'in'`` filter, which slixmpp runs
  before any handler (``xep_0045``'s included), and reduces presences and
  messages of tracked rooms to facts (:mod:`.facts`). Per message the core
  is called directly (:meth:`GuardCore.traffic`, :meth:`GuardCore.offer`).
  A presence that may concern us becomes an event; its commands run once
  slixmpp's handlers saw the presence (a handler of ours, registered after
  ``xep_0045``'s, in the same loop turn), so ``xep_0045`` has processed it
  and fired its ``muc::<room>::*`` events first. The presences that answer a join or
  a nick change of ours resolve their waits here (:class:`~.runner.JoinWait`).
* slixmpp's stream events become stream events of the core:

  ================================  ==========================================
  slixmpp                           core
  ================================  ==========================================
  ``session_start``                 :class:`StreamUp` (a fresh session: rooms
                                    are rejoined, after a probe); preceded by
                                    :class:`StreamDown` if the old session
                                    never said it ended (see below)
  ``session_resumed`` (XEP-0198)    :class:`StreamResumed` (rooms kept)
  ``session_end``                   :class:`StreamDown`
  ``disconnected`` while up         :class:`StreamSuspended` when the session
                                    may be resumed (XEP-0198 enabled: slixmpp
                                    then fires no ``session_end``), else
                                    :class:`StreamDown`
  ================================  ==========================================

  slixmpp fires no ``session_end`` when stream management was enabled
  without resumption and the next connection binds afresh: the
  ``session_start`` that follows a suspension is therefore a StreamDown
  plus a StreamUp.
* The user's calls (``join``, ``leave``, ``set_nick``, ``open_store``)
  become requests; their waits are futures here.
* :class:`~.runner.CommandRunner` runs what the core says.

Nothing of ours raises into slixmpp: the filter and the event handlers
catch and log. (slixmpp itself survives a raising handler, unlike aioxmpp,
but an error in an ``'in'`` filter would lose the stanza for every handler.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any
from xml.etree.ElementTree import Element

from slixmpp import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase
from slixmpp.exceptions import PresenceError

from ..frontend.driver import BaseDriver, never_raises as _never_raises
from ..core.events import (
    ErrorFromRoom,
    LeaveRequested,
    NickSent,
    StreamDown,
    StreamResumed,
    StreamSuspended,
    StreamUp,
    SubjectSeen,
)
from ..core.guard import REPLAYED
from ..core.policy import NICK_CHANGE
from ..core.record import RoomInfo, RoomRecord, State
from ..store import Store
from .clock import ServerClock
from .facts import (
    STATUS_SELF,
    bare_and_resource,
    body_text,
    canonical_bare,
    check_nick,
    muc_user,
    presence_facts,
    room_jid,
    room_key,
    room_stamp_of,
    stanza_id_of,
    status_codes,
)
from .mam import MAM_NS, Reader
from .runner import CommandRunner, JoinWait, NickWait, RoomIO, io_of

__all__ = ["GuardDriver", "slixmpp_room"]

logger = logging.getLogger("muc_guard")

_JOINED = State.JOINED
_MAM_RESULT = f"{{{MAM_NS}}}result"

#: the core's stream as this driver last told it
_DOWN, _UP, _SUSPENDED = "down", "up", "suspended"


def slixmpp_room(text: str) -> tuple[Hashable, str]:
    """The store's :data:`~muc_guard.store.RoomParser` for this front-end."""
    key = room_key(text)
    return key, key.partition("@")[2]


class _Pending(MatcherBase):
    """Matches the stanza whose commands the driver holds for after its
    handlers (one attribute read per stanza otherwise)."""

    def __init__(self, driver: "GuardDriver") -> None:
        super().__init__(None)
        self._driver = driver

    def match(self, xml: Any) -> bool:
        return xml is self._driver._after_stanza


class GuardDriver(BaseDriver):
    """Keeps one slixmpp client in the rooms it wants. Owned by the plugin."""

    parse_room = staticmethod(slixmpp_room)
    check_nick = staticmethod(check_nick)

    def __init__(self, xmpp: Any) -> None:
        super().__init__()
        self.xmpp = xmpp
        #: the MUC services' clocks: positions are kept in the server's time
        self.clock = ServerClock(self)
        self.runner: CommandRunner = CommandRunner(self)
        #: the user's JID names its resource: stable_resource leaves it alone
        self._named_resource = bool(xmpp.requested_jid.resource)
        self._stream = _DOWN
        #: leave() calls waiting for the room's answer, by room key
        self._leaving: dict[str, asyncio.Future[None]] = {}
        #: archive reads under way: they take their results from the filter
        self.readers: set[Reader] = set()
        ns = xmpp.default_ns
        self._ns = ns
        self._message_tag = f"{{{ns}}}message"
        self._presence_tag = f"{{{ns}}}presence"
        self._body_tag = f"{{{ns}}}body"
        self._subject_tag = f"{{{ns}}}subject"
        self._handlers: list[tuple[str, Callable[..., Any]]] = [
            ("session_start", self._on_session_start),
            ("session_resumed", self._on_session_resumed),
            ("session_end", self._on_session_end),
            ("disconnected", self._on_disconnected),
        ]
        for name, handler in self._handlers:
            xmpp.add_event_handler(name, handler)
        xmpp.add_filter("in", self._inbound)
        #: commands of the stanza being dispatched, run once its handlers ran
        self._after: list[Any] | None = None
        self._after_stanza: Any = None
        self._after_handler = Callback("muc_guard after handlers", _Pending(self),
                                       self._run_pending)
        xmpp.register_handler(self._after_handler)
        if getattr(xmpp, "_session_started", False) and xmpp.transport is not None:
            # Already in a session: the core learns it without a loop to run in.
            self._stream = _UP
            self.core.handle(StreamUp(xmpp.boundjid.resource or None), 0.0, time.time())

    @property
    def stream_up(self) -> bool:
        return self.core.stream_up

    @property
    def account(self) -> str:
        return str(self.xmpp.boundjid.bare)

    # --- this front-end's side of BaseDriver --------------------------------------------

    def room_key(self, room: Any) -> str:
        return room_key(room)

    def service_of(self, key: Any) -> str:
        return str(key).partition("@")[2]

    def snapshot(self, rec: RoomRecord) -> RoomInfo:
        # A fresh slixmpp JID each time: they are mutable.
        return dataclasses.replace(rec.snapshot(None), jid=room_jid(rec.jid))

    def bound_resource(self) -> str | None:
        return self.xmpp.boundjid.resource or None

    async def adopt_stored_resource(self, store: Store) -> None:
        """stable_resource: bind the resource this account had last time
        (only for a client whose JID names none). A store opened before
        connect() applies to the first session; opened during one that is
        bound already, it cannot: that session's resource is kept instead,
        stored and asked for from the next connection on."""
        xmpp = self.xmpp
        stored = self._stored_resource
        if not self.settings.stable_resource or not stored or self._named_resource:
            return
        if self._stream == _UP:
            bound = xmpp.boundjid.resource
            if bound != stored:
                logger.warning("%s: stable_resource: the store was opened after this "
                               "session bound resource %r, so the stored %r does not apply "
                               "to it; %r is kept and asked for from the next connection",
                               self.account, bound, stored, bound)
                await self._remember_resource()
            return
        xmpp.requested_jid.resource = stored
        if xmpp.transport is None and not xmpp.is_connecting():
            logger.info("%s: asking for stored resource %r", self.account, stored)
        else:
            logger.info("%s: asking for stored resource %r (from the next connection "
                        "if this one is bound already)", self.account, stored)

    async def send_nick(self, rec: RoomRecord, nick: str, *, explicit: bool) -> None:
        """Ask the room for `nick` and tell the core how it went. An explicit
        request (the user's) raises the room's refusal
        (:class:`slixmpp.exceptions.PresenceError`), ConnectionError when not
        joined, TimeoutError without an answer within ping_timeout."""
        io = io_of(rec)
        loop = asyncio.get_running_loop()
        try:
            if rec.state is not _JOINED or not self.core.stream_up:
                raise ConnectionError(f"{rec.jid}: not joined")
            wait = NickWait(nick, loop.create_future())
            io.nick = wait
            try:
                self.xmpp.send_presence(pto=f"{rec.jid}/{nick}")
                answer = await asyncio.wait_for(wait.future, self.settings.ping_timeout)
            finally:
                if io.nick is wait:
                    io.nick = None
            if answer is not None:
                raise PresenceError(answer)
        except BaseException as exc:
            self.runner.feed(NickSent(rec.jid, nick, ok=False, explicit=explicit))
            if explicit or not isinstance(exc, (ConnectionError, PresenceError, TimeoutError)):
                raise
            logger.info("%s: cannot ask for nick %r: %r", rec.jid, nick, exc)
            return
        self.runner.feed(NickSent(rec.jid, nick, ok=True, explicit=explicit))

    async def leave(self, room: JID | str) -> None:
        key = room_key(room)
        rec = self.core.rooms.get(key)
        if rec is None:
            return
        io = io_of(rec)
        task = io.task
        joined = rec.state is _JOINED
        nick = rec.nick
        self._feed_now(LeaveRequested(key))
        self.runner.stop(rec)
        await self._flush()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if joined and self.core.stream_up:
            answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._leaving[key] = answer
            try:
                self.xmpp.send_presence(pto=f"{key}/{nick}", ptype="unavailable")
                await asyncio.wait_for(answer, self.settings.leave_timeout)
            except (TimeoutError, ConnectionError) as exc:
                logger.info("%s: no answer to our leave (%r); forgetting it anyway", key, exc)
            finally:
                if self._leaving.get(key) is answer:
                    del self._leaving[key]
        self.runner.forget_table(key)
        logger.info("%s: left and forgotten", key)

    def _run_after_handlers(self, stanza: Any, commands: list[Any]) -> None:
        """Run `commands` once slixmpp's handlers (xep_0045's first: it was
        registered before us) have seen the stanza being dispatched, in the
        same turn: our table changes and events come after slixmpp's own
        for that stanza, and a rejoin goes out without waiting for the next
        loop turn. Should no handler see it (a later filter dropped or
        replaced the stanza), the next loop turn runs them."""
        if self._after is not None:
            self._after.extend(commands)
            return
        self._after, self._after_stanza = list(commands), stanza
        asyncio.get_running_loop().call_soon(self._run_pending)

    def _run_pending(self, _: Any = None) -> None:
        commands, self._after, self._after_stanza = self._after, None, None
        if commands:
            self.runner.run(commands)

    def unhook(self) -> None:
        self.xmpp.remove_handler(self._after_handler.name)
        for name, handler in self._handlers:
            self.xmpp.del_event_handler(name, handler)
        try:
            self.xmpp.del_filter("in", self._inbound)
        except ValueError:
            pass

    def deliver(self, rec: RoomRecord, message: Any, *, recovered: bool, own: bool) -> None:
        """``muc_guard_message``: built only when someone listens."""
        xmpp = self.xmpp
        if not xmpp.event_handled("muc_guard_message"):
            return
        try:
            xmpp.event("muc_guard_message", {"room": room_jid(rec.jid), "message": message,
                                             "recovered": recovered, "own": own})
        except Exception:
            logger.exception("muc_guard: a muc_guard_message handler failed (ignored)")

    # --- inbound stanzas --------------------------------------------------------------

    def _record_of(self, bare: str) -> RoomRecord | None:
        """The tracked room a stanza comes from; runs for every inbound
        stanza: one str hash for the usual, already normalised ``from``."""
        rooms = self.core.rooms
        rec = rooms.get(bare)
        if rec is None and bare:
            canonical = canonical_bare(bare)
            if canonical is not None:
                rec = rooms.get(canonical)
        return rec

    def _inbound(self, stanza: Any) -> Any:
        """slixmpp's ``'in'`` filter: must return the stanza, must not raise."""
        try:
            xml = stanza.xml
            tag = xml.tag
            if tag == self._message_tag:
                self._message(stanza, xml)
            elif tag == self._presence_tag:
                self._presence(stanza, xml)
        except Exception:
            logger.exception("muc_guard: cannot inspect %r (ignored)", stanza)
        return stanza

    def _presence(self, stanza: Any, xml: Element) -> None:
        bare, resource = bare_and_resource(xml)
        rec = self._record_of(bare)
        if rec is None:
            if self._leaving:
                self._leave_answered(bare, xml)
            return
        io = rec.io
        if isinstance(io, RoomIO):
            if io.join is not None:
                self._join_answered(io.join, stanza, xml, resource)
                return   # the join attempt handles its own presences
            if io.nick is not None and resource == io.nick.nick:
                self._nick_answered(io.nick, stanza, xml)
        if not resource:
            return
        kind = xml.get("type")
        if kind == "error":
            if rec.pending_nick is None:
                return
        elif rec.state is not _JOINED:
            return
        elif kind != "unavailable" and (rec.pending_nick is None
                                        or STATUS_SELF not in status_codes(muc_user(xml))):
            # Another occupant's presence, or ours with no change pending:
            # proof of membership, and nothing else to decide.
            self.core.traffic(rec, asyncio.get_running_loop().time())
            return
        loop = asyncio.get_running_loop()
        facts = presence_facts(rec.jid, xml, self._ns, ours=(rec.nick, rec.pending_nick))
        commands = self.core.handle(facts, loop.time(), time.time())
        if commands:
            self._run_after_handlers(stanza, commands)

    @staticmethod
    def _join_answered(wait: JoinWait, stanza: Any, xml: Element, resource: str) -> None:
        kind = xml.get("type")
        if kind == "error":
            wait.resolve(("error", stanza))
            return
        if not resource:
            return
        codes = status_codes(muc_user(xml))
        if STATUS_SELF not in codes and resource != wait.nick:
            return     # another occupant, announced before our self-presence
        if kind == "unavailable":
            if NICK_CHANGE not in codes:
                wait.resolve(("exited", None))
        else:
            wait.resolve(("joined", resource, codes))

    @staticmethod
    def _nick_answered(wait: NickWait, stanza: Any, xml: Element) -> None:
        if wait.future.done():
            return
        kind = xml.get("type")
        if kind == "error":
            wait.future.set_result(stanza)
        elif kind != "unavailable":
            wait.future.set_result(None)

    def _leave_answered(self, bare: str, xml: Element) -> None:
        answer = self._leaving.get(bare) or self._leaving.get(canonical_bare(bare) or "")
        if answer is None or answer.done():
            return
        kind = xml.get("type")
        if kind == "error" or (kind == "unavailable"
                               and STATUS_SELF in status_codes(muc_user(xml))):
            answer.set_result(None)

    def _message(self, stanza: Any, xml: Element) -> None:
        bare, resource = bare_and_resource(xml)
        rec = self._record_of(bare)
        if rec is None:
            return
        if self.readers and xml.find(_MAM_RESULT) is not None:
            for reader in list(self.readers):
                if reader.offer(xml):
                    return         # an archived message, not room traffic
        kind = xml.get("type")
        if kind == "error":
            # Prosody answers a non-occupant's message with not-acceptable:
            # an error from the room is a reason to check, not proof.
            self.runner.feed(ErrorFromRoom(rec.jid))
            return
        self.core.traffic(rec, asyncio.get_running_loop().time())
        if kind == "groupchat":
            if xml.find(self._body_tag) is not None:
                self._offer(rec, stanza, xml, resource)
            elif rec.stream is not None and xml.find(self._subject_tag) is not None:
                self.runner.feed(SubjectSeen(rec.jid))

    def _offer(self, rec: RoomRecord, stanza: Any, xml: Element, nick: str) -> None:
        key = rec.jid
        assert isinstance(key, str)
        stanza_id = stanza_id_of(xml, key)
        stream = rec.stream
        room_stamp = (room_stamp_of(xml, key)
                      if stream is not None and stream.replaying else None)
        body = body_text(xml, self._ns) if stanza_id is None else None
        verdict = self.core.offer(rec, stanza, stanza_id, room_stamp, nick, body,
                                  self.clock.now(rec.service))
        if not verdict:
            return
        self.offered(verdict)
        if self.writer is not None:
            self.writer.mark(rec, lazy=True)
        self.deliver(rec, stanza, recovered=verdict == REPLAYED, own=nick == rec.nick)

    # --- stream -----------------------------------------------------------------------

    @_never_raises
    def _on_session_start(self, _: Any = None) -> None:
        if self._stream != _DOWN:
            # A suspended session that was never resumed (no session_end
            # came): the old stream is gone with its rooms.
            self._stream = _DOWN
            self.runner.feed(StreamDown(self.core.resource, "new session"))
        self._stream = _UP
        self.clock.new_stream()
        if self.settings.stable_resource:
            resource = self.xmpp.boundjid.resource
            if resource and not self._named_resource:
                # slixmpp binds requested_jid's resource: the same one on a
                # reconnect takes over a ghost of this session (aioxmpp keeps
                # its bound JID the same way).
                self.xmpp.requested_jid.resource = resource
            self.runner.spawn(self._remember_resource())
        self.runner.feed(StreamUp(self.xmpp.boundjid.resource or None))

    @_never_raises
    def _on_session_resumed(self, _: Any = None) -> None:
        self._stream = _UP
        self.runner.feed(StreamResumed())

    @_never_raises
    def _on_session_end(self, _: Any = None) -> None:
        if self._stream == _DOWN:
            return
        self._stream = _DOWN
        self.runner.feed(StreamDown(self.core.resource, "session ended"))

    @_never_raises
    def _on_disconnected(self, reason: Any = None) -> None:
        if self._stream != _UP:
            return
        text = str(reason) if reason else None
        if getattr(self.xmpp, "end_session_on_disconnect", True):
            self._stream = _DOWN
            self.runner.feed(StreamDown(self.core.resource, text))
        else:
            self._stream = _SUSPENDED   # XEP-0198: the session may be resumed
            self.runner.feed(StreamSuspended())
