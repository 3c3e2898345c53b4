"""
What the core asks its front-end to do.

Each command names the room's :class:`~muc_guard.core.record.RoomRecord`
(``rec``), so the front-end finds its own per-room state (``rec.io``) without
a lookup, even for a room the core has just forgotten.

:meth:`GuardCore.handle` returns a list of these, in the order they are to
run. The front-end runs each and reports results back as events
(:mod:`muc_guard.core.events`), naming the ``attempt`` a command carried.
Nothing here says *how*: a :class:`SendJoin` is a MUCClient join in aioxmpp
and an ``xep_0045`` join in slixmpp; a timer is ``loop.call_at``.
"""

from __future__ import annotations

import dataclasses

from .events import TimerKind
from .health import GapReason
from .policy import Cause
from .record import RoomRecord

__all__ = [
    "Command",
    "SendJoin", "CancelJoin", "SendSelfPing", "SendNick", "QueryArchiveSupport",
    "ReadArchive", "ArmTimer", "CancelTimer", "Detach", "Persist", "Forget",
    "Dropped", "Rejoined", "GaveUp", "Gap", "Deliver", "ResolveWaiters",
]



@dataclasses.dataclass(frozen=True, slots=True)
class SendJoin:
    """Join (or rejoin) the room; answer with JoinSucceeded or JoinFailed.

    `archive`: recover from the room's XEP-0313 archive after the join, so
    ask for no history; otherwise ask for history since `recover_from` (a
    UNIX time on the server's clock) or, when that is None, for none.
    `recover_from` is what the core knows; the front-end turns a
    `last_joined` (local clock) into the server's time when there is no
    position (see :func:`muc_guard.core.continuity.recover_since`).
    `rejoin`: the room was joined before (a 201 then means it vanished)."""

    rec: RoomRecord
    attempt: int
    nick: str
    password: str | None
    archive: bool
    position_ts: float | None
    last_joined: float | None
    rejoin: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CancelJoin:
    """Stop whatever runs for the room's join (attempt, probe, archive read)."""

    rec: RoomRecord


@dataclasses.dataclass(frozen=True, slots=True)
class SendSelfPing:
    """XEP-0410: ping our own occupant JID; answer with PingReplied.
    `probe`: the check before a rejoin (after a lost stream or a crash)."""

    rec: RoomRecord
    attempt: int
    nick: str
    timeout: float
    probe: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SendNick:
    """Ask the room for `nick`; answer with NickSent (and the room's presence).
    `explicit`: the user's own request, which its caller awaits (set_nick)."""

    rec: RoomRecord
    nick: str
    explicit: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class QueryArchiveSupport:
    """Does the room advertise XEP-0313? Answer with ArchiveSupport."""

    rec: RoomRecord
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReadArchive:
    """Read the archive after (`after_id`, else from `since_ts`); answer with ArchiveRead."""

    rec: RoomRecord
    attempt: int
    after_id: str | None
    position_ts: float | None
    last_joined: float | None
    limit: int


@dataclasses.dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)arm the room's timer of `kind` to fire at `at` (the core's clock);
    answer with TimerFired. Arming replaces an armed timer of that kind."""

    rec: RoomRecord | None
    kind: TimerKind
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class CancelTimer:
    rec: RoomRecord | None
    kind: TimerKind


@dataclasses.dataclass(frozen=True, slots=True)
class Detach:
    """We are (maybe) no longer in the room: forget its Room object and
    stop the self-ping in flight."""

    rec: RoomRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Persist:
    """Store the room's record: within the batch delay, or `now`."""

    rec: RoomRecord
    now: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Forget:
    """Delete the room's record from the store."""

    rec: RoomRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Dropped:
    """Signal: a removal we did not ask for (`reason`: the room's status text)."""

    rec: RoomRecord
    cause: Cause
    reason: str | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Rejoined:
    """Signal: back in the room after a drop or a restart. `downtime`:
    seconds from the drop (None after a restart without one); `attempts`:
    join presences sent in the outage."""

    rec: RoomRecord
    # for the log and the metrics; not what the signal means (compare=False)
    downtime: float | None = dataclasses.field(default=None, compare=False)
    attempts: int = dataclasses.field(default=0, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class GaveUp:
    """Signal: the guard will not rejoin on its own (`attempts`: join
    presences sent since the room was last joined)."""

    rec: RoomRecord
    cause: Cause
    attempts: int = dataclasses.field(default=0, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """Signal: recovery could not fill the outage from `since` to `until`
    (UNIX times on the server's clock): messages said then are lost to us."""

    rec: RoomRecord
    since: float
    until: float
    reason: GapReason


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """Hand a message to the user (on_message), exactly once; the room's
    position moved with it (store it lazily)."""

    rec: RoomRecord
    message: object
    recovered: bool
    own: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ResolveWaiters:
    """Wake the join() calls waiting for the room: with its Room when
    `error` is None and `joined`, else with `error` (or the exception the
    join failed with, `exception`)."""

    rec: RoomRecord
    joined: bool = False
    error: str | None = None       #: "left", "gave-up", "refused", "shutdown"
    cause: Cause | None = None
    exception: BaseException | None = dataclasses.field(default=None, compare=False)


Command = (SendJoin | CancelJoin | SendSelfPing | SendNick | QueryArchiveSupport
           | ReadArchive | ArmTimer | CancelTimer | Detach | Persist | Forget
           | Dropped | Rejoined | GaveUp | Gap | Deliver | ResolveWaiters)
