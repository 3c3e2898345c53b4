"""
The MUC server's clock, as seen from the bot (both front-ends).

Motivation
==========

A rejoin asks the room for ``<history since=...>`` and an archive fallback
asks for messages archived from a ``start`` time. The server compares both
with its own clock. A position taken from the bot's ``time.time()`` is off by
the difference of the two clocks: a bot running 60 s ahead asks for history
from a minute in the server's future and gets nothing back; one running
behind gets a minute of duplicates, which rooms without stanza-ids cannot
tell apart.

Solution
========

:class:`ServerClock` learns the offset of each MUC service's clock through
XEP-0202 (Entity Time): it asks the service domain, then the domain it is
hosted under (``conference.example.org`` -> ``example.org``: Prosody and
ejabberd answer entity time on the host, not on the MUC component), then our
own server. The first answer wins; the offset is re-learnt on every new
stream (clocks get corrected). :meth:`ServerClock.now` is the server's time
at this moment, which is what live messages are stamped with and what a
position may never pass. With no answer at all the offset stays 0 (the bot's
own clock), and that is logged once per stream.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

__all__ = ["ServerClock", "TIME_NS", "candidates", "parse_utc"]

logger = logging.getLogger("muc_guard.clock")

TIME_NS = "urn:xmpp:time"


def parse_utc(text: str | None) -> float | None:
    """A XEP-0082 date-time as a UNIX time (None if unreadable)."""
    if not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def candidates(service: str, account_domain: str | None) -> list[str]:
    """Whom to ask for the clock of a MUC service, in order."""
    out = [service]
    labels = service.split(".")
    if len(labels) > 2:
        out.append(".".join(labels[1:]))
    if account_domain:
        out.append(account_domain)
    return list(dict.fromkeys(out))


class ServerClock:
    """Per MUC service domain: the offset of its clock from ours. A
    front-end supplies the query (:meth:`utc_of`) and our account's domain."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._offsets: dict[str, float] = {}
        #: the learning task per domain in this stream (done or running)
        self._learning: dict[str, asyncio.Task[None]] = {}

    async def utc_of(self, entity: str) -> str | None:
        """XEP-0202: the ``<utc/>`` text `entity` answers; raises on an
        error or no answer within :attr:`timeout`."""
        raise NotImplementedError

    def account_domain(self) -> str | None:
        raise NotImplementedError

    def offset(self, domain: str) -> float:
        """Seconds to add to our clock to get the service's (0 if unknown)."""
        return self._offsets.get(domain, 0.0)

    def now(self, domain: str) -> float:
        """The service's clock now, as a UNIX timestamp."""
        return time.time() + self._offsets.get(domain, 0.0)

    def to_server(self, local_ts: float, domain: str) -> float:
        """One of our own timestamps (e.g. a join time) on the service's clock."""
        return local_ts + self._offsets.get(domain, 0.0)

    def new_stream(self) -> None:
        """Learn again on the next use: the clocks may have been corrected.
        The old offsets stay in use until then; a query still running for
        the old stream finishes (or fails) on its own."""
        self._learning.clear()

    def learned(self, domain: str) -> bool:
        """Whether `domain`'s offset is known for this stream (a join may go
        out at once)."""
        task = self._learning.get(domain)
        return task is not None and task.done()

    async def learn(self, domain: str) -> None:
        """Learn `domain`'s offset once per stream; concurrent callers share
        one query. Never raises (but passes cancellation on)."""
        task = self._learning.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._learn(domain))
            self._learning[domain] = task
        await asyncio.shield(task)

    async def _learn(self, domain: str) -> None:
        account = self.account_domain()
        for entity in candidates(domain, account):
            offset = await self._ask(entity)
            if offset is not None:
                old = self._offsets.get(domain)
                self._offsets[domain] = offset
                if old is None or abs(old - offset) > 1.0:
                    logger.info("%s: server clock %+.1f s from ours (entity time of %s)",
                                domain, offset, entity)
                return
        logger.warning("%s: no entity time from %s: positions use our own clock",
                       domain, ", ".join(candidates(domain, account)))

    async def _ask(self, entity: str) -> float | None:
        sent = time.time()
        try:
            text = await self.utc_of(entity)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an error reply, a timeout, a lost stream, garbage
            logger.debug("%s: entity time failed (%r)", entity, exc)
            return None
        received = time.time()
        server = parse_utc(text)
        if server is None:
            logger.debug("%s: entity time without a usable <utc/>", entity)
            return None
        if "." not in (text or ""):
            server += 0.5   # whole seconds (Prosody): the true time is within the second
        return server - (sent + received) / 2
