"""A private ejabberd on 127.0.0.1, for integration tests (the second server).

`EjabberdServer` runs Debian's ejabberd (23.01 on Debian 12, 24.12 on
Debian 13) straight from ``erl`` as a child process: its own generated
config, Mnesia spool and log directory, and an Erlang node name and cookie
of its own. Nothing listens beyond loopback: c2s and the HTTP API
(mod_http_api, open to 127.0.0.1 only) are bound to 127.0.0.1, there is no
s2s listener, and Erlang distribution uses a fixed port on 127.0.0.1 without
epmd (``-start_epmd false -erl_epmd_port``), so no epmd daemon is started
that would outlive the server.

Faults are injected through ejabberd itself: its commands over the HTTP API
(``send_stanza``, ``destroy_room``, ``create_room_with_opts``, ...), and, for
what no command does (a room process that dies), one ``rpc`` from a hidden
Erlang node over the loopback distribution port.

It offers what the shared tests read from a server (``host``, ``port``,
``tls``, ``domain``, ``muc_domain``, ``register``/``aregister``,
``occupants``), so ``make_client`` and the tests' Bot work with it unchanged.

Owning the process (spawn, wait until ready, stop or crash by PID, log
tails, the exit hook) is :class:`~muc_guard.testing.process.ServerProcess`,
the same code that runs Prosody: this module says only what is ejabberd's
(config, command line, readiness probe, commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

import aioxmpp

from .process import LOOPBACK, ServerProcess, ServerStartError, free_port, port_accepts

__all__ = ["EjabberdAPIError", "EjabberdServer", "EjabberdStartError", "ejabberd_available"]

log = logging.getLogger("muc_guard.testing.ejabberd")

_EJABBERDCTL = pathlib.Path("/usr/sbin/ejabberdctl")


class EjabberdStartError(ServerStartError):
    """ejabberd did not come up (its log tail is part of the message)."""


class EjabberdAPIError(RuntimeError):
    """An ejabberd command failed (HTTP error status or an error result)."""


def _erl_libs() -> str | None:
    """The directory holding ejabberd's Erlang applications, as the packaged
    ejabberdctl sets it (the path carries the architecture)."""
    with contextlib.suppress(OSError):
        match = re.search(r"^ERL_LIBS=['\"]?([^'\"\n]+)", _EJABBERDCTL.read_text(), re.M)
        if match:
            return match.group(1)
    found = sorted(pathlib.Path("/usr/lib").glob("*/ejabberd-*/ebin/ejabberd.app"))
    return str(found[-1].parents[2]) if found else None


def ejabberd_available() -> bool:
    """True if ejabberd (the Debian package) and ``erl`` are installed."""
    return shutil.which("erl") is not None and _erl_libs() is not None


class EjabberdServer(ServerProcess):
    """A private ejabberd on 127.0.0.1 with its own config, spool and log.

    Ports (c2s, HTTP API, Erlang distribution) are chosen once and kept across
    restarts, as is the spool, so persistent rooms and archives survive.
    ``mam`` loads mod_mam (a room archives when its ``mam`` option is on).
    New rooms are temporary (``persistent: false``) unless created otherwise.
    ``stop`` sends SIGTERM first: the VM runs init:stop(), rooms tell their
    occupants 332.
    """

    name = "ejabberd"
    start_error = EjabberdStartError
    logger = log
    stop_timeout = 15.0
    poll_interval = 0.05
    console_repeats_log = True  # its console output repeats the log

    domain: str = "localhost"
    muc_domain: str = "conference.localhost"
    tls = None  # plain TCP on loopback; make_client reads this

    def __init__(self, root: pathlib.Path, *, mam: bool = True, log_level: str = "info",
                 startup_timeout: float = 30.0, api_timeout: float = 10.0) -> None:
        super().__init__(root, startup_timeout=startup_timeout)
        self.spool_dir = self.root / "spool"
        self.log_dir = self.root / "log"
        self.config_path = self.root / "ejabberd.yml"
        self.log_path = self.log_dir / "ejabberd.log"
        self.console_path = self.root / "ejabberd.console"
        self.mam = mam
        self.log_level = log_level
        self.api_timeout = api_timeout
        self.port: int = free_port()
        self.api_port: int = free_port()
        self.dist_port: int = free_port()
        token = secrets.token_hex(4)
        self.node = f"mgt-{token}@{LOOPBACK}"
        self.cookie = secrets.token_hex(16)

    def __repr__(self) -> str:
        return f"<EjabberdServer {self.host}:{self.port} pid={self.pid} root={self.root}>"

    # --- configuration ---------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """ejabberd.yml as data (written as JSON, which is YAML too)."""
        loopback_net = "127.0.0.0/8"
        return {
            "hosts": [self.domain],
            "loglevel": self.log_level,
            "log_rotate_count": 0,
            "hide_sensitive_log_data": True,
            "certfiles": [],
            "acme": {"auto": False},
            "listen": [
                {"port": self.port, "ip": LOOPBACK, "module": "ejabberd_c2s",
                 "starttls": False, "max_stanza_size": 1048576},
                {"port": self.api_port, "ip": LOOPBACK, "module": "ejabberd_http",
                 "request_handlers": {"/api": "mod_http_api"}},
            ],
            "s2s_access": "s2s",
            "acl": {"loopback": {"ip": [loopback_net]}},
            "access_rules": {"local": {"allow": "all"}, "c2s": {"allow": "all"},
                             "s2s": {"deny": "all"}},
            "api_permissions": {"loopback http": {
                "from": ["mod_http_api"], "who": {"ip": loopback_net}, "what": "*"}},
            "shaper_rules": {},
            "modules": {
                "mod_disco": {},
                "mod_ping": {},
                "mod_roster": {},
                **({"mod_mam": {"default": "never"}} if self.mam else {}),
                "mod_muc": {
                    "host": self.muc_domain,
                    "access": "all", "access_create": "all",
                    "access_persistent": "all", "access_mam": "all",
                    "history_size": 20,
                    "default_room_options": {"persistent": False, "mam": False},
                },
                "mod_muc_admin": {},
                "mod_admin_extra": {},  # send_stanza
            },
        }

    def _env(self) -> dict[str, str]:
        libs = _erl_libs()
        if libs is None:
            raise EjabberdStartError("ejabberd is not installed (no ejabberdctl / ERL_LIBS)")
        env = dict(os.environ)
        env.update({
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "CONTRIB_MODULES_PATH": str(self.root / "contrib"),
            "CONTRIB_MODULES_CONF_DIR": str(self.root / "contrib-conf"),
            "ERL_LIBS": libs,
            "ERL_EPMD_ADDRESS": LOOPBACK,  # should anything start epmd after all
            "ERL_CRASH_DUMP_BYTES": "0",
            "HOME": str(self.root),  # no ~/.erlang.cookie outside our dir
        })
        return env

    def _dist_args(self) -> list[str]:
        """Erlang distribution on 127.0.0.1:dist_port, with no epmd."""
        return ["-setcookie", self.cookie, "-start_epmd", "false",
                "-erl_epmd_port", str(self.dist_port),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}"]

    # --- starting (the rest of process control: ServerProcess) -------------

    def _prepare(self) -> tuple[list[str], dict[str, str] | None]:
        erl = shutil.which("erl")
        if erl is None:
            raise EjabberdStartError("erl not found on PATH")
        env = self._env()
        for path in (self.spool_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1) + "\n")
        mnesia_dir = '"' + str(self.spool_dir).replace("\\", "\\\\").replace('"', '\\"') + '"'
        # erl execs into beam.smp: the PID we get is the server's own.
        return [erl, "-name", self.node, *self._dist_args(), "-noinput", "+K", "true",
                "-mnesia", "dir", mnesia_dir, "-s", "ejabberd"], env

    def _ready(self) -> bool:
        """c2s accepts and the API says ejabberd has started."""
        if not port_accepts(self.host, self.port):
            return False
        try:
            return "started" in str(self.api_sync("status", timeout=2.0))
        except (OSError, EjabberdAPIError):
            return False

    # --- ejabberd commands (mod_http_api on 127.0.0.1) -------------------------

    def api_sync(self, command: str, *, timeout: float | None = None, **args: Any) -> Any:
        """Run an ejabberd command; return its decoded result."""
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.api_port}/api/{command}",
            data=json.dumps(args).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.api_timeout) as reply:
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise EjabberdAPIError(f"{command}({args}): HTTP {exc.code} {body}") from None
        except (urllib.error.URLError, socket.timeout) as exc:
            raise EjabberdAPIError(f"{command}: {exc}") from None

    async def api(self, command: str, **args: Any) -> Any:
        return await asyncio.to_thread(self.api_sync, command, **args)

    async def call(self, command: str, **args: Any) -> Any:
        """`api`, raising when a command reports failure with a non-zero result."""
        result = await self.api(command, **args)
        if isinstance(result, int) and result != 0:
            raise EjabberdAPIError(f"{command}({args}) returned {result}")
        return result

    def rpc_sync(self, body: str) -> str:
        """Evaluate Erlang `body` (``N`` is bound to the server's node, so
        ``rpc:call(N, M, F, Args)`` reaches it) in a hidden node that connects
        over the loopback distribution port; return the printed result.
        For what no ejabberd command does."""
        expr = f"N = '{self.node}', R = begin {body} end, io:format(\"~p~n\", [R]), halt()."
        done = subprocess.run(
            ["erl", "-name", f"mgt-ctl-{secrets.token_hex(3)}@{LOOPBACK}", *self._dist_args(),
             "-dist_listen", "false", "-hidden", "-noinput", "-noshell", "-eval", expr],
            capture_output=True, text=True, timeout=30, env=self._env(), cwd=self.root)
        if done.returncode != 0 or "badrpc" in done.stdout:
            raise EjabberdAPIError(f"rpc {body!r}: {done.stdout}{done.stderr}")
        return done.stdout.strip()

    # --- accounts --------------------------------------------------------------

    def register(self, user: str, password: str) -> aioxmpp.JID:
        self.api_sync("register", user=user, host=self.domain, password=password)
        return aioxmpp.JID(user, self.domain, None)

    async def aregister(self, user: str, password: str) -> aioxmpp.JID:
        return await asyncio.to_thread(self.register, user, password)

    # --- rooms: inspection and fault injection ---------------------------------

    @staticmethod
    def _room(room: str | aioxmpp.JID) -> aioxmpp.JID:
        jid = room if isinstance(room, aioxmpp.JID) else aioxmpp.JID.fromstr(room)
        if not jid.is_bare:
            raise ValueError(f"room must be a bare JID, got {jid}")
        return jid

    async def occupant_list(self, room: str | aioxmpp.JID) -> list[dict[str, str]]:
        """get_room_occupants: [{jid, nick, role}]; [] when the room is not online."""
        jid = self._room(room)
        try:
            result = await self.api("get_room_occupants", name=jid.localpart, service=jid.domain)
        except EjabberdAPIError as exc:
            if "room_not_found" in str(exc):
                return []
            raise
        return list(result)

    async def occupants(self, room: str | aioxmpp.JID) -> dict[str, list[str]]:
        """nick -> real full JIDs, as the server's room holds them (as ProsodyServer)."""
        result: dict[str, list[str]] = {}
        for occupant in await self.occupant_list(room):
            result.setdefault(occupant["nick"], []).append(occupant["jid"])
        return result

    async def online_rooms(self) -> list[str]:
        return list(await self.api("muc_online_rooms", service=self.muc_domain) or [])

    async def create_room(self, room: str | aioxmpp.JID, *, persistent: bool = True,
                          mam: bool | None = None, members_only: bool = False) -> None:
        """create_room_with_opts: a room with no occupant (nobody owns it)."""
        jid = self._room(room)
        options = {"persistent": persistent, "members_only": members_only}
        if mam is not None:
            options["mam"] = mam
        await self.call("create_room_with_opts", name=jid.localpart, service=jid.domain,
                        host=self.domain,
                        options=[{"name": k, "value": str(v).lower()} for k, v in options.items()])

    async def set_affiliation(self, room: str | aioxmpp.JID, bare_jid: str | aioxmpp.JID,
                              affiliation: str) -> None:
        jid = self._room(room)
        await self.call("set_room_affiliation", name=jid.localpart, service=jid.domain,
                        jid=str(bare_jid), affiliation=affiliation)

    async def destroy(self, room: str | aioxmpp.JID) -> None:
        """destroy_room: every occupant gets an unavailable carrying <destroy/>."""
        jid = self._room(room)
        await self.call("destroy_room", name=jid.localpart, service=jid.domain)

    async def send_stanza(self, from_: str | aioxmpp.JID, to: str | aioxmpp.JID, stanza: str) -> None:
        await self.call("send_stanza", **{"from": str(from_), "to": str(to), "stanza": stanza})

    async def bounce_error(self, room: str | aioxmpp.JID, nick: str,
                           condition: str = "service-unavailable") -> list[str]:
        """What ejabberd's router sends back when a room message to `nick`'s
        session cannot be delivered: an error message from the occupant's real
        JID to the room.  The room takes the occupant for a ghost and removes
        it with a bare 110 (mod_muc_room check_error_kick).  Returns the real
        JIDs that bounced."""
        jid = self._room(room)
        real = (await self.occupants(jid)).get(nick, [])
        if not real:
            raise EjabberdAPIError(f"{nick!r} is not in {jid}")
        error = (f"<error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "</error>")
        for full in real:
            await self.send_stanza(full, jid.replace(resource=nick),
                                   f"<message type='error' xmlns='jabber:client'>{error}</message>")
        return real

    async def kill_room(self, room: str | aioxmpp.JID) -> None:
        """Stop the room's process with a non-shutdown reason: ejabberd unregisters
        it without telling its occupants (as after a crash).  A temporary room is
        then gone (self-pings get item-not-found); a persistent one is reloaded
        from storage on the next stanza, without its occupants."""
        jid = self._room(room)
        name, service = (_erl_binary(part) for part in (jid.localpart, jid.domain))
        result = await asyncio.to_thread(self.rpc_sync, (
            f"case rpc:call(N, mod_muc, find_online_room, [{name}, {service}]) of "
            "{ok, P} -> rpc:call(N, sys, terminate, [P, muc_guard_test_crash, 5000]); "
            "Other -> Other end"))
        if result != "ok":
            raise EjabberdAPIError(f"could not stop room {jid}: {result}")


def _erl_binary(text: str) -> str:
    """An Erlang UTF-8 binary literal for any text (nothing can break out)."""
    return "<<" + ",".join(str(b) for b in text.encode()) + ">>"
