"""
What every example bot needs besides its own few lines: flags, the client, the
guard, logging, and a clean shutdown.

Motivation
==========

The interesting part of a guarded bot is a handful of lines: what it does
with a message. Around them sits the same plumbing in every bot: read the
account and the rooms from the command line, keep the password off it, pin
a local test server, summon :class:`muc_guard.MUCGuard`, open its store,
join, log what the guard does, and stop cleanly on SIGINT or SIGTERM.

Solution
========

A bot script builds its parser with :func:`make_parser` (adding its own
flags), and hands :func:`main` a ``setup(bot)`` function that connects its
handlers to ``bot.guard``. :func:`main` does the rest and returns the exit
code: 0 after SIGINT/SIGTERM, 1 when the client cannot connect (wrong
password, server unreachable), 2 for bad usage or an unusable store.

The rooms given with ``--room`` are the rooms the bot is in. A room stored
in ``--db`` but no longer given is left and forgotten. A room the guard gave
up on (kicked, banned, destroyed) stays given up, even when still given:
the bot logs how to want it again (``muc-guard forget``). Without any
``--room``, the bot goes back to the rooms its store wants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosasl
import aioxmpp
import aioxmpp.connector
import aioxmpp.errors
import aioxmpp.node

import muc_guard

__all__ = ["Bot", "Settings", "make_parser", "main", "listener", "PASSWORD_ENV", "JID_ENV"]

PASSWORD_ENV = "MUC_GUARD_PASSWORD"
JID_ENV = "MUC_GUARD_JID"
DEFAULT_NICK = "bot"
STOP_TIMEOUT = 5.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

logger = logging.getLogger("muc_guard.examples")

#: A host name (no empty label, no space, '@' or '/') or a bracketed IP literal.
#: aioxmpp itself accepts domains such as "@" or "b c".
_DOMAIN = re.compile(r"(?:[^\s@/\[\]\.]+(?:\.[^\s@/\[\]\.]+)*|\[[0-9A-Fa-f:.]+\])")

_COMMON_HELP = f"""\
The account's password is read from the environment variable {PASSWORD_ENV},
never from the command line (where every user of the machine can see it).
The JID may come from {JID_ENV} instead of --jid.

The server's certificate is always verified: against the system's CAs, or a
private CA given with --ca-file (or SSL_CERT_FILE). --insecure-plaintext is
for a local test server without TLS only.

Rooms given with --room are the rooms the bot is in: rooms stored in --db
but not given are left. A room the bot was kicked or banned from stays given
up until you run 'muc-guard forget ROOM --db FILE'. Without --room, the bot
rejoins the rooms stored in --db. Stop the bot with Ctrl-C or SIGTERM.
"""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed, checked command line (and environment)."""

    jid: aioxmpp.JID
    password: str = dataclasses.field(repr=False)
    rooms: tuple[tuple[aioxmpp.JID, str], ...]
    db: str
    server: tuple[str, int] | None
    insecure_plaintext: bool
    ca_file: str | None
    log_level: str
    args: argparse.Namespace   #: everything, the bot's own flags included


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written descriptions and examples as they are."""


def make_parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    """The flags every bot shares; a bot adds its own to the returned parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=_Formatter,
        description=description.strip() + "\n\n" + _COMMON_HELP,
        epilog="examples:\n" + examples.rstrip() + "\n",
    )
    parser.add_argument("--jid", default=os.environ.get(JID_ENV), metavar="JID",
                        help=f"the bot's account, user@example.org (default: ${JID_ENV})")
    parser.add_argument("--room", action="append", default=[], metavar="ROOM[/NICK]",
                        help="a room to be in, room@conference.example.org; repeat for "
                             "more rooms; add /NICK for a nick of its own in that room")
    parser.add_argument("--nick", default=DEFAULT_NICK,
                        help="the nick in rooms given without /NICK (default: %(default)s)")
    parser.add_argument("--db", metavar="FILE",
                        help="the guard's state file (default: LOCALPART.db, after the "
                             "account's user name)")
    parser.add_argument("--server", metavar="HOST[:PORT]",
                        help="connect to exactly this address (port 5222 by default) "
                             "instead of looking the domain up in DNS")
    parser.add_argument("--ca-file", metavar="PEM",
                        help="also trust the CA certificates in this PEM file, for a "
                             "server whose certificate a private CA issued (the "
                             "system's CAs stay trusted)")
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="with --server: allow a connection without TLS, for a "
                             "local test server that offers none. The password then "
                             "crosses the network unencrypted")
    parser.add_argument("--ping-idle", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="self-ping a room (XEP-0410) after this many seconds without "
                             "any traffic from it, to find silent drops (default: "
                             "muc_guard's own, 300)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default: %(default)s; aioxmpp's own lines "
                             "only at DEBUG)")
    return parser


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


def _domain_ok(jid: aioxmpp.JID) -> bool:
    return bool(_DOMAIN.fullmatch(jid.domain))


def parse_account(value: str | None, parser: argparse.ArgumentParser) -> aioxmpp.JID:
    if not value:
        parser.error(f"no account: give --jid or set {JID_ENV}")
    try:
        jid = aioxmpp.JID.fromstr(value)
    except ValueError as exc:
        parser.error(f"--jid: not a valid JID: {value!r} ({exc})")
    if not jid.localpart or not _domain_ok(jid):
        parser.error(f"--jid: not an account JID: {value!r} (it needs user@domain)")
    return jid


def parse_room(value: str, default_nick: str,
               parser: argparse.ArgumentParser) -> tuple[aioxmpp.JID, str]:
    """``room@service`` or ``room@service/nick`` -> (bare room JID, nick)."""
    try:
        jid = aioxmpp.JID.fromstr(value)
    except ValueError as exc:
        parser.error(f"--room: not a valid room JID: {value!r} ({exc})")
    if not jid.localpart or not _domain_ok(jid):
        parser.error(f"--room: not a room JID: {value!r} (it needs room@service)")
    nick = jid.resource if jid.resource is not None else default_nick
    if not nick.strip():
        parser.error(f"--room: empty nick in {value!r}")
    return jid.bare(), nick


def parse_server(value: str, parser: argparse.ArgumentParser) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6addr]:port``."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", value)
    if match is None:
        parser.error(f"--server: expected HOST or HOST:PORT, got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 5222)
    if not 0 < port < 65536:
        parser.error(f"--server: port out of range in {value!r}")
    return host, port


def parse_settings(parser: argparse.ArgumentParser,
                   argv: Sequence[str] | None = None) -> Settings:
    """Parse and check everything; exits with 2 and a clear message on a problem."""
    args = parser.parse_args(argv)
    jid = parse_account(args.jid, parser)
    if not args.nick.strip():
        parser.error("--nick must not be empty")
    rooms: dict[aioxmpp.JID, str] = {}
    for value in args.room:
        room, nick = parse_room(value, args.nick, parser)
        rooms[room] = nick            # the last one given for a room wins
    server = parse_server(args.server, parser) if args.server else None
    if args.insecure_plaintext and server is None:
        parser.error("--insecure-plaintext needs --server: it is meant for a local "
                     "test server only")
    if args.ca_file is not None and not os.path.isfile(args.ca_file):
        parser.error(f"--ca-file: no such file: {args.ca_file!r}")
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"no password: set the environment variable {PASSWORD_ENV} "
                     "(it is never taken from the command line)")
    return Settings(
        jid=jid,
        password=password,
        rooms=tuple(rooms.items()),
        db=args.db or f"{jid.localpart}.db",
        server=server,
        insecure_plaintext=args.insecure_plaintext,
        ca_file=args.ca_file,
        log_level=args.log_level,
        args=args,
    )


# --- the running bot ------------------------------------------------------------


def listener(fn: Callable[..., Any]) -> Callable[..., None]:
    """Wrap a signal handler so that it never raises: aioxmpp disconnects a
    raising listener for good, and the bot would go deaf without a word."""
    log = logging.getLogger(f"muc_guard.examples.{getattr(fn, '__name__', 'handler')}")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("handler failed (ignored)")

    return wrapper


@dataclasses.dataclass
class Bot:
    """What a bot's setup() gets: the settings, the client and its guard."""

    settings: Settings
    client: aioxmpp.PresenceManagedClient
    guard: muc_guard.MUCGuard
    #: closed after the guard has shut down: put files and the like here
    exit_stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    @property
    def args(self) -> argparse.Namespace:
        return self.settings.args


async def _no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list[Any]:
    return []


def make_client(settings: Settings) -> aioxmpp.PresenceManagedClient:
    """The client; must be called inside the running event loop.

    Certificates are verified as aioxmpp does by default (muc_guard makes
    that work on current Python and pyOpenSSL); --ca-file adds a private CA."""
    security = aioxmpp.make_security_layer(
        settings.password, ssl_context_factory=muc_guard.tls.context_factory(settings.ca_file))
    override_peer = []
    if settings.server is not None:
        host, port = settings.server
        override_peer.append((host, port, aioxmpp.connector.STARTTLSConnector()))
        # When the pinned address fails, aioxmpp falls back to DNS SRV and
        # <domain>:5222. --server means this address and nothing else.
        aioxmpp.node.discover_connectors = _no_discovery
        if settings.insecure_plaintext:
            # Certificates are still checked if the server offers TLS.
            security = security._replace(tls_required=False)
    return aioxmpp.PresenceManagedClient(settings.jid, security, override_peer=override_peer)


def _log_guard_signals(guard: muc_guard.MUCGuard) -> None:
    @listener
    def dropped(room: aioxmpp.JID, cause: muc_guard.Cause) -> None:
        logger.warning("dropped from %s (%s)", room, cause.value)

    @listener
    def rejoined(room: aioxmpp.JID, muc_room: Any) -> None:
        nick = muc_room.me.nick if muc_room.me is not None else "?"
        logger.info("back in %s as %s", room, nick)

    @listener
    def gave_up(room: aioxmpp.JID, cause: muc_guard.Cause) -> None:
        logger.warning("gave up on %s (%s): not rejoining it", room, cause.value)

    guard.on_dropped.connect(dropped)
    guard.on_rejoined.connect(rejoined)
    guard.on_gave_up.connect(gave_up)


async def _reconcile_rooms(bot: Bot) -> list[tuple[aioxmpp.JID, str]]:
    """Leave stored rooms that are no longer given; return the rooms to join."""
    settings, guard = bot.settings, bot.guard
    if not settings.rooms:
        wanted = [info for info in guard.rooms() if info.state is not muc_guard.State.GAVE_UP]
        if not wanted:
            logger.warning("no rooms: give --room (none are stored in %s)", settings.db)
        for info in wanted:
            logger.info("rejoining %s as %s (stored in %s)", info.jid, info.nick, settings.db)
        return []
    given = dict(settings.rooms)
    for info in guard.rooms():
        if info.jid not in given:
            logger.info("leaving %s: stored in %s but not given with --room", info.jid,
                        settings.db)
            await guard.leave(info.jid)
    to_join = []
    for room, nick in settings.rooms:
        info = guard.room_info(room)
        if info is not None and info.state is muc_guard.State.GAVE_UP:
            cause = info.last_cause.value if info.last_cause else "unknown"
            logger.warning("not joining %s: gave up on it before (%s); to want it again, "
                           "stop the bot and run: muc-guard forget %s --db %s",
                           room, cause, room, settings.db)
        elif info is not None and nick in (info.nick, info.requested_nick):
            pass   # restored from the store: the guard is rejoining it already
        else:
            to_join.append((room, nick))
    return to_join


async def _join(guard: muc_guard.MUCGuard, room: aioxmpp.JID, nick: str) -> None:
    try:
        joined = await guard.join(room, nick)
    except aioxmpp.errors.XMPPError as exc:
        logger.error("cannot join %s: the room refused (%s)", room, exc)
    except muc_guard.GuardError as exc:
        logger.error("cannot join %s: %s", room, exc)
    except ConnectionError:
        pass   # shutting down
    else:
        logger.info("in %s as %s", room, joined.me.nick if joined.me else nick)


async def _stop_client(client: aioxmpp.PresenceManagedClient) -> None:
    # Unavailable first: while its presence is available, a client whose
    # stream just failed may start itself again.
    if client.presence.available:
        client.presence = aioxmpp.PresenceState(False)
    if not client.running:
        return
    stopped = asyncio.get_running_loop().create_future()
    client.on_stopped.connect(stopped, client.on_stopped.AUTO_FUTURE)
    client.on_failure.connect(stopped, client.on_failure.AUTO_FUTURE)
    client.stop()
    try:
        await asyncio.wait_for(stopped, STOP_TIMEOUT)
    except Exception as exc:   # the stream may already be gone: fine
        logger.debug("stopping the client: %r", exc)


SetupFn = Callable[[Bot], "Awaitable[None] | None"]  # sync or async


async def run(settings: Settings, setup: SetupFn) -> int:
    """Run the bot until SIGINT/SIGTERM; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    failure: list[BaseException] = []

    client = make_client(settings)
    guard = client.summon(muc_guard.MUCGuard)
    bot = Bot(settings, client, guard)
    if settings.args.ping_idle is not None:
        guard.ping_idle = settings.args.ping_idle
    _log_guard_signals(guard)
    try:
        await guard.open_store(settings.db)
    except muc_guard.StoreError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    joins: list[asyncio.Task[None]] = []
    try:
        result = setup(bot)
        if inspect.isawaitable(result):
            await result
        to_join = await _reconcile_rooms(bot)

        @listener
        def failed(exc: BaseException) -> None:
            failure.append(exc)
            stop.set()

        client.on_failure.connect(failed)
        client.on_stream_established.connect(
            listener(lambda: logger.info("connected as %s", client.local_jid)))
        client.presence = aioxmpp.PresenceState(True)   # starts the client
        joins = [loop.create_task(_join(guard, room, nick)) for room, nick in to_join]
        await stop.wait()
        if failure:
            if isinstance(failure[0], aiosasl.AuthenticationFailure):
                logger.error("cannot log in as %s: authentication failed; check the JID "
                             "and %s", settings.jid, PASSWORD_ENV)
            else:
                logger.error("cannot connect as %s: %s", settings.jid, failure[0])
        else:
            logger.info("stopping")
    finally:
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        await guard.shutdown()       # flushes the store; rooms stay wanted
        await _stop_client(client)
        bot.exit_stack.close()
    return EXIT_FAILED if failure else EXIT_OK


class _LibraryNoise(logging.Filter):
    """Below DEBUG, keep the dependencies' failures to one line each.

    When the client fails (wrong password, server unreachable, a refused
    certificate) aioxmpp logs "main failed" with the whole traceback, and
    :func:`run` then says the same in one line: only that line is kept. And
    aioxmpp 0.13 leaves one failed, never-awaited future per failed
    connection attempt, which asyncio reports at exit.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aioxmpp"):
            if record.getMessage() == "main failed":
                return False    # run() says why, in one line of its own
            record.exc_info = None
            record.exc_text = None
        elif (record.name == "asyncio" and record.exc_info
              and isinstance(record.exc_info[1], ConnectionError)
              and "never retrieved" in record.getMessage()):
            return False
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if level != "DEBUG":
        for name in ("aioxmpp", "aiosasl", "aiosqlite"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_LibraryNoise())


def main(parser: argparse.ArgumentParser, setup: SetupFn,
         argv: Sequence[str] | None = None) -> int:
    """Parse, run, and return the exit code for ``sys.exit``."""
    settings = parse_settings(parser, argv)
    configure_logging(settings.log_level)
    return asyncio.run(run(settings, setup))
