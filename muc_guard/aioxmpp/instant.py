"""
Rooms a join of ours created (status 201).

A room that vanished (its process died, or it was not persistent) is created
anew by our rejoin, with us as its owner. Servers that lock new rooms
(Prosody's ``muc_room_locking``, on by default) then refuse everyone else
with item-not-found until the owner configures the room. A rejoin is the
guard's doing, not the bot's, so the guard accepts the default configuration
(an instant room, XEP-0045 §10.1.2). A room the bot's own first ``join()``
creates is left to the bot, which may want to configure it first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aioxmpp
import aioxmpp.forms

__all__ = ["STATUS_CREATED", "CreationWatch", "settle_created_room"]

logger = logging.getLogger("muc_guard.instant")

STATUS_CREATED = 201


class CreationWatch:
    """Whether the self-presence that enters `room` says our join created it.

    aioxmpp reports the status codes of that presence only in the room's
    ``on_muc_enter`` signal, which fires before the join future is done."""

    __slots__ = ("created",)

    def __init__(self, room: aioxmpp.muc.Room) -> None:
        self.created = False
        room.on_muc_enter.connect(self._entered)

    def _entered(self, presence: Any, occupant: Any, *,
                 muc_status_codes: Any = frozenset(), **kwargs: Any) -> bool:
        self.created = STATUS_CREATED in muc_status_codes
        return True    # a Room object is entered once: disconnect


async def settle_created_room(muc: aioxmpp.MUCClient, room_jid: aioxmpp.JID, *,
                              rejoin: bool, timeout: float) -> None:
    """Make a room our join created usable: on a rejoin, submit the empty
    configuration form that accepts the defaults; on a first join, only say
    that the room awaits the bot's configuration. Never raises: the join
    itself succeeded, and an owner IQ refused must not undo it."""
    if not rejoin:
        logger.warning("%s: created by this join; it may stay locked to others until "
                       "configured (the bot is its owner: MUCClient.set_room_config)",
                       room_jid)
        return
    form = aioxmpp.forms.Data(aioxmpp.forms.DataType.SUBMIT)
    try:
        await asyncio.wait_for(muc.set_room_config(room_jid, form), timeout)
    except (aioxmpp.errors.XMPPError, asyncio.TimeoutError, ConnectionError) as exc:
        logger.warning("%s: re-created by our rejoin, but accepting its default "
                       "configuration failed (%s); it may stay locked to others",
                       room_jid, exc)
        return
    logger.info("%s: re-created by our rejoin; accepted the default configuration",
                room_jid)
