"""
What an operator sees: per-room health, counters, and explicit gaps.

Motivation
==========

A bot that silently stopped being an occupant looks, from outside, exactly
like a healthy one: the process runs, the stream is up, the client lists the
room. Operators want a load-balancer health check that notices, a dashboard
that shows drops and rejoins, and a clear word when messages were lost for
good instead of a log line nobody reads.

Solution
========

The core already knows all of it; this module only names it.

* :class:`Stats` is the core's running counters (drops by cause, rejoins,
  self-pings by verdict, messages delivered and recovered, gaps, outage
  durations as histogram buckets). The core bumps plain ints; nothing is
  allocated on a message's path, so metrics cost nothing until scraped.
* :class:`RoomHealth` and :class:`Health` are frozen snapshots built on
  demand (``guard.health()``); :mod:`muc_guard.metrics` turns the same
  snapshot into Prometheus metrics at scrape time.
* :class:`GapReason` says why recovery could not fill an outage; the core
  emits a :class:`~muc_guard.core.commands.Gap` command and the front-ends
  fire ``on_gap`` / ``muc_guard_gap``.

When is it a gap? Exactly when recovery could not reach back to the last
message delivered (``rec.position``); never for a room without one:

* ARCHIVE_EXPIRED (:meth:`.joins.Joiner.archive_read`): the archive no longer
  knew our last stanza-id (``ArchiveRead.expired``: the front-end read by
  time) and its first message is newer than our position: from our position
  to that message (none: to the first live message held back, else the
  read's end). The archive cannot say whether anything was said between.
* ARCHIVE_LIMIT: ``archive_limit`` messages read and the archive not
  complete: from the last message read to where live delivery resumes.
* HISTORY_SHORT (:meth:`.context.CoreContext.offer`): the join asked for
  history since our position minus ``DIGEST_TOLERANCE``, so a history that
  still holds our last message replays a copy of it (or of one before it)
  first. A replayed message that is new before any such copy: from our
  position to that message. (A room that keeps exactly as many messages as
  were missed looks the same: reported, though nothing was lost.) Not
  checked when the rejoin follows the loss of our own stream: the server may
  have restarted, and one that keeps history in memory only replays just
  what was said since (:meth:`.joins.Joiner._send_join`).

``healthy`` means: the stream is up and every wanted room is joined, or is
inside a *bounded* rejoin: out for less than ``Settings.health_grace``
seconds (default 120 s: one full backoff cycle at ``backoff_max`` = 60 s plus
a ``join_timeout`` of 30 s, with margin). A room the guard gave up on (the
room's will: kick, ban, destruction) is listed but does not make the bot
unhealthy: restarting the bot would not bring it back either.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from .policy import Cause
from .record import Phase, RoomRecord, State
from .selfping import PingVerdict as Reply

__all__ = ["GapReason", "PingVerdict", "OUTAGE_BUCKETS", "Stats", "Counters",
           "RoomHealth", "Health", "ping_verdict", "build_health"]

_K = TypeVar("_K", bound=Hashable)


class GapReason(enum.Enum):
    """Why recovery could not fill an outage."""

    #: the archive no longer holds the position we read from
    ARCHIVE_EXPIRED = "archive-expired"
    #: ``archive_limit`` messages read and the archive had more
    ARCHIVE_LIMIT = "archive-limit"
    #: a room without archive replayed history that starts after our position
    HISTORY_SHORT = "history-short"


class PingVerdict(enum.Enum):
    """How a self-ping ended (XEP-0410 §3.2)."""

    JOINED = "joined"
    NOT_JOINED = "not-joined"
    TIMEOUT = "timeout"
    INCONCLUSIVE = "inconclusive"   #: an error that proves nothing; retried


def ping_verdict(reply: Reply, *, timed_out: bool) -> PingVerdict:
    """How a self-ping reply (:func:`~muc_guard.core.selfping.read_ping_reply`) is counted."""
    if timed_out:
        return PingVerdict.TIMEOUT
    if reply is Reply.JOINED:
        return PingVerdict.JOINED
    if reply is Reply.NOT_JOINED:
        return PingVerdict.NOT_JOINED
    return PingVerdict.INCONCLUSIVE


def bump(counts: dict[_K, int], key: _K) -> None:
    """Add one to `counts[key]`."""
    counts[key] = counts.get(key, 0) + 1


#: Upper bounds (seconds) of the outage-duration histogram; the last is +Inf.
OUTAGE_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0,
                                     3600.0, math.inf)


@dataclasses.dataclass(slots=True, eq=False)
class Stats:
    """The core's running counters; only the core changes them (the
    front-end adds its store write failures)."""

    drops: dict[Cause, int] = dataclasses.field(default_factory=dict)
    rejoins: int = 0
    give_ups: dict[Cause, int] = dataclasses.field(default_factory=dict)
    pings: dict[PingVerdict, int] = dataclasses.field(default_factory=dict)
    delivered: int = 0             #: messages handed to on_message, live or recovered
    recovered: int = 0             #: of those, from the archive or history
    gaps: dict[GapReason, int] = dataclasses.field(default_factory=dict)
    join_attempts: int = 0         #: join presences sent (joins and rejoins)
    store_write_failures: int = 0
    #: outage durations (drop → rejoin): cumulative counts per OUTAGE_BUCKETS
    outage_buckets: list[int] = dataclasses.field(
        default_factory=lambda: [0] * len(OUTAGE_BUCKETS))
    outage_sum: float = 0.0
    outage_count: int = 0

    def observe_outage(self, seconds: float) -> None:
        for i, bound in enumerate(OUTAGE_BUCKETS):
            if seconds <= bound:
                self.outage_buckets[i] += 1
        self.outage_sum += seconds
        self.outage_count += 1

    def snapshot(self) -> Counters:
        return Counters(
            drops=dict(self.drops), rejoins=self.rejoins, give_ups=dict(self.give_ups),
            pings=dict(self.pings), delivered=self.delivered, recovered=self.recovered,
            gaps=dict(self.gaps), join_attempts=self.join_attempts,
            store_write_failures=self.store_write_failures,
            outage_buckets=tuple(self.outage_buckets), outage_sum=self.outage_sum,
            outage_count=self.outage_count)


@dataclasses.dataclass(frozen=True, slots=True)
class Counters:
    """A frozen copy of :class:`Stats` (since the guard was created)."""

    drops: dict[Cause, int]
    rejoins: int
    give_ups: dict[Cause, int]
    pings: dict[PingVerdict, int]
    delivered: int
    recovered: int
    gaps: dict[GapReason, int]
    join_attempts: int
    store_write_failures: int
    outage_buckets: tuple[int, ...]   #: cumulative, one per OUTAGE_BUCKETS
    outage_sum: float
    outage_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "drops": {c.value: n for c, n in self.drops.items()},
            "rejoins": self.rejoins,
            "give_ups": {c.value: n for c, n in self.give_ups.items()},
            "pings": {v.value: n for v, n in self.pings.items()},
            "delivered": self.delivered,
            "recovered": self.recovered,
            "gaps": {r.value: n for r, n in self.gaps.items()},
            "join_attempts": self.join_attempts,
            "store_write_failures": self.store_write_failures,
            "outage_seconds": {"count": self.outage_count, "sum": self.outage_sum},
        }


@dataclasses.dataclass(frozen=True, slots=True)
class RoomHealth:
    """One tracked room, as ``guard.health()`` sees it. Times are UNIX times."""

    jid: Hashable
    state: State
    nick: str
    wanted: bool
    #: last proof of membership: room traffic or a self-ping answered as joined
    last_confirmed: float | None
    #: the current outage: the drop, a stream loss while joined, or (a room not
    #: joined yet in this process) when this process began to want it; None
    #: while joined
    outage_since: float | None
    outage_seconds: float | None
    drops: int
    last_cause: Cause | None
    ping_pending: bool
    #: joined, reading what was missed (archive), live messages held back
    recovering: bool
    #: where the join stands (record.Phase name, lower case: "idle", "timer", ...)
    join_phase: str
    #: join presences sent in the current outage (the one in flight included;
    #: 0 while joined)
    attempts: int
    gaps: int
    healthy: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "room": str(self.jid), "state": self.state.value, "nick": self.nick,
            "wanted": self.wanted, "last_confirmed": self.last_confirmed,
            "outage_since": self.outage_since, "outage_seconds": self.outage_seconds,
            "drops": self.drops,
            "last_cause": self.last_cause.value if self.last_cause else None,
            "ping_pending": self.ping_pending, "recovering": self.recovering,
            "join_phase": self.join_phase, "attempts": self.attempts, "gaps": self.gaps,
            "healthy": self.healthy,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    """The whole account: ``guard.health()``."""

    account: str
    stream_up: bool
    #: UNIX time the stream went down (None while up)
    stream_down_since: float | None
    healthy: bool
    #: why not healthy, one short line per problem (empty when healthy)
    problems: tuple[str, ...]
    #: the bound of a "bounded rejoin" (Settings.health_grace), seconds
    grace: float
    rooms: tuple[RoomHealth, ...]
    counters: Counters
    taken_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account, "stream_up": self.stream_up,
            "stream_down_since": self.stream_down_since, "healthy": self.healthy,
            "problems": list(self.problems), "grace": self.grace,
            "rooms": [r.to_dict() for r in self.rooms],
            "counters": self.counters.to_dict(), "taken_at": self.taken_at,
        }


#: looked up once: a scrape builds a snapshot of every room (1,000 and more)
_JOINED, _GAVE_UP = State.JOINED, State.GAVE_UP
_PROBE, _RECOVER = Phase.PROBE, Phase.RECOVER
_PHASE_NAMES = {phase: phase.name.lower() for phase in Phase}


def _room_health(rec: RoomRecord, jid: Hashable, grace: float, now: float,
                 wall: float) -> RoomHealth:
    state, phase = rec.state, rec.phase
    joined = state is _JOINED
    # last_traffic is core time (0.0: none in this process)
    last_confirmed = wall - now + rec.last_traffic if joined or rec.last_traffic else None
    if joined:
        since = outage = None
        healthy = True
    else:
        since = rec.out_since
        outage = max(0.0, wall - since) if since is not None else None
        healthy = state is not _GAVE_UP and outage is not None and outage < grace
    return RoomHealth(
        jid=jid, state=state, nick=rec.nick, wanted=state is not _GAVE_UP,
        last_confirmed=last_confirmed, outage_since=since, outage_seconds=outage,
        drops=rec.drops, last_cause=rec.last_cause,
        ping_pending=bool(rec.ping) or phase is _PROBE,
        recovering=phase is _RECOVER, join_phase=_PHASE_NAMES[phase],
        attempts=0 if joined else rec.outage_attempts, gaps=rec.gaps, healthy=healthy)


def build_health(rooms: Iterable[RoomRecord], stats: Stats, *, account: str,
                 stream_up: bool, down_since: float | None, grace: float,
                 now: float, wall: float,
                 public_jid: Callable[[Hashable], Hashable] | None = None) -> Health:
    """The snapshot of an account: `now` is core time, `wall` UNIX time;
    `down_since` (core time) is when the stream went down, None while up."""
    problems: list[str] = []
    stream_down_since = None
    if not stream_up:
        stream_down_since = wall - now + down_since if down_since is not None else wall
        down_for = wall - stream_down_since
        if down_for >= grace:
            problems.append(f"stream down for {down_for:.0f} s (grace {grace:g} s)")
    snapshots = []
    for rec in rooms:
        room = _room_health(rec, public_jid(rec.jid) if public_jid else rec.jid,
                            grace, now, wall)
        snapshots.append(room)
        if room.wanted and not room.healthy:
            if room.outage_seconds is None:
                problems.append(f"{room.jid}: {room.state.value}, outage start unknown")
            else:
                problems.append(f"{room.jid}: {room.state.value} for "
                                f"{room.outage_seconds:.0f} s (grace {grace:g} s)")
    return Health(account=account, stream_up=stream_up,
                  stream_down_since=stream_down_since, healthy=not problems,
                  problems=tuple(problems), grace=grace, rooms=tuple(snapshots),
                  counters=stats.snapshot(), taken_at=wall)
