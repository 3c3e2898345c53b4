"""
XEP-0410 (MUC Self-Ping) 1.1.0: reading the reply.

Motivation
==========

When a room says nothing, the only way to learn whether we are still an
occupant is to ping our own occupant JID: the MUC either routes the ping to
one of our sessions (we are joined) or answers it with an error (we are not).
The catch is that the answers overlap: ``item-not-found`` means "joined, your
nick just changed" in the spec, but Prosody and ejabberd also send it for a
room that no longer exists; and a ``remote-server-*`` error or no answer at
all says nothing about the room.

Solution
========

:func:`read_ping_reply` maps a reply to a :class:`PingVerdict` by the table in
XEP-0410 §3.2, and :class:`PingJudge` turns a sequence of verdicts into a
decision: one ``item-not-found`` is inconclusive, two consecutive ones mean
the room forgot us. A timeout is not a reply, so it neither confirms nor
breaks such a pair; any other reply does.
"""

from __future__ import annotations

import enum

__all__ = ["PingVerdict", "read_ping_reply", "PingJudge", "PingOutcome"]


class PingVerdict(enum.Enum):
    JOINED = "joined"
    NICK_CHANGED = "nick-changed"   #: item-not-found: inconclusive on its own
    UNDECIDED = "undecided"         #: remote-server-*, or no reply
    NOT_JOINED = "not-joined"


#: XEP-0410 §3.2: the MUC forwarded the ping to one of our own clients, which
#: does not implement ping or said so: we are joined.
_JOINED_ERRORS = frozenset({"service-unavailable", "feature-not-implemented"})
#: XEP-0410 1.1.0: a remote server failing tells nothing about the room.
_UNDECIDED_ERRORS = frozenset({"remote-server-not-found", "remote-server-timeout"})


def read_ping_reply(error_condition: str | None, *, timed_out: bool = False) -> PingVerdict:
    """Interpret a self-ping reply: ``None`` condition means an IQ result."""
    if timed_out:
        return PingVerdict.UNDECIDED
    if error_condition is None or error_condition in _JOINED_ERRORS:
        return PingVerdict.JOINED
    if error_condition == "item-not-found":
        return PingVerdict.NICK_CHANGED
    if error_condition in _UNDECIDED_ERRORS:
        return PingVerdict.UNDECIDED
    # not-acceptable (recommended), not-allowed, bad-request, anything else.
    return PingVerdict.NOT_JOINED


class PingOutcome(enum.Enum):
    JOINED = "joined"          #: membership proven
    RETRY = "retry"            #: no decision: ping again after the idle time
    NOT_JOINED = "not-joined"  #: rejoin


class PingJudge:
    """Decides on a room's membership from consecutive self-ping replies."""

    __slots__ = ("_item_not_found",)

    def __init__(self) -> None:
        self._item_not_found = 0

    def reset(self) -> None:
        """Traffic from the room proves membership and breaks any pair."""
        self._item_not_found = 0

    def judge(self, verdict: PingVerdict, *, timed_out: bool = False) -> PingOutcome:
        if verdict is PingVerdict.NICK_CHANGED:
            self._item_not_found += 1
            if self._item_not_found >= 2:
                self._item_not_found = 0
                return PingOutcome.NOT_JOINED
            return PingOutcome.RETRY
        if timed_out:
            # Not a reply: keeps a pending item-not-found pending.
            return PingOutcome.RETRY
        self._item_not_found = 0
        if verdict is PingVerdict.JOINED:
            return PingOutcome.JOINED
        if verdict is PingVerdict.NOT_JOINED:
            return PingOutcome.NOT_JOINED
        return PingOutcome.RETRY
