"""
Scenario 5: steady state. 1,000 joined rooms; another account sends 500
messages per second, each to a room chosen at random, for 60 s.

Two bots sit in the same 1,000 rooms at the same time, each in a child
process of its own (``bench.botproc``): one with the guard (store open,
``on_message`` subscribed), one with aioxmpp's MUCClient alone
(``Room.on_message`` subscribed on every room). Both receive exactly the same
messages at the same moments, so their CPU times compare directly. The
sender runs in the benchmark process; Prosody's CPU is its own.

Measured per window of 10 s: each bot's CPU seconds (its own
``getrusage``), the guard's store write transactions, its self-pings. A
self-ping to a room that had a stanza within ``ping_idle`` is a violation.
``ping_idle`` is 10 s here (not the default 300 s) so that the idle logic is
exercised within the minute: a room gets a message every 2 s on average, and
a few go quiet for longer than 10 s by chance, which earns them a legitimate
ping.

A third bot sits in the same rooms in the same minute: the guard with
metrics on (``muc_guard.metrics.serve`` in the bot, and ``/metrics``
scraped every second, as Prometheus would, by the benchmark process: the
scraper's own CPU is then not the bot's, as a real Prometheus server's is
not; serving and collecting the scrape is). Its target: client CPU with the
guard and metrics ≤ 1.10 × the plain bot. The third occupant adds a quarter
to Prosody's fan-out; the three bots still receive the same messages at the
same moments.

The slixmpp front-end (``--frontend``) gets the same minute, after the
aioxmpp pair and with the same sender: a bot with the plugin
(``muc_guard_message`` subscribed) beside plain slixmpp (``xep_0045``,
``groupchat_message`` subscribed, and its ``xep_0410`` self-ping at the same
interval), each in its own process, and the plugin with metrics beside them.
One side at a time keeps Prosody's load that of the aioxmpp side.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import aiohttp
import aioxmpp

from .common import Context, ScenarioResult, fmt
from .sides import sides_of

TITLE = "Steady state: 1,000 rooms, 500 messages/s for 60 s"


async def _send(client: aioxmpp.Client, rooms: list[aioxmpp.JID], rate: float,
                seconds: float, rng: random.Random) -> int:
    """Send at `rate` per second for `seconds`, each to a random room."""
    t0 = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        due = min(int(elapsed * rate), int(seconds * rate))
        while sent < due:
            msg = aioxmpp.Message(to=rng.choice(rooms), type_=aioxmpp.MessageType.GROUPCHAT)
            msg.body[None] = f"steady state message {sent}"
            client.enqueue(msg)
            sent += 1
        await asyncio.sleep(0.01)
    return sent


async def run(ctx: Context, res: ScenarioResult) -> None:
    sz = ctx.sizes
    rooms = await ctx.rooms("busy", sz.s5_rooms)

    sender_jid = await ctx.account("s5send")
    sender = ctx.client(sender_jid, "sender")
    sender_muc = sender.summon(aioxmpp.MUCClient)
    await ctx.connect(sender)
    sem = asyncio.Semaphore(32)

    async def join(room: aioxmpp.JID) -> None:
        async with sem:
            _, fut = sender_muc.join(room, "sender")
            await fut

    await asyncio.wait_for(asyncio.gather(*(join(r) for r in rooms)), 120)
    for side in sides_of(ctx):
        await _pair(ctx, res, side, sender, rooms)


async def _scrape(url: str, interval: float, stop: asyncio.Event) -> list[float]:
    """GET `url` every `interval` seconds until `stop`, as Prometheus does;
    each scrape's duration (a failed scrape raises: the figure would lie)."""
    durations: list[float] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            t0 = time.monotonic()
            async with http.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"scrape of {url} answered {resp.status}")
            durations.append(time.monotonic() - t0)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
    return durations


async def _pair(ctx: Context, res: ScenarioResult, side: Any, sender: aioxmpp.Client,
                rooms: list[aioxmpp.JID]) -> None:
    """The guard bot, the guard bot with metrics and the plain bot of one
    side, the same minute of traffic."""
    sz = ctx.sizes
    tag, label = side.tag, side.label
    common = {"room_prefix": "busy", "room_count": sz.s5_rooms,
              "probe": True, "ping_idle": sz.s5_ping_idle, "join_wait": 120}
    g_jid, p_jid = await ctx.account(f"s5guard{tag}"), await ctx.account(f"s5plain{tag}")
    guard = await ctx.bot({**common, "mode": side.guard_mode, "jid": str(g_jid),
                           "resource": "bench", "nick": f"guard{tag}", "join": "join",
                           "store": str(ctx.workdir / f"s5{tag}.db")}, f"s5-guard{tag}")
    m_jid = await ctx.account(f"s5metrics{tag}")
    scraped = await ctx.bot({**common, "mode": side.guard_mode, "jid": str(m_jid),
                             "resource": "bench", "nick": f"metrics{tag}", "join": "join",
                             "store": str(ctx.workdir / f"s5metrics{tag}.db"),
                             "metrics": True}, f"s5-metrics{tag}")
    plain = await ctx.bot({**common, "mode": side.plain_mode, "jid": str(p_jid),
                           "resource": "bench", "nick": f"plain{tag}", "concurrency": 32},
                          f"s5-plain{tag}")
    metrics_url = f"http://127.0.0.1:{(await scraped.expect('metrics', 30))['port']}/metrics"
    g_joined, m_joined, p_joined = await asyncio.gather(
        guard.expect("joined", 150), scraped.expect("joined", 150), plain.expect("joined", 150))
    if not (g_joined["complete"] and m_joined["complete"] and p_joined["complete"]):
        raise RuntimeError(f"bots did not join every room: guard {g_joined['n']}, "
                           f"guard with metrics {m_joined['n']}, plain {p_joined['n']}")
    await asyncio.sleep(3.0 if not ctx.smoke else 0.5)   # join aftermath settles

    marks: list[tuple[dict[str, Any], dict[str, Any], float, dict[str, Any]]] = []

    async def mark() -> None:
        g, p, m = await asyncio.gather(guard.command("mark", "mark"),
                                       plain.command("mark", "mark"),
                                       scraped.command("mark", "mark"))
        marks.append((g, p, ctx.prosody_cpu(), m))

    async def marker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), sz.s5_window)
            except asyncio.TimeoutError:
                await mark()

    await mark()
    stop = asyncio.Event()
    marking = asyncio.create_task(marker(stop))
    scraping = asyncio.create_task(_scrape(metrics_url, sz.s5_scrape_interval, stop))
    sent = await _send(sender, rooms, sz.s5_rate, sz.s5_seconds, random.Random(5))
    stop.set()
    await marking
    scrapes = await scraping
    # drain: both bots have every message (bounded)
    deadline = time.monotonic() + 20
    base_g, base_p, base_m = marks[0][0]["msgs"], marks[0][1]["msgs"], marks[0][3]["msgs"]
    while time.monotonic() < deadline:
        await mark()
        g, p, _, m = marks[-1]
        if (g["msgs"] - base_g >= sent and p["msgs"] - base_p >= sent
                and m["msgs"] - base_m >= sent):
            break
        marks.pop()
        await asyncio.sleep(0.25)
    else:
        await mark()
    await guard.stop()
    await scraped.stop()
    await plain.stop()

    first, last = marks[0], marks[-1]
    g_cpu = last[0]["cpu"] - first[0]["cpu"]
    p_cpu = last[1]["cpu"] - first[1]["cpu"]
    g_msgs = last[0]["msgs"] - first[0]["msgs"]
    p_msgs = last[1]["msgs"] - first[1]["msgs"]
    wall = last[0]["t"] - first[0]["t"]
    windows = list(zip(marks, marks[1:]))
    w_g = [b[0]["cpu"] - a[0]["cpu"] for a, b in windows]
    w_p = [b[1]["cpu"] - a[1]["cpu"] for a, b in windows]
    tx = lambda m: m["tx"] or 0  # noqa: E731  (None without a store)
    w_tx = [(tx(b[0]) - tx(a[0])) / (b[0]["t"] - a[0]["t"]) for a, b in windows]
    tx_total = tx(last[0]) - tx(first[0])
    pings = last[0]["pings"] - first[0]["pings"]
    p_pings = (last[1]["pings"] or 0) - (first[1]["pings"] or 0)
    violations = last[0]["violations"] - first[0]["violations"]
    m_cpu = last[3]["cpu"] - first[3]["cpu"]
    m_msgs = last[3]["msgs"] - first[3]["msgs"]
    w_m = [b[3]["cpu"] - a[3]["cpu"] for a, b in windows]

    p_fig = res.figure(f"plain {side.name} bot: CPU per window", "s", w_p)
    res.figure(f"{label}guard bot: CPU per window", "s", w_g, baseline=p_fig)
    res.figure(f"{label}guard/plain CPU ratio per window", "×",
               [g / p for g, p in zip(w_g, w_p) if p > 0])
    pm = res.figure(f"{label}plain: CPU per message received", "µs",
                    [p_cpu / max(1, p_msgs) * 1e6])
    g_pm = res.figure(f"{label}guard: CPU per message delivered", "µs",
                      [g_cpu / max(1, g_msgs) * 1e6], baseline=pm)
    res.figure(f"{label}guard with metrics: CPU per message delivered", "µs",
               [m_cpu / max(1, m_msgs) * 1e6], baseline=g_pm)
    res.figure(f"{label}guard with metrics/plain CPU ratio per window", "×",
               [m / p for m, p in zip(w_m, w_p) if p > 0])
    res.figure(f"{label}guard with metrics: /metrics scrape duration", "ms",
               [d * 1000 for d in scrapes])
    res.figure(f"{label}guard: store write transactions per second", "1/s", w_tx)
    res.figure(f"{label}Prosody CPU per window", "s", [b[2] - a[2] for a, b in windows])

    ratio = g_cpu / p_cpu if p_cpu > 0 else float("nan")
    res.check(f"{label}client CPU with the guard ≤ 1.10 × without",
              f"{fmt(g_cpu)} s vs {fmt(p_cpu)} s over {fmt(wall)} s = {ratio:.2f} ×",
              ratio <= 1.10)
    m_ratio = m_cpu / p_cpu if p_cpu > 0 else float("nan")
    res.check(f"{label}client CPU with the guard and metrics ≤ 1.10 × without",
              f"{fmt(m_cpu)} s vs {fmt(p_cpu)} s over {fmt(wall)} s = {m_ratio:.2f} × "
              f"({len(scrapes)} scrapes of /metrics)",
              m_ratio <= 1.10)
    # Lazy writes are at least 1 s apart, so n of them span at least n - 1 s:
    # a span of `wall` seconds may hold one more than `wall` at its edges.
    res.check(f"{label}store write transactions ≤ 1 per second",
              f"{tx_total} in {fmt(wall)} s = {tx_total / wall:.2f}/s (windows of "
              f"{sz.s5_window:g} s: at most {max(w_tx, default=0):.2f}/s)",
              tx_total <= math.floor(wall) + 1)
    res.check(f"{label}zero self-pings to rooms with traffic within ping_idle",
              f"{violations} of {pings} self-pings (min silence before a ping: "
              f"{fmt(last[0]['min_silence'])} s; ping_idle {sz.s5_ping_idle:g} s)",
              violations == 0)
    side_note = f"{side.name} side: " if label else ""
    res.note(f"{side_note}Sent {sent} messages ({sz.s5_rate:g}/s for {sz.s5_seconds:g} s) to "
             f"{len(rooms)} rooms chosen at random; delivered: guard {g_msgs}, guard with "
             f"metrics {m_msgs}, plain {p_msgs}. "
             f"Windows of {sz.s5_window:g} s; the last one includes the drain.")
    if side.name == "aioxmpp":
        how = (f"the plain bot's aioxmpp self-ping is tuned to the same interval "
               f"(muc_soft_timeout = muc_ping_interval = {sz.s5_ping_idle:g} s), the "
               f"baseline issue #5 names")
    else:
        how = (f"the plain bot runs slixmpp's xep_0410 self-ping at the same interval "
               f"(enable_self_ping, interval = {sz.s5_ping_idle:g} s), the baseline issue "
               f"#14 names; it resets its timer only on stanzas from our own occupant JID, "
               f"so it pings busy rooms too")
    res.note(f"{side_note}Both bots joined with 32 joins in flight. ping_idle = "
             f"{sz.s5_ping_idle:g} s for the guard; {how}. Self-pings sent: guard {pings}, "
             f"plain {p_pings}.")
    res.note(f"{side_note}The guard with metrics served /metrics and /healthz "
             f"(muc_guard.metrics.serve) and was scraped every "
             f"{sz.s5_scrape_interval:g} s by the benchmark process ({len(scrapes)} scrapes); "
             f"the scraper's CPU is not the bot's, as a Prometheus server's is not.")
