"""Owning a private server process: the part every test server shares.

Why this module
===============

A test server here is a child process that we own outright: spawned with a
config generated into a directory of the test's, bound to 127.0.0.1 only,
waited for until it answers, and stopped by its PID, never by name, so that
whatever else runs on the machine (a developer's own server, another test
run) is never touched. Prosody and ejabberd are started and stopped in
exactly the same way; only the config, the command line and the readiness
probe differ. The process rules are written once, here, so that the two
servers cannot drift apart on the part that must not fail: a server left
behind outlives the test run, holds its port and hides the next run's
failure.

What `ServerProcess` guarantees
===============================

- The child runs in a session of its own (terminal signals are not for it)
  and, when spawned from the main thread, with ``PR_SET_PDEATHSIG``: it gets
  SIGKILL when its parent dies, even when the test runner itself is killed.
- Every live server is in a registry that an ``atexit`` hook SIGKILLs.
- Stopping is SIGTERM (the server shuts down cleanly: clients see it), a
  bounded wait, then SIGKILL and reaping. A PID still alive after that is an
  error, never a warning.
- A start that fails (the process exits, the probe raises, or the deadline
  passes) kills the child and raises with the tail of the server's logs.
- ``started_pids`` keeps every PID the object ever spawned, so that tests
  can prove none of them is left.

A subclass says what differs: `_prepare` (write the config, make the
directories, return the command line) and `_ready` (one readiness probe,
once the process is known to be alive).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from typing import ClassVar

__all__ = [
    "LOOPBACK",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "listening_sockets",
    "pid_running",
    "port_accepts",
]

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A test server did not come up (its log tail is part of the message)."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the OS picks it; tiny reuse race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to `host`:`port` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_running(pid: int | None) -> bool:
    """True if `pid` exists and is not a zombie (reads /proc; not kill -0,
    which also succeeds for an unreaped zombie)."""
    if pid is None:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "pid (comm) S ...": comm may contain spaces/parentheses, so split after the last ")".
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process
    `pid` holds, from /proc (IPv4 and IPv6), to prove where a server binds."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    result = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for row in pathlib.Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A = TCP_LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                raw = bytes.fromhex(addr_hex)
                # /proc prints the address as host-order 32-bit words
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                result.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return sorted(result)


# Every live server, so that an interpreter exit never leaves one behind.
_LIVE: set[ServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server._hard_kill_sync()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # pragma: no cover - best effort only
        pass


class ServerProcess:
    """One server child process on 127.0.0.1: spawn, wait until ready,
    stop or crash it by PID, restart it, and show its logs.

    Subclasses set `name`, `start_error`, `logger`, the paths `config_path`,
    `log_path` and `console_path`, and `port`; they implement `_prepare` and
    `_ready`.
    """

    #: In log lines and error messages ("prosody", "ejabberd").
    name: ClassVar[str] = "server"
    #: What a failed start raises.
    start_error: ClassVar[type[ServerStartError]] = ServerStartError
    logger: ClassVar[logging.Logger] = logging.getLogger("muc_guard.testing.process")
    #: Seconds `stop` waits after SIGTERM before it kills.
    stop_timeout: ClassVar[float] = 10.0
    #: Seconds between two readiness probes.
    poll_interval: ClassVar[float] = 0.02
    #: True if the console output repeats the log: `log_tail` then shows
    #: the console only when the log is empty (e.g. a failed start).
    console_repeats_log: ClassVar[bool] = False

    host: str = LOOPBACK
    port: int
    config_path: pathlib.Path
    log_path: pathlib.Path
    console_path: pathlib.Path

    def __init__(self, root: pathlib.Path, *, startup_timeout: float) -> None:
        self.root = pathlib.Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self.started_pids: list[int] = []  # every PID this object spawned
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's log lines begin

    # --- what a subclass says ---------------------------------------------

    def _prepare(self) -> tuple[list[str], dict[str, str] | None]:
        """Write what a start needs (config, directories); return the command
        line and its environment (None: ours)."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe of a live process: True when it serves.  May
        raise `start_error` for a failure that waiting cannot mend."""
        raise NotImplementedError

    # --- starting -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while our server process exists and is not a zombie."""
        return self._proc is not None and self._proc.poll() is None and pid_running(self._proc.pid)

    def _spawn(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self!r} is already running")
        argv, env = self._prepare()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # PDEATHSIG fires when the spawning *thread* exits: only safe from
        # the main thread (never from an executor thread).
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        with open(self.console_path, "ab") as console:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # terminal signals are not for it
                preexec_fn=preexec,
            )
        self.pid = self._proc.pid
        self.started_pids.append(self.pid)
        _LIVE.add(self)
        self.logger.debug("spawned %s pid %d (%s:%d)", self.name, self.pid, self.host, self.port)

    def _check_ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise self.start_error(f"exited (rc={self._proc.returncode if self._proc else None})")
        return self._ready()

    def _ready_or_fail(self) -> bool:
        try:
            return self._check_ready()
        except ServerStartError as exc:
            raise self._startup_failed(str(exc)) from None

    def _startup_failed(self, why: str) -> ServerStartError:
        self._hard_kill_sync()
        return self.start_error(
            f"{self.name} ({self.config_path}) failed to start on {self.host}:{self.port}: "
            f"{why}\n{self.log_tail()}"
        )

    def _started(self, t0: float) -> None:
        self.last_start_seconds = time.monotonic() - t0
        self.logger.info("%s pid %d ready on %s:%d in %.2f s", self.name, self.pid, self.host,
                         self.port, self.last_start_seconds)

    def start(self) -> None:
        """Write the config, spawn the server, and wait (bounded by
        `startup_timeout`) until it is ready."""
        t0 = time.monotonic()
        self._spawn()
        deadline = t0 + self.startup_timeout
        while not self._ready_or_fail():
            if time.monotonic() > deadline:
                raise self._startup_failed(f"not ready after {self.startup_timeout:g} s")
            time.sleep(self.poll_interval)
        self._started(t0)

    async def astart(self) -> None:
        """`start` without blocking the event loop while waiting."""
        t0 = time.monotonic()
        self._spawn()  # fast; stays on the loop (main) thread on purpose
        deadline = t0 + self.startup_timeout
        while not await asyncio.to_thread(self._ready_or_fail):
            if time.monotonic() > deadline:
                raise self._startup_failed(f"not ready after {self.startup_timeout:g} s")
            await asyncio.sleep(self.poll_interval)
        self._started(t0)

    # --- stopping -----------------------------------------------------------

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)  # by PID, never by name

    def _reaped(self) -> None:
        proc, self._proc = self._proc, None
        pid, self.pid = (proc.pid if proc else None), None
        _LIVE.discard(self)
        if pid is not None and pid_running(pid):
            raise RuntimeError(f"{self.name} pid {pid} still running after stop")
        if pid is not None:
            self.logger.info("%s pid %d gone (rc=%s)", self.name, pid,
                             proc.returncode if proc else None)

    def _hard_kill_sync(self) -> None:
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self._reaped()

    def _ignored_sigterm(self, timeout: float) -> None:
        if self._proc is not None:
            self.logger.warning("%s pid %d ignored SIGTERM for %.0f s; killing",
                                self.name, self._proc.pid, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (a clean shutdown), wait up to `timeout` seconds (default
        `stop_timeout`), SIGKILL fallback, reap.  Idempotent."""
        if self._proc is None:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._ignored_sigterm(timeout)
        self._hard_kill_sync()

    async def _await_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._proc is not None and self._proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def astop(self, timeout: float | None = None) -> None:
        """`stop` without blocking the loop, so that clients in this loop can
        see and answer the server's stream close."""
        if self._proc is None:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self._signal(signal.SIGTERM)
        if not await self._await_exit(timeout):
            self._ignored_sigterm(timeout)
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL: a server crash (no stream close, nothing saved), then reap."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        await self._await_exit(10.0)
        self._hard_kill_sync()

    async def restart(self, *, hard: bool = False) -> None:
        """Stop (or crash) and start again: same ports, same data."""
        if hard:
            await self.kill()
        else:
            await self.astop()
        await self.astart()

    # --- logs ---------------------------------------------------------------

    def log_tail(self, n: int = 50) -> str:
        """The last `n` lines of the server's log and of its console output
        (see `console_repeats_log`)."""
        parts: list[str] = []
        for path in (self.log_path, self.console_path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            if lines:
                parts.append(f"--- {path.name} (last {min(n, len(lines))} lines) ---")
                parts.extend(lines[-n:])
                if self.console_repeats_log:
                    break
        return "\n".join(parts) or f"(no {self.name} log)"
