"""
When to try the next join.

Motivation
==========

A bot that rejoins too eagerly storms a server that is already in trouble; one
that waits too long misses messages. After a technical removal (333, 330, a
failed ping) the room is usually fine and the first attempt should go out at
once. After 332 the service is restarting, so thousands of clients rejoining
in the same instant would hit it together: spread the first attempt over
1–10 s. Failed attempts back off exponentially up to a cap.

Solution
========

:class:`Backoff` computes delays; it owns no timers. The ceiling doubles with
each failure from ``minimum`` to ``maximum``, and the delay is drawn from the
upper half of ``[0, ceiling]`` ("equal jitter"). Plain full jitter
(``uniform(0, ceiling)``) has no lower bound: a run of small draws can fire
attempts back to back, which is exactly the storm we must avoid. Drawing from
the upper half keeps the spread that decorrelates clients and still bounds the
attempts: at most four in the first ten seconds with the defaults
(at 0, then after ≥1, ≥2, ≥4 s).

A room can also fail *after* a successful join: a server that removes us
with 110+333 right after every join (a "flapping" room) would see one join
per removal if each drop started over at an immediate attempt. So a drop
that comes soon after the rejoin that ended the previous drop counts as one
more failure (``flaps``): its first attempt waits like a failed attempt
would, and the count only starts over once the room stayed joined for
``maximum`` seconds. A flapping room therefore gets no more attempts than a
room that refuses every join.

Many rooms rejoin at once after a reconnect or a restart. :class:`JoinWaves`
bounds how many joins are in flight and lets the waiting ones out in waves
(see its docstring for why not a semaphore).

The random source is injectable so tests need not sleep or guess.
"""

from __future__ import annotations

import asyncio
import collections
import random as _random

from .policy import Cause, Decision, decide

__all__ = ["Backoff", "JoinWaves", "RESTART_SPREAD"]

#: Seconds over which the first attempt after 332 is spread.
RESTART_SPREAD = (1.0, 10.0)


class Backoff:
    """Delays between join attempts of one room."""

    __slots__ = ("minimum", "maximum", "_rng")

    def __init__(self, minimum: float = 1.0, maximum: float = 60.0,
                 rng: _random.Random | None = None) -> None:
        if minimum <= 0 or maximum < minimum:
            raise ValueError(
                f"backoff needs 0 < minimum <= maximum, got {minimum!r}, {maximum!r}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or _random.Random()

    def first_delay(self, cause: Cause | None, flaps: int = 0) -> float:
        """Delay before the first attempt after a drop for `cause`; `flaps`
        counts the drops in a row that came soon after a rejoin."""
        delay = 0.0
        if cause is not None and decide(cause) is Decision.REJOIN_AFTER_RESTART:
            delay = self._rng.uniform(*RESTART_SPREAD)
        if flaps > 0:
            delay = max(delay, self.delay(flaps))
        return delay

    def ceiling(self, failures: int) -> float:
        """Upper bound of the delay after `failures` consecutive failures (≥1)."""
        exponent = min(max(failures, 1), 32)   # 2**32 s is past any cap
        return min(self.maximum, self.minimum * (2 ** exponent))

    def delay(self, failures: int) -> float:
        """Delay before the next attempt after `failures` consecutive failures."""
        ceiling = self.ceiling(failures)
        return self._rng.uniform(ceiling / 2, ceiling)


class JoinWaves:
    """At most `limit` joins in flight; the waiting ones go out in waves.

    A semaphore would admit one waiting join per answer: after the first
    burst every answer wakes one task that sends one presence, and a restart
    with 1,000 rooms pays a loop turn, a TLS record and a parser call per
    room: with 256 in flight, 35 % more client CPU than with no bound (bench
    scenario 4). Here the gate closes when `limit` joins are in flight and
    opens again only when half of them are answered; then the next wave goes
    out at once. The bound holds, and sends and answers batch almost as in
    an unbounded burst (5 % more CPU at 256 in flight).

    Use as ``async with waves: ...``; `limit` (a positive int, checked where
    users set it: ``max_concurrent_joins``) may change at any time and
    applies from the next admission.
    """

    __slots__ = ("limit", "in_flight", "_waiting", "_open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._open = True

    @property
    def waiting(self) -> int:
        return sum(1 for fut in self._waiting if not fut.done())

    async def __aenter__(self) -> None:
        if self._open and not self._waiting and self.in_flight < self.limit:
            self._admit()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()    # admitted, then cancelled before it ran
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        self.in_flight -= 1
        if not self._open and self.in_flight <= self.limit // 2:
            self._open = True
        while self._open and self._waiting and self.in_flight < self.limit:
            fut = self._waiting.popleft()
            if not fut.done():    # else cancelled while waiting
                self._admit()
                fut.set_result(None)

    def _admit(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._open = False
