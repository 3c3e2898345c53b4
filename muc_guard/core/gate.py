"""
How many joins are in flight at once: :class:`JoinGate`.

Many rooms rejoin at once after a reconnect or a restart. A semaphore would
admit one waiting join per answer: after the first burst every answer lets
one join out, and a restart with 1,000 rooms pays a loop turn, a TLS record
and a parser call per room: with 256 in flight, 35 % more client CPU than
with no bound (bench scenario 4). Here the gate closes when `limit` joins
are in flight and opens again only when half of them are answered; then the
next wave goes out at once. The bound holds, and sends and answers batch
almost as in an unbounded burst (5 % more CPU at 256 in flight).

The gate counts; it holds no futures. The core asks :meth:`JoinGate.enter`
for a room, queues the room when refused, and on each :meth:`leave` gets
back the rooms the gate lets out now.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable

__all__ = ["JoinGate"]


class JoinGate:
    """At most `limit` joins in flight; the waiting ones go out in waves.

    `limit` (a positive int, checked where users set it:
    ``max_concurrent_joins``) may change at any time and applies from the
    next admission.
    """

    __slots__ = ("limit", "in_flight", "_waiting", "_open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiting: collections.deque[Hashable] = collections.deque()
        self._open = True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def enter(self, room: Hashable) -> bool:
        """Admit `room` now (True), or queue it until :meth:`leave` lets it out."""
        if self._open and not self._waiting and self.in_flight < self.limit:
            self._admit()
            return True
        self._waiting.append(room)
        return False

    def withdraw(self, room: Hashable) -> None:
        """Take a queued room out of the queue (left, gave up, dropped)."""
        try:
            self._waiting.remove(room)
        except ValueError:
            pass

    def leave(self) -> list[Hashable]:
        """A join is answered; returns the rooms admitted now, in order."""
        self.in_flight -= 1
        if not self._open and self.in_flight <= self.limit // 2:
            self._open = True
        admitted: list[Hashable] = []
        while self._open and self._waiting and self.in_flight < self.limit:
            admitted.append(self._waiting.popleft())
            self._admit()
        return admitted

    def _admit(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._open = False

    def clear(self) -> None:
        self._waiting.clear()
