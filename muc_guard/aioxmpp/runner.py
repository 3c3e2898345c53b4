"""
Running the core's commands with aioxmpp.

:class:`CommandRunner` adds aioxmpp's I/O to the shared plumbing of
:class:`muc_guard.frontend.runner.BaseRunner` (timers, tasks, waiters, the
store): a join is a :meth:`aioxmpp.MUCClient.join` with our own watchdog, a
self-ping an IQ, a signal one of the owner's ``on_*`` signals. What a
command's I/O returns goes back to the core as an event
(:meth:`CommandRunner.feed`), naming the attempt the command carried.

The per-room handles (the aioxmpp Room, the task in flight, timers, the
futures of waiting ``join()`` calls) live in a :class:`RoomIO` on the
record (``rec.io``); the core never reads it. A Room the guard replaces is
released (:meth:`CommandRunner._release`): its signal connections and its
own self-ping monitor go with it, so nothing grows as rooms drop and come
back.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import aioxmpp
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.ping

from ..core import commands as cmd
from ..core.continuity import Position
from ..core.events import (
    ArchiveRead,
    ArchivedMessage,
    ArchiveSupport,
    Event,
    JoinFailed,
    JoinFailure,
    JoinSucceeded,
    PingReplied,
)
from ..core.record import RoomRecord
from ..errors import GaveUpError, GuardError, RoomLeftError
from ..frontend.runner import BaseRunner
from ..frontend.runner import RoomIO as BaseRoomIO
from ..frontend.runner import io_of as _io_of
from . import mam
from .facts import body_text, error_condition, error_type, stanza_id_of
from .instant import CreationWatch, settle_created_room
from .recovery import read_archive
from .unhook import unhook_room

__all__ = ["CommandRunner", "RoomIO", "GuardError", "RoomLeftError", "GaveUpError"]

logger = logging.getLogger("muc_guard")

#: Long enough that aioxmpp's own MUC self-ping never fires.
_NEVER = 10 * 365 * 24 * 3600.0


class _JoinTimeout(Exception):
    pass


class _ExitedDuringJoin(Exception):
    pass


class RoomIO(BaseRoomIO):
    """One room's handles (on ``rec.io``), with its aioxmpp Room."""

    __slots__ = ("room",)

    def __init__(self) -> None:
        super().__init__()
        self.room: aioxmpp.muc.Room | None = None


def io_of(rec: RoomRecord) -> RoomIO:
    return _io_of(rec, RoomIO)  # type: ignore[no-any-return]


class _Expiry:
    """The join timer: cancels the pending join, and remembers doing so."""

    __slots__ = ("fut", "fired")

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut
        self.fired = False

    def __call__(self) -> None:
        if not self.fut.done():
            self.fired = True
            self.fut.cancel()


def _cancelling() -> bool:
    """Whether the running task itself was asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class CommandRunner(BaseRunner):
    """Runs commands for one :class:`~muc_guard.aioxmpp.driver.GuardDriver`."""

    io_type = RoomIO

    def __init__(self, driver: Any) -> None:
        super().__init__(driver)
        self.client: aioxmpp.Client = driver.client

    @property
    def muc(self) -> aioxmpp.MUCClient:
        return self.driver.muc  # type: ignore[no-any-return]

    # --- signals ----------------------------------------------------------------------

    def _dropped(self, c: cmd.Dropped) -> None:
        self.driver.owner.on_dropped(c.rec.jid, c.cause)

    def _rejoined(self, c: cmd.Rejoined) -> None:
        self.driver.owner.on_rejoined(c.rec.jid, io_of(c.rec).room)

    def _gave_up(self, c: cmd.GaveUp) -> None:
        self.driver.owner.on_gave_up(c.rec.jid, c.cause)

    def _gap(self, c: cmd.Gap) -> None:
        self.driver.owner.on_gap(c.rec.jid, c.since, c.until, c.reason)

    def _hand_over(self, c: cmd.Deliver) -> None:
        self.driver.owner.on_message(c.rec.jid, c.message, recovered=c.recovered, own=c.own)

    def joined_value(self, rec: RoomRecord, io: Any) -> Any:
        return io.room

    # --- joins ----------------------------------------------------------------------

    def _history(self, c: cmd.SendJoin) -> aioxmpp.muc.xso.History:
        since = None if c.archive else self._since(c.rec, c.position_ts, c.last_joined)
        if since is None:
            return aioxmpp.muc.xso.History(maxchars=0, maxstanzas=0)
        return aioxmpp.muc.xso.History(since=since)

    async def _join(self, c: cmd.SendJoin) -> Event | None:
        rec, jid = c.rec, c.rec.jid
        io = io_of(rec)
        room: aioxmpp.muc.Room | None = None
        try:
            await self.driver.clock.learn(rec.service)   # once per stream and service
            self._release(rec)
            room, fut = self.muc.join(jid, c.nick, password=c.password,
                                      history=self._history(c), autorejoin=False)
            io.room = room
            creation = CreationWatch(room)
            # One timer per attempt rather than wait_for(shield()): two futures
            # and a callback fewer per join, a thousand times over at a restart.
            expiry = _Expiry(fut)
            timer = asyncio.get_running_loop().call_later(
                self.core.settings.join_timeout, expiry)
            try:
                # Cancelling fut (on expiry, or when we are cancelled) makes
                # MUCClient forget the pending join and send an unjoin.
                await fut
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                if expiry.fired:
                    raise _JoinTimeout() from None
                raise _ExitedDuringJoin() from None   # aioxmpp dropped the join
            finally:
                timer.cancel()
            if creation.created:    # 201: the room had vanished (see instant.py)
                await settle_created_room(self.muc, jid, rejoin=c.rejoin,
                                          timeout=self.core.settings.join_timeout)
            if not room.muc_joined:
                raise _ExitedDuringJoin()   # removed again before the join completed
        except asyncio.CancelledError:
            self._let_go(io, room)
            raise
        except Exception as exc:
            self._let_go(io, room)
            return _join_failed(c, exc)
        assert room is not None
        _quiet_builtin_self_ping(room)
        me = room.me
        return JoinSucceeded(jid, c.attempt, me.nick if me is not None else None)

    def _release(self, rec: RoomRecord) -> None:
        """Make MUCClient forget a Room the server no longer has us in.

        aioxmpp has no public way to do this; Room._disconnect() is what it
        uses itself on stream loss: it fires on_exit(DISCONNECTED) and drops
        the Room from MUCClient's bookkeeping, so the next join() starts fresh.
        """
        try:
            room = self.muc.get_muc(rec.jid)
        except KeyError:
            return
        if room.muc_joined:
            room._disconnect()
            unhook_room(room, self.muc)

    def _let_go(self, io: RoomIO, room: aioxmpp.muc.Room | None) -> None:
        """A Room we are done with: MUCClient's, once it let it go, is freed
        (aioxmpp would keep it alive for good: see unhook.py)."""
        if io.room is room:
            io.room = None
        unhook_room(room, self.muc)

    def _detach(self, c: cmd.Detach) -> None:
        io = io_of(c.rec)
        if io.ping_task is not None:
            io.ping_task.cancel()
            io.ping_task = None
        self._release(c.rec)
        self._let_go(io, io.room)

    # --- self-pings, archives ---------------------------------------------------------

    async def _self_ping(self, c: cmd.SendSelfPing) -> PingReplied:
        """XEP-0410: ping our own occupant JID."""
        jid: Any = c.rec.jid     # an aioxmpp.JID: this front-end made the record
        try:
            await self.client.send(
                aioxmpp.IQ(to=jid.replace(resource=c.nick), type_=aioxmpp.IQType.GET,
                           payload=aioxmpp.ping.Ping()),
                timeout=c.timeout,
            )
        except TimeoutError:
            return PingReplied(jid, c.attempt, timed_out=True)
        except aioxmpp.errors.XMPPError as exc:
            return PingReplied(jid, c.attempt, error_condition(exc))
        except (ConnectionError, aioxmpp.errors.StreamError):
            return PingReplied(jid, c.attempt, aborted=True)
        except Exception:
            # Whatever went wrong, this room must keep being watched.
            logger.exception("%s: self-ping failed; treating it as no reply", jid)
            return PingReplied(jid, c.attempt, timed_out=True)
        return PingReplied(jid, c.attempt)

    async def _archive_support(self, c: cmd.QueryArchiveSupport) -> ArchiveSupport:
        found = await mam.archive_advertised(
            self.client, c.rec.jid, timeout=min(self.core.settings.join_timeout, 10.0))
        return ArchiveSupport(c.rec.jid, found, c.attempt)

    async def _archive_read(self, c: cmd.ReadArchive) -> ArchiveRead:
        rec, settings = c.rec, self.core.settings
        read = await read_archive(
            self.client, rec.jid, Position(c.after_id, c.position_ts),
            self._since(rec, c.position_ts, c.last_joined),
            page_size=settings.archive_page_size, limit=c.limit,
            timeout=settings.join_timeout)
        found = []
        for item in read.found:
            message = item.message
            sender = message.from_
            found.append(ArchivedMessage(
                message, item.archive_id, item.timestamp.timestamp(),
                stanza_id_of(message, rec.jid),
                (sender.resource or "") if sender is not None else "", body_text(message)))
        error = None if read.error is None or read.retry else str(read.error)
        return ArchiveRead(rec.jid, c.attempt, tuple(found), complete=read.complete,
                           retry=read.retry, lost_stream=read.lost_stream, error=error,
                           server_now=self.driver.clock.now(rec.service),
                           expired=read.expired)


def _join_failed(c: cmd.SendJoin, exc: Exception) -> JoinFailed:
    """What ended a join attempt, as the core reads it."""
    jid, attempt = c.rec.jid, c.attempt
    if isinstance(exc, aioxmpp.errors.XMPPError):
        return JoinFailed(jid, attempt, JoinFailure.ERROR, error_condition(exc),
                          error_type(exc), exc)
    if isinstance(exc, _JoinTimeout):
        return JoinFailed(jid, attempt, JoinFailure.TIMEOUT)
    if isinstance(exc, _ExitedDuringJoin):
        return JoinFailed(jid, attempt, JoinFailure.EXITED)
    if isinstance(exc, ConnectionError):
        return JoinFailed(jid, attempt, JoinFailure.CONNECTION)
    # A bug or an aioxmpp surprise must not leave the room stuck.
    logger.error("%s: join attempt failed unexpectedly, will retry", jid, exc_info=exc)
    return JoinFailed(jid, attempt, JoinFailure.CRASH)


def _quiet_builtin_self_ping(room: aioxmpp.muc.Room) -> None:
    """Switch off aioxmpp's own MUC self-ping: it would cycle the room behind
    our back and ignore errors on that rejoin (room stuck in JOIN_PRESENCE).

    Its timers are re-armed on every stanza from the room (two timers
    cancelled and two scheduled per message); with no limits, its
    AlivenessMonitor arms none. The limits also stay off if aioxmpp
    enables the monitor again (it copies them from _soft/_hard_timeout)."""
    monitor: Any = getattr(room, "_monitor", None)
    if monitor is None:
        return
    try:
        monitor._soft_timeout = monitor._hard_timeout = None
        monitor._monitor.deadtime_soft_limit = None
        monitor._monitor.deadtime_hard_limit = None
    except AttributeError:  # pragma: no cover - a future aioxmpp may differ
        try:
            monitor.soft_timeout = datetime.timedelta(seconds=_NEVER)
            monitor.hard_timeout = datetime.timedelta(seconds=_NEVER)
        except Exception:
            logger.debug("cannot quiet aioxmpp's self-ping", exc_info=True)
