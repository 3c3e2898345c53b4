"""
muc_guard's deciding core: pure, no I/O.

Events in, commands out::

    front-end (aioxmpp, slixmpp)                   core (this package)
    stanzas, stream signals, timers ──► events ──► GuardCore.handle(event, now)
    joins, pings, timers, store, signals ◄── commands ◄──┘

Nothing here imports asyncio, an XMPP library or sqlite; the clock and the
random source are inputs. Where to read first: :mod:`.guard` (the state
machine and its dispatch table) and :mod:`.context` (what its parts share),
then :mod:`.joins`, :mod:`.pings`, :mod:`.nicks` and :mod:`.drops` (the
rules), :mod:`.policy` (servers' codes and errors as data),
:mod:`.selfping` (XEP-0410 replies), :mod:`.continuity` (every message
once), :mod:`.record` (a room's state).
"""

from .commands import Command
from .events import Event, TimerKind
from .guard import LIVE, NOT_NEW, REPLAYED, GuardCore
from .health import Counters, GapReason, Health, PingVerdict, RoomHealth, Stats
from .invariants import violations
from .policy import Cause, Decision
from .record import Phase, RoomInfo, RoomRecord, State
from .settings import Settings

__all__ = ["GuardCore", "Settings", "Event", "Command", "TimerKind", "RoomRecord",
           "RoomInfo", "State", "Phase", "Cause", "Decision", "violations",
           "NOT_NEW", "LIVE", "REPLAYED", "Health", "RoomHealth", "Counters", "Stats",
           "GapReason", "PingVerdict"]
