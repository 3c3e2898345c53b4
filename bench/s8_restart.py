"""
Scenario 8: restart. A bot that wants 1,000 rooms is restarted: the time
from process creation to every room joined, interpreter start, imports and
store opening included.

First a guard bot joins the 1,000 rooms with ``guard.join()`` and stops
cleanly (its store now holds them, as after any run). Then, per repeat, a new
bot process starts (``bench.botproc``, guard mode): ``open_store()`` (rooms
restored, join tasks waiting for the stream), connect, and wait for
``on_rejoined`` of every room. The clock starts just before the process is
created and stops at the child's own timestamp of its last ``on_rejoined``
(both CLOCK_MONOTONIC).

Baseline, interleaved repeat by repeat: a plain aioxmpp bot process that gets
the same 1,000 room names (from its command line) and joins them with the
best concurrency scenario 4 found (32 if scenario 4 did not run).
"""

from __future__ import annotations

from typing import Any

from muc_guard.core.settings import DEFAULT_MAX_CONCURRENT_JOINS

from .common import Context, ScenarioResult, fmt

TITLE = "Restart: bot with 1,000 wanted rooms, process start → all joined"


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    await ctx.rooms("idle", sz.s8_rooms)
    concurrency = int(ctx.shared.get("best_plain_concurrency", 32))
    g_jid, p_jid = await ctx.account("s8guard"), await ctx.account("s8plain")
    store = str(ctx.workdir / "s8.db")
    common = {"room_prefix": "idle", "room_count": sz.s8_rooms, "join_wait": 120}
    guard_cfg = {**common, "mode": "guard", "jid": str(g_jid), "nick": "guard", "store": store}
    plain_cfg = {**common, "mode": "plain", "jid": str(p_jid), "resource": "bench",
                 "nick": "plain", "concurrency": concurrency}

    first = await ctx.bot({**guard_cfg, "join": "join"}, "s8-first")
    joined = await first.expect("joined", 150)
    if not joined["complete"]:
        raise RuntimeError(f"first run joined {joined['n']} of {sz.s8_rooms} rooms")
    await first.stop()
    await ctx.server_quiet()

    runs: dict[str, list[dict[str, Any]]] = {"guard": [], "plain": []}
    for rep in range(sz.s8_repeats):
        for kind, cfg in (("guard", {**guard_cfg, "join": "store"}), ("plain", plain_cfg)):
            bot = await ctx.bot(cfg, f"s8-{kind}-{rep}")
            msg = await bot.expect("joined", 150)
            assert bot.spawned_at is not None
            msg["total"] = msg["t_joined"] - bot.spawned_at
            msg["spawned"] = bot.spawned_at
            runs[kind].append(msg)
            await bot.stop()
            await ctx.server_quiet()

    g, p = runs["guard"], runs["plain"]
    base = res.figure(f"plain aioxmpp process, {concurrency} joins in flight: start → all joined",
                      "s", [r["total"] for r in p])
    fig = res.figure("guard process: start → all joined", "s", [r["total"] for r in g],
                     baseline=base)
    pi = res.figure("plain: start → imports done", "s", [r["t_imported"] - r["spawned"] for r in p])
    res.figure("guard: start → imports done", "s", [r["t_imported"] - r["spawned"] for r in g],
               baseline=pi)
    res.figure("guard: open_store()", "ms", [(r["t_store1"] - r["t_store0"]) * 1000 for r in g])
    pc = res.figure("plain: connected → all joined", "s", [r["t_joined"] - r["t_conn1"] for r in p])
    res.figure("guard: connected → all joined", "s", [r["t_joined"] - r["t_conn1"] for r in g],
               baseline=pc)
    complete = all(r["complete"] for r in g + p)
    res.check("restart: process start → all rooms joined, store open included (reported)",
              f"guard {fmt(fig.summary.median)} s vs plain aioxmpp {fmt(base.summary.median)} s "
              f"= {fig.ratio or float('nan'):.2f} ×; all joined: {complete}",
              None if complete else False)
    res.note(f"{sz.s8_rooms} rooms, {sz.s8_repeats} restarts of each kind, interleaved; the guard "
             f"uses its default max_concurrent_joins ({DEFAULT_MAX_CONCURRENT_JOINS}); the plain bot "
             f"{concurrency}. The "
             f"issue sets no bound for this scenario; the plain process is the reference.")
