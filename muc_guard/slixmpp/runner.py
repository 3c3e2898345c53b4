"""
Running the core's commands with slixmpp.

The slixmpp twin of :mod:`muc_guard.aioxmpp.runner`: one method per
:mod:`command <muc_guard.core.commands>`, and what a command's I/O returns
goes back to the core as an event (:meth:`CommandRunner.feed`) naming the
attempt the command carried.

* A join is the presence ``xep_0045`` builds (``make_join_stanza``: the
  history we ask for, the password), entered in ``xep_0045``'s own tables as
  ``join_muc_wait`` does, so that slixmpp's ``muc::<room>::*`` events and
  ``rooms`` stay right. We do not await ``join_muc_wait`` itself: it only
  sees error presences that echo ``<x xmlns='…muc'/>``, takes an unavailable
  self-presence for success, waits for the subject after the self-presence
  (up to twice its timeout), and leaves the room in its table whatever
  happens. The driver resolves our own :class:`JoinWait` from the presences
  it reads anyway.
* A self-ping is a raw ``<iq type='get'><ping/></iq>`` to our occupant JID
  (the ``ping`` stanza plugin of ``xep_0199``), its reply read by the core's
  XEP-0410 reader. slixmpp drops every ``schedule()`` on ``disconnected``,
  and with it the IQ timeouts: an IQ sent just before a loss would wait
  for ever. Every wait here has its own ``asyncio`` timeout.
* Signals are ``xmpp.event("muc_guard_*", data)``.

Timers, tasks, waiters and the store's marks are the shared plumbing of
:class:`muc_guard.frontend.runner.BaseRunner`. The per-room handles live in
a :class:`RoomIO` on the record (``rec.io``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout, PresenceError

from ..core import commands as cmd
from ..core.events import (
    ArchivedMessage,
    ArchiveRead,
    ArchiveSupport,
    Event,
    JoinFailed,
    JoinFailure,
    JoinSucceeded,
    PingReplied,
    TimerKind,
)
from ..core.record import RoomRecord
from ..frontend.runner import BaseRunner
from ..frontend.runner import RoomIO as BaseRoomIO
from ..frontend.runner import io_of as _io_of
from .facts import bare_and_resource, body_text, error_of, iq_error, room_jid, stanza_id_of
from .mam import read_archive

__all__ = ["CommandRunner", "RoomIO", "JoinWait", "NickWait", "STATUS_CREATED"]

logger = logging.getLogger("muc_guard")

_PING = TimerKind.PING
STATUS_CREATED = 201
NS_MAM = "urn:xmpp:mam:2"


class JoinWait:
    """The answer to one join presence, resolved by the driver from the
    presences it reads: ("joined", nick, codes), ("error", stanza) or
    ("exited", None)."""

    __slots__ = ("nick", "future")

    def __init__(self, nick: str, future: asyncio.Future[Any]) -> None:
        self.nick = nick
        self.future = future

    def resolve(self, value: tuple[Any, ...]) -> None:
        if not self.future.done():
            self.future.set_result(value)


class NickWait:
    """The room's answer to a nick change we asked for."""

    __slots__ = ("nick", "future")

    def __init__(self, nick: str, future: asyncio.Future[Any]) -> None:
        self.nick = nick
        self.future = future


class RoomIO(BaseRoomIO):
    """One room's handles (on ``rec.io``), with the join and nick change out."""

    __slots__ = ("join", "nick")

    def __init__(self) -> None:
        super().__init__()
        #: the join presence out, waiting for the room's answer
        self.join: JoinWait | None = None
        #: the nick change out, waiting for the room's answer
        self.nick: NickWait | None = None


def io_of(rec: RoomRecord) -> RoomIO:
    return _io_of(rec, RoomIO)  # type: ignore[no-any-return]


class CommandRunner(BaseRunner):
    """Runs commands for one :class:`~muc_guard.slixmpp.driver.GuardDriver`."""

    io_type = RoomIO

    def __init__(self, driver: Any) -> None:
        super().__init__(driver)
        self.xmpp: Any = driver.xmpp

    @property
    def muc(self) -> Any:
        return self.xmpp.plugin["xep_0045"]

    # --- signals ----------------------------------------------------------------------

    def _dropped(self, c: cmd.Dropped) -> None:
        self._signal("muc_guard_dropped", room=room_jid(c.rec.jid), cause=c.cause)

    def _rejoined(self, c: cmd.Rejoined) -> None:
        self._signal("muc_guard_rejoined", room=room_jid(c.rec.jid), nick=c.rec.nick)

    def _gave_up(self, c: cmd.GaveUp) -> None:
        self._signal("muc_guard_gave_up", room=room_jid(c.rec.jid), cause=c.cause)

    def _gap(self, c: cmd.Gap) -> None:
        self._signal("muc_guard_gap", room=room_jid(c.rec.jid), since=c.since,
                     until=c.until, reason=c.reason)

    def _hand_over(self, c: cmd.Deliver) -> None:
        self.driver.deliver(c.rec, c.message, recovered=c.recovered, own=c.own)

    def public_jid(self, key: Any) -> Any:
        return room_jid(key)

    def joined_value(self, rec: RoomRecord, io: Any) -> Any:
        return rec.nick

    def _signal(self, name: str, **data: Any) -> None:
        """A user event. slixmpp catches what a handler raises (and runs
        coroutine handlers as tasks); this catches what is left."""
        try:
            self.xmpp.event(name, data)
        except Exception:
            logger.exception("muc_guard: a %s handler failed (ignored)", name)

    # --- joins ----------------------------------------------------------------------

    def _history(self, c: cmd.SendJoin) -> dict[str, Any]:
        since = None if c.archive else self._since(c.rec, c.position_ts, c.last_joined)
        if since is None:
            return {"maxchars": 0}
        return {"since": since}

    def _enter_table(self, room: JID, nick: str) -> None:
        """What ``join_muc_wait`` does to xep_0045's tables."""
        muc = self.muc
        muc.rooms[None][room] = {}
        muc.our_nicks[None][room] = nick

    def forget_table(self, key: str) -> None:
        """xep_0045 keeps a room in its tables after a kick, a lost stream or
        a failed join; we are not in it."""
        muc = self.muc
        muc.rooms[None].pop(key, None)
        muc.our_nicks[None].pop(key, None)

    def _send_join(self, c: cmd.SendJoin) -> None:
        """Send the join at once when the room's clock is known (the usual
        case: a rejoin), so it goes out in this turn, right after slixmpp's
        handlers saw the presence that dropped us; the answer is awaited by
        the room's task. The stream's first join of a service learns its
        clock first, in that task; so does a join while another task of the
        room still runs (its clean-up, on the next turn, must come first)."""
        io = io_of(c.rec)
        if self.driver.clock.learned(c.rec.service) and (io.task is None or io.task.done()):
            try:
                wait = self._start_join(c)
            except Exception:
                logger.exception("%s: join attempt failed unexpectedly, will retry", c.rec.jid)
                self.feed(JoinFailed(c.rec.jid, c.attempt, JoinFailure.CRASH))
                return
            self._room_task(c.rec, self._answer_of, (c, wait))
        else:
            self._room_task(c.rec, self._join, c)

    def _start_join(self, c: cmd.SendJoin) -> JoinWait:
        """Build and send the join presence, entered in xep_0045's tables;
        should that fail, nothing of it is left behind (then it raises)."""
        room = room_jid(c.rec.jid)
        io = io_of(c.rec)
        wait = JoinWait(c.nick, asyncio.get_running_loop().create_future())
        try:
            stanza = self.muc.make_join_stanza(room, c.nick, password=c.password,
                                               **self._history(c))
            self._enter_table(room, c.nick)
            io.join = wait
            stanza.send()
        except Exception:
            if io.join is wait:
                io.join = None
            self._abandon(c.rec.jid, c.nick, False)
            raise
        return wait

    async def _join(self, c: cmd.SendJoin) -> Event | None:
        try:
            await self.driver.clock.learn(c.rec.service)   # once per stream and service
            wait = self._start_join(c)
        except asyncio.CancelledError:
            self._abandon(c.rec.jid, c.nick, False)
            raise
        except Exception:
            logger.exception("%s: join attempt failed unexpectedly, will retry", c.rec.jid)
            return JoinFailed(c.rec.jid, c.attempt, JoinFailure.CRASH)
        return await self._answer_of((c, wait))

    async def _answer_of(self, started: tuple[cmd.SendJoin, JoinWait]) -> Event | None:
        """Wait (join_timeout) for the room's answer to a join sent."""
        c, wait = started
        rec, key = c.rec, c.rec.jid
        io = io_of(rec)
        room = room_jid(key)
        try:
            try:
                answer = await asyncio.wait_for(wait.future, self.core.settings.join_timeout)
            finally:
                if io.join is wait:
                    io.join = None
        except asyncio.CancelledError:
            self._abandon(key, c.nick, True)
            raise
        except TimeoutError:
            self._abandon(key, c.nick, True)
            return JoinFailed(key, c.attempt, JoinFailure.TIMEOUT)
        except Exception:
            logger.exception("%s: join attempt failed unexpectedly, will retry", key)
            self._abandon(key, c.nick, True)
            return JoinFailed(key, c.attempt, JoinFailure.CRASH)
        kind = answer[0]
        if kind == "error":
            presence = answer[1]
            self.forget_table(str(key))
            condition, error_type = error_of(presence.xml, self.xmpp.default_ns)
            return JoinFailed(key, c.attempt, JoinFailure.ERROR, condition, error_type,
                              PresenceError(presence))
        if kind == "exited":
            self.forget_table(str(key))
            return JoinFailed(key, c.attempt, JoinFailure.EXITED)
        nick, codes = answer[1], answer[2]
        self.muc.our_nicks[None][room] = nick
        if STATUS_CREATED in codes:
            await self._settle_created(room, rejoin=c.rejoin)
        return JoinSucceeded(key, c.attempt, nick)

    def _abandon(self, key: Any, nick: str, sent: bool) -> None:
        """A join given up (timed out, cancelled): should the room still let
        us in, leave at once rather than stay as a ghost; forget the table."""
        self.forget_table(str(key))
        if sent and self.driver.stream_up:
            try:
                self.xmpp.send_presence(pto=f"{key}/{nick}", ptype="unavailable")
            except Exception:
                logger.debug("%s: cannot send the unjoin", key, exc_info=True)

    async def _settle_created(self, room: JID, *, rejoin: bool) -> None:
        """201: our join created the room (see muc_guard.aioxmpp.instant).
        On a rejoin, accept the default configuration; never raises."""
        if not rejoin:
            logger.warning("%s: created by this join; it may stay locked to others until "
                           "configured (the bot is its owner: xep_0045.set_room_config)",
                           room)
            return
        try:
            from slixmpp.plugins.xep_0004 import Form
            form = Form()
            form["type"] = "submit"
            await asyncio.wait_for(self.muc.set_room_config(room, form),
                                   self.core.settings.join_timeout)
        except (IqError, IqTimeout, TimeoutError, ConnectionError) as exc:
            logger.warning("%s: re-created by our rejoin, but accepting its default "
                           "configuration failed (%s); it may stay locked to others",
                           room, exc)
            return
        logger.info("%s: re-created by our rejoin; accepted the default configuration",
                    room)

    def _detach(self, c: cmd.Detach) -> None:
        io = io_of(c.rec)
        if io.ping_task is not None:
            io.ping_task.cancel()
            io.ping_task = None
        self.forget_table(str(c.rec.jid))

    # --- self-pings, archives -----------------------------------------------------------------

    async def _self_ping(self, c: cmd.SendSelfPing) -> PingReplied:
        """XEP-0410: ping our own occupant JID."""
        key = c.rec.jid
        iq = self.xmpp.make_iq_get(ito=f"{key}/{c.nick}")
        iq.enable("ping")
        try:
            await self._iq(iq, c.timeout)
        except (TimeoutError, IqTimeout):
            return PingReplied(key, c.attempt, timed_out=True)
        except IqError as exc:
            return PingReplied(key, c.attempt, iq_error(exc)[0])
        except ConnectionError:
            return PingReplied(key, c.attempt, aborted=True)
        except Exception:
            logger.exception("%s: self-ping failed; treating it as no reply", key)
            return PingReplied(key, c.attempt, timed_out=True)
        return PingReplied(key, c.attempt)

    async def _iq(self, iq: Any, timeout: float) -> Any:
        """Send an IQ and wait for its reply at most `timeout` seconds, even
        across a disconnect (which cancels slixmpp's own IQ timeouts)."""
        handler = f"IqCallback_{iq['id']}"
        try:
            return await asyncio.wait_for(iq.send(timeout=timeout), timeout)
        finally:
            self.xmpp.remove_handler(handler)   # left behind by a timeout

    # --- nicks, archives --------------------------------------------------------------

    async def _archive_support(self, c: cmd.QueryArchiveSupport) -> ArchiveSupport:
        """XEP-0313 §6.1: does the room advertise urn:xmpp:mam:2? (None: no answer)."""
        key = c.rec.jid
        timeout = min(self.core.settings.join_timeout, 10.0)
        iq = self.xmpp.make_iq_get(queryxmlns="http://jabber.org/protocol/disco#info",
                                   ito=str(key))
        try:
            reply = await self._iq(iq, timeout)
        except (TimeoutError, IqTimeout, ConnectionError):
            return ArchiveSupport(key, None, c.attempt)
        except IqError as exc:
            logger.debug("%s: disco#info refused (%s)", key, iq_error(exc)[0])
            return ArchiveSupport(key, None, c.attempt)
        except Exception:
            logger.exception("%s: disco#info failed", key)
            return ArchiveSupport(key, None, c.attempt)
        features = reply.xml.iterfind(
            "{http://jabber.org/protocol/disco#info}query/"
            "{http://jabber.org/protocol/disco#info}feature")
        found = any(feature.get("var") == NS_MAM for feature in features)
        return ArchiveSupport(key, found, c.attempt)

    async def _archive_read(self, c: cmd.ReadArchive) -> ArchiveRead:
        rec, settings = c.rec, self.core.settings
        key = str(rec.jid)
        since = self._since(rec, c.position_ts, c.last_joined)
        read = await read_archive(
            self.driver, key, c.after_id, since.timestamp() if since is not None else None,
            page_size=settings.archive_page_size, limit=max(c.limit, 1),
            timeout=settings.join_timeout)
        ns = self.xmpp.default_ns
        found = []
        for item in read.found:
            xml = item.message.xml
            found.append(ArchivedMessage(
                item.message, item.archive_id, item.timestamp, stanza_id_of(xml, key),
                bare_and_resource(xml)[1], body_text(xml, ns)))
        return ArchiveRead(rec.jid, c.attempt, tuple(found), complete=read.complete,
                           retry=read.retry,
                           error=None if read.error is None or read.retry else read.error,
                           server_now=self.driver.clock.now(rec.service),
                           expired=read.expired)
