"""
One stable message stream per room: every groupchat message once.

Motivation
==========

Each (re)join creates a new aioxmpp ``Room``, so a bot that subscribed to the
old one hears nothing after a drop. And what the room said while the bot was
out arrives, if at all, as history or from the archive, partly overlapping
with what the bot had already seen before the drop or sees live after the
rejoin. A bot wants neither gaps nor duplicates.

Solution
========

:class:`RoomStream` is the per-room bookkeeping, free of I/O: the engine
offers it every groupchat message it sees from the room (live, history, or
archive) and delivers only those it accepts. Identity is the room's XEP-0359
stanza-id where the room stamps one. Without one, a delayed copy (history)
counts as a duplicate of a message already delivered with the same sender and
body within :data:`DIGEST_TOLERANCE` seconds, because a live message carries
no timestamp of its own and the two clocks differ a little. The last
delivered position (stanza-id and timestamp) is what the store remembers, so
after a drop or a restart recovery starts right after it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
from typing import Any

import aioxmpp

__all__ = ["Position", "RoomStream", "message_facts", "digest", "DIGEST_TOLERANCE",
           "recent_to_json", "recent_from_json"]

#: Seconds by which a history copy's stamp may differ from our receipt time.
DIGEST_TOLERANCE = 5.0
#: Recently delivered keys remembered per room for deduplication.
WINDOW = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a room's stream stands: the last delivered message."""

    last_id: str | None = None     #: the room's stanza-id of it, if any
    last_ts: float | None = None   #: its UNIX timestamp (the room's, or our receipt)
    #: (digest, timestamp) of the messages delivered just before, so that a
    #: restarted bot recognises their history copies in rooms without ids
    recent: tuple[tuple[str, float], ...] = ()


def recent_to_json(recent: tuple[tuple[str, float], ...]) -> str | None:
    return json.dumps([list(item) for item in recent]) if recent else None


def recent_from_json(text: str | None) -> tuple[tuple[str, float], ...]:
    """Parse the stored digests; raises ValueError/TypeError on a damaged value."""
    if not text:
        return ()
    return tuple((str(key), float(ts)) for key, ts in json.loads(text))


def digest(nick: str, body: str) -> str:
    """A short fingerprint of who said what (kept in memory and in the store)."""
    return hashlib.blake2b(f"{nick}\0{body}".encode(), digest_size=8).hexdigest()


def message_facts(message: aioxmpp.Message, room: aioxmpp.JID,
                  now: float) -> tuple[str | None, float, bool]:
    """(room's stanza-id, timestamp, delayed) of a message from `room`."""
    stanza_id = None
    for sid in getattr(message, "xep0359_stanza_ids", None) or ():
        if sid.by == room and sid.id_:
            stanza_id = sid.id_
            break
    delay = getattr(message, "xep0203_delay", None)
    stamp = None
    for item in (delay if isinstance(delay, list) else [delay] if delay else []):
        if item is not None and item.stamp is not None:
            stamp = item.stamp
            break
    if stamp is None:
        return stanza_id, now, False
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stanza_id, stamp.timestamp(), True


class RoomStream:
    """Deduplicates and positions the messages of one room."""

    __slots__ = ("room", "position", "_ids", "_id_order", "_digests", "_digest_order",
                 "recovering", "buffer", "delivered")

    def __init__(self, room: aioxmpp.JID, position: Position | None = None) -> None:
        self.room = room
        self.position = position or Position()
        self._ids: set[str] = set()
        self._id_order: collections.deque[str] = collections.deque()
        self._digests: dict[str, list[float]] = {}
        self._digest_order: collections.deque[tuple[str, float]] = collections.deque()
        if self.position.last_id:
            self._remember_id(self.position.last_id)
        for key, ts in self.position.recent:
            self._remember_digest(key, ts)
        #: while True, live messages wait in :attr:`buffer` (archive fetch running)
        self.recovering = False
        self.buffer: list[aioxmpp.Message] = []
        self.delivered = 0

    def _remember_id(self, stanza_id: str) -> None:
        self._ids.add(stanza_id)
        self._id_order.append(stanza_id)
        if len(self._id_order) > WINDOW:
            self._ids.discard(self._id_order.popleft())

    def _remember_digest(self, key: str, ts: float) -> None:
        self._digests.setdefault(key, []).append(ts)
        self._digest_order.append((key, ts))
        if len(self._digest_order) > WINDOW:
            old_key, old_ts = self._digest_order.popleft()
            stamps = self._digests.get(old_key)
            if stamps:
                stamps.remove(old_ts)
                if not stamps:
                    del self._digests[old_key]

    def accept(self, message: aioxmpp.Message, *, now: float,
               archive_id: str | None = None, stamp: float | None = None) -> bool:
        """True when `message` is new: remember it and advance the position.

        `archive_id` and `stamp` come from a XEP-0313 result (which wraps the
        message and stamps it outside).
        """
        stanza_id, ts, delayed = message_facts(message, self.room, now)
        if archive_id is not None:
            stanza_id, delayed = archive_id, True
        if stamp is not None:
            ts = stamp
        nick = (message.from_.resource or "") if message.from_ is not None else ""
        key = digest(nick, _body_text(message))
        if stanza_id is not None:
            if stanza_id in self._ids:
                return False
        elif delayed:
            # No id: a history copy of something delivered live shortly before?
            if any(abs(seen - ts) <= DIGEST_TOLERANCE for seen in self._digests.get(key, ())):
                return False
            # Older than our position: history reaching back past what we had.
            if self.position.last_ts is not None and ts < self.position.last_ts - DIGEST_TOLERANCE:
                return False
        if stanza_id is not None:
            self._remember_id(stanza_id)
        self._remember_digest(key, ts)
        last_id = stanza_id if stanza_id is not None else self.position.last_id
        self.position = Position(last_id, max(ts, self.position.last_ts or ts))
        self.delivered += 1
        return True

    def recent(self) -> tuple[tuple[str, float], ...]:
        """Digests delivered within the tolerance window before the position."""
        last_ts = self.position.last_ts
        if last_ts is None:
            return ()
        horizon = last_ts - 2 * DIGEST_TOLERANCE
        return tuple((key, ts) for key, ts in self._digest_order if ts >= horizon)[-64:]


def _body_text(message: aioxmpp.Message) -> str:
    body: Any = message.body
    try:
        return str(body.any()) if body else ""
    except (KeyError, AttributeError):
        return ""
