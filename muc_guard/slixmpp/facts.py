"""
From slixmpp stanzas to the facts the core decides on.

The slixmpp twin of :mod:`muc_guard.aioxmpp.facts`: the only place that reads
slixmpp's stanzas for the core. It reads the stanza's XML (an ElementTree
element, ``stanza.xml``) rather than slixmpp's stanza interfaces: one
``find`` per fact, no stanza plugin objects built, and nothing raises on
hostile input (slixmpp's own ``pres['muc']['status_codes']`` raises on
``<status code='x'/>``). Nothing here decides anything.

Room keys
=========

The core keys its rooms by any hashable. This front-end uses the room's
**bare JID as a str**, normalised by :class:`slixmpp.JID`
(``JID(value).bare``), not a :class:`slixmpp.JID`:

* slixmpp's JID is *mutable* (``jid.resource = ...``) and hashes by its full
  string, so a JID a user passed in and later changed would be lost in the
  core's dict;
* a stanza's ``from`` is looked up on every inbound stanza: the raw ``from``
  attribute split at ``/`` finds the room with one str hash, without building
  a JID (see :func:`bare_and_resource`);
* ``str(rec.jid)`` is what the store writes, identical to what the aioxmpp
  front-end writes for the same room, so one store serves both.

slixmpp's JID hashes and compares equal to its string (``hash(JID('r@d')) ==
hash('r@d')``, ``JID('r@d') == 'r@d'``), so users may still look rooms up
with a JID; :meth:`rooms` hands out fresh :class:`slixmpp.JID` objects.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any
from xml.etree.ElementTree import Element

from slixmpp import JID
from slixmpp.jid import InvalidJID

from ..core.events import PresenceKind, RoomPresence
from ..frontend.clock import parse_utc as parse_stamp
from ..core.policy import NICK_CHANGE

__all__ = ["NS_MUC_USER", "room_key", "room_jid", "check_nick", "bare_and_resource",
           "canonical_bare", "status_codes", "presence_facts", "stanza_id_of",
           "room_stamp_of", "body_text", "error_of", "iq_error", "muc_user", "parse_stamp"]

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"

_X = f"{{{NS_MUC_USER}}}x"
_STATUS = f"{{{NS_MUC_USER}}}status"
_ITEM = f"{{{NS_MUC_USER}}}item"
_DESTROY = f"{{{NS_MUC_USER}}}destroy"
_STANZA_ID = f"{{{NS_SID}}}stanza-id"
_DELAY = f"{{{NS_DELAY}}}delay"
_TEXT = f"{{{NS_STANZAS}}}text"

STATUS_SELF = 110


def room_key(value: JID | str) -> str:
    """Validate a room JID given as :class:`slixmpp.JID` or str; return the
    key the guard tracks it under (its normalised bare JID)."""
    if isinstance(value, str):
        try:
            jid = JID(value)
        except InvalidJID as exc:
            raise ValueError(f"not a valid room JID: {value!r} ({exc})") from None
    elif isinstance(value, JID):
        jid = value
    else:
        raise TypeError(f"room JID must be slixmpp.JID or str, not {type(value).__name__}")
    if jid.resource or not jid.node:
        raise ValueError(f"room JID must be bare and have a local part: {jid}")
    return str(jid.bare)


def room_jid(key: Hashable) -> JID:
    """A fresh :class:`slixmpp.JID` for a room key (users may change it)."""
    return JID(str(key))


def check_nick(nick: str) -> str:
    if not isinstance(nick, str) or not nick.strip():
        raise ValueError(f"nick must be a non-empty string, not {nick!r}")
    # A nick is a resourcepart: refuse here what every join would fail on.
    try:
        JID("room@example.org").resource = nick
    except (InvalidJID, ValueError) as exc:
        raise ValueError(f"not a valid nick: {nick!r} ({exc})") from None
    return nick


def bare_and_resource(xml: Element) -> tuple[str, str]:
    """The raw ``from`` of a stanza split into (bare, resource), no JID built."""
    sender = xml.get("from") or ""
    bare, _, resource = sender.partition("/")
    return bare, resource


def canonical_bare(bare: str) -> str | None:
    """The normalised form of a raw bare JID that may not be normalised
    (upper case, non-ASCII); None when it is already, or is not a JID."""
    if bare.isascii() and bare == bare.lower():
        return None
    try:
        canonical = str(JID(bare).bare)
    except (InvalidJID, ValueError):
        return None
    return canonical if canonical != bare else None


def status_codes(x: Element | None) -> frozenset[int]:
    """The muc#user status codes; malformed ones are skipped."""
    if x is None:
        return frozenset()
    codes = []
    for status in x.iterfind(_STATUS):
        code = status.get("code", "")
        if code.isdigit() and len(code) <= 4:
            codes.append(int(code))
    return frozenset(codes)


def muc_user(xml: Element) -> Element | None:
    return xml.find(_X)


def presence_facts(room: Hashable, xml: Element, client_ns: str, *,
                   ours: tuple[str | None, ...] = ()) -> RoomPresence:
    """A presence from an occupant JID of `room`, as the core reads it.

    Mended as :mod:`muc_guard.aioxmpp.inbound` mends it for aioxmpp, so
    both front-ends hand the core the same facts: status 110 on a presence
    from a nick that is not ours (`ours`: our nick and the one we asked for)
    is dropped, and a 303 that names no new nick is a plain leave."""
    _, nick = bare_and_resource(xml)
    type_ = xml.get("type")
    kind = (PresenceKind.ERROR if type_ == "error"
            else PresenceKind.UNAVAILABLE if type_ == "unavailable"
            else PresenceKind.AVAILABLE)
    x = xml.find(_X)
    if x is None or kind is PresenceKind.ERROR:
        return RoomPresence(room, nick, kind)
    codes = status_codes(x)
    item = x.find(_ITEM)
    new_nick = (item.get("nick") or None) if item is not None else None
    if STATUS_SELF in codes and ours and nick not in ours:
        codes = codes - {STATUS_SELF}
    if NICK_CHANGE in codes and kind is PresenceKind.UNAVAILABLE and not new_nick:
        codes = codes - {NICK_CHANGE}
    status = xml.find(f"{{{client_ns}}}status")
    reason = status.text if status is not None and status.text else None
    return RoomPresence(room, nick, kind, codes, destroyed=x.find(_DESTROY) is not None,
                        new_nick=new_nick, reason=reason)


def stanza_id_of(xml: Element, room: str) -> str | None:
    """The room's XEP-0359 stanza-id (only the room's own counts)."""
    for sid in xml.iterfind(_STANZA_ID):
        by = sid.get("by")
        if by is not None and (by == room or by.lower() == room):
            value = sid.get("id")
            if value:
                return value
    return None


def room_stamp_of(xml: Element, room: str) -> float | None:
    """The time in the ``<delay/>`` the room itself added, if any. Any other
    ``<delay/>`` is the sender's claim, and not believed."""
    for delay in xml.iterfind(_DELAY):
        by = delay.get("from")
        if by is not None and (by == room or by.lower() == room):
            stamp = parse_stamp(delay.get("stamp"))
            if stamp is not None:
                return stamp
    return None


def body_text(xml: Element, client_ns: str) -> str:
    body = xml.find(f"{{{client_ns}}}body")
    return (body.text or "") if body is not None else ""


def error_of(xml: Element, client_ns: str) -> tuple[str, str | None]:
    """(defined condition, error type) of an error stanza."""
    error = xml.find(f"{{{client_ns}}}error")
    if error is None:
        return "undefined-condition", None
    for child in error:
        tag = child.tag
        if isinstance(tag, str) and tag.startswith(f"{{{NS_STANZAS}}}") and tag != _TEXT:
            return tag[len(NS_STANZAS) + 2:], error.get("type")
    return "undefined-condition", error.get("type")


def iq_error(exc: Any) -> tuple[str, str | None]:
    """(condition, type) of a :class:`slixmpp.exceptions.IqError`."""
    iq = getattr(exc, "iq", None)
    xml = getattr(iq, "xml", None)
    if xml is None:
        return "undefined-condition", None
    tag = xml.tag
    client_ns = tag[1:tag.index("}")] if tag.startswith("{") else "jabber:client"
    return error_of(xml, client_ns)
