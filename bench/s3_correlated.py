"""
Scenario 3: a correlated drop. 100 rooms on one MUC service forget the bot
at the same moment, without a word; ``ping_idle`` = 10 s.

Real rooms are not silent in lockstep, so the bot first posts one message to
each room, spread evenly over `spread` seconds: the rooms' last stanzas (the
reflections) and so their idle timers are spread over that time too. Right
after the last one, the server removes the bot from all 100 rooms in one
admin call. The first idle timer fires ``ping_idle`` after the first room's
last stanza; the guard then self-pings every other room on that service at
once (its correlated check) instead of waiting for their own timers.

Measured for every room: from the first detection (the first ``on_dropped``)
to its detection and to its ``on_rejoined``.

Baseline: aioxmpp alone, self-ping set as in scenario 2 (soft timeout and
ping interval = ping_idle, autorejoin): each room is found by its own timer.

The slixmpp front-end (``--frontend``) is measured the same way against plain
slixmpp: ``xep_0410`` at ping_idle and the hand-written rejoin loop of
scenario 2 (:class:`bench.slix.RejoinLoop`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioxmpp

from .common import Context, ScenarioResult, fmt
from .sides import Member, sides_of

TITLE = "Correlated silent drop of 100 rooms (ping_idle = 10 s)"

PING_TIMEOUT = 30.0


async def _post_spread(member: Member, rooms: list[aioxmpp.JID], spread: float) -> None:
    """One groupchat message per room, evenly spread over `spread` seconds."""
    start = time.monotonic()
    for i, room in enumerate(rooms):
        due = start + i * spread / max(1, len(rooms) - 1)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        member.post(room, f"last words {i}")


async def _measure(ctx: Context, member: Member, rooms: list[aioxmpp.JID], idle: float
                   ) -> dict[str, Any]:
    await asyncio.wait_for(asyncio.gather(*(member.join(r, "bot") for r in rooms)), 60)
    probe, events = member.probe, member.events
    spread = ctx.sizes.s3_spread
    t_post = time.monotonic()
    await _post_spread(member, rooms, spread)
    # wait (bounded) for every reflection: the rooms' last stanzas
    deadline = time.monotonic() + 5
    while (any(probe.last_rx.get(r, 0) < t_post for r in rooms)
           and time.monotonic() < deadline):
        await asyncio.sleep(0.01)
    first_last = min(probe.last_rx.get(r, t_post) for r in rooms)
    t_rm = time.monotonic()
    await ctx.silent_remove_all(rooms, "bot")
    t_rm_done = time.monotonic()
    wanted = set(rooms)
    ok = await events.wait(
        lambda: wanted <= {r for t, k, r in events.log if k == "rejoined" and t >= t_rm},
        idle + spread + 20)
    drops = {r: events.times("dropped", r, t_rm) for r in rooms}
    rejoins = {r: events.times("rejoined", r, t_rm) for r in rooms}
    detected = [d[0] for d in drops.values() if d]
    first = min(detected) if detected else float("nan")
    return {
        "complete": ok,
        "removed_in_time": t_rm_done < first_last + idle,
        "first_after_idle": first - first_last,
        "detect": [d[0] - first for d in drops.values() if d],
        "rejoin": [r[0] - first for r in rejoins.values() if r],
        "missing": sum(1 for r in rooms if not rejoins[r]),
        "pings": sum(1 for p in probe.pings if p.sent >= t_post),
    }


async def run(ctx: Context, res: ScenarioResult) -> None:
    for side in sides_of(ctx):
        await _run(ctx, res, side)
        await ctx.cleanup()


async def _run(ctx: Context, res: ScenarioResult, side: Any) -> None:
    sz = ctx.sizes
    idle = sz.s3_ping_idle
    tag, label, alone = side.tag, side.label, side.alone_name
    g_rooms = await ctx.rooms(f"s3g{tag}", sz.s3_rooms)
    a_rooms = await ctx.rooms(f"s3a{tag}", sz.s3_rooms)
    guard = await side.guard(ctx, f"s3g{tag}", ping_idle=idle, ping_timeout=PING_TIMEOUT,
                             store=str(ctx.workdir / f"s3{tag}.db"))
    g = await _measure(ctx, guard, g_rooms, idle)
    await ctx.cleanup()
    plain = await side.alone(ctx, f"s3a{tag}", ping_idle=idle, ping_timeout=PING_TIMEOUT)
    a = await _measure(ctx, plain, a_rooms, idle)

    a_rej = res.figure(f"{alone}: first detection → each room rejoined", "s", a["rejoin"])
    res.figure(f"{label}guard: first detection → each room rejoined", "s", g["rejoin"],
               baseline=a_rej)
    a_det = res.figure(f"{alone}: first detection → each room detected", "s", a["detect"])
    res.figure(f"{label}guard: first detection → each room detected", "s", g["detect"],
               baseline=a_det)
    worst = max(g["rejoin"], default=float("nan"))
    res.check(f"{label}all {sz.s3_rooms} rooms rejoined within 1 s of the first detection",
              f"{len(g['rejoin'])}/{sz.s3_rooms} rejoined, the last {fmt(worst * 1000)} ms "
              f"after the first detection ({alone}: "
              f"{fmt(max(a['rejoin'], default=float('nan')))} s)",
              g["complete"] and g["removed_in_time"] and worst <= 1.0)
    side_note = f"{side.name} side: " if label else ""
    res.note(f"{side_note}{sz.s3_rooms} rooms, last stanzas spread over {sz.s3_spread:g} s, "
             f"then all removed at once; ping_idle = {idle:g} s. First detection "
             f"{fmt(g['first_after_idle'])} s after the first room's last stanza (guard), "
             f"{fmt(a['first_after_idle'])} s ({alone}).")
    res.note(f"{side_note}Self-pings sent from the posting to the end: guard {g['pings']}, "
             f"{alone} {a['pings']}.")
    if not (g["removed_in_time"] and a["removed_in_time"]):
        res.note(f"{side_note}WARNING: the removal finished after the first idle timer was "
                 "due; the figures are not valid.")
