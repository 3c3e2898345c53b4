"""
The slixmpp bots of ``bench.botproc`` (modes ``slix-guard`` and
``slix-plain``), with the same config keys, reports and commands.

``slix-guard``: slixmpp with the muc_guard plugin (``muc_guard_message``
counted). ``slix-plain``: slixmpp's ``xep_0045`` alone (``groupchat_message``
counted), rooms joined with ``join_muc_wait`` and a bounded number of joins
in flight, and with ``ping_idle`` its ``xep_0410`` self-ping
(``enable_self_ping``) at that interval: what a slixmpp user has without
muc_guard. Nothing but slixmpp is imported in plain mode.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.child import (PingLedger, close_metrics, emit, join_all, joined_then_serve,
                         serve_metrics)

PING_NS = "urn:xmpp:ping"


def is_self_ping(stanza: Any, ns: str) -> bool:
    """An outgoing ``<iq type='get'><ping/></iq>`` (muc_guard's and xep_0410's)."""
    xml = stanza.xml
    return (xml.tag == f"{{{ns}}}iq" and xml.get("type") == "get"
            and xml.find(f"{{{PING_NS}}}ping") is not None)


def plain_tcp_client(jid: str, password: str) -> Any:
    """A slixmpp client for the bench's Prosody: plain TCP on loopback
    (like the bench's aioxmpp clients), SCRAM without TLS."""
    import slixmpp

    xmpp = slixmpp.ClientXMPP(jid, password)
    xmpp.enable_direct_tls = False
    xmpp.enable_starttls = False
    xmpp.enable_plaintext = True
    mechanisms = xmpp.plugin["feature_mechanisms"]
    mechanisms.unencrypted_scram = True
    mechanisms.unencrypted_plain = True
    return xmpp


def feed_ledger(xmpp: Any, ledger: PingLedger) -> None:
    """Every stanza's sender (an ``'in'`` filter, added before any plugin's)
    and every self-ping (a wrapper around ``xmpp.send``), by bare JID text."""
    ns = xmpp.default_ns
    iq_tag = f"{{{ns}}}iq"
    in_flight: dict[str, tuple[str, float]] = {}

    def inbound(stanza: Any) -> Any:
        xml = stanza.xml
        sender = xml.get("from")
        if sender:
            if xml.tag == iq_tag:
                ping = in_flight.pop(xml.get("id", ""), None)
                if ping is not None:
                    ledger.ping_answered(ping[0], ping[1], xml.get("type") == "result")
            else:
                ledger.heard(sender.partition("/")[0])
        return stanza

    original = xmpp.send

    def send(data: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(data, str) and is_self_ping(data, ns):
            room = data.xml.get("to", "").partition("/")[0]
            in_flight[data.xml.get("id", "")] = (room, ledger.ping_sent(room))
        original(data, *args, **kwargs)

    xmpp.add_filter("in", inbound)
    xmpp.send = send


async def main(config: dict[str, Any], t_start: float) -> None:
    import slixmpp

    guard_mode = config["mode"] == "slix-guard"
    if guard_mode:
        import muc_guard.slixmpp
    times: dict[str, float] = {"t_start": t_start, "t_imported": time.monotonic()}

    rooms = [f"{config['room_prefix']}{i}@{config['muc_domain']}"
             for i in range(config["room_count"])]
    index = {room: i for i, room in enumerate(rooms)}
    nick = config.get("nick", "bot")
    jid = config["jid"] + (f"/{config['resource']}" if config.get("resource") else "")
    xmpp = plain_tcp_client(jid, config["password"])
    ledger = PingLedger(config.get("ping_idle"), index) if config.get("probe") else None
    if ledger is not None:
        feed_ledger(xmpp, ledger)
    xmpp.register_plugin("xep_0045")

    messages = 0
    rejoined = 0
    all_joined = asyncio.Event()

    def on_message(_: Any) -> None:
        nonlocal messages
        messages += 1

    guard = None
    idle = config.get("ping_idle")
    ping_timeout = float(config.get("ping_timeout") or 30.0)
    if guard_mode:
        pconfig = {key: config[key] for key in ("ping_idle", "ping_timeout",
                                                "max_concurrent_joins")
                   if config.get(key) is not None}
        xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
        guard = xmpp.plugin["muc_guard"]
        xmpp.add_event_handler("muc_guard_message", on_message)

        def on_rejoined(_: Any) -> None:
            nonlocal rejoined
            rejoined += 1
            if rejoined >= len(rooms):
                all_joined.set()

        xmpp.add_event_handler("muc_guard_rejoined", on_rejoined)
        if config.get("store"):
            times["t_store0"] = time.monotonic()
            await guard.open_store(config["store"])
            times["t_store1"] = time.monotonic()
    else:
        xmpp.add_event_handler("groupchat_message", on_message)
        if idle is not None:
            xmpp.register_plugin("xep_0410")

    metrics = await serve_metrics(guard, config)
    times["t_conn0"] = time.monotonic()
    started = asyncio.Event()
    xmpp.add_event_handler("session_start", lambda _: started.set())
    xmpp.connect(host=config["host"], port=config["port"])
    await asyncio.wait_for(started.wait(), 30.0)
    times["t_conn1"] = time.monotonic()

    join_wait = float(config.get("join_wait", 120.0))
    if guard is not None and config.get("join") == "store":
        try:
            await asyncio.wait_for(all_joined.wait(), join_wait)
        except asyncio.TimeoutError:
            pass
        joined = rejoined
    elif guard is not None:
        joined = await join_all((guard.join(room, nick) for room in rooms), join_wait)
    else:
        sem = asyncio.Semaphore(int(config.get("concurrency", 32)))
        muc = xmpp.plugin["xep_0045"]

        async def join_one(room: str) -> None:
            async with sem:
                await muc.join_muc_wait(slixmpp.JID(room), nick, maxchars=0, timeout=join_wait)
            if idle is not None:
                xmpp.plugin["xep_0410"].enable_self_ping(
                    slixmpp.JID(f"{room}/{nick}"), interval=idle, timeout=ping_timeout)

        joined = await join_all((join_one(room) for room in rooms), join_wait)
    await joined_then_serve(joined, len(rooms), times, guard, lambda: messages, ledger)
    await close_metrics(metrics)
    if guard is not None:
        await asyncio.wait_for(guard.shutdown(), 30.0)
    try:
        await asyncio.wait_for(xmpp.disconnect(wait=1.0), 10.0)
    except Exception:
        xmpp.abort()
    emit("stopped")
