"""
Scenario 1: a signalled drop (110+333) until the guard is back in the room.

Measured per trial: from the moment the client's stream hands over the
unavailable self-presence with 110+333 (a probe filter that runs before
muc_guard's) until ``on_rejoined`` fires for that room.

Floor, measured in the same run and interleaved trial by trial: a plain
aioxmpp client (no guard) joining a fresh room, i.e. one created server-side
that nobody has joined yet, from ``MUCClient.join()`` until its future
resolves (our own self-presence came back). The guard's rejoin cannot be
faster than one such join.

Baseline: aioxmpp alone (``MUCClient.join(..., autorejoin=True)``) given the
same 110+333. It forgets the room and never rejoins; the scenario checks
that on the server.

The slixmpp front-end (``--frontend``) is measured the same way, against a
plain slixmpp join (``join_muc_wait``, until our own self-presence) as its
floor; its baseline is the rejoin loop a slixmpp user writes alone
(:class:`bench.slix.RejoinLoop`: ``join_muc_wait`` again on the unavailable
self-presence), kicked in every trial too, from the 110+333 to
``join_muc_wait`` returning.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from .common import Context, ScenarioResult, fmt, kick_and_wait
from .sides import Member, sides_of

TITLE = "Signalled drop (110+333) → rejoined"


def _nagle(member: Member, client: str) -> str:
    """Nagle on the client's socket (aioopenssl does not set TCP_NODELAY)."""
    try:
        sock = member.transport().get_extra_info("socket")
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return "off (TCP_NODELAY set)" if value else f"on ({client} does not set TCP_NODELAY)"
    except Exception as exc:  # client internals differ
        return f"unknown ({type(exc).__name__})"


async def run(ctx: Context, res: ScenarioResult) -> None:
    for side in sides_of(ctx):
        await _run(ctx, res, side)
        await ctx.cleanup()


async def _run(ctx: Context, res: ScenarioResult, side: Any) -> None:
    sz = ctx.sizes
    rng = random.Random(1)
    tag, label = side.tag, side.label
    bot_rooms = await ctx.rooms(f"s1g{tag}", sz.s1_rooms)
    floor_rooms = await ctx.rooms(f"s1f{tag}", sz.s1_trials)
    # a rejoining baseline is kicked in every trial (one room each), else once
    base_count = sz.s1_trials if side.alone_rejoins else sz.s1_baseline_trials
    base_rooms = await ctx.rooms(f"s1b{tag}", base_count)

    bot, floor, base = await asyncio.gather(
        side.guard(ctx, f"s1bot{tag}", store=str(ctx.workdir / f"s1{tag}.db")),
        side.floor(ctx, f"s1floor{tag}"),
        side.alone(ctx, f"s1base{tag}"))
    await asyncio.gather(*(asyncio.wait_for(bot.join(r, "bot"), 30) for r in bot_rooms))
    for r in base_rooms:
        await asyncio.wait_for(base.join(r, "base"), 10)
    await asyncio.sleep(1.0)   # the guard's one-off archive probes (disco#info) settle

    drop_to_rejoin: list[float] = []
    loop_to_rejoin: list[float] = []
    floor_join: list[float] = []
    admin_to_rx: list[float] = []
    failures = loop_failures = 0
    for i in range(sz.s1_trials):
        # floor: a plain join of a fresh room
        floor_join.append(await floor.timed_join(floor_rooms[i], "floor"))
        await floor.leave(floor_rooms[i])

        # guard: 110+333, then its rejoined event
        target = bot_rooms[i % len(bot_rooms)]
        got = await kick_and_wait(ctx, bot.probe, bot.events, target)
        if got is None:
            failures += 1
            continue
        t_admin, t_rx, t_rejoined = got
        drop_to_rejoin.append(t_rejoined - t_rx)
        admin_to_rx.append(t_rx - t_admin)

        if side.alone_rejoins:   # the user's own loop, kicked the same way
            got = await kick_and_wait(ctx, base.probe, base.events, base_rooms[i], "base")
            if got is None:
                loop_failures += 1
            else:
                loop_to_rejoin.append(got[2] - got[1])
        await asyncio.sleep(rng.uniform(0.02, 0.05))  # let the store write settle

    nodelay = _nagle(bot, side.name)

    rejoined_base = 0
    if not side.alone_rejoins:
        # aioxmpp alone never rejoins after 110+333
        for r in base_rooms:
            await ctx.server.kick_with_codes(r, "base", [333], "bench")
        await asyncio.sleep(sz.s1_baseline_wait)
        for r in base_rooms:
            rejoined_base += "base" in await ctx.server.occupants(r)

    await ctx.cleanup()

    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    floor_fig = res.figure(f"{label}floor: plain {side.name} join of a fresh room", "ms",
                           ms(floor_join))
    guard_fig = res.figure(f"{label}guard: 110+333 received → {side.rejoined}", "ms",
                           ms(drop_to_rejoin), baseline=floor_fig)
    if side.alone_rejoins:
        loop_fig = res.figure(f"{label}hand-written loop: 110+333 received → "
                              "join_muc_wait returned", "ms", ms(loop_to_rejoin),
                              baseline=floor_fig)
    else:
        res.figure(f"{side.name} alone after 110+333", "", [],
                   text=f"never rejoins ({rejoined_base}/{len(base_rooms)} back "
                        f"after {sz.s1_baseline_wait:g} s)")
    res.figure(f"{label}(info) admin kick → 110+333 at client", "ms", ms(admin_to_rx))

    s, f = guard_fig.summary, floor_fig.summary
    ratio = s.median / f.median if f.n and s.n else float("nan")
    res.check(f"{label}≥ {sz.s1_trials} trials", f"{s.n} trials, {failures} failed",
              s.n >= sz.s1_trials and failures == 0)
    res.check(f"{label}median ≤ 1.5 × floor",
              f"{fmt(s.median)} ms vs floor {fmt(f.median)} ms = {ratio:.2f} ×",
              ratio <= 1.5)
    res.check(f"{label}p99 ≤ 100 ms", f"p99 {fmt(s.p99)} ms (max {fmt(s.max)} ms)",
              s.p99 <= 100)
    if side.alone_rejoins:
        lp = loop_fig.summary
        res.check(f"{label}baseline: the hand-written loop, for comparison",
                  f"{lp.n} rejoins, {loop_failures} failed; median {fmt(lp.median)} ms, "
                  f"p99 {fmt(lp.p99)} ms (guard: {fmt(s.median)} ms, {fmt(s.p99)} ms)", None)
    else:
        res.check("baseline: aioxmpp never rejoins",
                  f"{rejoined_base}/{len(base_rooms)} rejoined", rejoined_base == 0)
    side_note = f"{side.name} side: " if label else ""
    res.note(f"{side_note}Server: Prosody with network_settings "
             f"nagle={str(ctx.server.nagle).lower()} "
             f"({'Nagle on' if ctx.server.nagle else 'TCP_NODELAY on its sockets'}). "
             f"The bot's client socket: Nagle {nodelay}.")
    res.note(f"{side_note}{sz.s1_trials} trials over {len(bot_rooms)} rooms, "
             f"interleaved with the floor joins; p99 of the guard figure: {fmt(s.p99)} ms.")
