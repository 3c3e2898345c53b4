"""
The rooms this client wants to be in.

Each tracked room is a :class:`TrackedRoom`: what the user asked for
(room JID, nick, password), what the room really gave us (the nick after a
210 rewrite), where it stands (:class:`State`) and its history (drop count,
last cause, timestamps). The guard owns these records; users see immutable
:class:`RoomInfo` snapshots from :meth:`MUCGuard.rooms`, so nothing they do
with one can corrupt the guard's state.

State machine::

    JOINING ──joined──► JOINED ──drop (rejoin)──► REJOINING ──joined──► JOINED
       │                  │                           │
       └──permanent───────┴──drop (room's will)───────┴──► GAVE_UP ──join()──► JOINING

``JOINING`` is a room wanted but never joined in this process (new, or
restored from the store); ``REJOINING`` follows a drop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import TYPE_CHECKING, Any

import aioxmpp

from .continuity import Position, RoomStream
from .policy import Cause
from .selfping import PingJudge

if TYPE_CHECKING:  # pragma: no cover
    import aioxmpp.muc

__all__ = ["State", "RoomInfo", "TrackedRoom", "merge_stored"]


class State(enum.Enum):
    JOINING = "joining"
    JOINED = "joined"
    REJOINING = "rejoining"
    GAVE_UP = "gave-up"


@dataclasses.dataclass(frozen=True, slots=True)
class RoomInfo:
    """A snapshot of one tracked room, as returned by :meth:`MUCGuard.rooms`."""

    jid: aioxmpp.JID
    nick: str                         #: the nick the room gave us (210 included)
    requested_nick: str               #: the nick we asked for
    state: State
    drops: int                        #: drops detected so far (persisted)
    last_cause: Cause | None
    last_joined: float | None         #: UNIX time of the last successful join
    last_dropped: float | None        #: UNIX time of the last drop
    room: "aioxmpp.muc.Room | None" = dataclasses.field(default=None, compare=False)
    last_downtime: float | None = None  #: seconds from the last drop to its rejoin
    has_password: bool = False


@dataclasses.dataclass(slots=True, eq=False)
class TrackedRoom:
    """The guard's own record of a room; persisted fields first."""

    jid: aioxmpp.JID
    requested_nick: str
    nick: str
    password: str | None = dataclasses.field(default=None, repr=False)
    state: State = State.JOINING
    drops: int = 0
    last_cause: Cause | None = None
    last_joined: float | None = None
    last_dropped: float | None = None
    added: float | None = None
    #: seconds from the last drop to the rejoin that ended it
    last_downtime: float | None = None
    #: the last message delivered by on_message (persisted, lazily)
    position: Position = Position()   # immutable: one shared empty position

    # --- runtime only ---
    stream: RoomStream | None = None
    room: Any = None                  #: the aioxmpp Room while joined or joining
    #: loop time of the last stanza from the room (proof of membership)
    last_traffic: float = 0.0
    judge: PingJudge = dataclasses.field(default_factory=PingJudge)
    ping_timer: asyncio.TimerHandle | None = None
    ping_task: "asyncio.Task[None] | None" = None
    join_task: "asyncio.Task[None] | None" = None
    #: (delay, failures) of a join loop asked for while one was still running
    next_join: tuple[float, int] | None = None
    #: futures of join() callers waiting for this room; None while nobody
    #: waits, as in almost every room (an empty list per room is 56 B)
    waiters: "list[asyncio.Future[Any]] | None" = None
    #: set after a drop or a restore: the next successful join fires on_rejoined
    announce_rejoin: bool = False
    #: joined at least once (or restored): permanent errors no longer mean "bad join()"
    confirmed: bool = False
    nick_change_pending: bool = False
    #: the nick asked for in a change still unanswered
    pending_nick: str | None = None
    #: ends a nick change that gets no answer (after ping_timeout)
    nick_timer: asyncio.TimerHandle | None = None
    #: set while we hold a fallback nick: the nick to win back
    preferred_nick: str | None = None
    reclaim_timer: asyncio.TimerHandle | None = None
    #: does the room advertise a XEP-0313 archive? (None: not asked yet; persisted)
    has_archive: bool | None = None
    #: asked (or refreshed) in this process
    archive_checked: bool = False
    #: we may still be an occupant (restored from the store, or the stream
    #: was lost): self-ping before the next join attempt
    probe: bool = False
    #: UNIX time the stream was lost while joined; the drop is confirmed (and
    #: announced) only once the probe says the room let us go
    suspect_since: float | None = None
    #: loop time of the rejoin that ended the last drop of the room itself
    #: (not a stream loss), and whether that rejoin is still to come
    rejoined_at: float | None = None
    drop_pending: bool = False
    #: drops in a row that each came soon after such a rejoin (see rejoin.py)
    flaps: int = 0

    @property
    def wanted(self) -> bool:
        return self.state is not State.GAVE_UP

    def snapshot(self) -> RoomInfo:
        return RoomInfo(
            jid=self.jid,
            nick=self.nick,
            requested_nick=self.requested_nick,
            state=self.state,
            drops=self.drops,
            last_cause=self.last_cause,
            last_joined=self.last_joined,
            last_dropped=self.last_dropped,
            last_downtime=self.last_downtime,
            room=self.room if self.state is State.JOINED else None,
            has_password=self.password is not None,
        )

    def cancel_timers(self) -> None:
        if self.nick_timer is not None:
            self.nick_timer.cancel()
            self.nick_timer = None
        if self.reclaim_timer is not None:
            self.reclaim_timer.cancel()
            self.reclaim_timer = None
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        if self.ping_task is not None and not self.ping_task.done():
            self.ping_task.cancel()
        self.ping_task = None


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def merge_stored(rec: TrackedRoom, stored: TrackedRoom) -> None:
    """Fold a stored record into one join() made before the store was open.

    The record in memory says what the bot wants now (nick, password,
    wanted); the stored one what was learnt before (where its messages
    stand, drops, the archive, the nick the room gave). An empty record must
    not overwrite that knowledge, or the next rejoin asks for no history and
    everything said while the bot was down is lost.
    """
    rec.confirmed = True
    rec.drops += stored.drops          # memory counted this process only
    if rec.last_cause is None:
        rec.last_cause = stored.last_cause
    rec.last_joined = _latest(rec.last_joined, stored.last_joined)
    rec.last_dropped = _latest(rec.last_dropped, stored.last_dropped)
    if stored.added is not None and (rec.added is None or stored.added < rec.added):
        rec.added = stored.added
    if rec.last_downtime is None:
        rec.last_downtime = stored.last_downtime
    if rec.has_archive is None:
        rec.has_archive = stored.has_archive
    if rec.password is None:
        rec.password = stored.password
    if rec.position.last_ts is None and rec.position.last_id is None:
        rec.position = stored.position
        if rec.stream is not None and rec.stream.delivered == 0:
            rec.stream = None          # rebuilt from the stored position
    if rec.state is not State.JOINED and rec.requested_nick == stored.requested_nick:
        rec.nick = stored.nick         # the nick the room gave us (210)
