"""
The MUC services' clocks for the aioxmpp front-end: the XEP-0202 query.

Why and how the offsets are learnt: :mod:`muc_guard.frontend.clock`.
"""

from __future__ import annotations

import aioxmpp
import aioxmpp.xso as xso

from ..frontend.clock import TIME_NS
from ..frontend.clock import ServerClock as _ServerClock

__all__ = ["ServerClock", "EntityTime", "TIME_NS"]


@aioxmpp.IQ.as_payload_class
class EntityTime(xso.XSO):
    """``<time xmlns='urn:xmpp:time'>``: XEP-0202 query and answer."""

    TAG = (TIME_NS, "time")

    tzo = xso.ChildText((TIME_NS, "tzo"), default=None)
    utc = xso.ChildText((TIME_NS, "utc"), default=None)


class ServerClock(_ServerClock):
    """Per MUC service domain: the offset of its clock from ours."""

    def __init__(self, client: aioxmpp.Client, *, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.client = client

    def account_domain(self) -> str | None:
        local = self.client.local_jid
        return local.domain if local else None

    async def utc_of(self, entity: str) -> str | None:
        iq = aioxmpp.IQ(to=aioxmpp.JID.fromstr(entity), type_=aioxmpp.IQType.GET,
                        payload=EntityTime())
        reply = await self.client.send(iq, timeout=self.timeout)
        return getattr(reply, "utc", None)
