"""
When to self-ping a room, and what its answer means.

Motivation
==========

A room that forgot us says nothing; only a XEP-0410 self-ping finds out. A
ping per message would be wasteful and a ping per period a burst: rooms
joined together (a restart, a reconnect) fall idle together, and a ping for
each at the same second would stay a burst, period after period.

Solution
========

* Traffic only stores a timestamp (:meth:`GuardCore.traffic`); the room's
  PING timer checks it when it fires and re-arms itself if traffic came.
* Idle pings are paced (:meth:`Pinger._pace`): at most
  ``max(min_ping_rate, 1.2 × rooms / ping_idle)`` per second, which spreads
  one ping per room and period over five sixths of the period. A room waits
  at most ``ping_idle / 1.2`` for its turn in the worst burst, and the next
  deadlines keep the spread.
* A *check* (after an error from the room, a refused nick change, a drop in
  a sibling room) does not wait for its turn.
* No ping goes out while the stream is down or our nick is changing
  (XEP-0410 would read the moment as "not joined").
* The reply is read by :mod:`muc_guard.core.selfping`; two item-not-found in
  a row, or a clear "not joined", is a drop.
* Rooms on one MUC service usually drop together, so a drop checks the
  service's other rooms, once per service per ``ping_timeout``: after the
  dropped room's rejoin is answered (or ``sibling_check_delay`` passed), so
  that the checks do not queue ahead of the rejoin.
"""

from __future__ import annotations

import collections
import logging
import math

from .context import CoreContext
from .commands import SendSelfPing
from .events import PingReplied, TimerKind
from .health import bump, ping_verdict
from .policy import Cause
from .record import RoomRecord, State
from .selfping import PingOutcome, read_ping_reply


__all__ = ["Pinger"]

logger = logging.getLogger("muc_guard.core")

PING, PACE, SIBLINGS = TimerKind.PING, TimerKind.PACE, TimerKind.SIBLINGS


class Pinger:
    """The self-ping rules of a :class:`~muc_guard.core.guard.GuardCore`."""

    def __init__(self, core: CoreContext) -> None:
        self.core = core
        self.queue: collections.deque[RoomRecord] = collections.deque()
        self.next_slot = 0.0
        self.pace_armed = False
        #: core time of the last check of each MUC service's rooms
        self.service_checks: dict[str, float] = {}

    # --- arming ---------------------------------------------------------------------

    def arm(self, rec: RoomRecord, at: float | None = None, *, force: bool = False) -> None:
        """Arm the room's PING timer: at `at`, else when it will have been idle."""
        rec.ping_forced = force
        self.core.arm(rec, PING, rec.last_traffic + self.core.settings.ping_idle
                      if at is None else at)

    def soon(self, rec: RoomRecord) -> None:
        """Check the room now, unless a ping is already out."""
        if rec.state is State.JOINED and not rec.ping:
            self.arm(rec, self.core.now, force=True)

    def rearm_all(self) -> None:
        """After a resumed stream or a new ping_idle: every joined room not
        being pinged gets its timer from its own last traffic."""
        for rec in self.core.rooms.values():
            if rec.state is State.JOINED and not rec.ping:
                self.arm(rec)

    def stop(self, rec: RoomRecord) -> None:
        """No more pings for this room (detached, left, gave up)."""
        self.core.cancel(rec, PING)
        rec.ping = 0
        rec.ping_forced = False

    # --- firing ---------------------------------------------------------------------

    def due(self, rec: RoomRecord) -> None:
        """The PING timer fired."""
        core = self.core
        force, rec.ping_forced = rec.ping_forced, False
        if core.closed or rec.state is not State.JOINED or rec.ping:
            return
        now, idle = core.now, core.settings.ping_idle
        due = rec.last_traffic + idle
        if due > now and not force:
            self.arm(rec, due)   # traffic came meanwhile
            return
        if not core.stream_up or rec.nick_change_pending:
            self.arm(rec, now + idle)
            return
        if force:
            self._send(rec)   # a check: no waiting
        else:
            self._pace(rec)

    def _send(self, rec: RoomRecord) -> None:
        rec.ping = self.core.new_attempt()
        self.core.emit(SendSelfPing(rec, rec.ping, rec.nick,
                                    self.core.settings.ping_timeout))

    def _interval(self) -> float:
        settings = self.core.settings
        rate = max(settings.min_ping_rate, 1.2 * len(self.core.rooms) / settings.ping_idle)
        return 1.0 / rate

    def _pace(self, rec: RoomRecord) -> None:
        """Send an idle ping now, or queue it for the next free slot."""
        now = self.core.now
        if not self.queue and now >= self.next_slot:
            self.next_slot = now + self._interval()
            self._send(rec)
            return
        self.queue.append(rec)
        rec.queued_ping = True
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self.pace_armed and self.queue and not self.core.closed:
            self.pace_armed = True
            self.core.arm_global(PACE, self.next_slot)

    def drain(self) -> None:
        """The PACE timer fired: send the pings whose slots have come."""
        core = self.core
        self.pace_armed = False
        now = core.now
        while self.queue and now >= self.next_slot:
            rec = self.queue.popleft()
            rec.queued_ping = False
            if (rec.state is not State.JOINED or core.rooms.get(rec.jid) is not rec
                    or rec.ping or core.armed(rec, PING)):
                continue    # left, dropped, or already pinged or re-armed meanwhile
            if rec.last_traffic + core.settings.ping_idle > now:
                self.arm(rec)     # traffic came while it waited
                continue
            if not core.stream_up or rec.nick_change_pending:
                self.arm(rec, now + core.settings.ping_idle)   # as due() would
                continue
            self.next_slot = max(self.next_slot, now) + self._interval()
            self._send(rec)
        self._schedule_drain()

    # --- replies --------------------------------------------------------------------

    def replied(self, rec: RoomRecord, event: PingReplied) -> None:
        core = self.core
        rec.ping = 0
        if rec.state is not State.JOINED:
            return
        if event.aborted:
            # The stream failed under the ping: its own events take over (a
            # lost stream suspects the room, a resumed one re-arms it), unless
            # it is up again already: then nothing else would.
            if core.stream_up:
                self.arm(rec, core.now + core.settings.ping_idle)
            return
        verdict = read_ping_reply(event.condition, timed_out=event.timed_out)
        bump(core.stats.pings, ping_verdict(verdict, timed_out=event.timed_out))
        outcome = rec.judge.judge(verdict, timed_out=event.timed_out)
        logger.debug("%s: self-ping %s -> %s", rec.jid,
                     "timeout" if event.timed_out else (event.condition or "result"),
                     outcome.value)
        if outcome is PingOutcome.JOINED:
            rec.last_traffic = core.now
            self.arm(rec)
        elif outcome is PingOutcome.RETRY:
            self.arm(rec, core.now + core.settings.ping_idle)
        else:
            core.drops.dropped(rec, Cause.PING, event.condition)

    # --- the other rooms of a service -----------------------------------------------

    def schedule_siblings(self, rec: RoomRecord, *, at_once: bool = False) -> None:
        """After a drop: check the service's other rooms once this room's
        rejoin is answered (:meth:`siblings_now`), at the latest after
        sibling_check_delay; `at_once` when the rejoin itself waits (332,
        a flapping room): then there is no join to let go first."""
        core = self.core
        service = rec.service
        # One round per service at a time, counted from the drop: the drops
        # it finds must not each start another (n drops would cost n² pings).
        if core.now - self.service_checks.get(service, -math.inf) \
                < core.settings.ping_timeout:
            return
        self.service_checks[service] = core.now
        rec.check_siblings = True
        if at_once:
            self.siblings_now(rec)
        else:
            core.arm(rec, SIBLINGS, core.now + core.settings.sibling_check_delay)

    def siblings_after_join(self, rec: RoomRecord) -> None:
        """The rejoin is answered: the round goes out on the next turn, after
        the answer has been handled (on_rejoined fired), not in this one: a
        round over 1,000 rooms costs a millisecond before it."""
        if rec.check_siblings:
            self.core.arm(rec, SIBLINGS, self.core.now)

    def siblings_now(self, rec: RoomRecord) -> None:
        if not rec.check_siblings:
            return
        rec.check_siblings = False
        core = self.core
        core.cancel(rec, SIBLINGS)
        service = rec.service
        since = self.service_checks.get(service, -math.inf)
        # A room that spoke since the drop is proven: no need to ask it.
        siblings = [other for other in core.rooms.values()
                    if other is not rec and other.state is State.JOINED
                    and other.service == service and other.last_traffic <= since]
        if siblings:
            logger.info("%s: checking %d other room(s) on %s", rec.jid, len(siblings),
                        service)
        for other in siblings:
            self.soon(other)
