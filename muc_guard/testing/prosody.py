"""A private Prosody on 127.0.0.1, for integration tests, demos and benchmarks.

`ProsodyServer` writes a config into its own directory, runs ``prosody`` as a
child process (``daemonize = false``: we own the PID), binds it to 127.0.0.1
only, and injects faults through Prosody itself: ``mod_muc_guard_test``
(``muc_guard/testing/prosody_modules``) is loaded on the MUC component and driven through the
admin socket (mod_admin_socket + mod_admin_shell), which this module speaks
directly from Python instead of spawning ``prosodyctl shell`` per call.

Admin socket wire protocol (util/adminstream.lua): an XML stream in the
default namespace ``xmpp:prosody.im/admin``; the client opens the stream, the
server answers with its header; each ``<repl-input>`` line is answered with
zero or more ``<repl-output>`` (print) and one ``<repl-result>`` (its
``type='error'`` on failure).  A line starting with ``>`` runs in Prosody's
real global environment.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Iterable, cast
from xml.sax.saxutils import escape as xml_escape

import aioxmpp

from .certs import ServerCertificate

__all__ = [
    "AdminReply",
    "ProsodyAdminError",
    "ProsodyServer",
    "ProsodyStartError",
    "PROSODY_ENV",
    "connected",
    "free_port",
    "listening_sockets",
    "lua_string",
    "make_client",
    "prosody_binary",
    "prosody_version",
    "pid_running",
    "security_layer",
    "stop_client",
]

log = logging.getLogger("muc_guard.testing.prosody")

MODULE_DIR = pathlib.Path(__file__).resolve().parent / "prosody_modules"
LOOPBACK = "127.0.0.1"

_ADMIN_NS = "xmpp:prosody.im/admin"
_STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
    f"xmlns='{_ADMIN_NS}' xml:lang='en'>"
).encode()
_STREAM_FOOTER = b"</stream:stream>"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL

#: Which Prosody every ProsodyServer runs unless told otherwise: the path of a
#: ``prosody`` launcher (e.g. a Prosody 13 unpacked beside the system 0.12).
PROSODY_ENV = "MUC_GUARD_PROSODY"


def prosody_binary(prosody: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The ``prosody`` launcher to run: `prosody` if given, else
    ``$MUC_GUARD_PROSODY``, else the one on PATH.  A named one that does not
    exist is an error, never a silent fallback to another version."""
    chosen = prosody if prosody is not None else os.environ.get(PROSODY_ENV) or None
    if chosen is None:
        found = shutil.which("prosody")
        if found is None:
            raise ProsodyStartError("prosody binary not found on PATH")
        return pathlib.Path(found)
    path = pathlib.Path(chosen)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ProsodyStartError(f"prosody binary {str(path)!r} does not exist or is not executable")
    return path.resolve()


def _source_dir(binary: pathlib.Path) -> pathlib.Path:
    """Prosody's CFG_SOURCEDIR, as written into its launcher script."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in binary.read_text().splitlines()[:40]:
            if line.startswith("CFG_SOURCEDIR"):
                return pathlib.Path(line.partition("=")[2].strip().strip(";").strip("'\""))
    return pathlib.Path("/usr/lib/prosody")


def prosody_version(prosody: str | os.PathLike[str] | None = None) -> str:
    """The version of that Prosody (e.g. "0.12.3", "13.0.1"), from the
    ``prosody.version`` file in its source directory."""
    path = _source_dir(prosody_binary(prosody)) / "prosody.version"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ProsodyStartError(f"cannot tell the Prosody version: {exc}") from exc


class ProsodyStartError(RuntimeError):
    """Prosody did not come up (its log tail is part of the message)."""


class ProsodyAdminError(RuntimeError):
    """A Lua error or an error result from the admin shell or our module."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the OS picks it; tiny reuse race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


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


def lua_string(value: str) -> str:
    """A Lua string literal for any text: printable ASCII stays readable;
    quotes, backslashes, control and non-ASCII bytes become 3-digit decimal
    escapes, so nothing can break out of the literal."""
    out = []
    for byte in value.encode():
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '\\"' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua_value(value: Any) -> str:
    """Render a Python scalar/list/dict as a Lua literal (config generation)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, dict):
        items = ", ".join(f"[{_lua_value(k)}] = {_lua_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "{ " + ", ".join(_lua_value(v) for v in value) + " }"
    raise TypeError(f"cannot render {value!r} as Lua")


@dataclass
class AdminReply:
    """One admin-shell exchange: the printed lines and the final result."""

    output: list[str] = field(default_factory=list)
    result: str = ""
    error: bool = False

    @property
    def value(self) -> str:
        """The result text without Prosody's "Result: " / "OK: " prefix."""
        for prefix in ("Result: ", "OK: "):
            if self.result.startswith(prefix):
                return self.result[len(prefix):]
        return self.result

    def text(self) -> str:
        """Printed lines followed by the result value.  A "nil" result (nothing
        returned) is left out when something was printed.  Note that Prosody
        first tries a line as ``return <line>``, so ``print(x)`` alone
        returns print's own result ("true")."""
        lines = list(self.output)
        if not (lines and self.result == "Result: nil"):
            lines.append(self.value)
        return "\n".join(lines)


class _AdminParser:
    """Incremental parser for the admin stream's replies."""

    def __init__(self) -> None:
        self._parser: ET.XMLPullParser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.opened = False
        self.closed = False
        self.reply = AdminReply()
        self.done = False

    def feed(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        self._parser.feed(data)
        for pair in self._parser.read_events():
            # Only "start"/"end" were asked for: the item is an Element.
            event, elem = cast("tuple[str, ET.Element]", pair)
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.opened = True
                continue
            self._depth -= 1
            if self._depth == 0:
                self.closed = True
            elif self._depth == 1:
                tag = elem.tag.rpartition("}")[2]
                text = elem.text or ""
                if tag == "repl-output":
                    self.reply.output.append(text)
                elif tag == "repl-result":
                    self.reply.result = text
                    self.reply.error = elem.get("type") == "error"
                    self.done = True
                elif tag == "error":  # stream error
                    raise ProsodyAdminError(f"admin stream error: {ET.tostring(elem, 'unicode')}")


def _repl_input(line: str) -> bytes:
    return f"<repl-input>{xml_escape(line)}</repl-input>".encode()


# Every live server, so that an interpreter exit never leaves one behind.
_LIVE: "set[ProsodyServer]" = set()


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


class ProsodyServer:
    """A private Prosody on 127.0.0.1 with its own config, data and log.

    The c2s port is chosen once, at construction, and kept across restarts;
    the data directory is kept too, so persistent rooms survive a restart.

    Options: ``nagle`` (default off: ``network_settings = { nagle = false }``),
    ``smacks`` (mod_smacks, XEP-0198; ``smacks_hibernation_time`` seconds a
    cut session lingers as a ghost, Prosody's default 600), ``tls`` (a
    :class:`~muc_guard.testing.certs.ServerCertificate`: STARTTLS with that
    certificate, required for every client; :func:`make_client` then verifies
    it against the issuing CA, as production does), ``mam``
    (mod_muc_mam on the MUC component), ``tombstones`` (Prosody default on:
    a destroyed persistent room answers <gone/> for 31 days; off: it simply
    no longer exists), ``room_locking`` (Prosody's default is on: a room a
    join creates stays locked, item-not-found to everyone else, until its
    owner configures it; off here unless asked for), ``extra_config`` /
    ``extra_muc_config`` (raw Lua appended to the global / Component section),
    ``prosody`` (the launcher to run; default ``$MUC_GUARD_PROSODY``, else
    ``prosody`` on PATH: see :func:`prosody_binary`).  ``version`` is the
    version it runs.
    """

    domain: str = "localhost"
    muc_domain: str = "conference.localhost"
    host: str = LOOPBACK

    def __init__(
        self,
        root: pathlib.Path,
        *,
        nagle: bool = False,
        smacks: bool = False,
        mam: bool = False,
        tombstones: bool = True,
        room_locking: bool = False,
        smacks_hibernation_time: float | None = None,
        tls: ServerCertificate | None = None,
        log_level: str = "debug",
        extra_config: str = "",
        extra_muc_config: str = "",
        startup_timeout: float = 15.0,
        admin_timeout: float = 10.0,
        prosody: str | os.PathLike[str] | None = None,
    ) -> None:
        self.binary = prosody_binary(prosody)
        self.version = prosody_version(self.binary)
        self.root = pathlib.Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.config_path = self.root / "prosody.cfg.lua"
        self.log_path = self.root / "prosody.log"
        self.console_path = self.root / "prosody.console"
        self.nagle = nagle
        self.smacks = smacks
        self.mam = mam
        self.tombstones = tombstones
        self.room_locking = room_locking
        self.smacks_hibernation_time = smacks_hibernation_time
        self.tls = tls
        self.log_level = log_level
        self.extra_config = extra_config
        self.extra_muc_config = extra_muc_config
        self.startup_timeout = startup_timeout
        self.admin_timeout = admin_timeout
        self.port: int = free_port()
        self.socket_path = self._choose_socket_path()
        self.pid: int | None = None
        self._log_offset = 0  # where this start's log lines begin
        self.started_pids: list[int] = []  # every Prosody PID this object spawned
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def version_info(self) -> tuple[int, ...]:
        """`version` as numbers, for comparisons: (0, 12, 3), (13, 0, 1)."""
        return tuple(int(part) for part in self.version.split(".") if part.isdigit())

    def __repr__(self) -> str:
        tls = " tls" if self.tls else ""
        return f"<ProsodyServer {self.version} {self.host}:{self.port}{tls} pid={self.pid} root={self.root}>"

    # --- configuration -------------------------------------------------

    def _choose_socket_path(self) -> pathlib.Path:
        """The admin socket lives in the data dir unless that path is too
        long for sockaddr_un; then in a short private temp dir."""
        path = self.data_dir / "admin.sock"
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            return path
        return pathlib.Path(tempfile.mkdtemp(prefix="mgt-")) / "admin.sock"

    def config_text(self) -> str:
        """The generated prosody.cfg.lua.  Every listening service is pinned
        to 127.0.0.1 and all but c2s get no port at all."""
        g: dict[str, Any] = {
            "daemonize": False,
            "run_as_root": True,  # harmless when not root; required when root
            "pidfile": None,
            "data_path": str(self.data_dir),
            "plugin_paths": [str(MODULE_DIR)],
            "admin_socket": str(self.socket_path),
            "log": [{"levels": {"min": self.log_level}, "to": "file", "filename": str(self.log_path)}],
            # Loopback only, everywhere.
            "interfaces": [LOOPBACK],
            "local_interfaces": [LOOPBACK],
            "c2s_ports": [self.port],
            "c2s_interfaces": [LOOPBACK],
            # Every other service Prosody knows: bound nowhere.
            **{
                f"{svc}_ports": []
                for svc in (
                    "c2s_direct_tls", "legacy_ssl", "s2s", "s2s_direct_tls", "component",
                    "http", "https", "console", "proxy65",
                )
            },
            **{
                f"{svc}_interfaces": [LOOPBACK]
                for svc in (
                    "c2s_direct_tls", "legacy_ssl", "s2s", "s2s_direct_tls", "component",
                    "http", "https", "console", "proxy65",
                )
            },
            "ports": [],  # mod_net_multiplex
            "ssl_ports": [],
            "modules_enabled": [
                # "time" (XEP-0202) as in Prosody's default config: the guard
                # learns the server's clock from it
                "roster", "saslauth", "disco", "ping", "time", "admin_shell",
                *(["smacks"] if self.smacks else []),
                *(["tls"] if self.tls else []),
            ],
            # s2s is autoloaded: switch it off (no federation, no DNS).
            "modules_disabled": ["s2s", "s2s_auth_certs", "s2s_bidi", "dialback", "offline"],
            "authentication": "internal_hashed",
            "storage": "internal",
            "c2s_require_encryption": self.tls is not None,
            "s2s_require_encryption": False,
            "allow_registration": False,
            "certificates": str(self.root / "certs"),
        }
        if self.tls is not None:
            g["ssl"] = {"certificate": str(self.tls.cert_file), "key": str(self.tls.key_file)}
        if not self.nagle:
            g["network_settings"] = {"nagle": False}
        if self.smacks_hibernation_time is not None:
            g["smacks_hibernation_time"] = self.smacks_hibernation_time
        muc_modules = ["muc_guard_test", *(["muc_mam"] if self.mam else [])]
        muc: dict[str, Any] = {
            "modules_enabled": muc_modules,
            "muc_room_locking": self.room_locking,
            "muc_room_default_persistent": True,
            "muc_tombstones": self.tombstones,
        }
        lines = ["-- generated by tests/prosody.py; do not edit", ""]
        lines += [f"{k} = {_lua_value(v)}" for k, v in g.items()]
        if self.extra_config:
            lines += ["", "-- extra_config", self.extra_config]
        lines += ["", f"VirtualHost {lua_string(self.domain)}", ""]
        lines += [f"Component {lua_string(self.muc_domain)} \"muc\""]
        lines += [f"    {k} = {_lua_value(v)}" for k, v in muc.items()]
        if self.extra_muc_config:
            lines += ["    -- extra_muc_config", self.extra_muc_config]
        return "\n".join(lines) + "\n"

    # --- process control -------------------------------------------------

    @property
    def running(self) -> bool:
        """True while our Prosody process exists and is not a zombie."""
        return self._proc is not None and self._proc.poll() is None and pid_running(self._proc.pid)

    def _spawn(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self!r} is already running")
        binary = str(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "certs").mkdir(exist_ok=True)  # empty: no TLS, no warning
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket would fake readiness
        self.config_path.write_text(self.config_text())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        console = open(self.console_path, "ab")
        try:
            # PDEATHSIG fires when the spawning *thread* exits: only safe from
            # the main thread (never from an executor thread).
            preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self._proc = subprocess.Popen(
                [binary, "--config", str(self.config_path), "-F"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # terminal signals are not for it
                preexec_fn=preexec,
            )
        finally:
            console.close()
        self.pid = self._proc.pid
        self.started_pids.append(self.pid)
        _LIVE.add(self)
        log.debug("spawned prosody pid %d (%s:%d)", self.pid, self.host, self.port)

    _FATAL_LOG = ("Failed to open server port", "Unable to bind admin socket", "Error loading module")

    def _check_ready(self) -> bool:
        """One readiness probe: process alive, c2s port accepts, admin answers.
        Raises at once if Prosody exited or logged a fatal startup error."""
        if self._proc is None or self._proc.poll() is not None:
            raise ProsodyStartError(f"exited (rc={self._proc.returncode if self._proc else None})")
        with contextlib.suppress(FileNotFoundError):
            with open(self.log_path, errors="replace") as log_file:
                log_file.seek(self._log_offset)
                fatal = [line for line in log_file if any(m in line for m in self._FATAL_LOG)]
            if fatal:
                raise ProsodyStartError("logged: " + fatal[0].strip())
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if not self.socket_path.exists():
            return False
        try:
            reply = self._admin_sync(">return 'ready'", timeout=2.0)
        except (OSError, ProsodyAdminError):
            return False
        return reply.value == "ready"

    def _ready_or_fail(self) -> bool:
        try:
            return self._check_ready()
        except ProsodyStartError as exc:
            raise self._startup_failed(str(exc)) from None

    def _startup_failed(self, why: str) -> ProsodyStartError:
        self._hard_kill_sync()
        return ProsodyStartError(
            f"prosody ({self.config_path}) failed to start on {self.host}:{self.port}: {why}\n{self.log_tail()}"
        )

    def start(self) -> None:
        """Write the config, spawn Prosody, and wait (bounded) until the c2s
        port accepts connections and the admin socket answers."""
        t0 = time.monotonic()
        self._spawn()
        deadline = t0 + self.startup_timeout
        while not self._ready_or_fail():
            if time.monotonic() > deadline:
                raise self._startup_failed(f"not ready after {self.startup_timeout:g} s")
            time.sleep(0.02)
        self.last_start_seconds = time.monotonic() - t0
        log.info("prosody pid %d ready on %s:%d in %.2f s", self.pid, self.host, self.port, self.last_start_seconds)

    async def astart(self) -> None:
        """`start` without blocking the event loop while waiting."""
        t0 = time.monotonic()
        self._spawn()  # fast; stays on the loop (main) thread on purpose
        deadline = t0 + self.startup_timeout
        while not await asyncio.to_thread(self._ready_or_fail):
            if time.monotonic() > deadline:
                raise self._startup_failed(f"not ready after {self.startup_timeout:g} s")
            await asyncio.sleep(0.02)
        self.last_start_seconds = time.monotonic() - t0
        log.info("prosody pid %d ready on %s:%d in %.2f s", self.pid, self.host, self.port, self.last_start_seconds)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)  # by PID, never by name

    def _reaped(self) -> None:
        proc, self._proc = self._proc, None
        pid, self.pid = (proc.pid if proc else None), None
        _LIVE.discard(self)
        if pid is not None and pid_running(pid):
            raise RuntimeError(f"prosody pid {pid} still running after stop")
        if pid is not None:
            log.info("prosody pid %d gone (rc=%s)", pid, proc.returncode if proc else None)

    def _hard_kill_sync(self) -> None:
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self._reaped()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: clients get <system-shutdown/>, rooms are
        saved), wait, SIGKILL fallback, reap.  Idempotent."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("prosody pid %d ignored SIGTERM for %.0f s; killing", self._proc.pid, timeout)
        self._hard_kill_sync()

    async def _await_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._proc is not None and self._proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def astop(self, timeout: float = 10.0) -> None:
        """`stop` without blocking the loop, so that clients in this loop can
        see and answer the server's stream close."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        if not await self._await_exit(timeout):
            log.warning("prosody pid %d ignored SIGTERM for %.0f s; killing", self._proc.pid, timeout)
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL: a server crash (no stream close, no room save), then reap."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        await self._await_exit(10.0)
        self._hard_kill_sync()

    async def restart(self, *, hard: bool = False) -> None:
        """Stop (or crash) and start again: same port, same data dir."""
        if hard:
            await self.kill()
        else:
            await self.astop()
        await self.astart()

    def log_tail(self, n: int = 50) -> str:
        """The last `n` lines of Prosody's log (and of its console output)."""
        parts = []
        for path in (self.log_path, self.console_path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            if lines:
                parts.append(f"--- {path.name} (last {min(n, len(lines))} lines) ---")
                parts.extend(lines[-n:])
        return "\n".join(parts) or "(no prosody log)"

    # --- admin socket ------------------------------------------------------

    def _admin_sync(self, line: str, *, timeout: float | None = None) -> AdminReply:
        """One admin-shell line over a fresh blocking connection."""
        timeout = self.admin_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        parser = _AdminParser()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(_STREAM_HEADER + _repl_input(line))
            while not parser.done:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    raise ProsodyAdminError(f"admin socket: no reply within {timeout} s to {line[:200]!r}") from None
                parser.feed(data)
                if parser.closed and not parser.done:
                    raise ProsodyAdminError(f"admin socket closed before replying to {line[:200]!r}")
            with contextlib.suppress(OSError):
                sock.sendall(_STREAM_FOOTER)
        return parser.reply

    async def _admin_async(self, line: str, *, timeout: float | None = None) -> AdminReply:
        """One admin-shell line over a fresh asyncio unix connection (no
        connection is kept, so a server shared by many event loops is fine)."""
        timeout = self.admin_timeout if timeout is None else timeout
        parser = _AdminParser()

        async def exchange() -> None:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            try:
                writer.write(_STREAM_HEADER + _repl_input(line))
                await writer.drain()
                while not parser.done:
                    parser.feed(await reader.read(65536))
                    if parser.closed and not parser.done:
                        raise ProsodyAdminError(f"admin socket closed before replying to {line[:200]!r}")
                writer.write(_STREAM_FOOTER)
                with contextlib.suppress(OSError):
                    await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise ProsodyAdminError(f"admin socket: no reply within {timeout} s to {line[:200]!r}") from None
        return parser.reply

    @staticmethod
    def _checked(line: str, reply: AdminReply) -> AdminReply:
        if reply.error:
            raise ProsodyAdminError(f"admin shell error for {line[:300]!r}: {reply.text()}")
        return reply

    async def admin(self, lua: str, *, shell: bool = False) -> str:
        """Run Lua inside the server; return printed lines + the returned value.

        By default the code runs in Prosody's global environment (a ``>``
        line); ``shell=True`` runs it in the console sandbox instead, where
        commands like ``user:create(...)`` or ``muc:list(...)`` live.
        Raises ProsodyAdminError on Lua errors (compile or runtime) and on
        ``nil, "message"`` returns.
        """
        line = lua if shell or lua.startswith(">") else ">" + lua
        return self._checked(line, await self._admin_async(line)).text()

    def admin_sync(self, lua: str, *, shell: bool = False) -> str:
        """Blocking `admin` (for sync fixtures and setup code)."""
        line = lua if shell or lua.startswith(">") else ">" + lua
        return self._checked(line, self._admin_sync(line)).text()

    @staticmethod
    def _call_line(name: str, args: Iterable[Any]) -> str:
        return f">muc_guard_test.call({lua_string(name)}, {lua_string(json.dumps(list(args)))})"

    @staticmethod
    def _decode_call(line: str, reply: AdminReply) -> Any:
        ProsodyServer._checked(line, reply)
        try:
            payload = json.loads(reply.value)
        except ValueError:
            raise ProsodyAdminError(f"unexpected admin reply to {line[:200]!r}: {reply.text()!r}") from None
        if not payload.get("ok"):
            raise ProsodyAdminError(f"mod_muc_guard_test: {payload.get('error')}")
        return payload.get("result")

    async def call(self, name: str, *args: Any) -> Any:
        """Call ``muc_guard_test.<name>(*args)`` in the server (JSON in/out)."""
        line = self._call_line(name, args)
        return self._decode_call(line, await self._admin_async(line))

    def call_sync(self, name: str, *args: Any) -> Any:
        line = self._call_line(name, args)
        return self._decode_call(line, self._admin_sync(line))

    # --- accounts ------------------------------------------------------------

    def register(self, user: str, password: str) -> aioxmpp.JID:
        """Create an account (admin shell while running, prosodyctl otherwise)."""
        jid = aioxmpp.JID(user, self.domain, None)
        if self.running:
            self.admin_sync(f"user:create({lua_string(str(jid))}, {lua_string(password)})", shell=True)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self.config_text())
            subprocess.run(
                [str(self.binary.with_name("prosodyctl")), "--config", str(self.config_path), "register", user, self.domain, password],
                check=True, capture_output=True, timeout=30,
            )
        return jid

    async def aregister(self, user: str, password: str) -> aioxmpp.JID:
        jid = aioxmpp.JID(user, self.domain, None)
        await self.admin(f"user:create({lua_string(str(jid))}, {lua_string(password)})", shell=True)
        return jid

    # --- fault injection / inspection -------------------------------------

    @staticmethod
    def _room(room: str | aioxmpp.JID) -> str:
        jid = room if isinstance(room, aioxmpp.JID) else aioxmpp.JID.fromstr(room)
        if not jid.is_bare:
            raise ValueError(f"room must be a bare JID, got {jid}")
        return str(jid)

    @staticmethod
    def _bare(jid: str | aioxmpp.JID) -> str:
        jid = jid if isinstance(jid, aioxmpp.JID) else aioxmpp.JID.fromstr(jid)
        return str(jid.bare())

    async def occupants(self, room: str | aioxmpp.JID) -> dict[str, list[str]]:
        """nick -> real full JIDs with a live session, read from the server's
        room object; {} when the room does not exist."""
        result = await self.call("occupants", self._room(room))
        return dict(result or {})

    async def room_info(self, room: str | aioxmpp.JID) -> dict[str, Any]:
        """exists/destroyed/persistent/members_only/occupants (with roles)/
        affiliations of a room, as the server sees it."""
        return await self.call("room_info", self._room(room))

    async def kick_with_codes(self, room, nick: str, codes: list[int], reason: str = "") -> list[str]:
        """Remove every session of `nick`, sending them an unavailable self-
        presence with exactly `codes` (+110) and <status>reason</status>;
        others see the unavailable (without 110).  Returns the removed JIDs."""
        return await self.call("kick_with_codes", self._room(room), nick, [int(c) for c in codes], reason)

    async def silent_remove(self, room, nick: str) -> list[str]:
        """Drop `nick` from the room without telling anyone."""
        return await self.call("silent_remove", self._room(room), nick)

    async def keep_occupant(self, room, nick: str, real_jid: str | aioxmpp.JID) -> list[str]:
        """Make the room hold `nick` for the session `real_jid`, sending
        nothing: a server that kept the occupant of a client gone away."""
        return await self.call("keep_occupant", self._room(room), nick, str(real_jid))

    async def bounce_error(self, room, nick: str, condition: str = "recipient-unavailable") -> str:
        """Prosody's own kick-on-bounce path (handle_kickable): 110+333,
        status "Kicked: <condition>", for the occupant's primary session."""
        return await self.call("bounce_error", self._room(room), nick, condition)

    async def kick(self, room, nick: str, reason: str = "") -> None:
        """Moderator kick (role none): 307."""
        await self.call("kick", self._room(room), nick, reason)

    async def ban(self, room, bare_jid, reason: str = "") -> None:
        """Outcast affiliation: 301."""
        await self.call("ban", self._room(room), self._bare(bare_jid), reason)

    async def set_affiliation(self, room, bare_jid, affiliation: str, reason: str = "") -> None:
        await self.call("set_affiliation", self._room(room), self._bare(bare_jid), affiliation, reason)

    async def grant_membership(self, room, bare_jid) -> None:
        await self.call("grant_membership", self._room(room), self._bare(bare_jid))

    async def destroy(self, room, reason: str = "", alternate: str | aioxmpp.JID | None = None) -> None:
        """room:destroy(): everyone gets an unavailable carrying <destroy/>.
        A persistent room then leaves a tombstone (joins/pings get <gone/>)
        unless the server was built with tombstones=False."""
        await self.call("destroy", self._room(room), reason, str(alternate) if alternate else "")

    async def set_members_only(self, room, members_only: bool = True) -> bool:
        """Switch members-only on; Prosody removes non-members with 322."""
        return await self.call("set_members_only", self._room(room), members_only)

    async def revoke_membership(self, room, bare_jid) -> None:
        """Affiliation -> none in a members-only room: 321.  A room that is not
        members-only is switched first, after making the user a member (so the
        switch itself does not remove it with 322)."""
        await self.call("revoke_membership", self._room(room), self._bare(bare_jid))

    async def expire_archive(self, room, age: float = 0) -> None:
        """Delete what the room's archive holds from more than `age` seconds
        ago, as Prosody's ``muc_log_expires_after`` cleanup does."""
        await self.call("expire_archive", self._room(room), age)

    async def rewrite_nick(self, room, requested: str, assigned: str) -> None:
        """From now on a join to `room` as `requested` gets `assigned` (210)."""
        await self.call("rewrite_nick", self._room(room), requested, assigned)

    async def clear_rewrites(self, room=None) -> None:
        await self.call("clear_rewrites", *([self._room(room)] if room is not None else []))

    async def create_room(
        self, room, *, persistent: bool = True, members_only: bool = False,
        mam: bool | None = None, public_jids: bool | None = None,
        history_length: int | None = None, password: str | None = None,
    ) -> bool:
        """Create (or reconfigure) a room server-side; it has no owner, so
        joining users are plain participants.  True if it was created.
        `password` makes it password-protected ("" removes the password)."""
        options: dict[str, Any] = {"persistent": persistent, "members_only": members_only}
        if password is not None:
            options["password"] = password
        if mam is not None:
            options["mam"] = mam
        if public_jids is not None:
            options["whois"] = "anyone" if public_jids else "moderators"
        if history_length is not None:
            options["history_length"] = history_length
        return await self.call("create_room", self._room(room), options)

    async def drop_room(self, room) -> bool:
        """Make the room vanish silently (no presence, no tombstone): its
        occupants are not told; joins create a new room, pings get
        item-not-found."""
        return await self.call("drop_room", self._room(room))

    async def refuse_joins(self, room, condition: str = "remote-server-timeout",
                           error_type: str = "wait", text: str = "") -> None:
        """Answer every join to `room` with this stanza error until cleared."""
        await self.call("refuse_joins", self._room(room), error_type, condition, text)

    async def clear_refusals(self, room) -> int:
        """Stop refusing joins to `room`; return how many joins were refused."""
        return await self.call("clear_refusals", self._room(room))

    async def refused_count(self, room) -> int:
        return await self.call("refused_count", self._room(room))

    async def fail_archive_pages(self, room, *, pass_: int = 1, fail: int = 1,
                                 mode: str = "error",
                                 condition: str = "internal-server-error") -> None:
        """Let the room's next `pass_` archive pages (MAM queries) through,
        then answer `fail` of them with a ``cancel`` error `condition` (mode
        "error") or never (mode "drop"); later pages are answered again."""
        await self.call("fail_archive_pages", self._room(room), pass_, fail, mode, condition)

    async def archive_faults_fired(self, room) -> int:
        """How many archive pages the fault of `room` failed so far."""
        return await self.call("archive_faults_fired", self._room(room))

    async def clear_archive_faults(self, room) -> int:
        return await self.call("clear_archive_faults", self._room(room))

    async def sever_c2s(self, full_jid) -> None:
        """Close a client's TCP connection server-side without a stream close
        (a network failure; with smacks=True the session hibernates)."""
        await self.call("sever_c2s", str(full_jid))

    async def c2s_sessions(self, bare_jid) -> list[dict[str, Any]]:
        return list(await self.call("c2s_sessions", self._bare(bare_jid)) or [])


# --- aioxmpp clients pinned to a test server ----------------------------------


def security_layer(password: str, server: ProsodyServer | None = None, *,
                   ca_file: str | os.PathLike[str] | None = None) -> aioxmpp.SecurityLayer:
    """How a test client secures its stream to `server`.

    A server with ``tls`` gets what production gets: TLS required and the
    certificate verified, trusting `ca_file` (default: the CA that issued the
    server's certificate). Otherwise password SASL over plain TCP on loopback
    (SCRAM works without TLS; the server offers no STARTTLS)."""
    if server is not None and server.tls is not None:
        import muc_guard.tls

        trusted = ca_file if ca_file is not None else server.tls.ca_file
        return aioxmpp.make_security_layer(
            password, ssl_context_factory=muc_guard.tls.context_factory(trusted))
    return aioxmpp.make_security_layer(password, no_verify=True)._replace(tls_required=False)


def make_client(
    server: ProsodyServer,
    jid: aioxmpp.JID | str,
    password: str,
    *,
    negotiation_timeout: float = 10.0,
    ca_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> aioxmpp.PresenceManagedClient:
    """A PresenceManagedClient that connects only to ``server.host:port``
    (over verified TLS when the server has ``tls``; see :func:`security_layer`).

    Must be called inside a running event loop.  aioxmpp still falls back to
    DNS discovery when this peer fails; the test conftest replaces
    ``aioxmpp.node.discover_connectors`` so that nothing leaves loopback.
    """
    from datetime import timedelta

    import aioxmpp.connector

    jid = jid if isinstance(jid, aioxmpp.JID) else aioxmpp.JID.fromstr(jid)
    return aioxmpp.PresenceManagedClient(
        jid,
        security_layer(password, server, ca_file=ca_file),
        override_peer=[(server.host, server.port, aioxmpp.connector.STARTTLSConnector())],
        negotiation_timeout=timedelta(seconds=negotiation_timeout),
        **kwargs,
    )


async def connected(client: aioxmpp.Client, timeout: float = 10.0) -> aioxmpp.Client:
    """Set an available presence (which starts a PresenceManagedClient) and
    wait until the stream is established; raise the client's failure or
    TimeoutError.  Unlike ``async with client.connected()`` this does not
    stop the client on exit (the make_client fixture does that)."""
    if client.established:
        return client
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    client.on_stream_established.connect(done, client.on_stream_established.AUTO_FUTURE)
    client.on_failure.connect(done, client.on_failure.AUTO_FUTURE)
    if isinstance(client, aioxmpp.PresenceManagedClient):
        client.presence = aioxmpp.PresenceState(True)
    elif not client.running:
        client.start()
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"{client.local_jid} not connected within {timeout} s") from None
    return client


async def stop_client(client: aioxmpp.Client, timeout: float = 5.0) -> None:
    """Stop a client and wait (bounded) until its main task has ended.

    A PresenceManagedClient is made unavailable first: while its presence is
    available it starts itself again whenever that presence is re-applied,
    e.g. right after its stream failed (seen after a server crash under TLS,
    where the failure arrives a moment later than over plain TCP)."""
    if isinstance(client, aioxmpp.PresenceManagedClient) and client.presence.available:
        client.presence = aioxmpp.PresenceState(False)    # stops it if running
    if not client.running:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    client.on_stopped.connect(done, client.on_stopped.AUTO_FUTURE)
    client.on_failure.connect(done, client.on_failure.AUTO_FUTURE)
    client.stop()
    try:
        await asyncio.wait_for(done, timeout)
    except Exception as exc:  # the stream may already be dead: fine
        log.debug("stopping %s: %r", client.local_jid, exc)
