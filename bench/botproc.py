"""
A bot in a child process, driven by the benchmark (``bench.common.BotProc``).

Why a process of its own: its CPU time is then only the bot's (not the
server's, not the sender's, not the benchmark's), and scenario 8 measures a
bot's start from process creation, imports and store opening included.

``python -m bench.botproc '<json config>'``. The child reports JSON lines on
stdout (``started``, ``joined``, answers to commands, ``error``) and reads
JSON commands on stdin: ``mark`` (CPU time and counters now), ``pings``
(every self-ping it sent), ``stop`` (graceful shutdown). It exits when stdin
closes, so it never outlives the benchmark.

Modes: ``guard`` (aioxmpp + muc_guard.MUCGuard; rooms from its store or
joined with ``guard.join``) and ``plain`` (aioxmpp's MUCClient alone, rooms
joined with a bounded number of joins in flight). Nothing but aioxmpp is
imported in plain mode, so its start-up is a fair baseline. ``slix-guard``
and ``slix-plain`` are the same for slixmpp (``bench.botproc_slix``).

Config keys: mode, host, port, password, muc_domain, jid, resource, nick,
room_prefix, room_count, join ("store" | "join"), store, ping_idle,
ping_timeout, max_concurrent_joins, concurrency, probe, join_wait, metrics
(guard modes: serve muc_guard.metrics on a free loopback port and report it
as ``metrics``, for scenario 5's scraped side).
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

from bench.child import (  # noqa: E402
    PingLedger, close_metrics, emit, join_all, joined_then_serve, serve_metrics)


def tune_aioxmpp_self_ping(room: Any, idle: float, ping_timeout: float) -> None:
    """The baseline of issue #5: aioxmpp's own MUC self-ping tuned to the
    guard's intervals (first ping after `idle` s of silence, then every
    `idle` s; gives up after idle + ping_timeout)."""
    room.muc_soft_timeout = timedelta(seconds=idle)
    room.muc_ping_interval = timedelta(seconds=idle)
    room.muc_ping_timeout = timedelta(seconds=ping_timeout)
    room.muc_hard_timeout = timedelta(seconds=idle + ping_timeout)


class Probe:
    """Feeds a PingLedger from an aioxmpp client (as bench.common.Probe
    does, without importing muc_guard)."""

    def __init__(self, client: Any, ledger: PingLedger) -> None:
        import aioxmpp
        import aioxmpp.ping

        self.ledger = ledger
        stream = client.stream
        stream.app_inbound_presence_filter.register(self._rx, -1000)
        stream.app_inbound_message_filter.register(self._rx, -1000)
        original = client.send

        async def send(stanza: Any, *args: Any, **kwargs: Any) -> Any:
            if not (isinstance(stanza, aioxmpp.IQ)
                    and isinstance(stanza.payload, aioxmpp.ping.Ping)):
                return await original(stanza, *args, **kwargs)
            room = stanza.to.bare()
            sent = ledger.ping_sent(room)
            ok = False
            try:
                result = await original(stanza, *args, **kwargs)
                ok = True
                return result
            finally:
                ledger.ping_answered(room, sent, ok)

        client.send = send

    def _rx(self, stanza: Any) -> Any:
        if stanza.from_ is not None:
            self.ledger.heard(stanza.from_.bare())
        return stanza


async def main(config: dict[str, Any]) -> None:
    import aioxmpp
    import aioxmpp.connector
    import aioxmpp.muc
    import aioxmpp.node

    async def no_discovery(*args: Any, **kwargs: Any) -> list:
        return []

    aioxmpp.node.discover_connectors = no_discovery   # 127.0.0.1 only

    mode = config["mode"]
    guard_mode = mode == "guard"
    if guard_mode:
        import muc_guard
    t_imported = time.monotonic()

    loop = asyncio.get_running_loop()
    muc_domain = config["muc_domain"]
    jids = [aioxmpp.JID(f"{config['room_prefix']}{i}", muc_domain, None)
            for i in range(config["room_count"])]
    index = {jid: i for i, jid in enumerate(jids)}
    nick = config.get("nick", "bot")

    jid = aioxmpp.JID.fromstr(config["jid"])
    if config.get("resource"):
        jid = jid.replace(resource=config["resource"])
    layer = aioxmpp.make_security_layer(config["password"], no_verify=True)._replace(
        tls_required=False)
    client = aioxmpp.PresenceManagedClient(
        jid, layer,
        override_peer=[(config["host"], config["port"], aioxmpp.connector.STARTTLSConnector())],
        negotiation_timeout=timedelta(seconds=30))

    messages = 0
    rejoined = 0
    all_joined = asyncio.Event()
    times: dict[str, float] = {"t_start": T_START, "t_imported": t_imported}

    def on_message(*args: Any, **kwargs: Any) -> None:
        nonlocal messages
        messages += 1

    ledger = PingLedger(config.get("ping_idle"), index) if config.get("probe") else None
    if ledger is not None:
        Probe(client, ledger)
    guard = None
    if guard_mode:
        guard = client.summon(muc_guard.MUCGuard)
        if config.get("ping_idle") is not None:
            guard.ping_idle = config["ping_idle"]
        if config.get("ping_timeout") is not None:
            guard.ping_timeout = config["ping_timeout"]
        if config.get("max_concurrent_joins") is not None:
            guard.max_concurrent_joins = config["max_concurrent_joins"]
        guard.on_message.connect(on_message)

        def on_rejoined(room: Any, *args: Any) -> None:
            nonlocal rejoined
            rejoined += 1
            if rejoined >= len(jids):
                all_joined.set()

        guard.on_rejoined.connect(on_rejoined)
        if config.get("store"):
            times["t_store0"] = time.monotonic()
            await guard.open_store(config["store"])
            times["t_store1"] = time.monotonic()
    else:
        muc = client.summon(aioxmpp.MUCClient)

    # connect
    metrics = await serve_metrics(guard, config)
    times["t_conn0"] = time.monotonic()
    established = loop.create_future()
    client.on_stream_established.connect(established, client.on_stream_established.AUTO_FUTURE)
    client.on_failure.connect(established, client.on_failure.AUTO_FUTURE)
    client.presence = aioxmpp.PresenceState(True)
    await asyncio.wait_for(established, 30.0)
    times["t_conn1"] = time.monotonic()

    join_wait = float(config.get("join_wait", 120.0))
    if guard_mode and config.get("join") == "store":
        try:
            await asyncio.wait_for(all_joined.wait(), join_wait)
        except asyncio.TimeoutError:
            pass
        joined = rejoined
    elif guard_mode:
        joined = await join_all((guard.join(j, nick) for j in jids), join_wait)
    else:
        sem = asyncio.Semaphore(int(config.get("concurrency", 32)))

        idle = config.get("ping_idle")
        ping_timeout = float(config.get("ping_timeout") or 30.0)

        async def join_one(room_jid: Any) -> None:
            async with sem:
                room, fut = muc.join(room_jid, nick)
                room.on_message.connect(on_message)
                if idle is not None:
                    tune_aioxmpp_self_ping(room, idle, ping_timeout)
                await fut

        joined = await join_all((join_one(j) for j in jids), join_wait)
    await joined_then_serve(joined, len(jids), times, guard, lambda: messages, ledger)
    await close_metrics(metrics)
    if guard is not None:
        await asyncio.wait_for(guard.shutdown(), 30.0)
    stopped = loop.create_future()
    client.on_stopped.connect(stopped, client.on_stopped.AUTO_FUTURE)
    client.stop()
    try:
        await asyncio.wait_for(stopped, 10.0)
    except Exception:
        pass
    emit("stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emit("started", t=T_START)
    # MUC_GUARD_BENCH_PROFILE=DIR: profile the bot with cProfile into
    # DIR/<mode>-<pid>.prof (the figures then include the profiler's cost).
    profile_dir = os.environ.get("MUC_GUARD_BENCH_PROFILE")
    profiler = None
    if profile_dir:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        bot_config = json.loads(sys.argv[1])
        if str(bot_config.get("mode", "")).startswith("slix-"):
            from bench.botproc_slix import main as slix_main
            asyncio.run(slix_main(bot_config, T_START))
        else:
            asyncio.run(main(bot_config))
    except Exception as exc:  # report, then fail
        logging.exception("bot failed")
        emit("error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    finally:
        if profiler is not None:
            profiler.disable()
            mode = json.loads(sys.argv[1]).get("mode", "bot")
            profiler.dump_stats(os.path.join(profile_dir, f"{mode}-{os.getpid()}.prof"))
