"""
Letting go of an aioxmpp Room for good.

Motivation
==========

aioxmpp never frees a :class:`aioxmpp.muc.Room`. Its signals are
descriptors (:class:`aioxmpp.callbacks.Signal`) that keep each instance's
connections in a ``WeakKeyDictionary`` keyed by the instance, and a value
that refers to its own key keeps it alive for ever:

* ``MUCClient.join()`` connects ``room.on_exit`` to
  ``functools.partial(MUCClient._muc_exited, room)``, and never disconnects
  it;
* the Room's self-ping monitor (``room._monitor``, a ``MUCMonitor``)
  connects the signals of its ``AlivenessMonitor`` to its own methods, and
  holds that AlivenessMonitor (and the Room's bound methods).

So every Room a join creates stays alive with its occupants, its monitor
and every listener connected to it: a plain aioxmpp bot that leaves and
joins again keeps one more Room each time, and a guard that rejoins after
every drop keeps one more per drop (5-15 KB each; bench scenario 10), and
one per refused join attempt.

Solution
========

:func:`unhook_room` removes the Room's (and its monitors') entries from
those dictionaries once MUCClient no longer holds the Room: a Room that is
not MUCClient's is never routed a stanza again, and its on_exit or
on_failure has fired. What keeps it alive after that is whoever still
refers to it (a bot holding it); the connections to its signals are gone.
"""

from __future__ import annotations

import logging
from typing import Any

import aioxmpp
import aioxmpp.callbacks

__all__ = ["unhook_room"]

logger = logging.getLogger("muc_guard")

#: class -> its Signal descriptors (the whole MRO)
_SIGNALS: dict[type, tuple[aioxmpp.callbacks.AbstractSignal, ...]] = {}


def _signals_of(cls: type) -> tuple[aioxmpp.callbacks.AbstractSignal, ...]:
    found = _SIGNALS.get(cls)
    if found is None:
        seen: dict[int, aioxmpp.callbacks.AbstractSignal] = {}
        for klass in cls.__mro__:
            for value in vars(klass).values():
                if isinstance(value, aioxmpp.callbacks.AbstractSignal):
                    seen[id(value)] = value
        found = _SIGNALS[cls] = tuple(seen.values())
    return found


def unhook_room(room: Any, muc: aioxmpp.MUCClient) -> None:
    """Drop every signal connection of `room` (an exited Room, or one whose
    join failed) and of its self-ping monitors, so that it can be freed.
    A Room that MUCClient still holds (joined or joining) is left alone."""
    if room is None:
        return
    try:
        if muc.get_muc(room.jid) is room:
            return
    except KeyError:
        pass
    monitor = getattr(room, "_monitor", None)
    for obj in (room, monitor, getattr(monitor, "_monitor", None)):
        if obj is None:
            continue
        for signal in _signals_of(type(obj)):
            try:
                signal._instances.pop(obj, None)
            except (AttributeError, TypeError):   # pragma: no cover - another aioxmpp
                logger.debug("cannot unhook %r from %r", obj, signal, exc_info=True)
                return
