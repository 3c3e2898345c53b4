"""
Scenario 6: idle cost. 1,000 joined rooms in which nothing happens,
``ping_idle`` = 60 s, watched for 3 minutes.

The guard bot runs in a child process and records every self-ping it sends
(time, room). Measured over the window that starts once every room is
joined: pings per room per idle period, the interval between two pings to
the same room, how the pings spread over the seconds of the window (the
busiest second against the mean), and the bot's CPU time per ping.

For reference, a plain aioxmpp bot sits in the same rooms during the same
window (its own self-ping starts after 13 min of silence, so it sends none):
its CPU time is what 1,000 idle rooms cost without the guard.
"""

from __future__ import annotations

import asyncio
import collections
import math

from .common import Context, ScenarioResult, fmt

TITLE = "Idle cost: 1,000 idle rooms, ping_idle = 60 s, 3 minutes"


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    await ctx.rooms("idle", sz.s6_rooms)
    idle = sz.s6_ping_idle
    common = {"room_prefix": "idle", "room_count": sz.s6_rooms, "probe": True,
              "ping_idle": idle, "join_wait": 120}
    g_jid, p_jid = await ctx.account("s6guard"), await ctx.account("s6plain")
    guard = await ctx.bot({**common, "mode": "guard", "jid": str(g_jid), "resource": "bench",
                           "nick": "guard", "join": "join",
                           "store": str(ctx.workdir / "s6.db")}, "s6-guard")
    plain = await ctx.bot({**common, "mode": "plain", "jid": str(p_jid), "resource": "bench",
                           "nick": "plain", "concurrency": 32}, "s6-plain")
    g_joined, _ = await asyncio.gather(guard.expect("joined", 150), plain.expect("joined", 150))
    if not g_joined["complete"]:
        raise RuntimeError(f"the guard bot joined {g_joined['n']} of {sz.s6_rooms} rooms")

    g0, p0 = await asyncio.gather(guard.command("mark", "mark"), plain.command("mark", "mark"))
    await asyncio.sleep(sz.s6_seconds)
    g1, p1 = await asyncio.gather(guard.command("mark", "mark"), plain.command("mark", "mark"))
    pings = await guard.command("pings", "pings")
    await guard.stop()
    await plain.stop()

    t0, t1 = g0["t"], g1["t"]
    window = t1 - t0
    sent = [(t, r) for t, r in zip(pings["sent"], pings["rooms"]) if t0 <= t < t1]
    n = len(sent)
    # "seconds" of a 60 s idle period: bins of ping_idle / 60 (1 s in the full run)
    binw = idle / 60
    per_bin = collections.Counter(int((t - t0) / binw) for t, _ in sent)
    seconds = int(math.ceil(window / binw))
    counts = [per_bin.get(s, 0) for s in range(seconds)]
    mean = n / seconds if seconds else float("nan")
    busiest = max(counts, default=0)
    by_room: dict[int, list[float]] = collections.defaultdict(list)
    for t, r in sorted(zip(pings["sent"], pings["rooms"])):
        by_room[r].append(t)
    intervals = [b - a for times in by_room.values() for a, b in zip(times, times[1:])]
    periods = window / idle
    per_room_period = [sum(1 for t, r in sent if r == i) / periods for i in range(sz.s6_rooms)]
    g_cpu, p_cpu = g1["cpu"] - g0["cpu"], p1["cpu"] - p0["cpu"]

    res.figure("self-pings per room per idle period", "", per_room_period)
    res.figure("interval between two pings to one room", "s", intervals)
    res.figure("self-pings in each second of the window"
               + ("" if binw == 1 else f" (bins of {fmt(binw)} s)"), "", counts)
    res.figure("self-ping round trip", "ms", [x * 1000 for x in pings["rtt"]])
    p_fig = res.figure("plain aioxmpp bot: CPU over the window", "s", [p_cpu])
    res.figure("guard bot: CPU over the window", "s", [g_cpu], baseline=p_fig)
    res.figure("guard: CPU per self-ping (all of the bot's CPU)", "ms",
               [g_cpu / n * 1000] if n else [])
    res.figure("guard: CPU per self-ping above the plain bot's", "ms",
               [(g_cpu - p_cpu) / n * 1000] if n else [])

    median_interval = sorted(intervals)[len(intervals) // 2] if intervals else float("nan")
    res.check("about one ping per room per idle period",
              f"{n} pings to {sz.s6_rooms} rooms in {fmt(window)} s = "
              f"{n / sz.s6_rooms / periods:.2f} per room per {idle:g} s; median interval "
              f"between two pings to a room {fmt(median_interval)} s",
              bool(intervals) and 0.9 * idle <= median_interval <= 1.1 * idle)
    res.check("spread out: the busiest second ≤ 2 × the mean",
              f"busiest second {busiest} pings, mean {mean:.1f} per second = "
              f"{busiest / mean if mean else float('nan'):.1f} ×; seconds with pings: "
              f"{sum(1 for c in counts if c)}/{seconds}",
              bool(n) and busiest <= 2 * mean)
    res.check("client CPU per ping reported",
              f"{fmt(g_cpu / n * 1000) if n else '—'} ms per ping (bot total "
              f"{fmt(g_cpu)} s; plain bot {fmt(p_cpu)} s)", None)
    res.note(f"{sz.s6_rooms} rooms joined with guard.join() (32 joins in flight), "
             f"ping_idle = {idle:g} s, window {fmt(window)} s from the moment all were joined.")
