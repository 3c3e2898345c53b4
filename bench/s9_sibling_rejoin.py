"""
Scenario 9: a signalled drop (110+333) in one of 1,000 rooms on one MUC
service until the guard is back in that room. A drop in one room must not
slow that room's own rejoin.

On a drop (not a stream loss) the guard checks the other joined rooms on the
same service (its correlated check, at most one round per service per
``ping_timeout``), once the dropped room's rejoin is answered: it self-pings a
random sample of ``sibling_sample`` (8) of the 999 others, and all of them
only if a second drop follows. This scenario measures what that check costs
the rejoin of the room that dropped. (Until the sample, every drop cost a
round of 999 self-pings; Prosody's garbage collection of that round then
stalled it in the middle of later joins: p99 3.87 × the median, aioxmpp, in
the run of 7d188b5.)

Measured per trial: from the moment the client's stream hands over the
unavailable self-presence with 110+333 (a probe filter that runs before
muc_guard's) until ``on_rejoined`` fires for that room. Each trial kicks a
different room (a room dropped twice within backoff_max is flapping and is
rejoined after a pause, on purpose); the guard stays in all 1,000 rooms.

Every trial is a first drop with its own sibling check, and pays for no
other trial's:

* the guard's ``ping_timeout`` is set to 1 s (default 30 s), and trials are
  spaced by at least that from the previous drop, so that the once-per-
  ``ping_timeout`` limit lets every trial start its own check (with the
  default, trials would have to be 30 s apart). The limit is the only thing
  this changes: every self-ping is answered within it on loopback, and the
  scenario checks that every trial's check asked its sample, no more (a
  second drop in the window would widen it to every room), and was answered
  in full;
* a trial starts only when the previous round is answered in full (the probe
  times every self-ping) and Prosody is idle again (``server_quiet``);
* ``ping_idle`` is an hour: no idle self-ping is due during the run, so
  every self-ping is a sibling check.

Floor, measured in the same run and interleaved trial by trial (as in
scenario 1): a plain aioxmpp client (no guard) joining a fresh room, from
``MUCClient.join()`` until its future resolves. For comparison, also
interleaved: the same kick of a guard (a second client) that is in that one
room only, so that no sibling round follows its drop.

Also reported, to show where the time goes: from the 110+333 to the rejoin's
join presence entering the client's send queue, how many sibling self-pings
entered that queue before it (the queue is sent in order), and from that
presence to our own available self-presence coming back.

The slixmpp front-end (``--frontend``) is measured the same way: a guard
(the plugin) in all the rooms, one in one room, and a plain slixmpp join
(``join_muc_wait``, until our own self-presence) as the floor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from muc_guard.core.settings import Settings

from .common import Context, ProbeRecords, ScenarioResult, fmt, kick_and_wait
from .sides import sides_of
from .stalls import ServerLagWatch, StallWatch

TITLE = "Signalled drop among 1,000 rooms on one service → that room rejoined"

#: long enough that no idle self-ping is due during the run
PING_IDLE = 3600.0
#: on top of ping_timeout between a drop and the next trial's kick
MARGIN = 0.2
#: the rooms each check asks (the guard's default)
SAMPLE = Settings().sibling_sample


async def _round_answered(probe: ProbeRecords, timeout: float) -> bool:
    """Wait (bounded) until every self-ping sent so far is answered."""
    deadline = time.monotonic() + timeout
    while any(p.answered is None for p in probe.pings):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def run(ctx: Context, res: ScenarioResult) -> None:
    for side in sides_of(ctx):
        await _run(ctx, res, side)
        await ctx.cleanup()


async def _run(ctx: Context, res: ScenarioResult, side: Any) -> None:
    sz = ctx.sizes
    n = sz.s9_rooms
    trials = min(sz.s9_trials, n)
    tag, label = side.tag, side.label
    rooms = await ctx.rooms(f"s9g{tag}", n)
    one_rooms = await ctx.rooms(f"s9o{tag}", trials)
    floor_rooms = await ctx.rooms(f"s9f{tag}", trials)
    # the kicked rooms, spread over the whole set
    targets = [rooms[(i * n) // trials] for i in range(trials)]

    store = str(ctx.workdir / f"s9{tag}.db")
    guard, one_guard, floor = await asyncio.gather(
        side.guard(ctx, f"s9bot{tag}", store=store, ping_idle=PING_IDLE,
                   ping_timeout=sz.s9_ping_timeout),
        side.guard(ctx, f"s9one{tag}", store=str(ctx.workdir / f"s9{tag}-one.db"),
                   ping_idle=PING_IDLE, ping_timeout=sz.s9_ping_timeout),
        side.floor(ctx, f"s9floor{tag}"))
    probe, sends = guard.probe, guard.send_times()
    await asyncio.wait_for(asyncio.gather(*(guard.join(r, "bot") for r in rooms)), 120)
    await asyncio.wait_for(one_guard.join(one_rooms[0], "bot"), 30)
    await asyncio.sleep(1.0)   # the guard's one-off archive probes (disco#info) settle
    await ctx.server_quiet(10)

    drop_to_rejoin: list[float] = []
    one_to_rejoin: list[float] = []
    floor_join: list[float] = []
    to_join_sent: list[float] = []
    pings_ahead: list[float] = []
    join_to_enter: list[float] = []
    round_time: list[float] = []
    # (series, start, end) of every measured interval, for the stall report
    windows: list[tuple[str, float, float]] = []
    watch = StallWatch().start()
    server_watch = await ServerLagWatch(ctx.server).start()
    short_rounds = 0
    failures = 0
    one_failures = 0
    last_drop = -float("inf")
    for i in range(trials):
        # spacing: the previous round answered, its rate limit over, the server idle
        rounds_ok = await _round_answered(probe, sz.s9_ping_timeout + 5)
        wait = last_drop + sz.s9_ping_timeout + MARGIN - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await ctx.server_quiet(5)
        if not rounds_ok:
            short_rounds += 1

        # floor: a plain join of a fresh room
        t0 = time.monotonic()
        floor_join.append(await floor.timed_join(floor_rooms[i], "floor"))
        windows.append(("floor", t0, t0 + floor_join[-1]))
        await floor.leave(floor_rooms[i])

        # a guard in this one room only
        got = await kick_and_wait(ctx, one_guard.probe, one_guard.events, one_rooms[i])
        if got is None:
            one_failures += 1
        else:
            one_to_rejoin.append(got[2] - got[1])
            windows.append(("one room", got[1], got[2]))

        # the guard in all the rooms: kick one of them
        target = targets[i]
        n_sent = len(probe.pings)
        got = await kick_and_wait(ctx, probe, guard.events, target)
        # the one-room guard moves to the next fresh room while the round settles
        await one_guard.leave(one_rooms[i])
        if i + 1 < trials:
            await asyncio.wait_for(one_guard.join(one_rooms[i + 1], "bot"), 30)
        if got is None:
            failures += 1
            last_drop = time.monotonic()
            continue
        _, t_rx, t_rejoined = got
        last_drop = t_rx
        drop_to_rejoin.append(t_rejoined - t_rx)
        windows.append((f"{n:,} rooms", t_rx, t_rejoined))
        t_join = sends.join_after(target, t_rx)
        t_enter = probe.self_available.get(target)
        if t_join is not None:
            to_join_sent.append(t_join - t_rx)
            pings_ahead.append(sends.pings_between(t_rx, t_join))
            if t_enter is not None and t_enter >= t_join:
                join_to_enter.append(t_enter - t_join)
        if not await _round_answered(probe, sz.s9_ping_timeout + 5):
            short_rounds += 1
            continue
        this_round = [p for p in probe.pings[n_sent:]
                      if p.to is not None and p.to.bare() != target]
        answered = [p for p in this_round if p.condition is None]
        asked = min(SAMPLE, n - 1) if SAMPLE else n - 1
        if len(this_round) != asked or len(answered) != asked:
            short_rounds += 1
        if this_round:
            round_time.append(max(p.answered or p.sent for p in this_round)
                              - min(p.sent for p in this_round))

    await watch.stop()
    await server_watch.stop()
    await ctx.cleanup()

    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    floor_fig = res.figure(f"{label}floor: plain {side.name} join of a fresh room", "ms",
                           ms(floor_join))
    one_fig = res.figure(f"{label}guard in 1 room: 110+333 received → {side.rejoined}", "ms",
                         ms(one_to_rejoin), baseline=floor_fig)
    guard_fig = res.figure(f"{label}guard in {n:,} rooms: 110+333 received → "
                           f"{side.rejoined}", "ms", ms(drop_to_rejoin), baseline=floor_fig)
    res.figure(f"{label}(info) 110+333 received → rejoin presence queued", "ms",
               ms(to_join_sent))
    res.figure(f"{label}(info) sibling self-pings queued ahead of the rejoin presence", "",
               pings_ahead)
    res.figure(f"{label}(info) rejoin presence queued → own self-presence received", "ms",
               ms(join_to_enter))
    res.figure(f"{label}(info) sibling check: first of {min(SAMPLE, n - 1) or n - 1} "
               "self-pings sent → last answered", "ms", ms(round_time))

    s, f, o = guard_fig.summary, floor_fig.summary, one_fig.summary
    ratio = s.median / f.median if f.n and s.n else float("nan")
    tail = s.p99 / s.median if s.n else float("nan")
    res.check(f"{label}≥ {trials} trials, each with its own sibling check",
              f"{s.n} trials, {failures} failed; checks other than {min(SAMPLE, n - 1) or n - 1} "
              f"answered self-pings of {n - 1:,} siblings, or overlapping a trial: "
              f"{short_rounds}",
              s.n >= trials and failures == 0 and short_rounds == 0)
    res.check(f"{label}median ≤ 1.25 × floor",
              f"{fmt(s.median)} ms vs floor {fmt(f.median)} ms = {ratio:.2f} × "
              f"(guard in one room: {fmt(o.median)} ms)",
              ratio <= 1.25)
    res.check(f"{label}p99 ≤ 3 × median",
              f"p99 {fmt(s.p99)} ms = {tail:.2f} × the median (max {fmt(s.max)} ms)",
              tail <= 3.0)
    # The same ratio for the floor and the one-room guard: a tail the server
    # gives every join shows in all three series, one our check adds only
    # in the first.
    res.check(f"{label}(info) p99 ÷ median of the other two series",
              f"floor {fmt(f.p99)} ms = {f.p99 / f.median:.2f} × its median; guard in one "
              f"room {fmt(o.p99)} ms = {o.p99 / o.median:.2f} ×" if f.n and o.n else "no data",
              None)
    side_note = f"{side.name} side: " if label else ""
    res.note(f"{side_note}{trials} trials, each kicking a different one of {n:,} rooms on one service "
             f"(so {n - 1:,} siblings), interleaved with the floor joins and the one-room "
             f"guard's kicks ({one_failures} failed); ping_timeout = "
             f"{sz.s9_ping_timeout:g} s, trials at least {sz.s9_ping_timeout + MARGIN:g} s "
             f"after the previous drop.")
    res.note(f"{side_note}{len(sends.pings):,} self-pings queued in all, every one a sibling check "
             f"(ping_idle = {PING_IDLE / 3600:g} h). p99 interpolates between the closest "
             f"ranks of {s.n} samples (with 100, the second largest: one outlier is "
             f"tolerated, two are not).")
    _note_stalls(res, side_note, watch, server_watch, windows)
    if not label:
        res.note(f"Server: Prosody with network_settings "
                 f"nagle={str(ctx.server.nagle).lower()}.")


def _note_stalls(res: ScenarioResult, side_note: str, watch: StallWatch,
                 server_watch: ServerLagWatch, windows: list[tuple[str, float, float]]
                 ) -> None:
    """The slowest measured intervals, each with how much of it this process
    spent collecting garbage or with its event loop stalled, and Prosody's
    event loop stalled (bench/stalls.py): a tail that a process shares with
    every series is not the rejoin's own."""
    slowest = sorted(windows, key=lambda w: w[2] - w[1], reverse=True)[:5]
    parts = []
    for series, start, end in slowest:
        collecting, stalled = watch.during(start, end)
        server = server_watch.during(start, end)
        parts.append(f"{series} {fmt((end - start) * 1000)} ms (here: GC {fmt(collecting * 1000)} "
                     f"ms, loop stalled {fmt(stalled * 1000)} ms; Prosody stalled "
                     f"{fmt(server * 1000)} ms)")
    full = watch.full_collections()
    res.note(f"{side_note}slowest measured intervals of the three series: {'; '.join(parts)}. "
             f"This process ran {len(full)} full (generation-2) collections during the trials"
             + (f", {fmt(min(full) * 1000)} to {fmt(max(full) * 1000)} ms each" if full else "")
             + f", and its event loop woke late (> 3 ms) {len(watch.stalls)} times; "
             f"Prosody's {len(server_watch.stalls)} times.")
