"""
Getting a room joined, and back: attempts, errors, backoff, recovery.

Motivation
==========

A wanted room that is not joined must always be on its way in: waiting for
a timer, for the stream, for a slot, or with a join out. Each way this
failed so far was a path that changed a room's state while some other task
still ran for it and assumed that task would see to it. Here there is no
task: a room's join is a small state machine (:class:`~muc_guard.core.record.Phase`)
driven by events, and every result names its attempt, so an answer from
an attempt the room has moved past is ignored.

Solution
========

A join *sequence* starts with a delay and a failure count
(:meth:`Joiner.start`) and runs::

    TIMER ─► STREAM ─► (PROBE) ─► SLOT ─► (ARCHIVE) ─► JOIN ─► (RECOVER) ─► IDLE
      ▲                                                  │
      └──────────── failure: backoff (failures + 1) ◄────┘

* PROBE: after a lost stream or a crash we may still be in the room; a
  self-ping settles it before the join (a room that kept us is refreshed,
  not announced as a drop).
* SLOT: at most ``max_concurrent_joins`` joins in flight (:mod:`.gate`).
* ARCHIVE: with something to recover and a room whose archive support is
  not known yet, ask first: the join then asks for no history.
* JOIN: the front-end reports success or one of :class:`~muc_guard.core.events.JoinFailure`;
  :func:`~muc_guard.core.policy.classify_join_error` tells permanent errors
  (given up after ``permanent_error_limit``, or raised from a first
  ``join()``) from transient ones (retried with backoff, for ever).
* RECOVER: joined; the archive is read after our position while live
  messages wait, then they follow (:mod:`.continuity` drops duplicates).

Whatever ends a sequence, :meth:`Joiner.end` starts the next one if the
room is still wanted and not joined, so no path can leave it stranded.

A lost stream (not a suspended one) takes the steps that went out on it
with it: a probe, archive question or join in flight is cancelled and the
room waits in STREAM for the next stream (:meth:`Joiner.stream_lost`), as
do rooms waiting for a slot; their answers, should they still come, would
speak of a stream that is gone.
"""

from __future__ import annotations

import logging

from .context import CoreContext
from .commands import CancelJoin, Deliver, QueryArchiveSupport, ReadArchive, SendJoin
from .continuity import Buffered
from .events import (
    ArchiveRead,
    ArchiveSupport,
    JoinFailed,
    JoinFailure,
    JoinSucceeded,
    PingReplied,
    TimerKind,
)
from .health import GapReason, bump, ping_verdict
from .policy import Cause, classify_join_error
from .record import Phase, RoomRecord, State
from .selfping import PingVerdict, read_ping_reply


__all__ = ["Joiner"]

logger = logging.getLogger("muc_guard.core")

JOIN, ARCHIVE_RETRY = TimerKind.JOIN, TimerKind.ARCHIVE_RETRY
#: phases with a command of the front-end in flight
RUNNING_PHASES = frozenset({Phase.PROBE, Phase.ARCHIVE, Phase.JOIN, Phase.RECOVER})
#: phases of a room not joined whose next step needs the stream they started on
_STREAM_BOUND = frozenset({Phase.SLOT, Phase.PROBE, Phase.ARCHIVE, Phase.JOIN})


class Joiner:
    """The join rules of a :class:`~muc_guard.core.guard.GuardCore`."""

    def __init__(self, core: CoreContext) -> None:
        self.core = core

    # --- sequences ------------------------------------------------------------------

    def start(self, rec: RoomRecord, delay: float, failures: int = 0) -> None:
        """Start a join sequence, or, if one is under way, have it followed
        by this one should it end with the room still out."""
        if self.core.closed:
            return
        if rec.phase is not Phase.IDLE:
            rec.next_join = (delay, failures)
            return
        rec.next_join = None
        rec.failures, rec.permanent, rec.conflicts = failures, 0, 0
        self._wait(rec, delay)

    def _wait(self, rec: RoomRecord, delay: float) -> None:
        if delay > 0:
            rec.phase = Phase.TIMER
            self.core.arm(rec, JOIN, self.core.now + delay)
        else:
            self.ready(rec)

    def ready(self, rec: RoomRecord) -> None:
        """The delay is over (or the stream is back): go on if we can."""
        core = self.core
        rec.phase = Phase.IDLE
        if core.rooms.get(rec.jid) is not rec or not rec.wanted or rec.state is State.JOINED:
            self.end(rec)
            return
        if not core.stream_up:
            rec.phase = Phase.STREAM
            return
        if rec.probe:
            resource = core.occupant_resource
            # A new full JID: the old occupant cannot be ours now.
            if core.settings.probe_before_rejoin and (resource is None
                                                       or core.resource == resource):
                rec.phase = Phase.PROBE
                rec.attempt = core.new_attempt()
                core.send_probe(rec)
                return
            self._probed(rec, still=False)
        self._enter_gate(rec)

    def end(self, rec: RoomRecord) -> None:
        """A sequence ended (success, failure, or a drop while it read the
        archive): a wanted room that is not joined gets the next one."""
        rec.phase = Phase.IDLE
        rec.attempt = 0
        pending, rec.next_join = rec.next_join, None
        core = self.core
        if (core.closed or core.rooms.get(rec.jid) is not rec or not rec.wanted
                or rec.state is State.JOINED):
            return
        delay, failures = pending if pending is not None else (0.0, 0)
        self.start(rec, delay, failures)

    def abort(self, rec: RoomRecord) -> None:
        """Stop the sequence without a successor (left, gave up, detached)."""
        core = self.core
        if rec.phase is Phase.SLOT:
            core.settings.gate.withdraw(rec.jid)
        if rec.phase in RUNNING_PHASES:
            core.emit(CancelJoin(rec))
        if rec.phase is Phase.RECOVER and rec.stream is not None:
            rec.stream.recovering, rec.stream.buffer = False, None
        core.cancel(rec, JOIN)
        core.cancel(rec, ARCHIVE_RETRY)
        self._release_slot(rec)
        rec.phase = Phase.IDLE
        rec.attempt = 0
        rec.next_join = None

    def stream_lost(self, rec: RoomRecord) -> None:
        """The stream is gone (not suspended): a probe, archive question or
        join in flight, or a place in the gate's queue, belonged to it.
        Cancel it and wait for the next stream (the count of failures stays)."""
        if rec.state is State.JOINED or rec.phase not in _STREAM_BOUND:
            return
        pending = rec.next_join
        self.abort(rec)
        rec.next_join = pending
        rec.phase = Phase.STREAM

    # --- probe, slot, archive question, join ---------------------------------------

    def probe_replied(self, rec: RoomRecord, event: PingReplied) -> None:
        if event.aborted and not self.core.stream_up:
            self.ready(rec)     # the stream went away meanwhile: wait for it
            return
        # Only a clear "joined" counts: item-not-found (XEP-0410 §3.2: maybe a
        # changed nick) and no answer cost nothing to settle with a join.
        still = False
        if not event.aborted:
            reply = read_ping_reply(event.condition, timed_out=event.timed_out)
            bump(self.core.stats.pings, ping_verdict(reply, timed_out=event.timed_out))
            still = reply is PingVerdict.JOINED
        logger.info("%s: probe before rejoin: %s", rec.jid,
                    "still an occupant, refreshing" if still else (event.condition or "?"))
        self._probed(rec, still)
        self._enter_gate(rec)

    def _probed(self, rec: RoomRecord, still: bool) -> None:
        rec.probe = False
        if still:
            rec.suspect_since = None
            rec.announce_rejoin = False   # nothing was lost but the Room object
        else:
            self.core.drops.confirm_suspected_drop(rec)

    def _enter_gate(self, rec: RoomRecord) -> None:
        if self.core.settings.gate.enter(rec.jid):
            rec.holds_slot = True
            self._prepare(rec)
        else:
            rec.phase = Phase.SLOT

    def _release_slot(self, rec: RoomRecord) -> None:
        if not rec.holds_slot:
            return
        rec.holds_slot = False
        core = self.core
        admitted = core.settings.gate.leave()
        while admitted:
            jid = admitted.pop(0)
            other = core.rooms.get(jid)
            if other is None or other.phase is not Phase.SLOT:
                admitted.extend(core.settings.gate.leave())   # stale: pass the slot on
                continue
            if not core.stream_up:
                # No stream to join on: wait for it, and pass the slot on.
                other.phase = Phase.STREAM
                admitted.extend(core.settings.gate.leave())
                continue
            other.holds_slot = True
            self._prepare(other)

    def _prepare(self, rec: RoomRecord) -> None:
        """Holding a slot: decide between archive and history, then join."""
        settings = self.core.settings
        recoverable = rec.position.last_ts is not None or rec.last_joined is not None
        if not settings.use_archive or not recoverable:
            self._send_join(rec, archive=False)
        elif rec.has_archive is None:
            rec.phase = Phase.ARCHIVE
            rec.attempt = self.core.new_attempt()
            self.core.emit(QueryArchiveSupport(rec, rec.attempt))
        else:
            self._send_join(rec, archive=rec.has_archive)

    def archive_answered(self, rec: RoomRecord, event: ArchiveSupport) -> None:
        if event.found is not None:
            self.core.learn_archive(rec, event.found)
        self._send_join(rec, archive=bool(rec.has_archive))

    def _send_join(self, rec: RoomRecord, archive: bool) -> None:
        stream = self.core.stream_of(rec)
        # With an archive, live messages wait until the archive has been read.
        stream.recovering = archive
        stream.replaying = not archive
        # The history asked for starts a little before our position: a replay
        # that shows none of what we had fell short (CoreContext.offer).
        # Not after our own stream was lost: the server may have restarted,
        # and one that keeps history in memory only replays just what was
        # said since, which proves no loss (the demo's server crash).
        after_stream_loss = (rec.state is State.REJOINING
                             and rec.last_cause is Cause.STREAM_LOST)
        stream.history_from = (None if archive or after_stream_loss
                               else rec.position.last_ts)
        stream.buffer = None    # what waited for an earlier join comes back from there
        rec.phase = Phase.JOIN
        rec.attempt = self.core.new_attempt()
        rec.join_nick = rec.nick
        rec.outage_attempts += 1
        self.core.stats.join_attempts += 1
        self.core.emit(SendJoin(rec, rec.attempt, rec.nick, rec.password, archive,
                                rec.position.last_ts, rec.last_joined, rec.confirmed))

    # --- results --------------------------------------------------------------------

    def succeeded(self, rec: RoomRecord, event: JoinSucceeded) -> None:
        self._release_slot(rec)
        core = self.core
        # Without the room's word, we hold the nick this attempt asked for,
        # not one asked for since (join() or set_nick() while it was out).
        # join() or set_nick() while the join was out set the nick to ask for
        asked_since = rec.join_nick is not None and rec.nick != rec.join_nick
        core.drops.joined(rec, event.nick or rec.join_nick)
        if asked_since:
            core.nicks.follow_request(rec)
        core.pings.siblings_after_join(rec)
        if rec.stream is not None and rec.stream.recovering:
            rec.phase = Phase.RECOVER
            rec.failures = 0
            rec.permanent = 0    # counts the messages recovered
            self._read_archive(rec)
        else:
            self.end(rec)

    def failed(self, rec: RoomRecord, event: JoinFailed) -> None:
        self._release_slot(rec)
        rec.phase, rec.attempt = Phase.IDLE, 0    # answered: nothing left to cancel
        core = self.core
        if rec.stream is not None:
            rec.stream.recovering = False
            rec.stream.end_replay()
            rec.stream.buffer = None
        failure = event.failure
        if failure is JoinFailure.ERROR:
            condition = event.condition or "undefined-condition"
            if not classify_join_error(condition, event.error_type):
                rec.permanent = 0
                logger.info("%s: join failed (%s), will retry", rec.jid, condition)
            elif not rec.confirmed:
                core.drops.join_refused(rec, condition, event.exception)   # raised, not kept
                return
            elif condition == "conflict":
                rec.conflicts += 1
                core.nicks.conflict(rec)
            else:
                rec.permanent += 1
                limit = core.settings.permanent_error_limit
                logger.warning("%s: join refused (%s), %d/%d", rec.jid, condition,
                               rec.permanent, limit)
                if rec.permanent >= limit:
                    core.drops.give_up(rec, Cause.JOIN_ERROR, event.exception)
                    return
        elif failure is JoinFailure.CONNECTION and not core.stream_up:
            core.pings.siblings_after_join(rec)
            self.ready(rec)   # wait for the stream, then try at once
            return
        else:
            logger.info("%s: join attempt failed (%s), will retry", rec.jid, failure.value)
        core.pings.siblings_after_join(rec)
        rec.failures += 1
        self._wait(rec, core.settings.backoff.delay(rec.failures))

    # --- archive recovery -----------------------------------------------------------

    def _read_archive(self, rec: RoomRecord) -> None:
        core = self.core
        rec.attempt = core.new_attempt()
        core.emit(ReadArchive(rec, rec.attempt, rec.position.last_id,
                              rec.position.last_ts, rec.last_joined,
                              core.settings.archive_limit - rec.permanent))

    def archive_read(self, rec: RoomRecord, event: ArchiveRead) -> None:
        """Deliver what the archive held after our position, then what
        arrived live meanwhile; a read that ended early is retried with
        backoff from where it ended, live messages waiting behind it."""
        core = self.core
        stream = core.stream_of(rec)
        if event.expired and (event.found or not event.retry):
            self._expired_gap(rec, event, stream.buffer)
        self._deliver_archived(rec, event)
        rec.permanent += len(event.found)
        total, limit = rec.permanent, core.settings.archive_limit
        if event.lost_stream:
            # The rejoin after the reconnect reads the archive again from our
            # position, and what arrived live meanwhile comes back from there
            # in order. Delivered now, it would move the position past what
            # the archive has not returned yet, and that would be lost.
            stream.recovering, stream.buffer = False, None
            self.end(rec)
            return
        if event.retry and total < limit:
            rec.failures += 1
            delay = core.settings.backoff.delay(rec.failures)
            logger.warning("%s: archive recovery incomplete; reading on from the last "
                           "recovered message in %.1f s (attempt %d)", rec.jid, delay,
                           rec.failures + 1)
            core.arm(rec, ARCHIVE_RETRY, core.now + delay)
            return
        if event.error is not None:
            logger.warning("%s: the archive refused the rest (%s): messages may be missing",
                           rec.jid, event.error)
        elif not event.complete and total >= limit and rec.position.last_ts is not None:
            # The archive has more than archive_limit after our position: what
            # lies between the last message read and the first live one is lost.
            last = rec.position.last_ts
            core.report_gap(rec, last, _live_resumes(stream.buffer, event),
                            GapReason.ARCHIVE_LIMIT)
        stream.recovering = False
        buffered, stream.buffer = stream.buffer or [], None
        for message, received, stanza_id, nick, body in buffered:
            verdict = core.offer(rec, message, stanza_id, None, nick, body, received)
            if verdict:
                core.emit(Deliver(rec, message, recovered=False, own=nick == rec.nick))
        logger.info("%s: recovered %d message(s) from the archive", rec.jid, total)
        self.end(rec)

    def _expired_gap(self, rec: RoomRecord, event: ArchiveRead,
                     buffered: list[Buffered] | None) -> None:
        """The archive no longer knows our last message's id, so the read
        went by time: unless the archive still holds a message at or before
        our position, what was said from it up to the first message the
        archive returned (or, with none, to the first live one) is gone."""
        since = rec.position.last_ts
        if since is None:
            return
        if event.found:
            first = event.found[0].stamp
            if first <= since:
                return    # the archive still reaches back to our position
            until = first
        else:
            until = _live_resumes(buffered, event)
        self.core.report_gap(rec, since, until, GapReason.ARCHIVE_EXPIRED)

    def retry_archive(self, rec: RoomRecord) -> None:
        if rec.phase is Phase.RECOVER:
            self._read_archive(rec)

    def _deliver_archived(self, rec: RoomRecord, event: ArchiveRead) -> None:
        """Deliver archived messages in order; those that also reached us
        live while we read were not missed (`recovered` false)."""
        if not event.found:
            return
        stream = self.core.stream_of(rec)
        live_ids = {item[2] for item in stream.buffer or ()}
        stats = self.core.stats
        for item in event.found:
            if stream.accept(item.archive_id, item.nick, item.body, now=event.server_now,
                             stamp=item.stamp, delayed=True):
                rec.position = stream.position
                recovered = item.archive_id not in live_ids
                stats.delivered += 1
                stats.recovered += recovered
                self.core.emit(Deliver(rec, item.message, recovered=recovered,
                                       own=item.nick == rec.nick))


def _live_resumes(buffered: list[Buffered] | None, event: ArchiveRead) -> float:
    """Where live delivery takes over after an archive read: the first live
    message held back during it, or the server's time when it ended."""
    return buffered[0][1] if buffered else event.server_now
