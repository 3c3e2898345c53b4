"""
One read of a room's archive after our position, and what to make of it.

Motivation
==========

Archive recovery after a rejoin reads what the room said since our last
message, while live messages wait behind it. A read can end early: a page
times out, or the archive answers an error in the middle. Delivering the live
messages then would move the position past everything the archive still
holds but has not returned yet, and those messages would never be asked for
again.

Solution
========

:func:`read_archive` does one read (after our last stanza-id, or from our
timestamp when the archive no longer knows the id) and reports what it got
and whether a later read can get the rest (:attr:`ArchiveRead.retry`). The
engine delivers what was read, which moves the position exactly as far as
the messages recovered in order, and tries again with backoff while
:attr:`ArchiveRead.retry` holds. Only a refusal (the archive will not serve
us: :data:`ARCHIVE_REFUSALS`) or the `limit` ends recovery with a gap, and
that is logged.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

import aioxmpp

from . import mam
from ..core.continuity import Position

__all__ = ["ARCHIVE_REFUSALS", "ArchiveRead", "read_archive"]

logger = logging.getLogger("muc_guard.recovery")

#: Error conditions with which an archive refuses to serve us the range:
#: asking again will not help. Any other error (internal-server-error,
#: resource-constraint, a timeout, a malformed reply) may pass: retry.
ARCHIVE_REFUSALS = frozenset({
    "forbidden", "not-allowed", "not-authorized", "registration-required",
    "feature-not-implemented", "service-unavailable", "bad-request",
})


@dataclasses.dataclass
class ArchiveRead:
    """What one read returned, in archive order, and how it ended."""

    found: list[mam.ArchivedMessage]
    #: the archive said it returned everything up to now
    complete: bool = False
    #: what ended the read early, if anything
    error: BaseException | None = None
    #: the stream went away: the rejoin after the reconnect reads again
    lost_stream: bool = False
    #: the archive no longer knew our last id: read by time instead (a gap
    #: unless it still holds our position's time; the core decides)
    expired: bool = False

    @property
    def retry(self) -> bool:
        """An early end that a later read can make good."""
        if self.error is None or self.lost_stream:
            return False
        if isinstance(self.error, mam.ArchiveQueryError):
            return self.error.condition not in ARCHIVE_REFUSALS
        return True


async def read_archive(client: aioxmpp.Client, room: aioxmpp.JID, position: Position,
                       since: datetime.datetime | None, *, page_size: int, limit: int,
                       timeout: float) -> ArchiveRead:
    """Read the archive after `position` (its id; else from `since`). Never
    raises but for cancellation."""
    expired = False
    try:
        try:
            found, complete = await mam.fetch(
                client, room, after_id=position.last_id,
                since=None if position.last_id else since,
                page_size=page_size, limit=limit, timeout=timeout)
        except mam.ArchiveGapError:
            # Our last id expired from the archive (or never was in it).
            expired = True
            found, complete = await mam.fetch(
                client, room, since=since, page_size=page_size, limit=limit,
                timeout=timeout)
    except mam.ArchiveError as exc:
        logger.warning("%s: archive read ended early after %d message(s): %s",
                       room, len(exc.messages), exc)
        return ArchiveRead(exc.messages, error=exc, expired=expired)
    except (ConnectionError, TimeoutError) as exc:
        logger.warning("%s: archive read interrupted (%r)", room, exc)
        return ArchiveRead([], error=exc, lost_stream=isinstance(exc, ConnectionError))
    return ArchiveRead(found, complete=complete, expired=expired)
