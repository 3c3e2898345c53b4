"""
MUCGuard: the ready-made aioxmpp service.

Summon it like any aioxmpp service; it brings :class:`aioxmpp.MUCClient` along::

    guard = client.summon(muc_guard.MUCGuard)
    await guard.open_store("bot.db")

All behaviour lives in :class:`~muc_guard.GuardMixin` (and the engine behind
it), so a user's own service that mixes it in behaves the same.
"""

from __future__ import annotations

import aioxmpp
import aioxmpp.service

from .mixin import GuardMixin

__all__ = ["MUCGuard"]


class MUCGuard(GuardMixin, aioxmpp.service.Service):
    """Keeps this client inside the MUC rooms it wants to be in."""

    ORDER_AFTER = [aioxmpp.MUCClient]
