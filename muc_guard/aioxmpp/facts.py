"""
From aioxmpp stanzas and errors to the facts the core decides on.

This is the only place that reads aioxmpp's XSOs for the core: a presence
becomes a :class:`~muc_guard.core.events.RoomPresence`, a message its
stanza-id, the room's own delay stamp, sender and body, an error its
condition. (Hostile input has already been cleaned by
:mod:`muc_guard.aioxmpp.inbound`.) Nothing here decides anything.
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable
from typing import Any

import aioxmpp
import aioxmpp.errors

from ..core.events import PresenceKind, RoomPresence

__all__ = ["error_condition", "error_type", "room_jid_from", "check_nick",
           "presence_facts", "stanza_id_of", "room_stamp_of", "body_text",
           "has_status_self"]

_UNAVAILABLE = aioxmpp.PresenceType.UNAVAILABLE
_ERROR = aioxmpp.PresenceType.ERROR


def error_condition(exc: aioxmpp.errors.XMPPError) -> str:
    """The defined condition of a stanza error, e.g. ``"item-not-found"``."""
    try:
        return str(exc.condition.value[1])
    except (AttributeError, IndexError, TypeError):
        return "undefined-condition"


def error_type(exc: aioxmpp.errors.XMPPError) -> str | None:
    kind = getattr(type(exc), "TYPE", None)
    return getattr(kind, "value", None)


def room_jid_from(value: aioxmpp.JID | str) -> aioxmpp.JID:
    """Validate a room JID given as :class:`aioxmpp.JID` or string."""
    if isinstance(value, str):
        try:
            value = aioxmpp.JID.fromstr(value)
        except ValueError as exc:
            raise ValueError(f"not a valid room JID: {value!r} ({exc})") from None
    if not isinstance(value, aioxmpp.JID):
        raise TypeError(f"room JID must be aioxmpp.JID or str, not {type(value).__name__}")
    if not value.is_bare or not value.localpart:
        raise ValueError(f"room JID must be bare and have a local part: {value}")
    # aioxmpp's domain check lets "r@b@c" and "r@b c" through.
    if any(ch in value.domain for ch in "@/ \t\n") or not value.domain.strip("."):
        raise ValueError(f"not a valid room JID domain: {value.domain!r}")
    return value


def check_nick(nick: str) -> str:
    if not isinstance(nick, str) or not nick.strip():
        raise ValueError(f"nick must be a non-empty string, not {nick!r}")
    # A nick is a resourcepart (resourceprep, at most 1023 bytes); aioxmpp
    # would only refuse it inside every join attempt, retried for ever.
    try:
        aioxmpp.JID("room", "example.org", nick)
    except ValueError as exc:
        raise ValueError(f"not a valid nick: {nick!r} ({exc})") from None
    return nick


def has_status_self(stanza: aioxmpp.Presence) -> bool:
    muc_user = stanza.xep0045_muc_user
    return muc_user is not None and any(int(code) == 110 for code in muc_user.status_codes)


def presence_facts(room: Hashable, stanza: aioxmpp.Presence) -> RoomPresence:
    """A presence from an occupant JID of `room`, as the core reads it."""
    sender = stanza.from_
    type_ = stanza.type_
    kind = (PresenceKind.ERROR if type_ == _ERROR
            else PresenceKind.UNAVAILABLE if type_ == _UNAVAILABLE
            else PresenceKind.AVAILABLE)
    muc_user = stanza.xep0045_muc_user
    if muc_user is None:
        return RoomPresence(room, sender.resource, kind)
    codes = frozenset(int(code) for code in muc_user.status_codes)
    # a 303 naming no nick was dropped by muc_guard.aioxmpp.inbound
    new_nick = muc_user.items[0].nick if muc_user.items else None
    reason = stanza.status.any() if stanza.status else None
    return RoomPresence(room, sender.resource, kind, codes,
                        destroyed=muc_user.destroy is not None,
                        new_nick=new_nick, reason=reason)


def stanza_id_of(message: aioxmpp.Message, room: aioxmpp.JID) -> str | None:
    """The room's XEP-0359 stanza-id (only the room's own counts)."""
    for sid in getattr(message, "xep0359_stanza_ids", None) or ():
        if sid.by == room and sid.id_:
            return str(sid.id_)
    return None


def room_stamp_of(message: aioxmpp.Message, room: aioxmpp.JID) -> float | None:
    """The time in the ``<delay/>`` the room itself added, if any. Any other
    ``<delay/>`` is the sender's claim, and not believed."""
    delay: Any = getattr(message, "xep0203_delay", None)
    for item in (delay if isinstance(delay, list) else [delay] if delay else []):
        if item is not None and item.stamp is not None and item.from_ == room:
            stamp = item.stamp
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=datetime.timezone.utc)
            return float(stamp.timestamp())
    return None


def body_text(message: aioxmpp.Message) -> str:
    body: Any = message.body
    try:
        return str(body.any()) if body else ""
    except (KeyError, AttributeError):
        return ""
