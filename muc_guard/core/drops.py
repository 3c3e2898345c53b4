"""
Joined, dropped, gone: what the core does when a room's membership changes.

Motivation
==========

A removal must be told apart: the room's will (a kick, a ban, a destroyed
room: never rejoin on our own) from a technical accident (333, 330, 332, a
failed self-ping, a lost stream: rejoin), by the tables of
:mod:`muc_guard.core.policy`. And a room that drops right after every
rejoin (a "flapping" room) must not get a join per drop.

Solution
========

:class:`Drops` records a drop (count, cause, time), decides with
:func:`~muc_guard.core.policy.decide`, and either gives up (persisted at
once: a crash must not lead to a rejoin against the room's will) or starts
a rejoin sequence whose first delay comes from
:meth:`~muc_guard.core.backoff.Backoff.first_delay` and the flap count. A
lost stream is only a *suspected* drop: the probe before the rejoin decides
(:meth:`Drops.confirm_suspected_drop`).
"""

from __future__ import annotations

import logging

from .context import CoreContext
from .commands import Detach, Dropped, Forget, GaveUp, QueryArchiveSupport, Rejoined, ResolveWaiters
from .events import TimerKind
from .health import bump
from .policy import Cause, Decision, decide
from .record import Phase, RoomRecord, State


__all__ = ["Drops"]

logger = logging.getLogger("muc_guard.core")


class Drops:
    """The membership rules of a :class:`~muc_guard.core.guard.GuardCore`."""

    def __init__(self, core: CoreContext) -> None:
        self.core = core

    def joined(self, rec: RoomRecord, nick: str | None) -> None:
        """The join of the current attempt succeeded."""
        if rec.drop_pending:    # this join ends a drop that _count_flap saw
            rec.drop_pending = False
            rec.rejoined_at = self.core.now
        rec.state = State.JOINED
        rec.probe = False       # the join settled it (a StoreLoaded may set it mid-join)
        if nick and nick != rec.nick:
            logger.info("%s: the room gave us nick %r instead of %r", rec.jid, nick, rec.nick)
            rec.nick = nick
        rec.confirmed = True
        self.core.nicks.end(rec)
        downtime = None
        if rec.last_dropped is not None and (rec.last_joined is None
                                             or rec.last_joined < rec.last_dropped):
            # this join ends that outage
            downtime = rec.last_downtime = self.core.wall - rec.last_dropped
        rec.last_joined = self.core.wall
        rec.out_since = None
        self.core.traffic(rec, self.core.now)
        self.core.persist(rec)
        self.core.emit(ResolveWaiters(rec, joined=True))
        self.core.pings.arm(rec)
        if self.core.settings.use_archive and not rec.archive_checked:
            # Learn it (or, when the store knew it, refresh it: rooms can be
            # reconfigured) off the rejoin path a later drop will take; when
            # the store knew it, in the second minute: a restart with many
            # rooms must not double its burst of queries.
            rec.archive_checked = True
            if rec.has_archive is None:
                self.core.emit(QueryArchiveSupport(rec, 0))
            else:
                self.core.arm(rec, TimerKind.ARCHIVE_CHECK,
                         self.core.now + self.core.settings.rng.uniform(60, 120))
        if rec.preferred_nick == rec.nick:
            rec.preferred_nick = None
        self.core.nicks.arm_reclaim(rec)
        announce = rec.announce_rejoin
        rec.announce_rejoin = False
        if not announce:
            logger.info("%s: joined as %r", rec.jid, rec.nick)
        if announce:
            stats = self.core.stats
            stats.rejoins += 1
            if downtime is not None:
                stats.observe_outage(downtime)
            # logged, with the outage and the attempts, where it is signalled
            self.core.emit(Rejoined(rec, downtime, rec.outage_attempts))
        rec.outage_attempts = 0

    def dropped(self, rec: RoomRecord, cause: Cause, reason: str | None = None) -> None:
        """We are no longer in a joined room: rejoin, or respect its will."""
        if self.core.rooms.get(rec.jid) is not rec or rec.state is not State.JOINED:
            return
        self._detach(rec)
        self._record_drop(rec, cause, self.core.wall)
        rec.out_since, rec.outage_attempts = self.core.wall, 0
        decision = decide(cause)
        if decision is Decision.GIVE_UP:
            self.give_up(rec, cause, dropped=True, reason=reason)
            return
        rec.state = State.REJOINING
        rec.announce_rejoin = True
        self.core.persist(rec)
        self._signal_drop(rec, cause, reason)
        flaps = self._count_flap(rec, cause)
        delay = self.core.settings.backoff.first_delay(cause, flaps)
        self.core.joins.start(rec, delay, flaps)
        if cause is not Cause.STREAM_LOST:
            self.core.pings.schedule_siblings(rec, at_once=delay > 0)

    def suspect(self, rec: RoomRecord) -> None:
        """The stream is gone, and with it maybe (not surely) our occupant:
        the server may keep it. The join sequence self-pings first; only a
        room that let us go counts as a drop (confirm_suspected_drop)."""
        self._detach(rec)
        rec.state = State.REJOINING
        rec.probe = True
        rec.suspect_since = rec.out_since = self.core.wall
        rec.outage_attempts = 0
        self.core.joins.start(rec, 0.0)

    def confirm_suspected_drop(self, rec: RoomRecord) -> None:
        """The probe after a lost stream says we are out: now it is a drop."""
        since, rec.suspect_since = rec.suspect_since, None
        if since is None:
            return
        self._record_drop(rec, Cause.STREAM_LOST, since)
        rec.announce_rejoin = True
        self.core.persist(rec)
        self._signal_drop(rec, Cause.STREAM_LOST)

    def _signal_drop(self, rec: RoomRecord, cause: Cause, reason: str | None = None) -> None:
        """on_dropped; the structured log line goes with it (frontend.runner)."""
        bump(self.core.stats.drops, cause)
        self.core.emit(Dropped(rec, cause, reason))

    @staticmethod
    def _record_drop(rec: RoomRecord, cause: Cause, at: float) -> None:
        rec.drops += 1
        rec.last_cause = cause
        rec.last_dropped = at

    def _count_flap(self, rec: RoomRecord, cause: Cause) -> int:
        """A drop within backoff_max of the rejoin that ended the last drop
        continues that failure sequence (see backoff.py); a stream loss is
        the connection's failure, not the room's, and counts nothing."""
        if cause is Cause.STREAM_LOST:
            return 0
        since = self.core.now - rec.rejoined_at if rec.rejoined_at is not None else None
        rec.flaps = (rec.flaps + 1 if since is not None
                     and since < self.core.settings.backoff.maximum else 0)
        rec.rejoined_at, rec.drop_pending = None, True
        return rec.flaps

    def _detach(self, rec: RoomRecord) -> None:
        """Stop watching a room we are (maybe) no longer in."""
        self.core.pings.stop(rec)
        self.core.nicks.end(rec)
        self.core.cancel(rec, TimerKind.RECLAIM)
        if rec.stream is not None:
            rec.stream.history_from = None   # a replay seen now is no rejoin's
        if rec.phase is Phase.RECOVER:
            self.core.joins.abort(rec)
        self.core.emit(Detach(rec))

    def give_up(self, rec: RoomRecord, cause: Cause, exc: BaseException | None = None,
                *, dropped: bool = False, reason: str | None = None) -> None:
        rec.state = State.GAVE_UP
        rec.last_cause = cause
        self.core.halt(rec)
        if rec.stream is not None:
            rec.stream.history_from = None
        if not dropped:    # a drop detached it already
            self.core.emit(Detach(rec))
        # A crash must not lead to a rejoin against the room's will.
        self.core.persist(rec, now=True)
        self.core.emit(ResolveWaiters(rec, error="gave-up", cause=cause, exception=exc))
        if dropped:
            self._signal_drop(rec, cause, reason)
        bump(self.core.stats.give_ups, cause)
        self.core.emit(GaveUp(rec, cause, rec.outage_attempts))

    def join_refused(self, rec: RoomRecord, condition: str,
                     exc: BaseException | None) -> None:
        """A permanent error on the first join() of a room never joined:
        raise it, do not keep the room. (A known room follows the rejoin
        rules, and only give_up ends it.)"""
        logger.warning("%s: join refused (%s)", rec.jid, condition)
        self.core.halt(rec)
        self.core.emit(ResolveWaiters(rec, error="refused", exception=exc))
        self.core.emit(Detach(rec))
        self.core.rooms.pop(rec.jid, None)
        self.core.emit(Forget(rec))
