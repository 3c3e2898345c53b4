"""
Prometheus metrics and an HTTP health check for guarded bots.

Motivation
==========

An operator wants two things from a running bot: a URL a load balancer or
container runtime can poll ("is it really in its rooms?") and numbers a
dashboard can graph (drops, rejoins, outages, gaps). Both must cost nothing
while nobody asks: a bot in 1,000 busy rooms must not pay a metric update
per message.

Solution
========

:class:`GuardCollector` is a ``prometheus_client`` collector that reads
``guard.health()`` (:class:`muc_guard.core.health.Health`) of each guard at
scrape time. The core keeps plain integer counters either way; nothing
happens on the hot path. Any object with a ``health()`` method is a guard
here: ``muc_guard.MUCGuard`` (aioxmpp) or ``xmpp.plugin["muc_guard"]``
(slixmpp).

* :func:`register` puts the collector into a registry of the user's (by
  default prometheus_client's global ``REGISTRY``).
* :func:`serve` starts an aiohttp server on the running event loop (no
  thread: ``health()`` must be called on the loop the guard runs on, and
  nothing of ours may outlive the loop) with ``/metrics`` and ``/healthz``.
  It binds 127.0.0.1 unless told otherwise: ``/healthz`` names the bot's
  rooms, which is nobody else's business; any other host must be passed
  explicitly (and is logged).

``/healthz`` answers 200 when every guard is healthy, else 503, with the
JSON ``{"healthy": bool, "problems": [...], "accounts": [Health.to_dict(),
...]}``. Per-room series are off by default: 1,000 rooms times their labels
is a cardinality cost only the user can choose (``per_room=True``).

Needs the ``metrics`` extra (``pip install "muc_guard[metrics]"``):
prometheus_client, and aiohttp for :func:`serve` only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

try:
    import prometheus_client
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:   # pragma: no cover - depends on the installation
    raise ImportError(
        "muc_guard.metrics needs prometheus_client: install the metrics extra, "
        "pip install 'muc_guard[metrics]'") from exc

from .core.health import OUTAGE_BUCKETS, GapReason, Health, PingVerdict
from .core.policy import Cause
from .core.record import State

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["HealthSource", "GuardCollector", "MetricsServer", "register", "serve",
           "healthz_payload", "DEFAULT_PORT", "DEFAULT_HOST"]

logger = logging.getLogger("muc_guard.metrics")

DEFAULT_PORT = 9110
DEFAULT_HOST = "127.0.0.1"
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
#: RoomHealth.join_phase while the join presence is out
_PHASE_JOIN = "join"


@runtime_checkable
class HealthSource(Protocol):
    """What a guard is to this module: anything with ``health()``."""

    def health(self) -> Health: ...


def _as_guards(guards: HealthSource | Iterable[HealthSource]) -> list[HealthSource]:
    if isinstance(guards, HealthSource):
        return [guards]
    found = list(guards)
    for guard in found:
        if not isinstance(guard, HealthSource):
            raise TypeError(f"not a guard (it has no health()): {guard!r}")
    return found


def _snapshots(guards: Sequence[HealthSource]) -> tuple[list[Health], list[str]]:
    """Each guard's health(); a guard whose health() raises is left out and
    named in the second list (a scrape must not fail for one bad guard)."""
    healths: list[Health] = []
    errors: list[str] = []
    for guard in guards:
        try:
            healths.append(guard.health())
        except Exception as exc:
            logger.exception("health() of %r failed", guard)
            errors.append(f"health() of {type(guard).__name__} failed: {exc!r}")
    return healths, errors


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class GuardCollector:
    """Turns ``guard.health()`` into Prometheus metrics at scrape time.

    Every series has the label ``account`` (the bot's bare JID). Label values
    of a cause, verdict, reason or state are always all listed (zeros
    included), so that ``increase()`` sees a series' first event.
    """

    def __init__(self, guards: HealthSource | Iterable[HealthSource] = (), *,
                 per_room: bool = False) -> None:
        self._guards = _as_guards(guards)
        self.per_room = per_room

    @property
    def guards(self) -> tuple[HealthSource, ...]:
        return tuple(self._guards)

    def add(self, guard: HealthSource) -> None:
        """Collect `guard` too (e.g. an account started later)."""
        self._guards.extend(_as_guards(guard))

    def remove(self, guard: HealthSource) -> None:
        self._guards.remove(guard)

    def describe(self) -> Iterator[Metric]:
        """The metric names, without calling any health() (registration
        checks names with it)."""
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        healths, _ = _snapshots(self._guards)
        for health in healths:
            self._add_account(families, health)
        return iter(families.values())

    def _families(self) -> dict[str, Metric]:
        acc = ["account"]
        families: dict[str, Metric] = {
            "rooms": GaugeMetricFamily(
                "muc_guard_rooms", "Tracked rooms by state (joining, joined, rejoining, "
                "gave-up).", labels=acc + ["state"]),
            "not_joined": GaugeMetricFamily(
                "muc_guard_rooms_not_joined", "Wanted rooms the bot is not in right now "
                "(joining or rejoining).", labels=acc),
            "stream_up": GaugeMetricFamily(
                "muc_guard_stream_up", "1 while the XMPP stream is established.", labels=acc),
            "healthy": GaugeMetricFamily(
                "muc_guard_healthy", "1 when the stream is up and every wanted room is "
                "joined or inside a bounded rejoin (health_grace).", labels=acc),
            "longest_outage": GaugeMetricFamily(
                "muc_guard_longest_outage_seconds", "The longest current outage of a "
                "wanted room, in seconds (0 when every room is in).", labels=acc),
            "joins_in_flight": GaugeMetricFamily(
                "muc_guard_join_attempts_in_flight", "Rooms whose join presence is out "
                "and unanswered.", labels=acc),
            "drops": CounterMetricFamily(
                "muc_guard_drops", "Drops from a room, by cause.", labels=acc + ["cause"]),
            "rejoins": CounterMetricFamily(
                "muc_guard_rejoins", "Rejoins after a drop.", labels=acc),
            "give_ups": CounterMetricFamily(
                "muc_guard_give_ups", "Rooms given up on (the room's will, or permanent "
                "join errors), by cause.", labels=acc + ["cause"]),
            "pings": CounterMetricFamily(
                "muc_guard_self_pings", "XEP-0410 self-pings by verdict.",
                labels=acc + ["verdict"]),
            "delivered": CounterMetricFamily(
                "muc_guard_messages_delivered", "Room messages handed to the bot, live "
                "or recovered.", labels=acc),
            "recovered": CounterMetricFamily(
                "muc_guard_messages_recovered", "Of the delivered messages, those read "
                "from the archive or history after an outage.", labels=acc),
            "gaps": CounterMetricFamily(
                "muc_guard_gaps", "Outages recovery could not fill, by reason.",
                labels=acc + ["reason"]),
            "store_failures": CounterMetricFamily(
                "muc_guard_store_write_failures", "Failed writes to the SQLite store.",
                labels=acc),
            "join_attempts": CounterMetricFamily(
                "muc_guard_join_attempts", "Join presences sent (joins and rejoins).",
                labels=acc),
            "outage": HistogramMetricFamily(
                "muc_guard_outage_seconds", "Outage durations from drop to rejoin.",
                labels=acc),
        }
        if self.per_room:
            room = acc + ["room"]
            families.update({
                "room_joined": GaugeMetricFamily(
                    "muc_guard_room_joined", "1 while the bot is in the room.", labels=room),
                "room_healthy": GaugeMetricFamily(
                    "muc_guard_room_healthy", "1 while the room counts as healthy.",
                    labels=room),
                "room_outage": GaugeMetricFamily(
                    "muc_guard_room_outage_seconds", "The room's current outage in "
                    "seconds (0 while joined).", labels=room),
                "room_drops": CounterMetricFamily(
                    "muc_guard_room_drops", "Drops from the room.", labels=room),
                "room_gaps": CounterMetricFamily(
                    "muc_guard_room_gaps", "Gaps reported for the room.", labels=room),
            })
        return families

    def _add_account(self, f: dict[str, Any], health: Health) -> None:
        account = health.account
        c = health.counters
        by_state = dict.fromkeys(State, 0)
        not_joined = in_flight = 0
        longest = 0.0
        for room in health.rooms:
            by_state[room.state] += 1
            if room.wanted and room.state is not State.JOINED \
                    and room.state is not State.GAVE_UP:
                not_joined += 1
            if room.join_phase == _PHASE_JOIN:
                in_flight += 1
            if room.wanted and room.outage_seconds is not None:
                longest = max(longest, room.outage_seconds)
        for state, n in by_state.items():
            f["rooms"].add_metric([account, state.value], n)
        f["not_joined"].add_metric([account], not_joined)
        f["stream_up"].add_metric([account], int(health.stream_up))
        f["healthy"].add_metric([account], int(health.healthy))
        f["longest_outage"].add_metric([account], longest)
        f["joins_in_flight"].add_metric([account], in_flight)
        for cause in Cause:
            f["drops"].add_metric([account, cause.value], c.drops.get(cause, 0))
            f["give_ups"].add_metric([account, cause.value], c.give_ups.get(cause, 0))
        for verdict in PingVerdict:
            f["pings"].add_metric([account, verdict.value], c.pings.get(verdict, 0))
        for reason in GapReason:
            f["gaps"].add_metric([account, reason.value], c.gaps.get(reason, 0))
        f["rejoins"].add_metric([account], c.rejoins)
        f["delivered"].add_metric([account], c.delivered)
        f["recovered"].add_metric([account], c.recovered)
        f["store_failures"].add_metric([account], c.store_write_failures)
        f["join_attempts"].add_metric([account], c.join_attempts)
        f["outage"].add_metric(
            [account], [(_le(b), n) for b, n in zip(OUTAGE_BUCKETS, c.outage_buckets)],
            c.outage_sum)
        if self.per_room:
            for room in health.rooms:
                labels = [account, str(room.jid)]
                f["room_joined"].add_metric(labels, int(room.state is State.JOINED))
                f["room_healthy"].add_metric(labels, int(room.healthy))
                f["room_outage"].add_metric(labels, room.outage_seconds or 0.0)
                f["room_drops"].add_metric(labels, room.drops)
                f["room_gaps"].add_metric(labels, room.gaps)


def register(guards: HealthSource | Iterable[HealthSource],
             registry: CollectorRegistry = prometheus_client.REGISTRY, *,
             per_room: bool = False) -> GuardCollector:
    """Add the guards' metrics to `registry` (prometheus_client's global one
    by default); returns the collector (``registry.unregister(it)`` undoes)."""
    collector = GuardCollector(guards, per_room=per_room)
    registry.register(collector)
    return collector


def healthz_payload(guards: Sequence[HealthSource]) -> tuple[bool, dict[str, Any]]:
    """(healthy, JSON body) of ``/healthz``: healthy only when every guard
    is (a guard whose health() fails is not)."""
    healths, errors = _snapshots(guards)
    problems = [f"{h.account}: {p}" for h in healths for p in h.problems] + errors
    healthy = bool(healths) and not errors and all(h.healthy for h in healths)
    if not guards:
        problems.append("no guard to ask")
    return healthy, {"healthy": healthy, "problems": problems,
                     "accounts": [h.to_dict() for h in healths]}


class MetricsServer:
    """The running ``/metrics`` and ``/healthz`` endpoint of :func:`serve`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 collector: GuardCollector, registry: CollectorRegistry,
                 own_registry: bool) -> None:
        self._runner = runner
        self.host = host
        #: the port bound (the one picked when 0 was asked for)
        self.port = port
        self.collector = collector
        self.registry = registry
        self._own_registry = own_registry
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop serving and take the collector out of a user's registry
        (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self._own_registry:
            try:
                self.registry.unregister(self.collector)
            except KeyError:
                pass
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _import_aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError as exc:   # pragma: no cover - depends on the installation
        raise ImportError("muc_guard.metrics.serve needs aiohttp: install the metrics "
                          "extra, pip install 'muc_guard[metrics]'") from exc
    return web


async def serve(guards: HealthSource | Iterable[HealthSource], *, port: int = DEFAULT_PORT,
                host: str = DEFAULT_HOST, registry: CollectorRegistry | None = None,
                per_room: bool = False) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` for `guards` on the running loop.

    `port` 0 picks a free port (``server.port`` tells which). Without
    `registry`, ``/metrics`` shows the guards' metrics alone (a private
    registry); with one, the collector is registered there and the whole
    registry is shown (your own metrics too). ``await server.close()`` ends it.
    """
    aioweb = _import_aiohttp()
    guard_list = _as_guards(guards)
    if host not in _LOOPBACK:
        logger.warning("metrics and health served on %s: /healthz names the bot's rooms; "
                       "make sure only your monitoring can reach it", host)
    collector = GuardCollector(guard_list, per_room=per_room)
    own_registry = registry is None
    if registry is None:
        registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    exposed = registry

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(exposed)
        return aioweb.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        healthy, payload = healthz_payload(guard_list)
        return aioweb.Response(text=json.dumps(payload, indent=1),
                            status=200 if healthy else 503,
                            content_type="application/json")

    app = aioweb.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = aioweb.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = aioweb.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        if not own_registry:
            registry.unregister(collector)
        raise
    bound = runner.addresses[0][1]
    logger.info("serving /metrics and /healthz on %s:%s", host, bound)
    return MetricsServer(runner, host, bound, collector, registry, own_registry)
