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

Many rooms rejoin at once after a reconnect or a restart:
:class:`~muc_guard.core.gate.JoinGate` bounds how many joins are in flight.

The random source is injectable so tests need not sleep or guess.
"""

from __future__ import annotations

import random as _random

from .policy import Cause, Decision, decide

__all__ = ["Backoff", "RESTART_SPREAD"]

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
        return min(self.maximum, self.minimum * float(1 << exponent))

    def delay(self, failures: int) -> float:
        """Delay before the next attempt after `failures` consecutive failures."""
        ceiling = self.ceiling(failures)
        return float(self._rng.uniform(ceiling / 2, ceiling))
