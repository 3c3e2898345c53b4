"""
Why we left a room, and what to do about it.

Motivation
==========

A room can end our membership in many ways, and servers disagree about how
they say it: Prosody kicks a client whose session bounced a stanza with
``110+333``, its mod_ping_muc documentation shows ``110+330``, ejabberd sends a
bare ``110`` with the reason in ``<status/>``, and Openfire sends ``110+307``.
Some of these are the room's will (a kick, a ban, a destruction), which a
well-behaved client must respect; the rest are technical accidents, which it
should heal by rejoining.

Solution
========

Both questions are answered by data, not by nested conditions:

* :data:`REMOVAL_MARKERS` is an ordered table from status code (or the
  ``<destroy/>`` element) to :class:`Cause`. The first marker present wins, so
  the order *is* the precedence: the room's will beats a technical code, and
  XEP-0045 §9.4 says 307 must be ignored when 333 is present.
* :data:`DECISIONS` maps every :class:`Cause` to a :class:`Decision`.
* :func:`classify_join_error` tells permanent join errors (give up) from
  transient ones (retry with backoff).

Nothing here touches the network; :mod:`muc_guard.mixin` feeds it what it saw.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "Cause",
    "Decision",
    "DECISIONS",
    "REMOVAL_MARKERS",
    "DESTROY",
    "classify_removal",
    "decide",
    "classify_join_error",
]


class Cause(enum.Enum):
    """Why a room stopped counting us as an occupant."""

    SERVER_ERROR = "server-error"          #: 333: removed after an error bounce
    SERVICE_SHUTDOWN = "service-shutdown"  #: 332: the MUC service is going down
    REMOTE_LOST = "remote-lost"            #: 330: non-standard, from mod_ping_muc docs
    UNEXPLAINED = "unexplained"            #: unavailable self-presence, no marker
    PING = "ping"                          #: XEP-0410 self-ping says "not joined"
    STREAM_LOST = "stream-lost"            #: our stream ended without resumption
    KICKED = "kicked"                      #: 307 alone
    BANNED = "banned"                      #: 301
    AFFILIATION = "affiliation"            #: 321: affiliation change removed us
    MEMBERS_ONLY = "members-only"          #: 322: room became members-only
    DESTROYED = "destroyed"                #: <destroy/> in the self-presence
    JOIN_ERROR = "join-error"              #: rejoining keeps failing permanently


class Decision(enum.Enum):
    """What the guard does after a drop."""

    REJOIN = "rejoin"                  #: rejoin at once, backoff on failure
    REJOIN_AFTER_RESTART = "restart"   #: wait a jittered while, then rejoin
    GIVE_UP = "give-up"                #: the room's will: never rejoin on our own


#: Sentinel marker for the ``<destroy/>`` child of a self-presence.
DESTROY = "destroy"

#: Ordered: the first marker found in a removal decides its cause.
REMOVAL_MARKERS: tuple[tuple[int | str, Cause], ...] = (
    (DESTROY, Cause.DESTROYED),
    (301, Cause.BANNED),
    (321, Cause.AFFILIATION),
    (322, Cause.MEMBERS_ONLY),
    (333, Cause.SERVER_ERROR),      # before 307: XEP-0045 says ignore 307 then
    (307, Cause.KICKED),
    (332, Cause.SERVICE_SHUTDOWN),
    (330, Cause.REMOTE_LOST),
)

DECISIONS: dict[Cause, Decision] = {
    Cause.SERVER_ERROR: Decision.REJOIN,
    Cause.REMOTE_LOST: Decision.REJOIN,
    Cause.UNEXPLAINED: Decision.REJOIN,
    Cause.PING: Decision.REJOIN,
    Cause.STREAM_LOST: Decision.REJOIN,
    Cause.SERVICE_SHUTDOWN: Decision.REJOIN_AFTER_RESTART,
    Cause.KICKED: Decision.GIVE_UP,
    Cause.BANNED: Decision.GIVE_UP,
    Cause.AFFILIATION: Decision.GIVE_UP,
    Cause.MEMBERS_ONLY: Decision.GIVE_UP,
    Cause.DESTROYED: Decision.GIVE_UP,
    Cause.JOIN_ERROR: Decision.GIVE_UP,
}

#: 303 on an unavailable self-presence announces a nick change, not a removal.
NICK_CHANGE = 303


def classify_removal(codes: Iterable[int], *, destroyed: bool = False) -> Cause | None:
    """Return the cause of an unavailable self-presence, or None for a nick change.

    Unknown codes are ignored: a self-presence we did not ask for and that
    carries no marker we know is a technical removal (ejabberd sends a bare
    110 after an error bounce), hence :attr:`Cause.UNEXPLAINED`.
    """
    present: set[int | str] = set(int(code) for code in codes)
    if destroyed:
        present.add(DESTROY)
    for marker, cause in REMOVAL_MARKERS:
        if marker in present:
            return cause
    if NICK_CHANGE in present:
        return None
    return Cause.UNEXPLAINED


def decide(cause: Cause) -> Decision:
    return DECISIONS[cause]


# --- join errors ---------------------------------------------------------------

#: Join errors that will not go away by retrying: give up (or raise from join()).
PERMANENT_JOIN_ERRORS = frozenset({
    "forbidden",               # banned, or the room refuses us
    "registration-required",   # members-only room
    "not-authorized",          # password required or wrong
    "not-allowed",             # room creation refused
    "item-not-found",          # room does not exist and cannot be created
    "conflict",                # nick held by another account
    "not-acceptable",          # nick refused by policy (e.g. reserved nicks)
    "jid-malformed",           # invalid nick
    "gone",                    # room moved away for good
    "bad-request",
})

#: Join errors worth retrying at the backoff cap, however long they last.
TRANSIENT_JOIN_ERRORS = frozenset({
    "remote-server-not-found",
    "remote-server-timeout",
    "service-unavailable",     # room full, or the service restarting
    "internal-server-error",
    "resource-constraint",
    "recipient-unavailable",
})


def classify_join_error(condition: str, error_type: str | None = None) -> bool:
    """Return True when a join error is permanent.

    Known conditions decide by the tables above; for others the error type
    does (RFC 6120 §8.3.2: ``wait`` means retry later, the rest do not).
    """
    if condition in PERMANENT_JOIN_ERRORS:
        return True
    if condition in TRANSIENT_JOIN_ERRORS:
        return False
    return error_type not in ("wait", None)
