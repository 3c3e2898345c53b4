"""
The MUC services' clocks for the slixmpp front-end: the XEP-0202 query.

Why and how the offsets are learnt: :mod:`muc_guard.frontend.clock`. The
query is a plain ``<iq type='get'><time xmlns='urn:xmpp:time'/>`` sent
through the runner's IQ helper (its own timeout, as slixmpp's are cancelled
by a disconnect).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ..frontend.clock import TIME_NS, candidates
from ..frontend.clock import ServerClock as _ServerClock

__all__ = ["ServerClock", "TIME_NS", "candidates"]


class ServerClock(_ServerClock):
    """Per MUC service domain: the offset of its clock from ours."""

    def __init__(self, driver: Any, *, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.driver = driver

    def account_domain(self) -> str | None:
        return str(self.driver.xmpp.boundjid.domain) or None

    async def utc_of(self, entity: str) -> str | None:
        iq = self.driver.xmpp.make_iq_get(ito=entity)
        ET.SubElement(iq.xml, f"{{{TIME_NS}}}time")
        reply = await self.driver.runner._iq(iq, self.timeout)
        text: str | None = reply.xml.findtext(f"{{{TIME_NS}}}time/{{{TIME_NS}}}utc")
        return text
