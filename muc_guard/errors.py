"""
muc_guard's own exceptions, shared by every front-end.

They name no XMPP library, so that ``import muc_guard`` and the slixmpp
front-end work without aioxmpp installed; :mod:`muc_guard.aioxmpp.runner`
re-exports them under their old names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GuardError", "RoomLeftError", "GaveUpError"]


class GuardError(Exception):
    """Base class of muc_guard's own errors."""


class RoomLeftError(GuardError):
    """The room was left with :meth:`leave` while :meth:`join` was waiting."""


class GaveUpError(GuardError):
    """The guard gave up on the room while :meth:`join` was waiting."""

    def __init__(self, room_jid: Any, cause: Any) -> None:
        super().__init__(f"{room_jid}: gave up ({cause.value})")
        self.room_jid = room_jid
        self.cause = cause
