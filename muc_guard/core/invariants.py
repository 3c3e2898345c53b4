"""
What must hold for every tracked room, checked from the outside.

A room can only be lost for good in one way: it is wanted, not joined, and
nothing is going to join it, or it is joined and nothing is going to notice
when it silently drops (no self-ping pending). Every such defect so far came
from a path that changed a room's state while something else was still
under way for it. Checking the state after each step catches the whole
class, whatever path led there: the model-based test does it after every
event, the integration tests after every scenario.

:func:`violations` returns one line per broken rule (empty when all hold).
While the stream is down, joins and pings wait for it, so only the rules
that hold regardless are checked then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import TimerKind
from .record import Phase, State

if TYPE_CHECKING:  # pragma: no cover
    from .guard import GuardCore

__all__ = ["violations"]


def violations(core: GuardCore) -> list[str]:
    """Broken invariants of `core`'s rooms, one line each."""
    found: list[str] = []
    up = core.stream_up and not core.closed
    armed = core.armed
    for rec in core.rooms.values():
        name = f"{rec.jid}"
        if rec.phase is Phase.TIMER and not armed(rec, TimerKind.JOIN):
            found.append(f"{name}: waits for a join timer that is not armed")
        if rec.nick_change_pending and not armed(rec, TimerKind.NICK):
            found.append(f"{name}: a nick change that nothing ends")
        if rec.state is State.GAVE_UP:
            if rec.phase is not Phase.IDLE:
                found.append(f"{name}: given up, yet its join is {rec.phase.name}")
            if armed(rec, TimerKind.PING) or rec.ping:
                found.append(f"{name}: given up, yet a self-ping is pending")
        elif rec.state is State.JOINED:
            if rec.phase not in (Phase.IDLE, Phase.RECOVER):
                found.append(f"{name}: joined, yet its join is {rec.phase.name}")
            pinging = armed(rec, TimerKind.PING) or rec.ping or rec.queued_ping
            if up and not pinging:
                found.append(f"{name}: joined, but no self-ping is pending")
        elif up and rec.phase in (Phase.IDLE, Phase.STREAM):
            found.append(f"{name}: {rec.state.value}, but no join is pending")
    return found
