"""muc_guard.metrics with hand-built Health snapshots: the collector's series,
and serve()'s /metrics and /healthz scraped with a real HTTP client."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from healthkit import MIXED, BrokenGuard, FakeGuard, health, room
from muc_guard import metrics
from muc_guard.core.health import OUTAGE_BUCKETS
from muc_guard.core.record import State


def samples(registry: prometheus_client.CollectorRegistry) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of everything the registry exposes."""
    text = prometheus_client.generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_collector_reads_health_at_scrape_time_only():
    guard = FakeGuard(health(rooms=MIXED))
    registry = prometheus_client.CollectorRegistry()
    metrics.register(guard, registry)
    assert guard.calls == 0          # registering asks nothing (describe)
    found = samples(registry)
    assert guard.calls == 1
    acc = {"account": "bot@example.org"}
    assert [value(found, "muc_guard_rooms", **acc, state=s.value) for s in State] == [1, 1, 1, 1]
    assert value(found, "muc_guard_rooms_not_joined", **acc) == 2
    assert value(found, "muc_guard_stream_up", **acc) == 1
    assert value(found, "muc_guard_healthy", **acc) == 1
    assert value(found, "muc_guard_longest_outage_seconds", **acc) == 75.0
    assert value(found, "muc_guard_join_attempts_in_flight", **acc) == 1
    assert value(found, "muc_guard_drops_total", **acc, cause="server-error") == 2
    assert value(found, "muc_guard_drops_total", **acc, cause="ping") == 1
    assert value(found, "muc_guard_drops_total", **acc, cause="stream-lost") == 0  # listed
    assert value(found, "muc_guard_give_ups_total", **acc, cause="kicked") == 1
    assert value(found, "muc_guard_rejoins_total", **acc) == 3
    assert value(found, "muc_guard_self_pings_total", **acc, verdict="joined") == 7
    assert value(found, "muc_guard_self_pings_total", **acc, verdict="timeout") == 0
    assert value(found, "muc_guard_messages_delivered_total", **acc) == 120
    assert value(found, "muc_guard_messages_recovered_total", **acc) == 20
    assert value(found, "muc_guard_gaps_total", **acc, reason="archive-limit") == 1
    assert value(found, "muc_guard_gaps_total", **acc, reason="history-short") == 0
    assert value(found, "muc_guard_store_write_failures_total", **acc) == 2
    assert value(found, "muc_guard_join_attempts_total", **acc) == 9
    assert value(found, "muc_guard_outage_seconds_count", **acc) == 2
    assert value(found, "muc_guard_outage_seconds_sum", **acc) == pytest.approx(42.3)
    assert value(found, "muc_guard_outage_seconds_bucket", **acc, le="0.5") == 1
    assert value(found, "muc_guard_outage_seconds_bucket", **acc, le="30.0") == 1
    assert value(found, "muc_guard_outage_seconds_bucket", **acc, le="60.0") == 2
    assert value(found, "muc_guard_outage_seconds_bucket", **acc, le="+Inf") == 2
    buckets = [k for k in found if k[0] == "muc_guard_outage_seconds_bucket"]
    assert len(buckets) == len(OUTAGE_BUCKETS)
    assert not any(k[0].startswith("muc_guard_room_") for k in found)   # opt-in only
    # a later scrape sees a later snapshot
    guard.h = health(rooms=MIXED[:1], healthy=False, stream_up=False)
    found = samples(registry)
    assert value(found, "muc_guard_stream_up", **acc) == 0
    assert value(found, "muc_guard_healthy", **acc) == 0
    assert value(found, "muc_guard_rooms_not_joined", **acc) == 0


def test_per_room_series_and_several_accounts():
    one = FakeGuard(health("one@example.org", MIXED))
    two = FakeGuard(health("two@example.org", (room("a@muc.example.org"),)))
    registry = prometheus_client.CollectorRegistry()
    collector = metrics.register([one, two], registry, per_room=True)
    found = samples(registry)
    labels = {"account": "one@example.org", "room": "b@muc.example.org"}
    assert value(found, "muc_guard_room_joined", **labels) == 0
    assert value(found, "muc_guard_room_healthy", **labels) == 0
    assert value(found, "muc_guard_room_outage_seconds", **labels) == 75.0
    assert value(found, "muc_guard_room_drops_total", **labels) == 2
    assert value(found, "muc_guard_room_gaps_total", account="one@example.org",
                 room="d@muc.example.org") == 1
    assert value(found, "muc_guard_room_joined", account="two@example.org",
                 room="a@muc.example.org") == 1
    assert value(found, "muc_guard_rooms", account="two@example.org", state="joined") == 1
    assert value(found, "muc_guard_rooms", account="two@example.org", state="gave-up") == 0
    collector.remove(two)
    assert not any(dict(k[1]).get("account") == "two@example.org" for k in samples(registry))


def test_a_failing_guard_does_not_break_the_scrape(caplog):
    registry = prometheus_client.CollectorRegistry()
    metrics.register([BrokenGuard(), FakeGuard(health())], registry)
    found = samples(registry)
    assert value(found, "muc_guard_healthy", account="bot@example.org") == 1
    assert "health() of" in caplog.text
    healthy, payload = metrics.healthz_payload([BrokenGuard(), FakeGuard(health())])
    assert not healthy and "boom" in payload["problems"][0]


def test_register_refuses_what_is_not_a_guard():
    with pytest.raises(TypeError, match="no health"):
        metrics.register([object()], prometheus_client.CollectorRegistry())


def test_registering_twice_in_one_registry_is_refused():
    registry = prometheus_client.CollectorRegistry()
    metrics.register(FakeGuard(health()), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        metrics.register(FakeGuard(health()), registry)


async def test_serve_answers_metrics_and_healthz_with_a_real_client():
    guard = FakeGuard(health(rooms=MIXED))
    server = await metrics.serve(guard, port=0)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            assert '# HELP muc_guard_drops_total Drops from a room, by cause.' in text
            assert 'muc_guard_drops_total{account="bot@example.org",cause="server-error"} 2.0' \
                in text
            assert "python_gc" not in text          # a private registry: ours alone
            async with http.get(f"{server.url}/metrics",
                                headers={"Accept": "application/openmetrics-text"}) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp.text()).endswith("# EOF\n")
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["healthy"] is True and body["problems"] == []
            assert body["accounts"] == [guard.h.to_dict()]
            guard.h = health(rooms=MIXED, healthy=False,
                             problems=("b@muc.example.org out for 75 s",))
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 503
                body = await resp.json()
            assert body["healthy"] is False
            assert body["problems"] == ["bot@example.org: b@muc.example.org out for 75 s"]
            async with http.get(f"{server.url}/nothing") as resp:
                assert resp.status == 404
    finally:
        await server.close()
        await server.close()      # idempotent
    with pytest.raises(OSError):   # the port is free again: nothing listens
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


async def test_serve_in_the_users_registry_and_unregisters_on_close():
    registry = prometheus_client.CollectorRegistry()
    mine = prometheus_client.Counter("my_bot_commands", "The bot's own.", registry=registry)
    mine.inc(4)
    server = await metrics.serve([FakeGuard(health())], port=0, registry=registry)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    assert "my_bot_commands_total 4.0" in text and "muc_guard_rejoins_total" in text
    await server.close()
    assert "muc_guard_rejoins_total" not in prometheus_client.generate_latest(registry).decode()


async def test_serve_with_no_healthy_guard_is_503_and_a_taken_port_raises():
    async with await metrics.serve([], port=0) as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["problems"] == ["no guard to ask"]
        with pytest.raises(OSError):
            await metrics.serve([], port=server.port)


async def test_serve_leaves_nothing_running_after_close():
    before = {t for t in asyncio.all_tasks() if not t.done()}
    server = await metrics.serve(FakeGuard(health()), port=0)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
    await server.close()
    await asyncio.sleep(0)
    after = {t for t in asyncio.all_tasks() if not t.done()} - before
    assert after == {asyncio.current_task()} or after == set()
