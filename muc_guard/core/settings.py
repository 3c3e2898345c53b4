"""
Every setting of the guard, with its default and its reason.

Front-ends expose these under the same names (aioxmpp: attributes of
``MUCGuard``; slixmpp: the plugin's config), so a setting means the same
everywhere. Some are read only by the front-end (timeouts of I/O it runs);
they live here so that there is one list.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .backoff import Backoff
from .gate import JoinGate

__all__ = ["Settings", "default_fallback_nick", "DEFAULT_MAX_CONCURRENT_JOINS"]

#: Joins in flight at once (max_concurrent_joins); more go out in waves. Prosody
#: spends ~0.35 ms per join, so a full window is ~0.35 s of server work, far
#: inside join_timeout. A tighter window cost a 1,000-room restart 5-10 % more
#: client CPU and saved the server nothing measurable (bench scenario 4).
DEFAULT_MAX_CONCURRENT_JOINS = 1024


def default_fallback_nick(nick: str, attempt: int) -> str:
    """``bot`` -> ``bot_``, ``bot__``, ...: one more underscore per attempt."""
    return nick + "_" * attempt


class Settings:
    """The guard's settings; `rng` is the random source of every jitter."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        #: seconds of silence from a room before a self-ping
        self.ping_idle = 300.0
        #: seconds to wait for a self-ping reply (and for a nick change's answer)
        self.ping_timeout = 30.0
        #: the watchdog on each join attempt
        self.join_timeout = 30.0
        #: how long leave() waits for the room's answer
        self.leave_timeout = 10.0
        #: consecutive permanent join errors before giving up on a rejoin
        self.permanent_error_limit = 3
        self.backoff = Backoff(1.0, 60.0, self.rng)
        self.gate = JoinGate(DEFAULT_MAX_CONCURRENT_JOINS)
        #: 409 on a rejoin: tries with our nick before falling back (it may be
        #: our own ghost, which the server drops within seconds)
        self.nick_conflict_retries = 2
        self.max_fallback_nicks = 5
        self.fallback_nick: Callable[[str, int], str] = default_fallback_nick
        #: seconds between attempts to win back the nick a fallback replaced
        self.nick_reclaim_interval = 60.0
        #: the idle-ping pace never drops below this many pings per second
        self.min_ping_rate = 10.0
        #: recover missed messages from the room's XEP-0313 archive when it has one
        self.use_archive = True
        self.archive_limit = 1000
        self.archive_page_size = 50     # Prosody's maximum page
        #: self-ping a room we may still be in (after a restart or a lost
        #: stream) before joining it again
        self.probe_before_rejoin = True
        self.probe_timeout = 5.0
        #: come back with the resource stored for this account (front-end)
        self.stable_resource = True
        #: after a drop, the service's other rooms are checked once this
        #: room's rejoin is answered, or after this many seconds: the checks
        #: must not queue ahead of the rejoin (bench scenario 9)
        self.sibling_check_delay = 0.25
        #: that check asks this many random rooms first, and all of them only
        #: when a second drop on the service follows (0: always all)
        self.sibling_sample = 8
        #: health(): a wanted room out for less than this many seconds is in a
        #: bounded rejoin and still counts as healthy (see core/health.py)
        self.health_grace = 120.0

    @property
    def max_concurrent_joins(self) -> int:
        return self.gate.limit

    @max_concurrent_joins.setter
    def max_concurrent_joins(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_concurrent_joins must be a positive int, got {value!r}")
        self.gate.limit = value

    def set_backoff(self, minimum: float, maximum: float) -> None:
        if minimum <= 0 or maximum < minimum:
            raise ValueError(
                f"backoff needs 0 < backoff_min <= backoff_max, got {minimum}, {maximum}")
        self.backoff.minimum, self.backoff.maximum = minimum, maximum
