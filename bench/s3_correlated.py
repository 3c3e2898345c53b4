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
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioxmpp

from .botproc import tune_aioxmpp_self_ping
from .common import Context, Events, Probe, ScenarioResult, fmt

TITLE = "Correlated silent drop of 100 rooms (ping_idle = 10 s)"

PING_TIMEOUT = 30.0


async def _post_spread(client: aioxmpp.Client, rooms: list[aioxmpp.JID], spread: float) -> None:
    """One groupchat message per room, evenly spread over `spread` seconds."""
    start = time.monotonic()
    for i, room in enumerate(rooms):
        due = start + i * spread / max(1, len(rooms) - 1)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        msg = aioxmpp.Message(to=room, type_=aioxmpp.MessageType.GROUPCHAT)
        msg.body[None] = f"last words {i}"
        client.enqueue(msg)


async def _measure(ctx: Context, client: aioxmpp.Client, probe: Probe, events: Events,
                   rooms: list[aioxmpp.JID], idle: float) -> dict[str, Any]:
    spread = ctx.sizes.s3_spread
    t_post = time.monotonic()
    await _post_spread(client, rooms, spread)
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
    }


async def _guard_run(ctx: Context, rooms: list[aioxmpp.JID], idle: float) -> dict[str, Any]:
    client, probe, guard = await ctx.watched_guard("s3g", idle, PING_TIMEOUT)
    events = Events()
    guard.on_dropped.connect(events.listener("dropped"))
    guard.on_rejoined.connect(events.listener("rejoined"))
    await guard.open_store(str(ctx.workdir / "s3.db"))
    await ctx.connect(client)
    await asyncio.wait_for(asyncio.gather(*(guard.join(r, "bot") for r in rooms)), 60)
    result = await _measure(ctx, client, probe, events, rooms, idle)
    result["pings"] = len(probe.pings)
    return result


async def _aioxmpp_run(ctx: Context, rooms: list[aioxmpp.JID], idle: float) -> dict[str, Any]:
    jid = await ctx.account("s3a")
    client = ctx.client(jid, "bench")
    probe = Probe(client)
    muc = client.summon(aioxmpp.MUCClient)
    events = Events()
    await ctx.connect(client)
    futures = []
    for room in rooms:
        aroom, fut = muc.join(room, "bot", autorejoin=True)
        tune_aioxmpp_self_ping(aroom, idle, PING_TIMEOUT)
        monitor = aroom._monitor

        def exited(room: aioxmpp.JID = room, original: Any = monitor.on_exited) -> None:
            events.add("dropped", room)
            original()

        monitor.on_exited = exited
        aroom.on_enter.connect(lambda *a, room=room, **kw: events.add("rejoined", room))
        futures.append(fut)
    await asyncio.wait_for(asyncio.gather(*futures), 60)
    result = await _measure(ctx, client, probe, events, rooms, idle)
    result["pings"] = len(probe.pings)
    return result


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    idle = sz.s3_ping_idle
    g_rooms = await ctx.rooms("s3g", sz.s3_rooms)
    a_rooms = await ctx.rooms("s3a", sz.s3_rooms)
    g = await _guard_run(ctx, g_rooms, idle)
    await ctx.cleanup()
    a = await _aioxmpp_run(ctx, a_rooms, idle)

    a_rej = res.figure("aioxmpp: first detection → each room rejoined", "s", a["rejoin"])
    res.figure("guard: first detection → each room rejoined", "s", g["rejoin"], baseline=a_rej)
    a_det = res.figure("aioxmpp: first detection → each room detected", "s", a["detect"])
    res.figure("guard: first detection → each room detected", "s", g["detect"], baseline=a_det)
    worst = max(g["rejoin"], default=float("nan"))
    res.check(f"all {sz.s3_rooms} rooms rejoined within 1 s of the first detection",
              f"{len(g['rejoin'])}/{sz.s3_rooms} rejoined, the last {fmt(worst * 1000)} ms "
              f"after the first detection (aioxmpp: "
              f"{fmt(max(a['rejoin'], default=float('nan')))} s)",
              g["complete"] and g["removed_in_time"] and worst <= 1.0)
    res.note(f"{sz.s3_rooms} rooms, last stanzas spread over {sz.s3_spread:g} s, then all "
             f"removed at once; ping_idle = {idle:g} s. First detection "
             f"{fmt(g['first_after_idle'])} s after the first room's last stanza (guard), "
             f"{fmt(a['first_after_idle'])} s (aioxmpp).")
    res.note(f"Self-pings sent from the posting to the end: guard {g['pings']}, "
             f"aioxmpp {a['pings']}.")
    if not (g["removed_in_time"] and a["removed_in_time"]):
        res.note("WARNING: the removal finished after the first idle timer was due; "
                 "the figures are not valid.")
