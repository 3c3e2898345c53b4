"""
Our nick in a room: changes, refusals, conflicts and winning it back.

Motivation
==========

While our nick changes, the room briefly has no occupant under the old nick
and not yet one under the new: a self-ping then reads as "not joined"
(XEP-0410 §3.2 even names item-not-found for it). And a rejoin can find our
nick taken (409): by someone else, or by our own ghost that the server has
not dropped yet.

Solution
========

* A change is *pending* from the moment we ask (or see a 303) until the
  room answers with a self-presence, an error, or nothing for
  ``ping_timeout``; self-pings wait meanwhile. Every end of a change that
  suggests the room lost us (an error, an unavailable presence from the
  nick we asked for, no answer) checks the room at once.
* A 409 on a rejoin is retried with our nick ``nick_conflict_retries`` times
  (a ghost goes away), then the room is joined under ``fallback_nick``
  names, and the wanted nick is asked for again every
  ``nick_reclaim_interval`` seconds until we have it.
"""

from __future__ import annotations

import logging

from .context import CoreContext
from .commands import Persist, SendNick
from .events import NickSent, TimerKind
from .record import RoomRecord, State


__all__ = ["Nicks"]

logger = logging.getLogger("muc_guard.core")

NICK, RECLAIM = TimerKind.NICK, TimerKind.RECLAIM


class Nicks:
    """The nick rules of a :class:`~muc_guard.core.guard.GuardCore`."""

    def __init__(self, core: CoreContext) -> None:
        self.core = core

    def request(self, rec: RoomRecord, nick: str) -> None:
        """The user asks for `nick` (set_nick, or join() with another nick)."""
        core = self.core
        if rec.state is not State.JOINED:
            rec.requested_nick = rec.nick = nick
            core.emit(Persist(rec, now=True))
            return
        if nick == rec.nick and not rec.nick_change_pending:
            # Already ours (a bot re-applying its configuration): nothing to ask.
            if (rec.requested_nick, rec.preferred_nick) != (nick, None):
                rec.requested_nick, rec.preferred_nick = nick, None
                core.emit(Persist(rec, now=True))
            return
        self.begin(rec, nick)
        core.emit(SendNick(rec, nick, explicit=True))

    def follow_request(self, rec: RoomRecord) -> None:
        """Just joined, after join() or set_nick() asked for another nick
        while the join was out: ask the room for it now. (A 210 rewrite or a
        fallback nick is the room's answer, not a request: never called.)"""
        wanted = rec.requested_nick
        if (rec.preferred_nick is None and wanted != rec.nick
                and not rec.nick_change_pending and self.core.stream_up):
            logger.info("%s: asking for nick %r, requested while joining", rec.jid, wanted)
            self.begin(rec, wanted)
            self.core.emit(SendNick(rec, wanted))

    def sent(self, rec: RoomRecord, event: NickSent) -> None:
        """How our request went (the room's presence settles the nick itself)."""
        if not event.ok:
            if rec.pending_nick == event.nick:
                self.end(rec)
            return
        if event.explicit:
            rec.requested_nick = event.nick
            rec.preferred_nick = None
            self.core.emit(Persist(rec, now=True))   # stored when set_nick returns

    def begin(self, rec: RoomRecord, nick: str | None) -> None:
        """A change is under way (asked by us, or announced by a 303)."""
        rec.pending_nick = nick or ""
        self.core.arm(rec, NICK, self.core.now + self.core.settings.ping_timeout)

    def end(self, rec: RoomRecord, *, check: bool = False) -> None:
        """`check`: the answer suggests the room lost us: self-ping at once."""
        rec.pending_nick = None
        self.core.cancel(rec, NICK)
        if check:
            self.core.pings.soon(rec)

    def unanswered(self, rec: RoomRecord) -> None:
        """The NICK timer fired."""
        if rec.nick_change_pending:
            logger.info("%s: no answer to our nick change to %r", rec.jid, rec.pending_nick)
            self.end(rec, check=True)

    def changed(self, rec: RoomRecord, nick: str) -> None:
        logger.info("%s: our nick is now %r", rec.jid, nick)
        rec.nick = nick
        self.end(rec)
        if nick == rec.preferred_nick:
            rec.preferred_nick = None
            self.core.cancel(rec, RECLAIM)
        self.core.emit(Persist(rec))

    def conflict(self, rec: RoomRecord) -> None:
        """409 on a rejoin: someone holds our nick. It may be our own ghost,
        so retry it a few times; then join under a fallback nick and win the
        wanted one back later (see :meth:`arm_reclaim`)."""
        settings = self.core.settings
        if rec.preferred_nick is None:
            rec.preferred_nick = rec.nick
        fallback = rec.conflicts - settings.nick_conflict_retries
        if fallback <= 0:
            logger.warning("%s: nick %r is taken, will retry it", rec.jid, rec.nick)
            return
        if fallback > settings.max_fallback_nicks:
            rec.nick = rec.preferred_nick   # all taken: keep trying ours at the cap
        else:
            rec.nick = settings.fallback_nick(rec.preferred_nick, fallback)
        logger.warning("%s: nick %r is taken, trying %r", rec.jid, rec.preferred_nick,
                       rec.nick)

    def arm_reclaim(self, rec: RoomRecord) -> None:
        if rec.preferred_nick is None or self.core.armed(rec, RECLAIM):
            return
        self.core.arm(rec, RECLAIM, self.core.now + self.core.settings.nick_reclaim_interval)

    def reclaim_due(self, rec: RoomRecord) -> None:
        """The RECLAIM timer fired: ask for the wanted nick again."""
        if rec.preferred_nick is None or rec.state is not State.JOINED:
            return
        if not rec.nick_change_pending and self.core.stream_up:
            self.begin(rec, rec.preferred_nick)
            self.core.emit(SendNick(rec, rec.preferred_nick))
        self.arm_reclaim(rec)
