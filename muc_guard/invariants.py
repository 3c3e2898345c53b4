"""
What must hold for every tracked room, checked from the outside.

Motivation
==========

A room can only be lost for good in one way: it is wanted, not joined, and
nothing is going to join it (no join loop, no timer), or it is joined and
nothing is going to notice when it silently drops (no self-ping pending).
Every such defect so far came from a code path that changed a room's state
while some other task was still running and then assumed that task would
take care of it. Checking the resulting state after each scenario catches
the whole class, whatever path led there.

Solution
========

:func:`violations` inspects a :class:`~muc_guard.engine.GuardEngine` and
returns one line per broken rule (empty when all hold). Tests call it after
their scenarios; it is cheap and has no side effects, so a bot may also log
it in debug builds. While the stream is down, joins and pings wait for it,
so only the rules that hold regardless are checked.
"""

from __future__ import annotations

import collections
from typing import Any

import aioxmpp

from .rooms import State

__all__ = ["violations", "join_task_name"]

_JOIN_TASK = "muc_guard join "


def join_task_name(jid: aioxmpp.JID) -> str:
    """The name of a room's join-loop task (lets :func:`violations` count them)."""
    return _JOIN_TASK + str(jid)


def violations(engine: Any) -> list[str]:
    """Broken invariants of `engine`'s rooms, one line each."""
    found: list[str] = []
    loops = collections.Counter(task.get_name() for task in engine._tasks
                                if not task.done() and task.get_name().startswith(_JOIN_TASK))
    up = engine._stream_up.is_set() and not engine._closed
    queued = set(map(id, engine._ping_queue))
    for rec in engine._rooms.values():
        running = rec.join_task is not None and not rec.join_task.done()
        count = loops.pop(join_task_name(rec.jid), 0)
        if count > 1:
            found.append(f"{rec.jid}: {count} join loops")
        if running != (count >= 1):
            found.append(f"{rec.jid}: join task {'not counted' if running else 'orphaned'}")
        if rec.state is State.GAVE_UP:
            if running:
                found.append(f"{rec.jid}: given up, yet a join loop runs")
            if rec.ping_timer is not None or rec.ping_task is not None:
                found.append(f"{rec.jid}: given up, yet a self-ping is pending")
        elif rec.state is State.JOINED:
            pinging = (rec.ping_timer is not None or rec.ping_task is not None
                       or id(rec) in queued)
            if up and not pinging:
                found.append(f"{rec.jid}: joined, but no self-ping is pending")
        elif up and not running:
            found.append(f"{rec.jid}: {rec.state.value}, but no join is pending")
    for name, count in loops.items():
        found.append(f"{name[len(_JOIN_TASK):]}: {count} join loop(s) for an untracked room")
    return found
