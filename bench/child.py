"""
What every child bot shares, whatever its client library (``bench.botproc``
for aioxmpp, ``bench.botproc_slix`` for slixmpp): the JSON lines it reports,
its CPU time, its self-ping ledger and the command loop.

Imports nothing but the standard library: a child's start-up is measured.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PingLedger:
    """Counts self-pings and checks each against the room's last stanza:
    a self-ping to a room heard from within ``ping_idle`` is a violation.
    Rooms are keyed however the client's probe keys them."""

    def __init__(self, ping_idle: float | None, rooms: dict[Any, int]) -> None:
        self.rooms = rooms
        self.ping_idle = ping_idle
        self.last_rx: dict[Hashable, float] = {}
        self.sent: list[float] = []
        self.sent_room: list[int] = []
        self.rtt: list[float] = []
        self.violations = 0
        self.min_silence: float | None = None
        self.answered = 0

    def heard(self, room: Hashable) -> None:
        self.last_rx[room] = time.monotonic()

    def ping_sent(self, room: Hashable) -> float:
        """Record a self-ping to `room` sent now; returns now."""
        now = time.monotonic()
        last = self.last_rx.get(room)
        if last is not None:
            silence = now - last
            if self.min_silence is None or silence < self.min_silence:
                self.min_silence = silence
            if self.ping_idle is not None and silence < self.ping_idle:
                self.violations += 1
        self.sent.append(now)
        self.sent_room.append(self.rooms.get(room, -1))
        return now

    def ping_answered(self, room: Hashable, sent: float, ok: bool) -> None:
        """The answer (or failure) of a self-ping sent at `sent`; a
        successful answer is a stanza from the room."""
        now = time.monotonic()
        if ok:
            self.last_rx[room] = now
        self.answered += 1
        self.rtt.append(now - sent)

    def counters(self) -> dict[str, Any]:
        return {"pings": len(self.sent), "answered": self.answered,
                "violations": self.violations, "min_silence": self.min_silence}

    def report(self) -> dict[str, Any]:
        return {"sent": self.sent, "rooms": self.sent_room, "rtt": self.rtt}


async def serve(mark: Callable[[], dict[str, Any]], ledger: PingLedger | None) -> None:
    """Answer the benchmark's commands on stdin until ``stop`` or its end:
    ``mark`` (CPU time and counters now: `mark()` adds the client's own),
    ``pings`` (every self-ping sent)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    none = dict.fromkeys(("pings", "answered", "violations", "min_silence"))
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line).get("cmd")
        if cmd == "mark":
            emit("mark", t=time.monotonic(), cpu=cpu_seconds(),
                 **(ledger.counters() if ledger is not None else none), **mark())
        elif cmd == "pings":
            emit("pings", **(ledger.report() if ledger is not None
                             else {"sent": [], "rooms": [], "rtt": []}))
        elif cmd == "stop":
            return


async def serve_metrics(guard: Any, config: dict[str, Any]) -> Any:
    """With config ``metrics`` true: muc_guard.metrics.serve() for `guard`
    on a free port of 127.0.0.1, reported as ``metrics`` (its port), so
    that the benchmark can scrape it; returns the server (None without)."""
    if guard is None or not config.get("metrics"):
        return None
    import muc_guard.metrics

    server = await muc_guard.metrics.serve(guard, port=0)
    emit("metrics", port=server.port)
    return server


async def close_metrics(server: Any) -> None:
    if server is not None:
        await server.close()


def store_transactions(guard: Any) -> int | None:
    """The guard's store write transactions so far (None without a store);
    both front-ends keep their driver in ``_guard``."""
    store = getattr(getattr(guard, "_guard", None), "store", None)
    return store.transactions if store is not None else None


async def join_all(joins: Iterable[Awaitable[Any]], wait: float) -> int:
    """Run the joins at once, bounded by `wait`; how many succeeded."""
    results = await asyncio.wait_for(asyncio.gather(*joins, return_exceptions=True), wait)
    return sum(1 for r in results if not isinstance(r, BaseException))


async def joined_then_serve(joined: int, wanted: int, times: dict[str, float], guard: Any,
                            messages: Callable[[], int], ledger: PingLedger | None) -> None:
    """Report the joins, then answer commands until told to stop."""
    times["t_joined"] = time.monotonic()
    emit("joined", n=joined, complete=joined == wanted, cpu=cpu_seconds(), **times)
    await serve(lambda: {"msgs": messages(), "tx": store_transactions(guard)}, ledger)
