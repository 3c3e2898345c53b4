"""muc_guard.metrics on real guards against a real Prosody: /metrics and
/healthz scraped with a real HTTP client (aiohttp) while real faults happen.

Each scenario runs on both front-ends (the ``frontend`` fixture): the
endpoint serves ``bot.guard`` (aioxmpp's MUCGuard, or the slixmpp plugin),
bound to 127.0.0.1 on a free port. Faults come from the server: a 110+333
kick (over verified TLS), a silent removal that only a self-ping finds, and
a SIGKILL of Prosody, restarted by the test; and an outage longer than
``archive_limit`` on a room with an archive (a gap). Counters are compared with
what they were before the fault, so that what a join costs does not matter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import aioxmpp
import pytest
from guardkit import eventually, occupant_nicks_of, over_verified_tls, send_all, talker_in
from scrapekit import Scraper

from muc_guard import metrics

pytestmark = pytest.mark.integration

@pytest.fixture
async def serve():
    """``await serve(guards, **kwargs)`` -> a Scraper of muc_guard.metrics.serve()
    on a free loopback port (``.server``); every server and the HTTP session
    are closed at teardown."""
    servers: list[metrics.MetricsServer] = []
    async with aiohttp.ClientSession() as http:

        async def start(guards: Any, **kwargs: Any) -> Scraper:
            server = await metrics.serve(guards, port=0, **kwargs)
            servers.append(server)
            return Scraper(http, server.url, server)

        try:
            yield start
        finally:
            for server in servers:
                await server.close()


@pytest.fixture
async def bot(make_bot, account):
    jid, password = account("mbot")
    b = await make_bot(jid, password).start()
    yield b
    b.check_invariants()


COUNTERS = ("muc_guard_rejoins_total", "muc_guard_join_attempts_total",
            "muc_guard_outage_seconds_count")


async def counters(endpoint: Scraper, jid: Any) -> dict[str, float]:
    found = await endpoint.samples()
    key = (("account", str(jid)),)
    return {name: found[(name, key)] for name in COUNTERS}


@over_verified_tls
async def test_333_kick_is_one_drop_and_one_rejoin_and_stays_healthy(prosody, bot, room_jid,
                                                                     serve):
    endpoint = await serve(bot.guard, per_room=True)
    assert endpoint.server.host == "127.0.0.1"
    await bot.join(room_jid, "bot")
    status, body = await endpoint.healthz()
    assert status == 200 and body["healthy"] is True
    [account] = body["accounts"]
    assert account["account"] == str(bot.jid) and account["stream_up"] is True
    assert [(r["room"], r["state"], r["healthy"]) for r in account["rooms"]] == [
        (str(room_jid), "joined", True)]
    v = endpoint.value
    assert await v("muc_guard_drops_total", bot.jid, cause="server-error") == 0
    assert await v("muc_guard_rooms", bot.jid, state="joined") == 1
    assert await v("muc_guard_stream_up", bot.jid) == 1
    before = await counters(endpoint, bot.jid)

    await prosody.kick_with_codes(room_jid, "bot", [333])
    await bot.wait_event("rejoined", room_jid)

    after = await counters(endpoint, bot.jid)
    assert await v("muc_guard_drops_total", bot.jid, cause="server-error") == 1
    assert after["muc_guard_rejoins_total"] == before["muc_guard_rejoins_total"] + 1
    assert after["muc_guard_join_attempts_total"] == before["muc_guard_join_attempts_total"] + 1
    assert after["muc_guard_outage_seconds_count"] == \
        before["muc_guard_outage_seconds_count"] + 1
    assert await v("muc_guard_drops_total", bot.jid, cause="ping") == 0
    assert await v("muc_guard_rooms", bot.jid, state="joined") == 1
    assert await v("muc_guard_room_drops_total", bot.jid, room=str(room_jid)) == 1
    assert await v("muc_guard_room_joined", bot.jid, room=str(room_jid)) == 1
    status, body = await endpoint.healthz()
    assert status == 200, body
    [room] = body["accounts"][0]["rooms"]
    assert (room["drops"], room["last_cause"]) == (1, "server-error")


async def test_silent_drop_is_counted_by_ping_verdict(prosody, bot, room_jid, serve):
    bot.guard.ping_idle = 1.0
    bot.guard.ping_timeout = 5.0
    endpoint = await serve(bot.guard)
    v = endpoint.value
    await bot.join(room_jid, "bot")
    # an idle room is pinged and answers "joined"
    assert await eventually(
        lambda: _at_least(v("muc_guard_self_pings_total", bot.jid, verdict="joined"), 1),
        timeout=5)
    before = await counters(endpoint, bot.jid)
    not_joined = await v("muc_guard_self_pings_total", bot.jid, verdict="not-joined")

    await prosody.silent_remove(room_jid, "bot")
    await bot.wait_event("dropped", room_jid, timeout=10)
    await bot.wait_event("rejoined", room_jid, timeout=10)

    assert await v("muc_guard_drops_total", bot.jid, cause="ping") == 1
    assert await v("muc_guard_self_pings_total", bot.jid, verdict="not-joined") \
        == not_joined + 1
    after = await counters(endpoint, bot.jid)
    assert after["muc_guard_rejoins_total"] == before["muc_guard_rejoins_total"] + 1
    assert after["muc_guard_outage_seconds_count"] == \
        before["muc_guard_outage_seconds_count"] + 1
    assert await endpoint.status_is(200)
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]


async def _at_least(value: Any, n: float) -> bool:
    return (await value) >= n


async def test_server_kill_turns_healthz_503_until_the_rooms_are_back(
        private_prosody, make_bot, account, serve, figure):
    """The outage outlasts health_grace (set to 1 s here: 120 s by default)
    while Prosody is dead: 503 with the reason; 200 once every room is back.
    One endpoint serves two accounts: both must be healthy."""
    server = private_prosody
    jid, pw = account("mkill", server=server)
    other_jid, other_pw = account("mother", server=server)
    bot = await make_bot(jid, pw, server=server).start()
    other = await make_bot(other_jid, other_pw, server=server).start()
    for b in (bot, other):
        b.settings.health_grace = 1.0
    rooms = [aioxmpp.JID(f"mkill{i}", server.muc_domain, None) for i in range(2)]
    for room in rooms:
        await bot.join(room, "bot")
    await other.join(rooms[0], "other")
    endpoint = await serve([bot.guard, other.guard])
    assert await eventually(lambda: endpoint.status_is(200), timeout=5)
    before = await counters(endpoint, jid)
    await asyncio.sleep(0.5)       # traffic settles (see test_guard's server kill)

    killed_at = time.monotonic()
    await server.kill()

    async def both_out() -> bool:
        # each account turns unhealthy health_grace after its own client saw
        # the loss; under load one may see it later than the other
        status, body = await endpoint.healthz()
        return status == 503 and not any(a["healthy"] for a in body["accounts"])

    assert await eventually(both_out, timeout=10)
    figure(bot.figure_name("server kill -> /healthz 503 (health_grace=1)"),
           time.monotonic() - killed_at)
    status, body = await endpoint.healthz()
    assert status == 503 and body["healthy"] is False and body["problems"]
    assert {a["account"]: a["healthy"] for a in body["accounts"]} == {
        str(jid): False, str(other_jid): False}
    v = endpoint.value
    assert await v("muc_guard_healthy", jid) == 0
    assert await v("muc_guard_stream_up", jid) == 0
    assert await v("muc_guard_rooms_not_joined", jid) == 2
    assert await v("muc_guard_longest_outage_seconds", jid) > 0

    await server.astart()
    for room in rooms:
        await bot.wait_event("rejoined", room, timeout=60)
    await other.wait_event("rejoined", rooms[0], timeout=60)
    assert await eventually(lambda: endpoint.status_is(200), timeout=10)
    figure(bot.figure_name("server kill+restart -> /healthz 200"), time.monotonic() - killed_at)
    assert await v("muc_guard_drops_total", jid, cause="stream-lost") == 2
    assert await v("muc_guard_drops_total", other_jid, cause="stream-lost") == 1
    after = await counters(endpoint, jid)
    assert after["muc_guard_rejoins_total"] == before["muc_guard_rejoins_total"] + 2
    assert after["muc_guard_outage_seconds_count"] == \
        before["muc_guard_outage_seconds_count"] + 2
    assert await v("muc_guard_stream_up", jid) == 1
    assert await v("muc_guard_rooms_not_joined", jid) == 0
    assert await v("muc_guard_longest_outage_seconds", jid) == 0
    await bot.stop()
    await other.stop()


async def test_archive_limit_gap_and_recovered_messages_are_counted(
        prosody_factory, make_client, make_bot, account, room_jid, serve):
    """Out while 12 messages are said, back with archive_limit = 5: five are
    recovered from the archive, one gap (archive-limit) is counted."""
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    jid, pw = account("mgap", server=server)
    bot = make_bot(jid, pw, server=server)
    bot.settings.set_backoff(0.3, 1.0)
    bot.settings.archive_limit = 5
    await bot.start()
    await bot.join(room_jid, "bot")
    endpoint = await serve(bot.guard, per_room=True)
    v = endpoint.value
    room = await talker_in(room_jid, server, account, make_client)
    await send_all(room, ["before"])
    assert await eventually(lambda: _has_messages(bot, 1))
    delivered = await v("muc_guard_messages_delivered_total", jid)
    assert await v("muc_guard_messages_recovered_total", jid) == 0

    await server.refuse_joins(room_jid, "remote-server-timeout", "wait")
    await server.kick_with_codes(room_jid, "bot", [333])
    await bot.wait_event("dropped", room_jid)
    assert await eventually(lambda: _refused(server, room_jid))
    await send_all(room, [f"missed {i}" for i in range(12)])
    await server.clear_refusals(room_jid)
    await bot.wait_event("rejoined", room_jid, timeout=20)
    await send_all(room, ["after"])
    assert await eventually(lambda: _has_messages(bot, 7), timeout=15)

    assert await v("muc_guard_gaps_total", jid, reason="archive-limit") == 1
    assert await v("muc_guard_gaps_total", jid, reason="archive-expired") == 0
    assert await v("muc_guard_room_gaps_total", jid, room=str(room_jid)) == 1
    assert await v("muc_guard_messages_recovered_total", jid) == 5
    assert await v("muc_guard_messages_delivered_total", jid) == delivered + 6
    assert await endpoint.status_is(200)     # a gap is reported, not a health problem
    await bot.stop()


async def _has_messages(bot: Any, n: int) -> bool:
    return len(bot.messages) >= n


async def _refused(server: Any, room_jid: Any) -> bool:
    return await server.refused_count(room_jid) >= 1
