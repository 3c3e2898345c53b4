"""Hand-built Health snapshots and fake guards (anything with health() is a
guard to muc_guard.metrics), for the tests of the metrics and the CLI."""

from __future__ import annotations

from muc_guard.core.health import GapReason, Health, PingVerdict, RoomHealth, Stats
from muc_guard.core.policy import Cause
from muc_guard.core.record import State


def room(jid: str, state: State = State.JOINED, *, wanted: bool = True,
         outage: float | None = None, phase: str = "idle", healthy: bool = True,
         drops: int = 0, gaps: int = 0) -> RoomHealth:
    return RoomHealth(
        jid=jid, state=state, nick="bot", wanted=wanted, last_confirmed=1000.0,
        outage_since=None if outage is None else 2000.0 - outage, outage_seconds=outage,
        drops=drops, last_cause=Cause.SERVER_ERROR if drops else None, ping_pending=False,
        recovering=False, join_phase=phase, attempts=0, gaps=gaps, healthy=healthy)


def stats() -> Stats:
    s = Stats()
    s.drops = {Cause.SERVER_ERROR: 2, Cause.PING: 1}
    s.rejoins = 3
    s.give_ups = {Cause.KICKED: 1}
    s.pings = {PingVerdict.JOINED: 7, PingVerdict.NOT_JOINED: 1}
    s.delivered, s.recovered = 120, 20
    s.gaps = {GapReason.ARCHIVE_LIMIT: 1}
    s.join_attempts = 9
    s.store_write_failures = 2
    s.observe_outage(0.3)
    s.observe_outage(42.0)
    return s


def health(account: str = "bot@example.org", rooms: tuple[RoomHealth, ...] = (),
           *, healthy: bool = True, stream_up: bool = True,
           problems: tuple[str, ...] = (), s: Stats | None = None) -> Health:
    return Health(account=account, stream_up=stream_up,
                  stream_down_since=None if stream_up else 1990.0, healthy=healthy,
                  problems=problems, grace=120.0, rooms=rooms,
                  counters=(s or stats()).snapshot(), taken_at=2000.0)


class FakeGuard:
    """Anything with health() is a guard to muc_guard.metrics."""

    def __init__(self, h: Health) -> None:
        self.h = h
        self.calls = 0

    def health(self) -> Health:
        self.calls += 1
        return self.h


class BrokenGuard:
    def health(self) -> Health:
        raise RuntimeError("boom")


MIXED = (room("a@muc.example.org"),
         room("b@muc.example.org", State.REJOINING, outage=75.0, phase="join", healthy=False,
              drops=2),
         room("c@muc.example.org", State.JOINING, outage=5.0, phase="timer"),
         room("d@muc.example.org", State.GAVE_UP, wanted=False, drops=1, gaps=1))


