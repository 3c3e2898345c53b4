"""
Scenario 4: cold start. 1,000 rooms wanted in the store, the client already
connected: from ``open_store()`` until every room is joined (``on_rejoined``
fired for each, as it does for rooms restored from the store).

The store is what an earlier run of the bot leaves behind: every room wanted,
with its nick, the time of its last join, whether the room has an archive
(it has not), and the mark of a clean shutdown. Such a room is rejoined at
once asking for the history since then: no archive question and no
probe-before-rejoin ping first (those come after a crash, or for rooms the
store knows nothing about).

Baseline: a plain aioxmpp loop joining the same 1,000 rooms with
``MUCClient.join`` and at most `c` joins in flight, for several `c` (its
time includes parsing the room names into JIDs, as the guard's includes
reading them from the store); the
best `c` (lowest median wall time) is the baseline. Every run uses a fresh
account, so each run joins 1,000 rooms it is not in; runs are interleaved
repeat by repeat. The guard runs with its default ``max_concurrent_joins``
(1,024) and, for the cost of a tighter bound, with 256 (its joins then go
out in waves: 256, then 128 whenever half of those in flight are answered).

Server load: Prosody's CPU seconds during each run (from /proc) are reported
next to the client's; the bound on server load is the number of joins in
flight.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import aioxmpp

from muc_guard.core.settings import DEFAULT_MAX_CONCURRENT_JOINS
from muc_guard.core.record import State, RoomRecord
from muc_guard.store import Store

from .common import Context, Events, ScenarioResult, fmt

TITLE = "Cold start: 1,000 rooms in the store → all joined"

GUARD_DEFAULT = DEFAULT_MAX_CONCURRENT_JOINS
GUARD_TIGHT = 256      # a tighter bound, for its cost


async def make_store(path: str, account: aioxmpp.JID, rooms: list[aioxmpp.JID],
                     nick: str = "bot") -> None:
    """A store as an earlier run leaves it: every room wanted, joined an hour
    ago, known to have no archive, and the guard shut down cleanly."""
    now = time.time()
    recs = [RoomRecord(jid=r, requested_nick=nick, nick=nick, state=State.JOINED,
                        last_joined=now - 3600, added=now - 7200 + i * 0.001,
                        has_archive=False)
            for i, r in enumerate(rooms)]
    store = await Store.open(path)
    try:
        await store.write(str(account.bare()), recs, [])
        await store.set_clean_exit(str(account.bare()), True)
    finally:
        await store.close()


async def _plain(ctx: Context, rooms: list[aioxmpp.JID], concurrency: int) -> dict[str, Any]:
    jid = await ctx.account("s4p")
    client = ctx.client(jid, "bench")
    muc = client.summon(aioxmpp.MUCClient)
    await ctx.connect(client)
    sem = asyncio.Semaphore(concurrency)
    names = [str(r) for r in rooms]   # as a bot reads them from its configuration

    async def one(room: aioxmpp.JID) -> None:
        async with sem:
            _, fut = muc.join(room, "bot")
            await fut

    gc.collect()   # earlier runs' garbage must not be collected on this run's clock
    cpu0, srv0, t0 = time.process_time(), ctx.prosody_cpu(), time.monotonic()
    jids = [aioxmpp.JID.fromstr(name) for name in names]
    await asyncio.wait_for(asyncio.gather(*(one(r) for r in jids)), 300)
    wall = time.monotonic() - t0
    out = {"wall": wall, "cpu": time.process_time() - cpu0, "server": ctx.prosody_cpu() - srv0}
    await ctx.stop_client(client)
    await ctx.server_quiet()
    return out


async def _guard(ctx: Context, rooms: list[aioxmpp.JID], concurrency: int, tag: str
                 ) -> dict[str, Any]:
    jid = await ctx.account("s4g")
    path = str(ctx.workdir / f"s4-{tag}.db")
    await make_store(path, jid, rooms)
    client = ctx.client(jid, "bench")
    guard = ctx.guard(client)
    guard.max_concurrent_joins = concurrency
    events = Events()
    guard.on_rejoined.connect(events.listener("rejoined"))
    await ctx.connect(client)
    gc.collect()
    cpu0, srv0, t0 = time.process_time(), ctx.prosody_cpu(), time.monotonic()
    await guard.open_store(path)
    t_open = time.monotonic() - t0
    done = await events.wait(lambda: len(events.log) >= len(rooms), 300)
    wall = time.monotonic() - t0
    out = {"wall": wall, "cpu": time.process_time() - cpu0, "server": ctx.prosody_cpu() - srv0,
           "open": t_open, "complete": done,
           "tx": guard._guard.store.transactions}
    await ctx.cleanup()
    await ctx.server_quiet()
    return out


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    rooms = await ctx.rooms("idle", sz.s4_rooms)
    await ctx.server_quiet()
    median = lambda runs, key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731

    # A: find the plain loop's best concurrency (two runs each, interleaved)
    sweep: dict[int, list[dict[str, Any]]] = {c: [] for c in sz.s4_concurrency}
    for _ in range(max(1, min(2, sz.s4_repeats))):
        for c in sz.s4_concurrency:
            sweep[c].append(await _plain(ctx, rooms, c))
    best = min(sz.s4_concurrency, key=lambda c: median(sweep[c], "wall"))
    ctx.shared["best_plain_concurrency"] = best

    # B: the comparison, interleaved repeat by repeat
    plain: list[dict[str, Any]] = []
    guard: list[dict[str, Any]] = []
    guard_tight: list[dict[str, Any]] = []
    for rep in range(sz.s4_repeats):
        plain.append(await _plain(ctx, rooms, best))
        guard.append(await _guard(ctx, rooms, GUARD_DEFAULT, f"d{rep}"))
        guard_tight.append(await _guard(ctx, rooms, GUARD_TIGHT, f"t{rep}"))

    base = res.figure(f"plain aioxmpp loop, {best} joins in flight (best)", "s",
                      [r["wall"] for r in plain])
    g = res.figure(f"guard, max_concurrent_joins={GUARD_DEFAULT} (default)", "s",
                   [r["wall"] for r in guard], baseline=base)
    gb = res.figure(f"guard, max_concurrent_joins={GUARD_TIGHT} (waves)", "s",
                    [r["wall"] for r in guard_tight], baseline=base)
    res.figure("guard: open_store() itself", "ms", [r["open"] * 1000 for r in guard])
    pc = res.figure("plain: client CPU per run", "s", [r["cpu"] for r in plain])
    res.figure("guard: client CPU per run", "s", [r["cpu"] for r in guard], baseline=pc)
    srv_base = res.figure(f"Prosody CPU per run, plain c={best}", "s",
                          [r["server"] for r in plain])
    res.figure(f"Prosody CPU per run, guard c={GUARD_DEFAULT}", "s",
               [r["server"] for r in guard], baseline=srv_base)
    res.figure(f"Prosody CPU per run, guard c={GUARD_TIGHT}", "s",
               [r["server"] for r in guard_tight], baseline=srv_base)
    res.figure(f"guard c={GUARD_TIGHT}: client CPU per run", "s",
               [r["cpu"] for r in guard_tight], baseline=pc)
    sweep_base = res.figure(f"(sweep) plain loop, {best} joins in flight", "s",
                            [r["wall"] for r in sweep[best]])
    for c in sz.s4_concurrency:
        if c != best:
            res.figure(f"(sweep) plain loop, {c} joins in flight", "s",
                       [r["wall"] for r in sweep[c]], baseline=sweep_base)

    ratio = g.ratio or float("nan")
    complete = all(r["complete"] for r in guard + guard_tight)
    res.check("wall time ≤ 1.10 × the best plain aioxmpp loop",
              f"guard (c={GUARD_DEFAULT}) {fmt(g.summary.median)} s vs plain (c={best}) "
              f"{fmt(base.summary.median)} s = {ratio:.2f} ×"
              + (f"; info: guard at c={GUARD_TIGHT}: {fmt(gb.summary.median)} s = {gb.ratio:.2f} ×"
                 if gb.ratio else ""),
              complete and ratio <= 1.10)
    res.check("server load bounded (concurrency stated)",
              f"≤ {GUARD_DEFAULT} joins in flight (guard; all {len(rooms)} at once here), "
              f"{best} (plain); Prosody CPU per run "
              f"{fmt(median(guard, 'server'))} s (guard) vs {fmt(median(plain, 'server'))} s",
              None)
    res.note(f"{len(rooms)} rooms. Plain-loop concurrencies tried (two runs each): "
             f"{', '.join(map(str, sz.s4_concurrency))}; best: {best}. Then {sz.s4_repeats} "
             f"runs of each compared configuration, interleaved.")
    res.note("Store: every room wanted and joined an hour before (as a previous run leaves "
             "it); store write transactions per guard run: "
             f"{', '.join(str(r['tx']) for r in guard)}.")
