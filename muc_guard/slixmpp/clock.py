"""
The MUC services' clocks, as seen from a slixmpp bot.

The twin of :mod:`muc_guard.aioxmpp.clock` (see there for why): each MUC
service's clock offset is learnt by XEP-0202 (Entity Time), asking the
service, then the domain it is hosted under, then our own server; the first
answer wins, once per stream. With no answer the offset stays 0 (our own
clock). The query is a plain ``<iq type='get'><time xmlns='urn:xmpp:time'/>``
sent through the runner's IQ helper (its own timeout, as slixmpp's are
cancelled by a disconnect).
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from typing import Any

from .facts import parse_stamp

__all__ = ["ServerClock", "TIME_NS", "candidates"]

logger = logging.getLogger("muc_guard.clock")

TIME_NS = "urn:xmpp:time"


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
    """Per MUC service domain: the offset of its clock from ours."""

    def __init__(self, driver: Any, *, timeout: float = 5.0) -> None:
        self.driver = driver
        self.timeout = timeout
        self._offsets: dict[str, float] = {}
        self._learning: dict[str, asyncio.Task[None]] = {}

    def offset(self, domain: str) -> float:
        return self._offsets.get(domain, 0.0)

    def now(self, domain: str) -> float:
        """The service's clock now, as a UNIX timestamp."""
        return time.time() + self._offsets.get(domain, 0.0)

    def to_server(self, local_ts: float, domain: str) -> float:
        return local_ts + self._offsets.get(domain, 0.0)

    def new_stream(self) -> None:
        """Learn again on the next use: the clocks may have been corrected."""
        self._learning.clear()

    async def learn(self, domain: str) -> None:
        """Learn `domain`'s offset once per stream; concurrent callers share
        one query. Never raises (but passes cancellation on)."""
        task = self._learning.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._learn(domain))
            self._learning[domain] = task
        await asyncio.shield(task)

    async def _learn(self, domain: str) -> None:
        account = str(self.driver.xmpp.boundjid.domain) or None
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
        xmpp = self.driver.xmpp
        iq = xmpp.make_iq_get(ito=entity)
        ET.SubElement(iq.xml, f"{{{TIME_NS}}}time")
        sent = time.time()
        try:
            reply = await self.driver.runner._iq(iq, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # IqError, IqTimeout, TimeoutError, garbage
            logger.debug("%s: entity time failed (%r)", entity, exc)
            return None
        received = time.time()
        text = reply.xml.findtext(f"{{{TIME_NS}}}time/{{{TIME_NS}}}utc")
        server = parse_stamp(text)
        if server is None:
            logger.debug("%s: entity time without a usable <utc/>", entity)
            return None
        if "." not in (text or ""):
            server += 0.5   # whole seconds (Prosody): the true time is within the second
        return server - (sent + received) / 2
