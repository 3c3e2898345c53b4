"""A private Prosody on 127.0.0.1, for integration tests, demos and benchmarks.

`ProsodyServer` writes a config into its own directory, runs ``prosody`` as a
child process (``daemonize = false``: we own the PID), binds it to 127.0.0.1
only, and injects faults through Prosody itself: ``mod_muc_guard_test``
(``muc_guard/testing/prosody_modules``) is loaded on the MUC component and
driven through the admin socket.

The class is put together from parts that each have one reason to change:

- :mod:`muc_guard.testing.process`: owning the child process (spawn, wait
  until ready, stop or crash by PID, log tails), shared with ejabberd;
- :mod:`muc_guard.testing.prosody_admin`: the admin-socket client
  (``admin``, ``call``);
- :mod:`muc_guard.testing.prosody_faults`: the faults and room inspection
  (``kick_with_codes``, ``silent_remove``, ``occupants``, ...);
- this module: which Prosody runs, its generated config, its readiness
  probe and accounts, and the aioxmpp clients pinned to a test server
  (:func:`make_client`, :func:`connected`, :func:`stop_client`).

Everything the tests, benchmarks and demo import from here still comes from
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any

import aioxmpp

from .certs import ServerCertificate
from .process import (
    LOOPBACK,
    ServerProcess,
    ServerStartError,
    free_port,
    listening_sockets,
    pid_running,
    port_accepts,
)
from .prosody_admin import AdminReply, ProsodyAdminError, lua_string
from .prosody_faults import RoomFaults

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
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL

#: Which Prosody every ProsodyServer runs unless told otherwise: the path of a
#: ``prosody`` launcher (e.g. a Prosody 13 unpacked beside the system 0.12).
PROSODY_ENV = "MUC_GUARD_PROSODY"


class ProsodyStartError(ServerStartError):
    """Prosody did not come up (its log tail is part of the message)."""


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


#: Services Prosody knows besides c2s: each gets no port, and 127.0.0.1
#: should one be given a port after all.
_UNUSED_SERVICES = (
    "c2s_direct_tls", "legacy_ssl", "s2s", "s2s_direct_tls", "component",
    "http", "https", "console", "proxy65",
)


class ProsodyServer(ServerProcess, RoomFaults):
    """A private Prosody on 127.0.0.1 with its own config, data and log.

    The c2s port is chosen once, at construction, and kept across restarts;
    the data directory is kept too, so persistent rooms survive a restart.
    ``stop`` sends SIGTERM first: clients get <system-shutdown/>, rooms are
    saved.

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

    name = "prosody"
    start_error = ProsodyStartError
    logger = log
    stop_timeout = 10.0
    poll_interval = 0.02

    domain: str = "localhost"
    muc_domain: str = "conference.localhost"

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
        super().__init__(root, startup_timeout=startup_timeout)
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
        self.admin_timeout = admin_timeout
        self.port: int = free_port()
        self.socket_path = self._choose_socket_path()

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
            **{f"{svc}_ports": [] for svc in _UNUSED_SERVICES},
            **{f"{svc}_interfaces": [LOOPBACK] for svc in _UNUSED_SERVICES},
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

    # --- starting (the rest of process control: ServerProcess) -------------

    def _prepare(self) -> tuple[list[str], dict[str, str] | None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "certs").mkdir(exist_ok=True)  # empty: no TLS, no warning
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket would fake readiness
        self.config_path.write_text(self.config_text())
        return [str(self.binary), "--config", str(self.config_path), "-F"], None

    _FATAL_LOG = ("Failed to open server port", "Unable to bind admin socket", "Error loading module")

    def _ready(self) -> bool:
        """One readiness probe: c2s port accepts, admin answers.  Raises at
        once if Prosody logged a fatal startup error."""
        with contextlib.suppress(FileNotFoundError):
            with open(self.log_path, errors="replace") as log_file:
                log_file.seek(self._log_offset)
                fatal = [line for line in log_file if any(m in line for m in self._FATAL_LOG)]
            if fatal:
                raise ProsodyStartError("logged: " + fatal[0].strip())
        if not port_accepts(self.host, self.port):
            return False
        if not self.socket_path.exists():
            return False
        try:
            reply = self._admin_sync(">return 'ready'", timeout=2.0)
        except (OSError, ProsodyAdminError):
            return False
        return reply.value == "ready"

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
