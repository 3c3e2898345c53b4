"""
GuardCore: every decision of muc_guard, and no I/O.

Motivation
==========

A guard must be right about many small things at once: which rooms are
wanted, which nick we hold, whether a removal was the room's will, when to
ping, when to rejoin, which message is new. Made inside I/O code, these
decisions end up spread over callbacks and tasks that each assume another
will finish the job, and that is where the bugs were. And a second XMPP
library (slixmpp) must get the same decisions without a copied line.

Solution
========

As h11 and h2 do for HTTP: a state machine that is told what happened and
answers what to do. A front-end hands :meth:`GuardCore.handle` an event
(:mod:`muc_guard.core.events`) with the time, and runs the commands it gets
back (:mod:`muc_guard.core.commands`) in order, reporting their results as
events. The clock and the random source are inputs (``now``, ``wall``,
``Settings.rng``), so every timing rule is tested without sleeping.

The rules live in four parts, each a small class that sees the others only
through :class:`~muc_guard.core.context.CoreContext` (the shared state, the
outgoing commands, the timers): :class:`~muc_guard.core.joins.Joiner`
(joining and rejoining), :class:`~muc_guard.core.pings.Pinger` (self-pings),
:class:`~muc_guard.core.nicks.Nicks` (our nick) and
:class:`~muc_guard.core.drops.Drops` (joined, dropped, given up). This module
is the context plus the dispatch table: requests, the stream, presences,
results and timers.

Two inputs bypass events because they come with every stanza:
:meth:`GuardCore.traffic` and :meth:`GuardCore.offer`. They allocate nothing
when nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

from .commands import (
    Command,
    Forget,
    Persist,
    QueryArchiveSupport,
    ResolveWaiters,
)
from .context import LIVE, NOT_NEW, REPLAYED, CoreContext
from .events import (
    ArchiveRead,
    ArchiveSupport,
    ErrorFromRoom,
    Event,
    JoinFailed,
    JoinRequested,
    JoinSucceeded,
    LeaveRequested,
    NickRequested,
    NickSent,
    PingReplied,
    PresenceKind,
    RoomPresence,
    StoreLoaded,
    StreamDown,
    StreamResumed,
    StreamSuspended,
    StreamUp,
    SubjectSeen,
    TimerFired,
    TimerKind,
)
from .drops import Drops
from .health import Health, build_health
from .joins import Joiner
from .nicks import Nicks
from .pings import Pinger
from .policy import Cause, classify_removal
from .record import Phase, RoomRecord, State, merge_stored
from .settings import Settings

__all__ = ["GuardCore", "STATUS_SELF", "NOT_NEW", "LIVE", "REPLAYED"]

logger = logging.getLogger("muc_guard.core")

STATUS_SELF = 110


class GuardCore(CoreContext):
    """Keeps one client in the rooms it wants, as a pure state machine."""

    joins: Joiner
    pings: Pinger
    nicks: Nicks
    drops: Drops

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.joins = Joiner(self)
        self.pings = Pinger(self)
        self.nicks = Nicks(self)
        self.drops = Drops(self)
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            JoinRequested: self._join_requested,
            LeaveRequested: self._leave_requested,
            NickRequested: self._nick_requested,
            NickSent: self._room_event(self.nicks.sent),
            StoreLoaded: self._store_loaded,
            StreamUp: self._stream_up,
            StreamDown: self._stream_down,
            StreamSuspended: self._stream_suspended,
            StreamResumed: self._stream_resumed,
            RoomPresence: self._room_event(self._presence),
            ErrorFromRoom: self._room_event(lambda rec, _: self.pings.soon(rec)),
            SubjectSeen: self._room_event(self._subject),
            PingReplied: self._room_event(self._ping_replied),
            JoinSucceeded: self._room_event(self._join_result(self.joins.succeeded)),
            JoinFailed: self._room_event(self._join_result(self.joins.failed)),
            ArchiveSupport: self._room_event(self._archive_support),
            ArchiveRead: self._room_event(self._archive_read),
            TimerFired: self._timer_fired,
        }
        self._timer_handlers: dict[TimerKind, Callable[[RoomRecord], None]] = {
            TimerKind.JOIN: self._join_timer,
            TimerKind.PING: self.pings.due,
            TimerKind.NICK: self.nicks.unanswered,
            TimerKind.RECLAIM: self.nicks.reclaim_due,
            TimerKind.ARCHIVE_CHECK: self._archive_check_due,
            TimerKind.ARCHIVE_RETRY: self.joins.retry_archive,
            TimerKind.SIBLINGS: self.pings.siblings_now,
        }

    # --- the interface --------------------------------------------------------------

    def handle(self, event: Event, now: float, wall: float | None = None) -> list[Command]:
        """Take one event at core time `now` (and UNIX time `wall`); return
        the commands to run, in order."""
        self.now = now
        if wall is not None:
            self.wall = wall
        try:
            handler = self._handlers[type(event)]
        except KeyError:
            raise TypeError(f"not a muc_guard event: {event!r}") from None
        handler(event)
        out, self._out = self._out, []
        return out

    def close(self, now: float) -> list[Command]:
        """Stop everything; rooms stay wanted (for the next process)."""
        self.now = now
        self.closed = True
        for rec in self.rooms.values():
            self.halt(rec)
            self.emit(ResolveWaiters(rec, error="shutdown"))
        self.pings.queue.clear()
        self.settings.gate.clear()
        out, self._out = self._out, []
        return out

    def health(self, account: str, now: float, wall: float,
               public_jid: Callable[[Hashable], Hashable] | None = None) -> Health:
        """The account's health snapshot at core time `now`, UNIX time `wall`
        (see :mod:`muc_guard.core.health`); changes nothing."""
        return build_health(self.rooms.values(), self.stats, account=account,
                            stream_up=self.stream_up, down_since=self.down_since,
                            grace=self.settings.health_grace, now=now, wall=wall,
                            public_jid=public_jid)

    def set_ping_idle(self, value: float, now: float) -> list[Command]:
        value = float(value)
        if value <= 0:
            raise ValueError("ping_idle must be positive")
        self.now = now
        self.settings.ping_idle = value
        self.pings.rearm_all()
        out, self._out = self._out, []
        return out

    # --- requests -------------------------------------------------------------------

    def _join_requested(self, event: JoinRequested) -> None:
        if self.closed:
            raise RuntimeError("muc_guard is shut down")
        self._note_start()
        rec = self.rooms.get(event.room)
        if rec is None:
            rec = RoomRecord(jid=event.room, service=event.service,
                             requested_nick=event.nick, nick=event.nick,
                             password=event.password, added=self.wall,
                             out_since=self.wall)
            self.rooms[event.room] = rec
            self.emit(Persist(rec, now=True))
            self.joins.start(rec, 0.0)
            return
        if rec.state is State.JOINED:
            if event.password is not None and event.password != rec.password:
                rec.password = event.password
                self.emit(Persist(rec, now=True))
            if event.nick not in (rec.nick, rec.requested_nick):
                self.nicks.request(rec, event.nick)
            return
        rewanted = rec.state is State.GAVE_UP
        if rewanted:
            rec.state = State.JOINING
            rec.announce_rejoin = False
            rec.out_since, rec.outage_attempts = self.wall, 0
        if rewanted or event.nick != rec.requested_nick:
            rec.requested_nick = rec.nick = event.nick
        if event.password is not None:
            rec.password = event.password
        self.emit(Persist(rec, now=True))
        self.joins.start(rec, 0.0)

    def _leave_requested(self, event: LeaveRequested) -> None:
        rec = self.rooms.pop(event.room, None)
        if rec is None:
            return
        self.halt(rec)
        self.emit(ResolveWaiters(rec, error="left"))
        self.emit(Forget(rec))

    def _nick_requested(self, event: NickRequested) -> None:
        rec = self.rooms.get(event.room)
        if rec is None:
            raise KeyError(f"{event.room} is not tracked")
        self.nicks.request(rec, event.nick)

    def _note_start(self) -> None:
        """Before the first stream, the stream counts as down since the
        guard was first asked for something."""
        if not self.stream_up and self.down_since is None:
            self.down_since = self.now

    def _store_loaded(self, event: StoreLoaded) -> None:
        self._note_start()
        restored = 0
        for row in event.records:
            # Joined when the last process ended: a server may have kept
            # that occupant (e.g. a hibernated XEP-0198 session).
            probe = event.crashed and row.wanted and row.last_joined is not None and (
                row.last_dropped is None or row.last_joined >= row.last_dropped)
            rec = self.rooms.get(row.jid)
            if rec is not None:
                # join() before open_store(): its wishes win, the stored
                # knowledge (position, drops, archive) is kept.
                merge_stored(rec, row)
                # Only a room not joined yet in this process is rejoining
                # after the restart; one dropped since (REJOINING) knows
                # better: its drop is announced or its probe is under way.
                if rec.state is State.JOINING and row.wanted:
                    rec.announce_rejoin = True
                    rec.probe = probe
                continue
            row.confirmed = True
            row.announce_rejoin = row.wanted
            row.probe = probe
            row.out_since = self.wall
            self.rooms[row.jid] = row
            if row.wanted:
                restored += 1
                self.joins.start(row, 0.0)
        for rec in self.rooms.values():
            self.emit(Persist(rec))
        logger.info("%d stored room(s), %d to rejoin", len(event.records), restored)

    # --- the stream -----------------------------------------------------------------

    def _stream_up(self, event: StreamUp) -> None:
        self.stream_up = True
        self.down_since = None
        self.resource = event.resource
        for rec in list(self.rooms.values()):
            if rec.wanted and rec.state is not State.JOINED:
                if rec.phase is Phase.STREAM:
                    self.joins.ready(rec)
                else:
                    self.joins.start(rec, 0.0)

    def _went_down(self) -> None:
        """The stream is down from now; a loss after a suspension counts from
        the suspension."""
        if self.stream_up or self.down_since is None:
            self.down_since = self.now
        self.stream_up = False

    def _stream_down(self, event: StreamDown) -> None:
        self._went_down()
        self.occupant_resource = event.resource
        lost = [rec for rec in self.rooms.values() if rec.state is State.JOINED]
        if lost:
            logger.warning("stream lost%s: %d room(s) to rejoin",
                           f" ({event.reason})" if event.reason is not None else "", len(lost))
        for rec in lost:
            if self.settings.probe_before_rejoin:
                self.drops.suspect(rec)
            else:
                self.drops.dropped(rec, Cause.STREAM_LOST)
        # A join under way went out on the lost stream: a success reported
        # later would count a room joined that the next stream is not in.
        for rec in list(self.rooms.values()):
            self.joins.stream_lost(rec)

    def _stream_suspended(self, event: StreamSuspended) -> None:
        self._went_down()   # XEP-0198 hibernation: pings and joins wait

    def _stream_resumed(self, event: StreamResumed) -> None:
        self.stream_up = True
        self.down_since = None
        self.pings.rearm_all()
        for rec in list(self.rooms.values()):
            if rec.phase is Phase.STREAM:
                self.joins.ready(rec)

    # --- facts from the room --------------------------------------------------------

    def _room_event(self, handler: Callable[[RoomRecord, Any], None]
                    ) -> Callable[[Any], None]:
        """Events about an untracked room (left meanwhile) are dropped."""
        rooms = self.rooms

        def for_room(event: Any) -> None:
            rec = rooms.get(event.room)
            if rec is not None:
                handler(rec, event)
        return for_room

    def _presence(self, rec: RoomRecord, event: RoomPresence) -> None:
        nicks = self.nicks
        if event.kind is PresenceKind.ERROR:
            # Join errors reach the join attempt; this is about our own nick
            # change being refused (e.g. 409), also what a room that silently
            # dropped us answers.
            if rec.nick_change_pending and event.nick == rec.pending_nick:
                logger.info("%s: nick %r refused", rec.jid, rec.pending_nick)
                nicks.end(rec, check=True)
            return
        if rec.state is not State.JOINED:
            return  # the join attempt in progress handles its own presences
        codes = event.codes
        if event.kind is PresenceKind.AVAILABLE:
            self.traffic(rec, self.now)
            if STATUS_SELF in codes and rec.nick_change_pending:
                # Any self-presence answers the change; only the nick we
                # asked for (or the 303 named) is adopted.
                if event.nick == rec.pending_nick:
                    nicks.changed(rec, event.nick)
                else:
                    nicks.end(rec, check=event.nick != rec.nick)
            return
        if rec.nick_change_pending and event.nick == rec.pending_nick != rec.nick:
            logger.info("%s: nick change to %r answered with unavailable", rec.jid,
                        rec.pending_nick)
            nicks.end(rec, check=True)   # the room may have lost us
            return
        if event.nick != rec.nick:
            self.traffic(rec, self.now)   # another occupant left
            return
        if STATUS_SELF not in codes:
            logger.info("%s: unavailable presence from our occupant JID without 110",
                        rec.jid)
        # A removal marker beats 303, as in the policy table (a destroyed room
        # is not a nick change).
        cause = classify_removal(codes, destroyed=event.destroyed)
        if cause is None:
            nicks.begin(rec, event.new_nick)
            return
        logger.debug("%s: unavailable self-presence, codes %s -> %s", rec.jid,
                     sorted(codes), cause.name)
        self.drops.dropped(rec, cause, event.reason)

    def _subject(self, rec: RoomRecord, event: SubjectSeen) -> None:
        if rec.stream is not None:
            rec.stream.end_replay()   # the subject ends the history

    # --- results --------------------------------------------------------------------

    def _ping_replied(self, rec: RoomRecord, event: PingReplied) -> None:
        if rec.phase is Phase.PROBE and event.attempt == rec.attempt:
            self.joins.probe_replied(rec, event)
        elif event.attempt == rec.ping:
            self.pings.replied(rec, event)

    def _join_result(self, handler: Callable[[RoomRecord, Any], None]
                     ) -> Callable[[RoomRecord, Any], None]:
        def checked(rec: RoomRecord, event: JoinSucceeded | JoinFailed) -> None:
            if rec.phase is Phase.JOIN and event.attempt == rec.attempt:
                handler(rec, event)
        return checked

    def _archive_support(self, rec: RoomRecord, event: ArchiveSupport) -> None:
        if event.attempt:
            if rec.phase is Phase.ARCHIVE and event.attempt == rec.attempt:
                self.joins.archive_answered(rec, event)
        elif event.found is not None and rec.state is State.JOINED:
            self.learn_archive(rec, event.found)

    def _archive_read(self, rec: RoomRecord, event: ArchiveRead) -> None:
        if rec.phase is Phase.RECOVER and event.attempt == rec.attempt:
            self.joins.archive_read(rec, event)

    def _timer_fired(self, event: TimerFired) -> None:
        if event.room is None:
            if event.kind is TimerKind.PACE:
                self.pings.drain()
            return
        rec = self.rooms.get(event.room)
        if rec is None or not self.disarm(rec, event.kind):
            return    # cancelled meanwhile
        self._timer_handlers[event.kind](rec)

    def _join_timer(self, rec: RoomRecord) -> None:
        if rec.phase is Phase.TIMER:
            self.joins.ready(rec)

    def _archive_check_due(self, rec: RoomRecord) -> None:
        if rec.state is State.JOINED and not self.closed:
            self.emit(QueryArchiveSupport(rec, 0))
