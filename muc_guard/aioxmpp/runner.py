"""
Running the core's commands with aioxmpp.

Each :mod:`command <muc_guard.core.commands>` has one method here: a join is
a :meth:`aioxmpp.MUCClient.join` with our own watchdog, a self-ping an IQ,
a timer ``loop.call_at``, a signal one of the owner's ``on_*`` signals. What
a command's I/O returns goes back to the core as an event
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
import time
from collections.abc import Callable
from typing import Any

import aioxmpp
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.ping

from ..core import commands as cmd
from ..core.continuity import Position, recover_since
from ..core.events import (
    ArchiveRead,
    ArchivedMessage,
    ArchiveSupport,
    Event,
    JoinFailed,
    JoinFailure,
    JoinSucceeded,
    PingReplied,
    TimerFired,
    TimerKind,
)
from ..core.guard import GuardCore
from ..core.record import RoomRecord
from ..errors import GaveUpError, GuardError, RoomLeftError
from . import mam
from .facts import body_text, error_condition, error_type, stanza_id_of
from .instant import CreationWatch, settle_created_room
from .recovery import read_archive
from .unhook import unhook_room

__all__ = ["CommandRunner", "RoomIO", "GuardError", "RoomLeftError", "GaveUpError"]

logger = logging.getLogger("muc_guard")

#: Long enough that aioxmpp's own MUC self-ping never fires.
_NEVER = 10 * 365 * 24 * 3600.0
_PING = TimerKind.PING


class _JoinTimeout(Exception):
    pass


class _ExitedDuringJoin(Exception):
    pass


class RoomIO:
    """One room's aioxmpp handles (on ``rec.io``)."""

    __slots__ = ("room", "task", "ping_task", "ping_timer", "timers", "waiters")

    def __init__(self) -> None:
        self.room: aioxmpp.muc.Room | None = None
        #: the join attempt, probe or archive read in flight
        self.task: asyncio.Task[None] | None = None
        self.ping_task: asyncio.Task[None] | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        #: the room's other timers, by kind; None while none is armed
        self.timers: dict[TimerKind, asyncio.TimerHandle] | None = None
        #: futures of join() callers; None while nobody waits (most rooms)
        self.waiters: list[asyncio.Future[Any]] | None = None


def _take_timer(io: RoomIO, kind: TimerKind) -> asyncio.TimerHandle | None:
    """Remove the room's timer of `kind` from its handles and return it."""
    if kind is _PING:
        handle, io.ping_timer = io.ping_timer, None
        return handle
    if not io.timers:
        return None
    handle = io.timers.pop(kind, None)
    if not io.timers:
        io.timers = None
    return handle


def io_of(rec: RoomRecord) -> RoomIO:
    io = rec.io
    if io is None:
        io = rec.io = RoomIO()
    assert isinstance(io, RoomIO)
    return io


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


class CommandRunner:
    """Runs commands for one :class:`~muc_guard.aioxmpp.driver.GuardDriver`."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.core: GuardCore = driver.core
        self.client: aioxmpp.Client = driver.client
        self.tasks: set[asyncio.Task[Any]] = set()
        self._pace_timer: asyncio.TimerHandle | None = None
        self._run: dict[type[Any], Callable[[Any], None]] = {
            cmd.SendJoin: self._send_join,
            cmd.CancelJoin: self._cancel_join,
            cmd.SendSelfPing: self._send_self_ping,
            cmd.SendNick: self._send_nick,
            cmd.QueryArchiveSupport: self._query_archive_support,
            cmd.ReadArchive: self._read_archive,
            cmd.ArmTimer: self._arm_timer,
            cmd.CancelTimer: self._cancel_timer,
            cmd.Detach: self._detach,
            cmd.Persist: self._persist,
            cmd.Forget: self._forget,
            cmd.Dropped: lambda c: driver.owner.on_dropped(c.rec.jid, c.cause),
            cmd.Rejoined: lambda c: driver.owner.on_rejoined(c.rec.jid, io_of(c.rec).room),
            cmd.GaveUp: lambda c: driver.owner.on_gave_up(c.rec.jid, c.cause),
            cmd.Deliver: self._deliver,
            cmd.ResolveWaiters: self._resolve_waiters,
        }

    @property
    def muc(self) -> aioxmpp.MUCClient:
        return self.driver.muc  # type: ignore[no-any-return]

    # --- the loop between core and runner -------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand the core an event and run what it says. Never raises: it
        runs in aioxmpp callbacks, whose raising listeners are disconnected."""
        try:
            commands = self.core.handle(event, asyncio.get_running_loop().time(), time.time())
        except Exception:
            logger.exception("muc_guard: error handling %r (ignored)", event)
            return
        self.run(commands)

    def run(self, commands: list[cmd.Command]) -> None:
        for command in commands:
            try:
                self._run[type(command)](command)
            except Exception:
                logger.exception("muc_guard: error running %r (ignored)", command)

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("muc_guard task failed", exc_info=task.exception())

    def _room_task(self, rec: RoomRecord, job: Callable[[Any], Any], command: Any) -> None:
        io = io_of(rec)
        if io.task is not None:
            io.task.cancel()
        io.task = self.spawn(self._room_job(rec, job, command), name=f"muc_guard {rec.jid}")

    async def _room_job(self, rec: RoomRecord, job: Callable[[Any], Any],
                        command: Any) -> None:
        """Run one room's I/O and feed its result; a finished task is half a
        KiB, so the room lets go of it at once."""
        io = io_of(rec)
        try:
            event = await job(command)
        finally:
            if io.task is asyncio.current_task():
                io.task = None
        if event is not None:
            self.feed(event)

    # --- joins ----------------------------------------------------------------------

    def _send_join(self, c: cmd.SendJoin) -> None:
        self._room_task(c.rec, self._join, c)

    def _cancel_join(self, c: cmd.CancelJoin) -> None:
        io = c.rec.io
        if isinstance(io, RoomIO) and io.task is not None:
            io.task.cancel()
            io.task = None

    def _history(self, c: cmd.SendJoin) -> aioxmpp.muc.xso.History:
        since = None if c.archive else self._since(c.rec, c.position_ts, c.last_joined)
        if since is None:
            return aioxmpp.muc.xso.History(maxchars=0, maxstanzas=0)
        return aioxmpp.muc.xso.History(since=since)

    def _since(self, rec: RoomRecord, position_ts: float | None,
               last_joined: float | None) -> datetime.datetime | None:
        clock, domain = self.driver.clock, rec.service
        joined = clock.to_server(last_joined, domain) if last_joined is not None else None
        since = recover_since(position_ts, joined, clock.now(domain))
        if since is None:
            return None
        return datetime.datetime.fromtimestamp(since, tz=datetime.timezone.utc)

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

    # --- self-pings -----------------------------------------------------------------

    def _send_self_ping(self, c: cmd.SendSelfPing) -> None:
        if c.probe:
            self._room_task(c.rec, self._self_ping, c)
            return
        io = io_of(c.rec)
        io.ping_task = self.spawn(self._ping_job(c, io))

    async def _ping_job(self, c: cmd.SendSelfPing, io: RoomIO) -> None:
        try:
            event = await self._self_ping(c)
        finally:
            if io.ping_task is asyncio.current_task():
                io.ping_task = None
        self.feed(event)

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

    # --- nicks, archives --------------------------------------------------------------

    def _send_nick(self, c: cmd.SendNick) -> None:
        if not c.explicit:   # an explicit one is awaited by set_nick() itself
            self.spawn(self.driver.send_nick(c.rec, c.nick, explicit=False))

    def _query_archive_support(self, c: cmd.QueryArchiveSupport) -> None:
        if c.attempt:
            self._room_task(c.rec, self._archive_support, c)
        else:
            self.spawn(self._feed_later(c))

    async def _feed_later(self, c: cmd.QueryArchiveSupport) -> None:
        self.feed(await self._archive_support(c))

    async def _archive_support(self, c: cmd.QueryArchiveSupport) -> ArchiveSupport:
        found = await mam.archive_advertised(
            self.client, c.rec.jid, timeout=min(self.core.settings.join_timeout, 10.0))
        return ArchiveSupport(c.rec.jid, found, c.attempt)

    def _read_archive(self, c: cmd.ReadArchive) -> None:
        self._room_task(c.rec, self._archive_read, c)

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
                           server_now=self.driver.clock.now(rec.service))

    # --- timers ---------------------------------------------------------------------

    def _arm_timer(self, c: cmd.ArmTimer) -> None:
        loop = asyncio.get_running_loop()
        rec, kind = c.rec, c.kind
        if rec is None:
            if self._pace_timer is not None:
                self._pace_timer.cancel()
            self._pace_timer = loop.call_at(c.at, self._fired, None, kind)
            return
        io = io_of(rec)
        handle = loop.call_at(c.at, self._fired, rec.jid, kind)
        if kind is _PING:
            if io.ping_timer is not None:
                io.ping_timer.cancel()
            io.ping_timer = handle
            return
        if io.timers is None:
            io.timers = {}
        old = io.timers.pop(kind, None)
        if old is not None:
            old.cancel()
        io.timers[kind] = handle

    def _cancel_timer(self, c: cmd.CancelTimer) -> None:
        rec = c.rec
        if rec is None:
            if self._pace_timer is not None:
                self._pace_timer.cancel()
                self._pace_timer = None
            return
        handle = _take_timer(io_of(rec), c.kind)
        if handle is not None:
            handle.cancel()

    def _fired(self, room: aioxmpp.JID | None, kind: TimerKind) -> None:
        if room is None:
            self._pace_timer = None
        else:
            rec = self.core.rooms.get(room)
            if rec is not None and isinstance(rec.io, RoomIO):
                _take_timer(rec.io, kind)
        self.feed(TimerFired(room, kind))

    def stop(self, rec: RoomRecord) -> None:
        """Cancel everything of one room (left, or the guard closes)."""
        io = rec.io
        if not isinstance(io, RoomIO):
            return
        for handle in [io.ping_timer, *(io.timers or {}).values()]:
            if handle is not None:
                handle.cancel()
        io.ping_timer, io.timers = None, None
        for task in (io.task, io.ping_task):
            if task is not None:
                task.cancel()
        io.task = io.ping_task = None

    def stop_all(self) -> None:
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        for rec in self.core.rooms.values():
            self.stop(rec)

    # --- store, signals, waiters ------------------------------------------------------

    def _persist(self, c: cmd.Persist) -> None:
        writer = self.driver.writer
        if writer is not None and self.core.rooms.get(c.rec.jid) is c.rec:
            writer.mark(c.rec, now=c.now)

    def _forget(self, c: cmd.Forget) -> None:
        if self.driver.writer is not None:
            self.driver.writer.mark_deleted(c.rec.jid)

    def _deliver(self, c: cmd.Deliver) -> None:
        writer = self.driver.writer
        if writer is not None:
            writer.mark(c.rec, lazy=True)
        self.driver.owner.on_message(c.rec.jid, c.message, recovered=c.recovered, own=c.own)

    def _resolve_waiters(self, c: cmd.ResolveWaiters) -> None:
        io = c.rec.io
        if not isinstance(io, RoomIO) or not io.waiters:
            if isinstance(io, RoomIO):
                io.waiters = None
            return
        waiters, io.waiters = io.waiters, None
        error: BaseException | None
        if c.joined:
            error = None
        elif c.exception is not None:
            error = c.exception
        elif c.error == "left":
            error = RoomLeftError(f"{c.rec.jid} was left")
        elif c.error == "gave-up" and c.cause is not None:
            error = GaveUpError(c.rec.jid, c.cause)
        elif c.error == "refused":
            error = GuardError(f"{c.rec.jid}: join refused")
        else:
            error = ConnectionError("muc_guard shut down")
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(io.room)
            else:
                waiter.set_exception(error)


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
