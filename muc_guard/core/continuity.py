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

:class:`RoomStream` is the per-room bookkeeping, free of I/O: the core
offers it every groupchat message it sees from the room (live, history, or
archive) and delivers only those it accepts. Identity is the room's XEP-0359
stanza-id where the room stamps one. Without one, a delayed copy (history)
counts as a duplicate of a message already delivered with the same sender and
body within :data:`DIGEST_TOLERANCE` seconds, because a live message carries
no timestamp of its own: it is timed on receipt, on the server's clock as far
as :mod:`muc_guard.aioxmpp.clock` knows it. Only the room's own ``<delay/>`` on a copy
it replays is believed: any occupant can put a ``<delay/>`` on a live
message. The last
delivered position (stanza-id and timestamp) is what the store remembers, so
after a drop or a restart recovery starts right after it.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json

__all__ = ["Position", "RoomStream", "digest", "DIGEST_TOLERANCE",
           "recent_to_json", "recent_from_json", "recover_since"]

#: Seconds by which a history copy's stamp may differ from our receipt time
#: (on the server's clock, as learnt by muc_guard.aioxmpp.clock: within a second or so).
DIGEST_TOLERANCE = 5.0
#: The deduplication window. A copy comes back only as history (since our
#: position minus DIGEST_TOLERANCE) or as live traffic buffered during an
#: archive fetch (matched separately), so entries older than twice the
#: tolerance before the position are useless, except that the newest
#: WINDOW_MIN are kept whatever their age: a server whose clock runs behind
#: ours still gets its replayed ids recognised (Prosody replays 20 messages by
#: default, ejabberd 20). WINDOW_MAX bounds a room flooding faster than
#: WINDOW_MAX messages per 10 s.
WINDOW_MIN = 32
WINDOW_MAX = 512
_MASK64 = (1 << 64) - 1

#: A live message waiting behind an archive read: (the front-end's message,
#: the server's time at receipt, its stanza-id, sender nick, body).
Buffered = tuple[object, float, "str | None", str, "str | None"]


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a room's stream stands: the last delivered message."""

    last_id: str | None = None     #: the room's stanza-id of it, if any
    #: its UNIX timestamp on the server's clock (the room's stamp of a
    #: replayed copy, else the server's time when it reached us)
    last_ts: float | None = None
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


def _digest_key(nick: str, body: str) -> int:
    """Who said what, as a signed 64-bit key with the low bit clear (see _id_key)."""
    raw = hashlib.blake2b(f"{nick}\0{body}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True) & ~1


def _id_key(stanza_id: str) -> int:
    """A stanza-id as a 64-bit key with the low bit set, so that it never
    equals a digest key. Python's str hash suffices: the keys of ids live only
    in memory (the store keeps the last id itself)."""
    return hash(stanza_id) | 1


def _key_to_hex(key: int) -> str:
    return format(key & _MASK64, "016x")


def _key_from_hex(text: str) -> int:
    value = int(text, 16)
    if value >> 63:
        value -= 1 << 64
    return value & ~1


def digest(nick: str, body: str) -> str:
    """A short fingerprint of who said what, as kept in the store."""
    return _key_to_hex(_digest_key(nick, body))


def recover_since(position_ts: float | None, joined_on_server: float | None,
                  server_now: float) -> float | None:
    """From when to recover, on the server's clock: the last delivered
    message, or, when none was delivered (a quiet room, or a crash before
    the lazy position write), the last successful join. None on a first
    join: a bot has missed nothing before it ever joined. Never after the
    server's now (a position from a bad clock or an older muc_guard must not
    switch recovery off), and a little earlier than our own stamp: clocks
    differ, and deduplication drops the repeats."""
    last = position_ts if position_ts is not None else joined_on_server
    if last is None:
        return None
    return min(last, server_now) - DIGEST_TOLERANCE


class RoomStream:
    """Deduplicates and positions the messages of one room.

    Memory matters here (a bot may watch thousands of rooms), so the window
    of recent messages is two arrays, allocated at the first message: one
    64-bit key per message (the stanza-id's where the room stamps one, else
    the sender+body digest) and its time in tenths of a second from
    :attr:`_base`. 12 bytes a message, a few hundred bytes for most rooms.
    """

    __slots__ = ("position", "_keys", "_stamps", "_base",
                 "recovering", "buffer", "delivered", "replaying", "history_from")

    def __init__(self, position: Position | None = None) -> None:
        self.position = position or Position()
        self._keys: array.array[int] | None = None
        self._stamps: array.array[int] | None = None
        self._base = 0
        if self.position.last_id:
            self._remember(_id_key(self.position.last_id), self.position.last_ts or 0.0)
        for key, ts in self.position.recent:
            self._remember(_key_from_hex(key), ts)
        #: while True, live messages wait in :attr:`buffer` (archive fetch
        #: running) with their facts and the server's time at their receipt
        self.recovering = False
        self.buffer: list[Buffered] | None = None
        self.delivered = 0
        #: True from a join that asked for history until the room ends its
        #: replay (the subject, or a message the room did not stamp)
        self.replaying = False
        #: while a replay may still show that the room's history fell short:
        #: the position's stamp when the join asked for history after it
        #: (see muc_guard.core.context.CoreContext.offer)
        self.history_from: float | None = None

    def end_replay(self) -> None:
        self.replaying = False
        self.history_from = None

    def is_replay(self, room_stamp: float | None) -> bool:
        """Whether a message is a history copy the room replays on our join:
        it arrives during the replay and carries the room's own ``<delay/>``
        (`room_stamp`; Prosody strips an occupant's ``<delay/>`` that names
        the room). The first message without one ends the replay, as
        XEP-0045 §7.2.14 sends all history before the subject and any live
        traffic."""
        if not self.replaying:
            return False
        if room_stamp is not None:
            return True
        self.end_replay()
        return False

    def _tenths(self, ts: float) -> int:
        return round((ts - self._base) * 10)

    def _remember(self, key: int, ts: float) -> None:
        keys, stamps = self._keys, self._stamps
        if keys is None or stamps is None:
            self._base = int(ts)
            self._keys, self._stamps = array.array("q", (key,)), array.array("i", (0,))
            return
        try:
            stamps.append(self._tenths(ts))
        except OverflowError:   # 6.8 years away from the base: start afresh
            self._keys = self._stamps = None
            self._remember(key, ts)
            return
        keys.append(key)
        n = len(keys)
        if n > WINDOW_MIN:
            horizon = self._tenths((self.position.last_ts or ts) - 2 * DIGEST_TOLERANCE)
            drop = n - WINDOW_MAX if n > WINDOW_MAX else 0
            while drop < n - WINDOW_MIN and stamps[drop] < horizon:
                drop += 1
            if drop:
                del keys[:drop], stamps[:drop]

    def _seen(self, key: int) -> bool:
        return self._keys is not None and key in self._keys

    def _seen_near(self, key: int, ts: float) -> bool:
        keys, stamps = self._keys, self._stamps
        if keys is None or stamps is None:
            return False
        at, tolerance = self._tenths(ts), DIGEST_TOLERANCE * 10
        i = -1
        while True:
            try:
                i = keys.index(key, i + 1)
            except ValueError:
                return False
            if abs(stamps[i] - at) <= tolerance:
                return True

    def accept(self, stanza_id: str | None, nick: str, body: str | None, *, now: float,
               stamp: float | None = None, delayed: bool = False) -> bool:
        """True when the message is new: remember it and advance the position.

        `stanza_id` is the room's XEP-0359 id (or the archive's id); `now`
        the server's time at receipt; `stamp` the room's or the archive's
        time of it (only a replayed or archived copy has one: `delayed`),
        which never passes `now`. `body` is read only when there is no id.
        """
        ts = now if stamp is None else min(stamp, now)
        if stanza_id is not None:
            key = _id_key(stanza_id)
            if self._seen(key):
                return False
        else:
            key = _digest_key(nick, body or "")
            if delayed:
                # No id: a history copy of something delivered live shortly before?
                if self._seen_near(key, ts):
                    return False
                # Older than our position: history reaching back past what we had.
                last_ts = self.position.last_ts
                if last_ts is not None and ts < last_ts - DIGEST_TOLERANCE:
                    return False
        self._remember(key, ts)
        last_id = stanza_id if stanza_id is not None else self.position.last_id
        self.position = Position(last_id, max(ts, self.position.last_ts or ts))
        self.delivered += 1
        return True

    def recent(self) -> tuple[tuple[str, float], ...]:
        """Digests delivered within the tolerance window before the position."""
        return tuple((_key_to_hex(key), self._base + at / 10) for key, at in self._recent())

    def recent_json(self) -> str | None:
        """``recent_to_json(self.recent())`` in one pass: the store writes it
        for every room whose position moved, 400 times a second in a busy
        bot, and the tuples in between cost half of it."""
        base = self._base
        items = ['["%016x", %r]' % (key & _MASK64, base + at / 10)
                 for key, at in self._recent()]
        return "[" + ", ".join(items) + "]" if items else None

    def _recent(self) -> list[tuple[int, int]]:
        """(key, tenths) of the digests within twice the tolerance before the
        position: their history copies may still come; the newest 64."""
        last_ts = self.position.last_ts
        keys, stamps = self._keys, self._stamps
        if last_ts is None or keys is None or stamps is None:
            return []
        horizon = self._tenths(last_ts - 2 * DIGEST_TOLERANCE)
        return [(key, at) for key, at in zip(keys, stamps)
                if at >= horizon and not key & 1][-64:]
