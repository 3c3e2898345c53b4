"""
The MUC services' clocks, for the slixmpp front-end.

WORK IN PROGRESS (issue #14): :mod:`muc_guard.aioxmpp.clock` learns each MUC
service's clock offset by XEP-0202 (Entity Time), so that the history a
rejoin asks for (``since``) and the positions the store keeps are on the
server's clock. This front-end does not ask yet: it uses the bot's own clock
(offset 0), which is what the aioxmpp front-end falls back to when a service
does not answer. The interface is the same, so the runner does not change
when the XEP-0202 query is added (``xep_0202`` has ``get_entity_time``).
"""

from __future__ import annotations

import time

__all__ = ["LocalClock"]


class LocalClock:
    """Per MUC service domain: the offset of its clock from ours (always 0 here)."""

    def offset(self, domain: str) -> float:
        return 0.0

    def now(self, domain: str) -> float:
        """The service's clock now, as a UNIX timestamp."""
        return time.time()

    def to_server(self, local_ts: float, domain: str) -> float:
        return local_ts

    def new_stream(self) -> None:
        """A new stream: offsets would be learnt again."""

    async def learn(self, domain: str) -> None:
        """Learn `domain`'s offset (not yet: see the module docstring)."""
