"""
What every scenario needs: statistics, result records, the private server,
accounts and rooms, aioxmpp clients, child bot processes, and probes that
timestamp what a client sends and receives.

Everything here talks to 127.0.0.1 only: clients are pinned to the private
Prosody and aioxmpp's DNS discovery is replaced by a stub (`pin_loopback`).
Every wait is bounded; every process started here is killed by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aioxmpp
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.node
import aioxmpp.ping

from muc_guard.testing.prosody import (
    ProsodyServer,
    connected,
    lua_string,
    make_client,
    stop_client,
)

log = logging.getLogger("bench")

REPO = pathlib.Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"


# --- loopback only -------------------------------------------------------------


async def _no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list:
    """Stand-in for aioxmpp.node.discover_connectors: if the pinned peer
    fails, aioxmpp would fall back to SRV/DNS lookups of the domain."""
    return []


def pin_loopback() -> None:
    aioxmpp.node.discover_connectors = _no_discovery


# --- statistics ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    min: float
    median: float
    p95: float
    p99: float
    max: float
    mean: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> Summary:
    data = sorted(values)
    if not data:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan)
    return Summary(len(data), data[0], statistics.median(data), percentile(data, 0.95),
                   percentile(data, 0.99), data[-1], statistics.fmean(data))


# --- results -----------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    """One measured quantity: its samples (in `unit`) and, if it has one,
    the figure it is compared with (`baseline`, same scenario and unit)."""

    scenario: int
    name: str
    unit: str
    values: list[float]
    baseline: "Figure | None" = None
    #: shown instead of statistics when there are no samples (e.g. "never")
    text: str | None = None
    #: shown in the baseline column when there is no baseline figure
    baseline_text: str = ""

    @property
    def summary(self) -> Summary:
        return summarize(self.values)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.values or not self.baseline.values:
            return None
        base = self.baseline.summary.median
        if base == 0:
            return None
        return self.summary.median / base


@dataclasses.dataclass
class Check:
    """A target of the issue and whether this run meets it."""

    scenario: int
    target: str
    measured: str
    ok: bool | None      # None: reported, not judged


@dataclasses.dataclass
class ScenarioResult:
    number: int
    title: str
    figures: list[Figure] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    #: what the scenario measures and how (its module's docstring)
    method: str = ""

    def figure(self, name: str, unit: str, values: Iterable[float], *,
               baseline: Figure | None = None, text: str | None = None,
               baseline_text: str = "") -> Figure:
        fig = Figure(self.number, name, unit, list(values), baseline, text, baseline_text)
        self.figures.append(fig)
        return fig

    def check(self, target: str, measured: str, ok: bool | None) -> Check:
        chk = Check(self.number, target, measured, ok)
        self.checks.append(chk)
        return chk

    def note(self, text: str) -> None:
        self.notes.append(text)


# --- process accounting ----------------------------------------------------------------


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (1/CLK_TCK resolution)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    return time.process_time()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # in the child, between fork and exec
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


# --- probes ------------------------------------------------------------------------------


class ProbeRecords:
    """What a probe records, whatever the client library: the time of each
    room's last stanza, our own self-presences, and every self-ping sent.
    Rooms are keyed by their bare aioxmpp JID for every client, so that the
    scenarios measure both front-ends with the same code."""

    def __init__(self) -> None:
        #: bare room JID -> monotonic time of its last stanza (a ping result included)
        self.last_rx: dict[aioxmpp.JID, float] = {}
        #: (to, sent, answered or None, error condition or None, silence before it)
        self.pings: list[PingRecord] = []
        #: bare room JID -> time of our own unavailable self-presence (110)
        self.self_unavailable: dict[aioxmpp.JID, float] = {}
        #: bare room JID -> time of our own last available self-presence (110)
        self.self_available: dict[aioxmpp.JID, float] = {}

    def ping_sent(self, to: aioxmpp.JID) -> "PingRecord":
        """Record a self-ping to occupant JID `to`, sent now."""
        now = time.monotonic()
        last = self.last_rx.get(to.bare())
        record = PingRecord(to, now, silence=None if last is None else now - last)
        self.pings.append(record)
        return record

    def self_presence(self, room: aioxmpp.JID, available: bool, now: float) -> None:
        (self.self_available if available else self.self_unavailable)[room] = now

    def last_ping_to(self, room: aioxmpp.JID, before: float) -> "PingRecord | None":
        for record in reversed(self.pings):
            if record.to is not None and record.to.bare() == room and record.sent <= before:
                return record
        return None


class Probe(ProbeRecords):
    """Timestamps what one aioxmpp client receives from rooms and the
    self-pings it sends. Installed in front of everything else (an inbound
    filter that runs before muc_guard's, and a wrapper around ``client.send``)."""

    ORDER = -1000   # aioxmpp runs filters in ascending order; muc_guard uses 0

    def __init__(self, client: aioxmpp.Client, ping_idle: float | None = None) -> None:
        super().__init__()
        self.client = client
        self.ping_idle = ping_idle
        stream = client.stream
        stream.app_inbound_presence_filter.register(self._presence, self.ORDER)
        stream.app_inbound_message_filter.register(self._message, self.ORDER)
        original = client.send

        async def send(stanza: Any, *args: Any, **kwargs: Any) -> Any:
            if not (isinstance(stanza, aioxmpp.IQ) and stanza.to is not None
                    and isinstance(stanza.payload, aioxmpp.ping.Ping)):
                return await original(stanza, *args, **kwargs)
            room = stanza.to.bare()
            record = self.ping_sent(stanza.to)
            try:
                result = await original(stanza, *args, **kwargs)
                # A ping answered from our occupant JID is a stanza from the room.
                self.last_rx[room] = time.monotonic()
                return result
            except aioxmpp.errors.XMPPError as exc:
                record.condition = str(getattr(exc.condition, "value", ("", "?"))[1])
                raise
            except BaseException as exc:
                record.condition = type(exc).__name__
                raise
            finally:
                record.answered = time.monotonic()

        client.send = send  # type: ignore[method-assign]

    def _presence(self, stanza: aioxmpp.Presence) -> aioxmpp.Presence:
        sender = stanza.from_
        if sender is not None:
            now = time.monotonic()
            bare = sender.bare()
            self.last_rx[bare] = now
            muc_user = stanza.xep0045_muc_user
            if (muc_user is not None and 110 in {int(c) for c in muc_user.status_codes}
                    and stanza.type_ in (aioxmpp.PresenceType.UNAVAILABLE,
                                         aioxmpp.PresenceType.AVAILABLE)):
                self.self_presence(bare, stanza.type_ == aioxmpp.PresenceType.AVAILABLE, now)
        return stanza

    def _message(self, message: aioxmpp.Message) -> aioxmpp.Message:
        if message.from_ is not None:
            self.last_rx[message.from_.bare()] = time.monotonic()
        return message


@dataclasses.dataclass
class PingRecord:
    to: aioxmpp.JID | None
    sent: float
    answered: float | None = None
    condition: str | None = None
    #: seconds since the room's last stanza when the ping went out
    silence: float | None = None

    @property
    def rtt(self) -> float | None:
        return None if self.answered is None else self.answered - self.sent


class SendTimes:
    """Timestamps of what a client puts in its send queue: every self-ping,
    and each join presence (by bare room JID). Filled by a hook on the
    client's send path (one per client library)."""

    def __init__(self) -> None:
        self.pings: list[float] = []
        self.joins: dict[aioxmpp.JID, list[float]] = {}

    def join_after(self, room: aioxmpp.JID, after: float) -> float | None:
        return next((t for t in self.joins.get(room, ()) if t >= after), None)

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.pings if start <= t < end)


class Events:
    """Timestamps of (kind, room) events, with bounded waits for them.

    A wait's predicate is checked as each event is added, not by a task
    woken per event: the waiting must cost the measured client nothing."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, aioxmpp.JID]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[bool]]] = []
        #: called with (time, kind, room) as each event is added, before the waits
        self.observers: list[Callable[[float, str, aioxmpp.JID], None]] = []

    def add(self, kind: str, room: aioxmpp.JID) -> None:
        now = time.monotonic()
        self.log.append((now, kind, room))
        for observe in self.observers:
            observe(now, kind, room)
        for predicate, fut in self._waiters:
            if not fut.done() and predicate():
                fut.set_result(True)

    def listener(self, kind: str) -> Callable[..., None]:
        def record(room: aioxmpp.JID, *args: Any, **kwargs: Any) -> None:
            self.add(kind, room)
        return record

    def times(self, kind: str, room: aioxmpp.JID | None = None, after: float = -math.inf) -> list[float]:
        return [t for t, k, r in self.log if k == kind and t >= after and (room is None or r == room)]

    def count(self, kind: str, after: float = -math.inf) -> int:
        return len(self.times(kind, after=after))

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        if predicate():
            return True
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)

    async def first(self, kind: str, room: aioxmpp.JID, after: float, timeout: float) -> float | None:
        if not await self.wait(lambda: bool(self.times(kind, room, after)), timeout):
            return None
        return self.times(kind, room, after)[0]


async def kick_and_wait(ctx: "Context", probe: ProbeRecords, events: Events,
                        room: aioxmpp.JID, nick: str = "bot", timeout: float = 10.0
                        ) -> tuple[float, float, float] | None:
    """110+333 for `nick` in `room`; (when the admin call was made, when the
    client received the 110+333, when its ``rejoined`` event came), or None
    if either of the last two is missing."""
    t_admin = time.monotonic()
    await ctx.server.kick_with_codes(room, nick, [333], "bench")
    t_rejoined = await events.first("rejoined", room, after=t_admin, timeout=timeout)
    t_rx = probe.self_unavailable.get(room)
    if t_rejoined is None or t_rx is None or t_rx < t_admin:
        return None
    return t_admin, t_rx, t_rejoined


# --- the context every scenario gets ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between a full run and a smoke run."""

    s1_trials: int = 200
    s1_rooms: int = 200   # one per trial: a room dropped twice within backoff_max is flapping
    s1_baseline_trials: int = 3
    s1_baseline_wait: float = 3.0
    s2_trials: int = 50
    s2_bots: int = 5
    s2_ping_idle: float = 2.0
    s3_rooms: int = 100
    s3_ping_idle: float = 10.0
    s3_spread: float = 8.0
    s4_rooms: int = 1000
    s4_concurrency: tuple[int, ...] = (1, 4, 8, 16, 32, 64, 256, 1000)
    s4_repeats: int = 5
    s5_rooms: int = 1000
    s5_rate: float = 500.0
    s5_seconds: float = 60.0
    s5_window: float = 10.0
    s5_ping_idle: float = 10.0
    s5_scrape_interval: float = 1.0
    s6_rooms: int = 1000
    s6_ping_idle: float = 60.0
    s6_seconds: float = 180.0
    s7_rooms: int = 10_000
    s7_busy_rooms: int = 100
    s7_busy_messages: int = 600
    s8_rooms: int = 1000
    s8_repeats: int = 3
    s9_rooms: int = 1000
    s9_trials: int = 100
    s9_ping_timeout: float = 1.0
    s10_rooms: int = 40
    s10_warmup: float = 20.0
    s10_seconds: float = 120.0
    s10_drop_rate: float = 2.0
    s10_message_rate: float = 20.0
    s10_ping_idle: float = 1.0
    s10_settle: float = 1.0


SMOKE = Sizes(
    s1_trials=5, s1_rooms=5, s1_baseline_trials=1, s1_baseline_wait=0.5,
    s2_trials=2, s2_bots=2, s2_ping_idle=0.5,
    s3_rooms=8, s3_ping_idle=1.5, s3_spread=0.8,
    s4_rooms=20, s4_concurrency=(4, 20), s4_repeats=1,
    s5_rooms=20, s5_rate=40.0, s5_seconds=1.0, s5_window=0.5, s5_ping_idle=0.5,
    s5_scrape_interval=0.25,
    s6_rooms=20, s6_ping_idle=0.5, s6_seconds=1.0,
    s7_rooms=200, s7_busy_rooms=4, s7_busy_messages=600,
    s8_rooms=20, s8_repeats=1,
    s9_rooms=10, s9_trials=2, s9_ping_timeout=0.5,
    s10_rooms=5, s10_warmup=0.5, s10_seconds=1.0, s10_drop_rate=4.0, s10_message_rate=20.0,
    s10_ping_idle=0.3, s10_settle=0.2,
)


#: the client libraries muc_guard has a front-end for
FRONTENDS = ("aioxmpp", "slixmpp")


class Context:
    """The private server plus helpers; one per benchmark run."""

    def __init__(self, server: ProsodyServer, sizes: Sizes, workdir: pathlib.Path,
                 smoke: bool, frontends: Sequence[str] = FRONTENDS) -> None:
        self.server = server
        self.sizes = sizes
        self.workdir = workdir
        self.smoke = smoke
        #: the front-ends scenarios 1, 2, 3, 5 and 9 measure, in this order
        self.frontends = tuple(frontends)
        #: stop functions of clients that are not aioxmpp's (slixmpp's)
        self._closers: list[Callable[[], Any]] = []
        self.muc_domain = server.muc_domain
        self._serial = 0
        self._clients: list[aioxmpp.Client] = []
        self._guards: list[Any] = []
        self._procs: list[BotProc] = []
        self._created: dict[str, int] = {}
        #: facts later scenarios reuse (e.g. the best plain join concurrency)
        self.shared: dict[str, Any] = {}

    # accounts and rooms

    async def account(self, prefix: str) -> aioxmpp.JID:
        self._serial += 1
        return await self.server.aregister(f"{prefix}{self._serial}", PASSWORD)

    def room_jid(self, prefix: str, i: int) -> aioxmpp.JID:
        return aioxmpp.JID(f"{prefix}{i}", self.muc_domain, None)

    async def rooms(self, prefix: str, count: int, *, history_length: int | None = None
                    ) -> list[aioxmpp.JID]:
        """`count` persistent rooms <prefix><i>@<muc domain>, created
        server-side (so no join has to create them), in batches."""
        have = self._created.get(prefix, 0)
        opts = "persistent=true"
        if history_length is not None:
            opts += f", history_length={int(history_length)}"
        batch = 200
        # Prosody saves its list of persistent rooms on each creation: with
        # thousands of rooms from earlier scenarios a batch takes seconds.
        timeout, self.server.admin_timeout = self.server.admin_timeout, 120.0
        try:
            for start in range(have, count, batch):
                stop = min(count, start + batch)
                domain = lua_string("@" + self.muc_domain)
                lua = (f">for i={start},{stop - 1} do muc_guard_test.create_room("
                       f"{lua_string(prefix)}..i..{domain}, {{{opts}}}) end; return true")
                await self.server.admin(lua)
        finally:
            self.server.admin_timeout = timeout
        self._created[prefix] = max(have, count)
        return [self.room_jid(prefix, i) for i in range(count)]

    async def silent_remove_all(self, rooms: Sequence[aioxmpp.JID], nick: str) -> None:
        """Remove `nick` from every room without telling anyone, in one admin call."""
        names = ", ".join(lua_string(str(r)) for r in rooms)
        lua = (f">for _, r in ipairs({{{names}}}) do "
               f"muc_guard_test.silent_remove(r, {lua_string(nick)}) end; return true")
        await self.server.admin(lua)

    # clients in this process

    def client(self, jid: aioxmpp.JID, resource: str | None = None) -> aioxmpp.PresenceManagedClient:
        full = jid.replace(resource=resource) if resource else jid
        client = make_client(self.server, full, PASSWORD)
        self._clients.append(client)
        return client

    def guard(self, client: aioxmpp.Client) -> Any:
        """Summon muc_guard.MUCGuard on `client` (shut down by cleanup())."""
        import muc_guard

        guard = client.summon(muc_guard.MUCGuard)
        self._guards.append(guard)
        return guard

    def on_cleanup(self, stop: Callable[[], Any]) -> None:
        """Have cleanup() await `stop()` (a coroutine function)."""
        self._closers.append(stop)

    async def connect(self, client: aioxmpp.Client) -> aioxmpp.Client:
        return await connected(client, timeout=30.0)

    async def stop_client(self, client: aioxmpp.Client) -> None:
        await stop_client(client, timeout=10.0)

    # child bot processes

    async def bot(self, config: dict[str, Any], name: str) -> "BotProc":
        proc = BotProc(name, self.workdir / f"{name}.log")
        self._procs.append(proc)
        await proc.start({"host": self.server.host, "port": self.server.port,
                          "password": PASSWORD, "muc_domain": self.muc_domain, **config})
        return proc

    def prosody_cpu(self) -> float:
        return proc_cpu_seconds(self.server.pid) if self.server.pid else math.nan

    async def server_quiet(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until Prosody has finished what the last run left
        it (e.g. tearing down a session in 1,000 rooms): less than 20 ms of
        its CPU in 200 ms. Keeps one timed run from paying for the previous."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = self.prosody_cpu()
            await asyncio.sleep(0.2)
            if self.prosody_cpu() - before < 0.02:
                return

    async def cleanup(self) -> None:
        """Stop every client and kill every child process this run started."""
        for proc in self._procs:
            await proc.kill()
        self._procs.clear()
        for guard in self._guards:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(guard.shutdown(), 30)
        self._guards.clear()
        closers, self._closers = self._closers, []
        await asyncio.gather(*(asyncio.wait_for(stop(), 30) for stop in closers),
                             return_exceptions=True)
        await asyncio.gather(*(stop_client(c, timeout=5.0) for c in self._clients),
                             return_exceptions=True)
        self._clients.clear()


# --- child processes ----------------------------------------------------------------------


class BotProcError(RuntimeError):
    pass


class BotProc:
    """A bot in a child process (``python -m bench.botproc``), so that its CPU
    time and start-up are its own. JSON lines out, commands in."""

    def __init__(self, name: str, log_path: pathlib.Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned_at: float | None = None
        self.pid: int | None = None

    async def start(self, config: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as stderr:
            self.spawned_at = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.botproc", json.dumps(config),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, cwd=str(REPO), env=env, preexec_fn=_die_with_parent,
                limit=16 * 1024 * 1024,
            )
        self.pid = self.proc.pid

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next message of kind `event` (others before it are skipped)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BotProcError(f"{self.name}: no {event!r} within {timeout:g} s; "
                                   f"log: {self.log_tail()}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                continue
            if not line:
                raise BotProcError(f"{self.name} exited (rc={self.proc.returncode}) "
                                   f"before {event!r}; log: {self.log_tail()}")
            if not line.startswith(b"{"):
                log.info("%s: %s", self.name, line.decode(errors="replace").rstrip())
                continue   # not ours (e.g. a profiler wrapping the child)
            msg = json.loads(line)
            if msg.get("ev") == "error":
                raise BotProcError(f"{self.name}: {msg.get('error')}")
            if msg.get("ev") == event:
                return msg

    async def command(self, cmd: str, event: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.expect(event, timeout)

    async def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (the guard flushes its store), then reap; kill on timeout."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self.command("stop", "stopped", timeout)
            await asyncio.wait_for(self.proc.wait(), 10.0)
        except (BotProcError, asyncio.TimeoutError, ConnectionError, BrokenPipeError):
            await self.kill()

    async def kill(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)   # by PID
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10.0)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])


# --- formatting --------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with about `digits` significant digits, no exponent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


async def gather_bounded(coros: Iterable[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))
