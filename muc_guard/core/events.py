"""
What the core is told: requests, stream changes, facts, results and timers.

Every input of :class:`~muc_guard.core.guard.GuardCore` is one of these
frozen dataclasses, handed to :meth:`GuardCore.handle` with the time. A
front-end makes them from what it sees: a user's call, a stream signal, a
stanza reduced to its facts (the front-end extracts, the core decides), the
result of a command it ran, or a timer the core asked for. Results name the
attempt they answer (``attempt``), so an answer that arrives after the core
moved on (a join that timed out, a ping to a room since dropped) is
recognised and ignored, the way h2 ignores frames of a closed stream id.

Two inputs are not events, because they come with every message and must
cost nothing when nothing changes: :meth:`GuardCore.traffic` (a stanza from
the room proves membership) and :meth:`GuardCore.offer` (a groupchat
message to deduplicate).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable

from .record import RoomRecord

__all__ = [
    "Event", "TimerKind",
    "JoinRequested", "LeaveRequested", "NickRequested", "NickSent", "StoreLoaded",
    "StreamUp", "StreamDown", "StreamSuspended", "StreamResumed",
    "PresenceKind", "RoomPresence", "ErrorFromRoom", "SubjectSeen",
    "PingReplied", "JoinSucceeded", "JoinFailed", "JoinFailure",
    "ArchiveSupport", "ArchiveRead", "ArchivedMessage", "TimerFired",
]



class TimerKind(enum.Enum):
    """The timers the core arms; at most one of each kind per room."""

    JOIN = "join"              #: the next join attempt (backoff, restart spread)
    PING = "ping"              #: the room's idle self-ping is due (or a check)
    NICK = "nick"              #: a nick change got no answer
    RECLAIM = "reclaim"        #: try to win back the nick a fallback replaced
    ARCHIVE_CHECK = "archive-check"   #: refresh whether the room has an archive
    ARCHIVE_RETRY = "archive-retry"   #: read the archive on after an early end
    SIBLINGS = "siblings"      #: check the other rooms of a service after a drop
    PACE = "pace"              #: the next idle ping's slot (room None)


# --- requests (the user's calls) ----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class JoinRequested:
    """``join()``: want this room. `password` None keeps a known one."""

    room: Hashable
    service: str           #: the MUC service (the room JID's domain)
    nick: str
    password: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LeaveRequested:
    room: Hashable


@dataclasses.dataclass(frozen=True, slots=True)
class NickRequested:
    """``set_nick()``."""

    room: Hashable
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class NickSent:
    """How a :class:`~muc_guard.core.commands.SendNick` went: the room
    confirmed it (`ok`), or refused or never answered it."""

    room: Hashable
    nick: str
    ok: bool
    explicit: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class StoreLoaded:
    """The records a store held for this account. `crashed`: the last
    process did not end cleanly, so an occupant of it may still be in a room."""

    records: tuple[RoomRecord, ...]
    crashed: bool


# --- the stream -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StreamUp:
    """A new stream, bound to `resource`."""

    resource: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StreamDown:
    """The stream is gone (no resumption); `resource` was its resource."""

    resource: str | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSuspended:
    """XEP-0198 hibernation: the rooms may survive."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamResumed:
    pass


# --- facts from stanzas -------------------------------------------------------------


class PresenceKind(enum.Enum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    ERROR = "error"


@dataclasses.dataclass(frozen=True, slots=True)
class RoomPresence:
    """A presence from an occupant JID of the room, reduced to its facts.

    Whether it concerns us (our nick, the nick we asked for, status 110)
    and what it means (a removal, a nick change, traffic) is decided by the
    core, by the tables in :mod:`muc_guard.core.policy`."""

    room: Hashable
    nick: str
    kind: PresenceKind
    codes: frozenset[int] = frozenset()
    destroyed: bool = False
    #: the nick a 303 names
    new_nick: str | None = None
    #: the ``<status/>`` text, for the log
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorFromRoom:
    """A message error from the room: a reason to check, not proof."""

    room: Hashable


@dataclasses.dataclass(frozen=True, slots=True)
class SubjectSeen:
    """The subject ends the room's history replay (XEP-0045 §7.2.14)."""

    room: Hashable


# --- results of commands ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PingReplied:
    """The reply to a :class:`~muc_guard.core.commands.SendSelfPing`.

    `condition` is the error condition (None for a result); `timed_out`
    says no reply came; `aborted` says the stream failed first."""

    room: Hashable
    attempt: int
    condition: str | None = None
    timed_out: bool = False
    aborted: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class JoinSucceeded:
    room: Hashable
    attempt: int
    nick: str | None = None    #: the nick the room gave us (210), if known


class JoinFailure(enum.Enum):
    ERROR = "error"            #: the room answered an error
    TIMEOUT = "timeout"        #: no answer within join_timeout
    EXITED = "exited"          #: removed again before the join completed
    CONNECTION = "connection"  #: the stream failed
    CRASH = "crash"            #: a bug: logged by the front-end, retried


@dataclasses.dataclass(frozen=True, slots=True)
class JoinFailed:
    room: Hashable
    attempt: int
    failure: JoinFailure
    condition: str | None = None
    error_type: str | None = None
    #: the exception to hand to join() waiters (the room's error)
    exception: BaseException | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveSupport:
    """Whether the room advertises XEP-0313 (None: no answer)."""

    room: Hashable
    found: bool | None
    attempt: int = 0       #: the join attempt that asked, 0 for a later check


@dataclasses.dataclass(frozen=True, slots=True)
class ArchivedMessage:
    message: object        #: the front-end's message, handed back to it
    archive_id: str
    stamp: float           #: the archive's timestamp (server clock)
    stanza_id: str | None
    nick: str
    body: str


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveRead:
    """One read of the archive after the position (see muc_guard.aioxmpp.recovery)."""

    room: Hashable
    attempt: int
    found: tuple[ArchivedMessage, ...]
    complete: bool = False
    #: an early end a later read can make good
    retry: bool = False
    #: the stream went away: the rejoin after the reconnect reads again
    lost_stream: bool = False
    #: what ended it early and will not get better (for the log)
    error: str | None = None
    #: the server's time when the read ended (archived stamps never pass it)
    server_now: float = 0.0
    #: the archive no longer knew our last message's id: the read went by time
    expired: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class TimerFired:
    room: Hashable | None
    kind: TimerKind


Event = (JoinRequested | LeaveRequested | NickRequested | NickSent | StoreLoaded
         | StreamUp | StreamDown | StreamSuspended | StreamResumed
         | RoomPresence | ErrorFromRoom | SubjectSeen
         | PingReplied | JoinSucceeded | JoinFailed | ArchiveSupport | ArchiveRead
         | TimerFired)
