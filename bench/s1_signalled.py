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
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

import aioxmpp

from .common import Context, Events, Probe, ScenarioResult, fmt

TITLE = "Signalled drop (110+333) → rejoined"


def _client_nodelay(client: aioxmpp.Client) -> str:
    """TCP_NODELAY of the client's socket (aioopenssl does not set it)."""
    try:
        transport = client.stream._xmlstream._transport
        sock = transport.get_extra_info("socket")
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return ("off (TCP_NODELAY set)" if value
                else "on (aioxmpp/aioopenssl do not set TCP_NODELAY)")
    except Exception as exc:  # aioxmpp internals differ
        return f"unknown ({type(exc).__name__})"


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    rng = random.Random(1)
    bot_rooms = await ctx.rooms("s1g", sz.s1_rooms)
    floor_rooms = await ctx.rooms("s1f", sz.s1_trials)
    base_rooms = await ctx.rooms("s1b", sz.s1_baseline_trials)

    bot_jid = await ctx.account("s1bot")
    floor_jid = await ctx.account("s1floor")
    base_jid = await ctx.account("s1base")

    bot = ctx.client(bot_jid, "bench")
    probe = Probe(bot)
    guard = ctx.guard(bot)
    events = Events()
    guard.on_dropped.connect(events.listener("dropped"))
    guard.on_rejoined.connect(events.listener("rejoined"))
    await guard.open_store(str(ctx.workdir / "s1.db"))

    floor = ctx.client(floor_jid, "floor")
    floor_muc = floor.summon(aioxmpp.MUCClient)
    await asyncio.gather(ctx.connect(bot), ctx.connect(floor))
    await asyncio.gather(*(asyncio.wait_for(guard.join(r, "bot"), 30) for r in bot_rooms))
    await asyncio.sleep(1.0)   # the guard's one-off archive probes (disco#info) settle

    drop_to_rejoin: list[float] = []
    floor_join: list[float] = []
    admin_to_rx: list[float] = []
    failures = 0
    for i in range(sz.s1_trials):
        # floor: a plain join of a fresh room
        t0 = time.monotonic()
        room, fut = floor_muc.join(floor_rooms[i], "floor")
        await asyncio.wait_for(fut, 10)
        floor_join.append(time.monotonic() - t0)
        await asyncio.wait_for(room.leave(), 10)

        # guard: 110+333, then on_rejoined
        target = bot_rooms[i % len(bot_rooms)]
        t_admin = time.monotonic()
        await ctx.server.kick_with_codes(target, "bot", [333], "bench")
        t_rejoined = await events.first("rejoined", target, after=t_admin, timeout=10)
        t_rx = probe.self_unavailable.get(target)
        if t_rejoined is None or t_rx is None or t_rx < t_admin:
            failures += 1
            continue
        drop_to_rejoin.append(t_rejoined - t_rx)
        admin_to_rx.append(t_rx - t_admin)
        await asyncio.sleep(rng.uniform(0.02, 0.05))  # let the store write settle

    nodelay = _client_nodelay(bot)

    # baseline: aioxmpp alone never rejoins after 110+333
    base = ctx.client(base_jid, "base")
    base_muc = base.summon(aioxmpp.MUCClient)
    await ctx.connect(base)
    for r in base_rooms:
        _, fut = base_muc.join(r, "base", autorejoin=True)
        await asyncio.wait_for(fut, 10)
    for r in base_rooms:
        await ctx.server.kick_with_codes(r, "base", [333], "bench")
    await asyncio.sleep(sz.s1_baseline_wait)
    rejoined_base = 0
    for r in base_rooms:
        rejoined_base += "base" in await ctx.server.occupants(r)

    await ctx.cleanup()

    ms = [v * 1000 for v in drop_to_rejoin]
    floor_fig = res.figure("floor: plain aioxmpp join of a fresh room", "ms",
                           [v * 1000 for v in floor_join])
    guard_fig = res.figure("guard: 110+333 received → on_rejoined", "ms", ms, baseline=floor_fig)
    res.figure("aioxmpp alone after 110+333", "", [],
               text=f"never rejoins ({rejoined_base}/{len(base_rooms)} back "
                    f"after {sz.s1_baseline_wait:g} s)")
    res.figure("(info) admin kick → 110+333 at client", "ms", [v * 1000 for v in admin_to_rx])

    s, f = guard_fig.summary, floor_fig.summary
    ratio = s.median / f.median if f.n and s.n else float("nan")
    res.check(f"≥ {sz.s1_trials} trials", f"{s.n} trials, {failures} failed",
              s.n >= sz.s1_trials and failures == 0)
    res.check("median ≤ 1.5 × floor",
              f"{fmt(s.median)} ms vs floor {fmt(f.median)} ms = {ratio:.2f} ×",
              ratio <= 1.5)
    res.check("p99 ≤ 100 ms", f"p99 {fmt(s.p99)} ms (max {fmt(s.max)} ms)", s.p99 <= 100)
    res.check("baseline: aioxmpp never rejoins",
              f"{rejoined_base}/{len(base_rooms)} rejoined", rejoined_base == 0)
    res.note(f"Server: Prosody with network_settings nagle={str(ctx.server.nagle).lower()} "
             f"({'Nagle on' if ctx.server.nagle else 'TCP_NODELAY on its sockets'}). "
             f"The bot's client socket: Nagle {nodelay}.")
    res.note(f"{sz.s1_trials} trials over {len(bot_rooms)} rooms, interleaved with the floor "
             f"joins; p99 of the guard figure: {fmt(s.p99)} ms.")
