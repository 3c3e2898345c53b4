"""
Running the core's commands: the part that is the same for every library.

Each :mod:`command <muc_guard.core.commands>` has one method. The ones here
need no XMPP library: timers (``loop.call_at``), the one task per room that
runs its join, probe or archive read, the store's marks, the futures of
waiting ``join()`` calls. A front-end's ``CommandRunner`` subclasses
:class:`BaseRunner` and adds the I/O: ``_join``, ``_self_ping``,
``_archive_support``, ``_archive_read``, ``_detach`` and the user signals
(``_dropped``, ``_rejoined``, ``_gave_up``, ``_gap``, ``_hand_over``). What the I/O
returns goes back to the core as an event (:meth:`BaseRunner.feed`), naming
the attempt the command carried, so a late answer is ignored there.

The per-room handles live in a :class:`RoomIO` (or a front-end's subclass)
on the record (``rec.io``); the core never reads it.

Every drop, rejoin, give-up and gap is logged here, once for both
front-ends, as one line on the ``muc_guard.events`` logger with its facts in
``extra=`` fields (``muc_event``, ``muc_account``, ``muc_room``,
``muc_cause``, ``muc_status``, ``muc_reason``, ``muc_outage_seconds``,
``muc_attempts``, ``muc_gap_since``, ``muc_gap_until``), so that a JSON log handler picks them
up; then the front-end's signal fires.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from ..core import commands as cmd
from ..core.continuity import recover_since
from ..core.events import ArchiveRead, ArchiveSupport, Event, PingReplied, TimerFired, TimerKind
from ..core.guard import GuardCore
from ..core.record import RoomRecord
from ..errors import GaveUpError, GuardError, RoomLeftError

__all__ = ["BaseRunner", "RoomIO", "io_of"]

logger = logging.getLogger("muc_guard")
#: one structured line per drop, rejoin, give-up and gap (see the module docs)
events_logger = logging.getLogger("muc_guard.events")

_PING = TimerKind.PING


class RoomIO:
    """One room's handles (on ``rec.io``); front-ends add their own slots."""

    __slots__ = ("task", "ping_task", "ping_timer", "timers", "waiters")

    def __init__(self) -> None:
        #: the join attempt, probe or archive read in flight
        self.task: asyncio.Task[None] | None = None
        self.ping_task: asyncio.Task[None] | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        #: the room's other timers, by kind; None while none is armed
        self.timers: dict[TimerKind, asyncio.TimerHandle] | None = None
        #: futures of join() callers; None while nobody waits (most rooms)
        self.waiters: list[asyncio.Future[Any]] | None = None


def io_of(rec: RoomRecord, kind: type[RoomIO]) -> Any:
    """The room's handles, made on first use."""
    io = rec.io
    if io is None:
        io = rec.io = kind()
    assert isinstance(io, kind)
    return io


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


class BaseRunner:
    """Runs the core's commands for one driver; subclasses do the I/O."""

    #: the front-end's RoomIO class
    io_type: type[RoomIO] = RoomIO

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.core: GuardCore = driver.core
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
            cmd.Dropped: self._run_dropped,
            cmd.Rejoined: self._run_rejoined,
            cmd.GaveUp: self._run_gave_up,
            cmd.Gap: self._run_gap,
            cmd.Deliver: self._deliver,
            cmd.ResolveWaiters: self._resolve_waiters,
        }

    def io_of(self, rec: RoomRecord) -> Any:
        return io_of(rec, self.io_type)

    # --- what a front-end does with its library ----------------------------------------

    async def _join(self, c: cmd.SendJoin) -> Event | None:
        raise NotImplementedError

    async def _self_ping(self, c: cmd.SendSelfPing) -> PingReplied:
        """XEP-0410: ping our own occupant JID; never raises."""
        raise NotImplementedError

    async def _archive_support(self, c: cmd.QueryArchiveSupport) -> ArchiveSupport:
        raise NotImplementedError

    async def _archive_read(self, c: cmd.ReadArchive) -> ArchiveRead:
        raise NotImplementedError

    def _detach(self, c: cmd.Detach) -> None:
        """The library must forget the room (we are no longer in it)."""
        raise NotImplementedError

    def _dropped(self, c: cmd.Dropped) -> None:
        raise NotImplementedError

    def _rejoined(self, c: cmd.Rejoined) -> None:
        raise NotImplementedError

    def _gave_up(self, c: cmd.GaveUp) -> None:
        raise NotImplementedError

    def _gap(self, c: cmd.Gap) -> None:
        raise NotImplementedError

    def _hand_over(self, c: cmd.Deliver) -> None:
        """The user's message signal."""
        raise NotImplementedError

    def public_jid(self, key: Hashable) -> Any:
        """The room's JID as the user gets it in events and errors."""
        return key

    def joined_value(self, rec: RoomRecord, io: Any) -> Any:
        """What a waiting ``join()`` returns."""
        raise NotImplementedError

    # --- the loop between core and runner -------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand the core an event and run what it says. Never raises: it runs
        in library callbacks (aioxmpp disconnects a raising listener)."""
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
        io = self.io_of(rec)
        if io.task is not None:
            io.task.cancel()
        io.task = self.spawn(self._room_job(rec, job, command), name=f"muc_guard {rec.jid}")

    async def _room_job(self, rec: RoomRecord, job: Callable[[Any], Any],
                        command: Any) -> None:
        """Run one room's I/O and feed its result; a finished task is half a
        KiB, so the room lets go of it at once."""
        io = self.io_of(rec)
        try:
            event = await job(command)
        finally:
            if io.task is asyncio.current_task():
                io.task = None
        if event is not None:
            self.feed(event)

    # --- signals, with their log line ----------------------------------------------

    def _log_event(self, level: int, event: str, rec: RoomRecord, text: str,
                   *args: Any, **fields: Any) -> None:
        if not events_logger.isEnabledFor(level):
            return
        extra = {"muc_event": event, "muc_account": self.driver.account,
                 "muc_room": str(rec.jid)}
        extra.update(("muc_" + key, value) for key, value in fields.items())
        events_logger.log(level, "%s: " + text, rec.jid, *args, extra=extra)

    def _run_dropped(self, c: cmd.Dropped) -> None:
        self._log_event(logging.WARNING, "dropped", c.rec, "dropped (%s%s)", c.cause.value,
                        f": {c.reason}" if c.reason else "", cause=c.cause.value,
                        status=c.reason)
        self._dropped(c)

    def _run_rejoined(self, c: cmd.Rejoined) -> None:
        outage = c.downtime
        self._log_event(logging.INFO, "rejoined", c.rec, "rejoined as %r%s after %d attempt(s)",
                        c.rec.nick, f" after {outage:.1f} s out" if outage is not None else "",
                        c.attempts,
                        cause=c.rec.last_cause.value if c.rec.last_cause and outage is not None
                        else None,
                        outage_seconds=outage, attempts=c.attempts)
        self._rejoined(c)

    def _run_gave_up(self, c: cmd.GaveUp) -> None:
        rec = c.rec
        outage = time.time() - rec.out_since if rec.out_since is not None else None
        self._log_event(logging.WARNING, "gave_up", rec, "gave up (%s)", c.cause.value,
                        cause=c.cause.value, outage_seconds=outage, attempts=c.attempts)
        self._gave_up(c)

    def _run_gap(self, c: cmd.Gap) -> None:
        self._log_event(logging.WARNING, "gap", c.rec,
                        "messages from %s to %s are lost (%s)", _iso(c.since), _iso(c.until),
                        c.reason.value, reason=c.reason.value, gap_since=c.since,
                        gap_until=c.until, outage_seconds=c.until - c.since)
        self._gap(c)

    # --- joins ----------------------------------------------------------------------

    def _send_join(self, c: cmd.SendJoin) -> None:
        self._room_task(c.rec, self._join, c)

    def _cancel_join(self, c: cmd.CancelJoin) -> None:
        io = c.rec.io
        if isinstance(io, RoomIO) and io.task is not None:
            io.task.cancel()
            io.task = None

    def _since(self, rec: RoomRecord, position_ts: float | None,
               last_joined: float | None) -> datetime.datetime | None:
        """Where history should start, in the room's server time (None: ask
        for none)."""
        clock, domain = self.driver.clock, rec.service
        joined = clock.to_server(last_joined, domain) if last_joined is not None else None
        since = recover_since(position_ts, joined, clock.now(domain))
        if since is None:
            return None
        return datetime.datetime.fromtimestamp(since, tz=datetime.timezone.utc)

    # --- self-pings, nicks, archives ------------------------------------------------------

    def _send_self_ping(self, c: cmd.SendSelfPing) -> None:
        if c.probe:
            self._room_task(c.rec, self._self_ping, c)
            return
        io = self.io_of(c.rec)
        io.ping_task = self.spawn(self._ping_job(c, io))

    async def _ping_job(self, c: cmd.SendSelfPing, io: RoomIO) -> None:
        try:
            event = await self._self_ping(c)
        finally:
            if io.ping_task is asyncio.current_task():
                io.ping_task = None
        self.feed(event)

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

    def _read_archive(self, c: cmd.ReadArchive) -> None:
        self._room_task(c.rec, self._archive_read, c)

    # --- timers ---------------------------------------------------------------------

    def _arm_timer(self, c: cmd.ArmTimer) -> None:
        loop = asyncio.get_running_loop()
        rec, kind = c.rec, c.kind
        if rec is None:
            if self._pace_timer is not None:
                self._pace_timer.cancel()
            self._pace_timer = loop.call_at(c.at, self._fired, None, kind)
            return
        io = self.io_of(rec)
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
        handle = _take_timer(self.io_of(rec), c.kind)
        if handle is not None:
            handle.cancel()

    def _fired(self, room: Hashable | None, kind: TimerKind) -> None:
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

    # --- store, messages, waiters ------------------------------------------------------

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
        self._hand_over(c)

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
            error = GaveUpError(self.public_jid(c.rec.jid), c.cause)
        elif c.error == "refused":
            error = GuardError(f"{c.rec.jid}: join refused")
        else:
            error = ConnectionError("muc_guard shut down")
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(self.joined_value(c.rec, io))
            else:
                waiter.set_exception(error)


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc).isoformat(
        timespec="seconds")
