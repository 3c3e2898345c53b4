"""
What the rule parts of the core share: :class:`CoreContext`.

The core's rules come in parts (:mod:`.joins`, :mod:`.pings`, :mod:`.nicks`,
:mod:`.drops`), and they call on each other: a failed self-ping is a drop,
a drop starts a join, a join arms the pings. Each part sees the others only
through this module: the shared state (rooms, settings, the clock of the
event being handled, the stream), the outgoing commands, the timers, and
the entry points of the other parts as small protocols. So the parts import
this module and nothing of each other, and
:class:`~muc_guard.core.guard.GuardCore` (this context plus the dispatch
table) wires them together.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable
from typing import Protocol

from .commands import ArmTimer, CancelTimer, Command, Gap, Persist, SendSelfPing
from .continuity import RoomStream
from .events import PingReplied, TimerKind
from .health import GapReason, Stats, bump
from .policy import Cause
from .record import RoomRecord
from .settings import Settings

logger = logging.getLogger("muc_guard.core")

__all__ = ["CoreContext", "NOT_NEW", "LIVE", "REPLAYED"]

#: :meth:`CoreContext.offer` verdicts
NOT_NEW, LIVE, REPLAYED = 0, 1, 2
_BITS = {kind: 1 << i for i, kind in enumerate(TimerKind)}
_ROOM_TIMERS = tuple(kind for kind in TimerKind if kind is not TimerKind.PACE)


class JoinRules(Protocol):
    def start(self, rec: RoomRecord, delay: float, failures: int = 0) -> None: ...
    def abort(self, rec: RoomRecord) -> None: ...


class PingRules(Protocol):
    def arm(self, rec: RoomRecord, at: float | None = None, *, force: bool = False) -> None: ...
    def soon(self, rec: RoomRecord) -> None: ...
    def stop(self, rec: RoomRecord) -> None: ...
    def schedule_siblings(self, rec: RoomRecord, *, at_once: bool = False) -> None: ...
    def siblings_now(self, rec: RoomRecord) -> None: ...
    def siblings_after_join(self, rec: RoomRecord) -> None: ...
    def replied(self, rec: RoomRecord, event: PingReplied) -> None: ...


class NickRules(Protocol):
    def end(self, rec: RoomRecord, *, check: bool = False) -> None: ...
    def conflict(self, rec: RoomRecord) -> None: ...
    def arm_reclaim(self, rec: RoomRecord) -> None: ...
    def follow_request(self, rec: RoomRecord) -> None: ...


class DropRules(Protocol):
    def joined(self, rec: RoomRecord, nick: str | None) -> None: ...
    def dropped(self, rec: RoomRecord, cause: Cause, reason: str | None = None) -> None: ...
    def confirm_suspected_drop(self, rec: RoomRecord) -> None: ...
    def give_up(self, rec: RoomRecord, cause: Cause, exc: BaseException | None = None,
                *, dropped: bool = False, reason: str | None = None) -> None: ...
    def join_refused(self, rec: RoomRecord, condition: str,
                     exc: BaseException | None) -> None: ...


class CoreContext:
    """The state and the helpers every rule part uses."""

    joins: JoinRules
    pings: PingRules
    nicks: NickRules
    drops: DropRules

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.rooms: dict[Hashable, RoomRecord] = {}
        self.stream_up = False
        self.closed = False
        #: the stream's resource now, and the one our occupants had when we
        #: last knew them (the stored one after a restart, the old stream's
        #: after a loss): a probe makes sense only while they are equal
        self.resource: str | None = None
        self.occupant_resource: str | None = None
        #: the core's clock (monotonic) and the wall clock (UNIX time) of the
        #: event being handled
        self.now = 0.0
        self.wall = 0.0
        #: the running counters (health(), metrics)
        self.stats = Stats()
        #: core time the stream went down (or the guard started without one)
        self.down_since: float | None = None
        self._out: list[Command] = []
        self._attempts = itertools.count(1)

    # --- every stanza -------------------------------------------------------------

    def traffic(self, rec: RoomRecord, now: float) -> None:
        """A stanza from the room: proof of membership (postpones the ping)."""
        rec.last_traffic = now
        rec.judge.reset()

    def offer(self, rec: RoomRecord, message: object, stanza_id: str | None,
              room_stamp: float | None, nick: str, body: str | None,
              server_now: float) -> int:
        """A groupchat message from the room: NOT_NEW (a duplicate, or held
        back while the archive is read), LIVE or REPLAYED (history the room
        sent on our join). On LIVE or REPLAYED the front-end delivers it and
        stores the position lazily. `room_stamp`: the room's own
        ``<delay/>``, if any; `body` is read only without a stanza-id."""
        stream = rec.stream
        if stream is None:
            stream = self.stream_of(rec)
        if stream.recovering:
            if stream.buffer is None:
                stream.buffer = []
            stream.buffer.append((message, server_now, stanza_id, nick, body))
            return NOT_NEW
        replay = stream.is_replay(room_stamp)
        if not stream.accept(stanza_id, nick, body, now=server_now,
                             stamp=room_stamp if replay else None, delayed=replay):
            if replay:
                stream.history_from = None   # the replay reaches back to what we had
            return NOT_NEW
        rec.position = stream.position
        stats = self.stats
        stats.delivered += 1
        if not replay:
            return LIVE
        stats.recovered += 1
        since = stream.history_from
        if since is not None:
            # The first replayed message is new, and no copy of what we had
            # came before it: the history no longer reaches back to our position.
            stream.history_from = None
            self.report_gap(rec, since, max(since, stream.position.last_ts or since),
                            GapReason.HISTORY_SHORT)
        return REPLAYED

    # --- for the parts --------------------------------------------------------------

    def emit(self, command: Command) -> None:
        self._out.append(command)

    def new_attempt(self) -> int:
        return next(self._attempts)

    def arm(self, rec: RoomRecord, kind: TimerKind, at: float) -> None:
        rec.timers |= _BITS[kind]
        self._out.append(ArmTimer(rec, kind, at))

    def arm_global(self, kind: TimerKind, at: float) -> None:
        self._out.append(ArmTimer(None, kind, at))

    def cancel(self, rec: RoomRecord, kind: TimerKind) -> None:
        if self.disarm(rec, kind):
            self._out.append(CancelTimer(rec, kind))

    @staticmethod
    def disarm(rec: RoomRecord, kind: TimerKind) -> bool:
        """Forget the room's timer of `kind`; False if none was armed."""
        bit = _BITS[kind]
        if not rec.timers & bit:
            return False
        rec.timers &= ~bit
        return True

    @staticmethod
    def armed(rec: RoomRecord, kind: TimerKind) -> bool:
        return bool(rec.timers & _BITS[kind])

    def stream_of(self, rec: RoomRecord) -> RoomStream:
        if rec.stream is None:
            rec.stream = RoomStream(rec.position)
        return rec.stream

    def send_probe(self, rec: RoomRecord) -> None:
        self.emit(SendSelfPing(rec, rec.attempt, rec.nick,
                               self.settings.probe_timeout, probe=True))

    def report_gap(self, rec: RoomRecord, since: float, until: float,
                   reason: GapReason) -> None:
        """Messages said from `since` to `until` (server time) are lost to us."""
        rec.gaps += 1
        bump(self.stats.gaps, reason)
        self.emit(Gap(rec, since, max(since, until), reason))

    def take_output(self) -> list[Command]:
        """Commands emitted outside :meth:`GuardCore.handle` (a gap found by
        :meth:`offer`); the front-end runs them before delivering the message."""
        out, self._out = self._out, []
        return out

    def learn_archive(self, rec: RoomRecord, found: bool) -> None:
        changed = found != rec.has_archive
        rec.has_archive = found
        rec.archive_checked = True
        logger.debug("%s: archive %s", rec.jid, "yes" if found else "no")
        if changed:
            self.persist(rec)    # stored: a restart need not ask before joining

    def persist(self, rec: RoomRecord, now: bool = False) -> None:
        if self.rooms.get(rec.jid) is rec:
            self.emit(Persist(rec, now=now))

    def halt(self, rec: RoomRecord) -> None:
        """No more work for this room: sequence, timers, pings."""
        self.joins.abort(rec)
        for kind in _ROOM_TIMERS:
            self.cancel(rec, kind)
        rec.ping = 0
        rec.pending_nick = None
        rec.check_siblings = False
