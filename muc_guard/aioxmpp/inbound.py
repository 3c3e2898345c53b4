"""
Inbound stanzas that would break aioxmpp's MUC handling, made harmless.

Motivation
==========

aioxmpp's MUCClient handles presences and messages inside a signal listener
of its stanza dispatcher. When that listener raises, aioxmpp disconnects it
for good: from then on no presence (or no message) reaches MUCClient, no join
ever completes, and every rejoin of the guard times out forever. aioxmpp
0.13 raises there on inputs a misbehaving room or server can send (found by
tests/unit/test_hostile_input.py):

* a presence or message without ``from`` (``from_.bare()`` on None);
* a muc#user payload on a presence that is neither available nor
  unavailable (an error or a subscription request: "presence state stanza
  required");
* status 110 ("this is you") on a presence from another occupant's JID: it
  takes the presence for ours and fails with "occupant JID mismatch", or
  believes we left the room;
* status 303 (nick change) without an item naming the new nick.

Solution
========

The guard's inbound filters, which run before aioxmpp's dispatcher, pass each
stanza through :func:`sanitize_presence` / :func:`sanitize_message`. They
change only what aioxmpp would choke on, and only in the way the standards
read it: a stanza without ``from`` comes from our own account (RFC 6120
§8.1.2.1); a room's presence about another occupant is not about us; a nick
change that names no nick is a plain unavailable presence. Everything else
passes untouched.
"""

from __future__ import annotations

import logging
from typing import Any

import aioxmpp
import aioxmpp.muc

from ..core.policy import NICK_CHANGE

__all__ = ["sanitize_presence", "sanitize_message"]

logger = logging.getLogger("muc_guard.inbound")

STATUS_SELF = 110
_OCCUPANT_TYPES = (aioxmpp.PresenceType.AVAILABLE, aioxmpp.PresenceType.UNAVAILABLE)


def sanitize_message(message: aioxmpp.Message, account: aioxmpp.JID) -> aioxmpp.Message:
    if message.from_ is None:
        message.from_ = account.bare()
    return message


def sanitize_presence(stanza: aioxmpp.Presence, account: aioxmpp.JID,
                      muc: aioxmpp.MUCClient) -> aioxmpp.Presence:
    if stanza.from_ is None:
        stanza.from_ = account.bare()
    muc_user = stanza.xep0045_muc_user
    if muc_user is None:
        return stanza
    sender = stanza.from_
    if stanza.type_ not in _OCCUPANT_TYPES:
        logger.info("%s: muc#user payload on a %s presence dropped", sender,
                    stanza.type_.value)
        stanza.xep0045_muc_user = None
        return stanza
    codes = muc_user.status_codes
    if STATUS_SELF in codes and not sender.is_bare:
        me = _our_occupant_jid(muc, sender.bare())
        if me is not None and me != sender:
            logger.info("%s: status 110 on another occupant's presence ignored (we are %s)",
                        sender, me.resource)
            codes.discard(STATUS_SELF)
    if (NICK_CHANGE in codes and stanza.type_ == aioxmpp.PresenceType.UNAVAILABLE
            and not (muc_user.items and muc_user.items[0].nick)):
        logger.info("%s: nick change (303) without a new nick: treated as leaving", sender)
        codes.discard(NICK_CHANGE)
    return stanza


def _our_occupant_jid(muc: aioxmpp.MUCClient, room_jid: aioxmpp.JID) -> aioxmpp.JID | None:
    """Our occupant JID in a room aioxmpp has entered, else None (a join in
    progress may legitimately see 110 from another nick: a 210 rewrite)."""
    try:
        room: Any = muc.get_muc(room_jid)
    except KeyError:
        return None
    if not room.muc_active or room.me is None:
        return None
    jid: aioxmpp.JID = room.me.conversation_jid
    return jid
