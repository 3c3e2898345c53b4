"""
The rooms this client wants to be in: one :class:`RoomRecord` each.

A record holds what the user asked for (room, nick, password), what the room
really gave us (the nick after a 210 rewrite), where it stands
(:class:`State`), its history (drop count, last cause, timestamps; these
persist) and the core's runtime bookkeeping: which join attempt and which
self-ping are in flight, which timers are armed, the nick change under way.
Only :class:`~muc_guard.core.guard.GuardCore` changes a record; users see
immutable :class:`RoomInfo` snapshots, so nothing they do with one can
corrupt the guard's state.

State machine::

    JOINING ──joined──► JOINED ──drop (rejoin)──► REJOINING ──joined──► JOINED
       │                  │                           │
       └──permanent───────┴──drop (room's will)───────┴──► GAVE_UP ──join()──► JOINING

``JOINING`` is a room wanted but never joined in this process (new, or
restored from the store); ``REJOINING`` follows a drop.

Beside the state, a wanted room that is not joined is always somewhere in
its join *phase* (:class:`Phase`): waiting for a timer, for the stream, for
a slot, for a probe, for the archive answer, for the join itself, or
reading the archive after it. ``IDLE`` with a wanted, unjoined room and the
stream up is a bug, and :mod:`muc_guard.core.invariants` says so.

A bot may track thousands of rooms, so the yes/no facts share one int
(:attr:`RoomRecord.flags`, read through properties) instead of a slot each.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable

from .continuity import Position, RoomStream
from .policy import Cause
from .selfping import PingJudge

__all__ = ["State", "Phase", "RoomInfo", "RoomRecord", "merge_stored"]


class State(enum.Enum):
    JOINING = "joining"
    JOINED = "joined"
    REJOINING = "rejoining"
    GAVE_UP = "gave-up"


class Phase(enum.IntEnum):
    """Where a room's join stands (IDLE: no join under way)."""

    IDLE = 0
    TIMER = 1          #: waiting for the JOIN timer (backoff, restart spread)
    STREAM = 2         #: waiting for the stream to come (back) up
    SLOT = 3           #: waiting for a join slot (max_concurrent_joins)
    PROBE = 4          #: self-ping before rejoining: still an occupant?
    ARCHIVE = 5        #: asking whether the room has an archive
    JOIN = 6           #: the join presence is out
    RECOVER = 7        #: joined; reading the archive, live messages wait


@dataclasses.dataclass(frozen=True, slots=True)
class RoomInfo:
    """A snapshot of one tracked room, as returned by :meth:`MUCGuard.rooms`."""

    jid: Hashable                     #: the room's JID (an aioxmpp.JID in aioxmpp)
    nick: str                         #: the nick the room gave us (210 included)
    requested_nick: str               #: the nick we asked for
    state: State
    drops: int                        #: drops detected so far (persisted)
    last_cause: Cause | None
    last_joined: float | None         #: UNIX time of the last successful join
    last_dropped: float | None        #: UNIX time of the last drop
    #: the front-end's room object while joined (an aioxmpp.muc.Room)
    room: object = dataclasses.field(default=None, compare=False)
    last_downtime: float | None = None  #: seconds from the last drop to its rejoin
    has_password: bool = False


def _flag(bit: int, doc: str) -> property:
    def get(self: RoomRecord) -> bool:
        return bool(self.flags & bit)

    def set_(self: RoomRecord, value: bool) -> None:
        self.flags = self.flags | bit if value else self.flags & ~bit

    return property(get, set_, doc=doc)


@dataclasses.dataclass(slots=True, eq=False)
class RoomRecord:
    """The guard's own record of a room; persisted fields first."""

    jid: Hashable
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
    #: does the room advertise a XEP-0313 archive? (None: not asked yet; persisted)
    has_archive: bool | None = None
    #: the MUC service (the room JID's domain): rooms on one service drop together
    service: str = ""

    # --- runtime only ---
    stream: RoomStream | None = None
    #: core time of the last stanza from the room (proof of membership)
    last_traffic: float = 0.0
    judge: PingJudge = dataclasses.field(default_factory=PingJudge)
    phase: Phase = Phase.IDLE
    #: the join attempt (or probe, or archive read) in flight; 0 for none
    attempt: int = 0
    #: the self-ping in flight; 0 for none
    ping: int = 0
    #: armed timers, one bit per TimerKind (see GuardCore._arm)
    timers: int = 0
    #: counters of the running join sequence: failed attempts, permanent
    #: errors and nick conflicts in a row
    failures: int = 0
    permanent: int = 0
    conflicts: int = 0
    #: (delay, failures) of a join asked for while one was under way
    next_join: tuple[float, int] | None = None
    #: the nick asked for in a change still unanswered ("" when a 303 named none)
    pending_nick: str | None = None
    #: the nick the join in flight asked for (rec.nick may change meanwhile)
    join_nick: str | None = None
    #: set while we hold a fallback nick: the nick to win back
    preferred_nick: str | None = None
    #: UNIX time the stream was lost while joined; the drop is confirmed (and
    #: announced) only once the probe says the room let us go
    suspect_since: float | None = None
    #: core time of the rejoin that ended the last drop of the room itself
    #: (not a stream loss); see _count_flap
    rejoined_at: float | None = None
    #: drops in a row that each came soon after such a rejoin (see backoff.py)
    flaps: int = 0
    flags: int = 0
    #: UNIX time the room's current outage began (the drop, the stream loss
    #: while joined, or this process starting to want it); None while joined
    out_since: float | None = None
    #: join presences sent since that outage began (the health snapshot, the log)
    outage_attempts: int = 0
    #: gaps reported for this room by this process
    gaps: int = 0
    #: the front-end's own per-room state; the core never reads it
    io: object = None

    announce_rejoin = _flag(1, "The next successful join fires on_rejoined.")
    confirmed = _flag(2, "Joined at least once (or restored): permanent errors no "
                         "longer mean a bad join() call.")
    archive_checked = _flag(4, "Archive support asked (or refreshed) in this process.")
    probe = _flag(8, "We may still be an occupant: self-ping before the next join.")
    drop_pending = _flag(16, "A drop counted by _count_flap awaits its rejoin.")
    ping_forced = _flag(32, "The PING timer is a check: no pacing, no idle wait.")
    holds_slot = _flag(64, "The join attempt holds one of the join slots.")
    check_siblings = _flag(128, "Self-ping the service's other rooms once this "
                                "room's rejoin is answered.")
    queued_ping = _flag(256, "Waiting in the idle-ping pace queue.")

    @property
    def wanted(self) -> bool:
        return self.state is not State.GAVE_UP

    @property
    def nick_change_pending(self) -> bool:
        return self.pending_nick is not None

    def snapshot(self, room: object = None) -> RoomInfo:
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
            room=room if self.state is State.JOINED else None,
            has_password=self.password is not None,
        )


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def merge_stored(rec: RoomRecord, stored: RoomRecord) -> None:
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
