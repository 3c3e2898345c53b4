"""
What every example bot needs besides its own few lines: flags, the client, the
guard, logging, and a clean shutdown.

Motivation
==========

The interesting part of a guarded bot is a handful of lines: what it does
with a message. Around them sits the same plumbing in every bot: read the
account and the rooms from the command line, keep the password off it, pin
a local test server, summon :class:`muc_guard.MUCGuard`, open its store,
join, log what the guard does, and stop cleanly on SIGINT or SIGTERM. The
same plumbing serves both XMPP libraries muc_guard supports.

Solution
========

A bot script builds its parser with :func:`make_parser` (adding its own
flags), and hands :func:`main` a ``setup(bot)`` function that connects its
handlers to ``bot.guard``, and the front-end it is written for: "aioxmpp"
(``muc_guard.MUCGuard``, :mod:`aioxmpp_client`) or "slixmpp" (the
``muc_guard`` plugin, :mod:`slixmpp_client`). This module knows neither
library: the flags, the room reconciliation and the run are the same for
both; what differs (the client, connecting, the guard's signals) is the
front-end module's. :func:`main` returns the exit code: 0 after
SIGINT/SIGTERM, 1 when the client cannot connect (wrong password, server
unreachable, a refused certificate), 2 for bad usage or an unusable store.

The rooms given with ``--room`` are the rooms the bot is in. A room stored
in ``--db`` but no longer given is left and forgotten. A room the guard gave
up on (kicked, banned, destroyed) stays given up, even when still given:
the bot logs how to want it again (``muc-guard forget``). Without any
``--room``, the bot goes back to the rooms its store wants.

With ``--metrics-port PORT`` the bot serves Prometheus metrics and its
health (``/metrics``, ``/healthz``: :func:`muc_guard.metrics.serve`) on
127.0.0.1 while it runs; ``muc-guard health --url http://127.0.0.1:PORT``
asks it. It needs the ``metrics`` extra, and only then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

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

#: (localpart or None, domain, resource or None) of a JID, by the front-end's
#: own parser; raises ValueError for text that is no JID.
SplitJID = Callable[[str], "tuple[str | None, str, str | None]"]
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

--metrics-port serves /metrics (Prometheus) and /healthz (200 healthy, 503
not) on 127.0.0.1 while the bot runs.
"""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed, checked command line (and environment). JIDs are text,
    as the front-end's parser normalised them: "user@domain", "room@service"."""

    jid: str
    password: str = dataclasses.field(repr=False)
    rooms: tuple[tuple[str, str], ...]
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
    parser.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                        help="serve Prometheus metrics (/metrics) and the bot's health "
                             "(/healthz) on 127.0.0.1:PORT while it runs (0: any free "
                             "port, logged); needs muc_guard[metrics]")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default: %(default)s; the XMPP library's "
                             "own lines only at DEBUG)")
    return parser


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value!r}")
    return port


def _split(flag: str, what: str, value: str, split_jid: SplitJID,
           parser: argparse.ArgumentParser) -> tuple[str, str | None]:
    """("local@domain", resource or None), or exit 2 saying what is wrong."""
    try:
        localpart, domain, resource = split_jid(value)
    except ValueError as exc:
        parser.error(f"{flag}: not a valid {what}JID: {value!r} ({exc})")
    if not localpart or not _DOMAIN.fullmatch(domain):
        needs = "room@service" if what else "user@domain"
        parser.error(f"{flag}: not {'a room' if what else 'an account'} JID: {value!r} "
                     f"(it needs {needs})")
    return f"{localpart}@{domain}", resource or None


def parse_account(value: str | None, split_jid: SplitJID,
                  parser: argparse.ArgumentParser) -> str:
    if not value:
        parser.error(f"no account: give --jid or set {JID_ENV}")
    return _split("--jid", "", value, split_jid, parser)[0]


def parse_room(value: str, default_nick: str, split_jid: SplitJID,
               parser: argparse.ArgumentParser) -> tuple[str, str]:
    """``room@service`` or ``room@service/nick`` -> (bare room JID, nick)."""
    room, resource = _split("--room", "room ", value, split_jid, parser)
    nick = resource if resource is not None else default_nick
    if not nick.strip():
        parser.error(f"--room: empty nick in {value!r}")
    return room, nick


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


def parse_settings(parser: argparse.ArgumentParser, split_jid: SplitJID,
                   argv: Sequence[str] | None = None) -> Settings:
    """Parse and check everything; exits with 2 and a clear message on a problem."""
    args = parser.parse_args(argv)
    jid = parse_account(args.jid, split_jid, parser)
    if not args.nick.strip():
        parser.error("--nick must not be empty")
    rooms: dict[str, str] = {}
    for value in args.room:
        room, nick = parse_room(value, args.nick, split_jid, parser)
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
        db=args.db or f"{jid.partition('@')[0]}.db",
        server=server,
        insecure_plaintext=args.insecure_plaintext,
        ca_file=args.ca_file,
        log_level=args.log_level,
        args=args,
    )


# --- the running bot ------------------------------------------------------------


def listener(fn: Callable[..., Any]) -> Callable[..., None]:
    """Wrap a signal handler so that it never raises: aioxmpp disconnects a
    raising listener for good, and the bot would go deaf without a word
    (slixmpp survives one, but logs a traceback per message)."""
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
    """What a bot's setup() gets: the settings, the client and its guard
    (aioxmpp: a PresenceManagedClient and its MUCGuard; slixmpp: a ClientXMPP
    and its muc_guard plugin)."""

    settings: Settings
    client: Any
    guard: Any
    #: closed after the guard has shut down: put files and the like here
    exit_stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    @property
    def args(self) -> argparse.Namespace:
        return self.settings.args


class Frontend(Protocol):
    """What :func:`run` needs of an XMPP library (aioxmpp_client, slixmpp_client)."""

    #: exceptions of a join that mean "the room said no" (logged, not retried)
    refusals: tuple[type[BaseException], ...]

    def split_jid(self, text: str) -> tuple[str | None, str, str | None]: ...

    def make(self, settings: Settings) -> tuple[Any, Any]:
        """(client, guard), inside the running loop; the guard's signals logged
        with :func:`log_dropped`, :func:`log_rejoined`, :func:`log_gave_up`."""

    def room(self, text: str) -> Any:
        """A room JID as the guard takes it."""

    def start(self, bot: Bot, connected: Callable[[str], None],
              failed: Callable[[BaseException], None]) -> None:
        """Connect (and stay connected); `connected(full_jid)` per session,
        `failed(exc)` when connecting is hopeless (refused login or certificate)."""

    def failure(self, exc: BaseException, settings: Settings) -> str:
        """The one line that says why `failed` was called."""

    async def join(self, guard: Any, room: Any, nick: str) -> str:
        """guard.join(); the nick the room gave."""

    async def stop(self, client: Any) -> None:
        """Disconnect, bounded, after the guard has shut down."""


def log_dropped(room: Any, cause: muc_guard.Cause) -> None:
    logger.warning("dropped from %s (%s)", room, cause.value)


def log_rejoined(room: Any, nick: str) -> None:
    logger.info("back in %s as %s", room, nick)


def log_gave_up(room: Any, cause: muc_guard.Cause) -> None:
    logger.warning("gave up on %s (%s): not rejoining it", room, cause.value)


async def _reconcile_rooms(bot: Bot, frontend: Frontend) -> list[tuple[Any, str]]:
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
        if str(info.jid) not in given:
            logger.info("leaving %s: stored in %s but not given with --room", info.jid,
                        settings.db)
            await guard.leave(info.jid)
    to_join = []
    for text, nick in settings.rooms:
        room = frontend.room(text)
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


async def _join(frontend: Frontend, guard: Any, room: Any, nick: str) -> None:
    try:
        joined = await frontend.join(guard, room, nick)
    except frontend.refusals as exc:
        logger.error("cannot join %s: the room refused (%s)", room, exc)
    except muc_guard.GuardError as exc:
        logger.error("cannot join %s: %s", room, exc)
    except ConnectionError:
        pass   # shutting down
    else:
        logger.info("in %s as %s", room, joined)


SetupFn = Callable[[Bot], "Awaitable[None] | None"]  # sync or async


async def _serve_metrics(guard: Any, port: int) -> Any:
    """muc_guard.metrics.serve() on loopback; None (logged) when it cannot."""
    try:
        import muc_guard.metrics
    except ImportError as exc:
        logger.error("--metrics-port: %s", exc)
        return None
    try:
        server = await muc_guard.metrics.serve(guard, port=port)
    except OSError as exc:
        logger.error("--metrics-port: cannot serve on 127.0.0.1:%s: %s", port, exc)
        return None
    logger.info("metrics on %s/metrics, health on %s/healthz", server.url, server.url)
    return server


async def run(settings: Settings, setup: SetupFn, frontend: Frontend) -> int:
    """Run the bot until SIGINT/SIGTERM; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    failure: list[BaseException] = []

    client, guard = frontend.make(settings)
    bot = Bot(settings, client, guard)
    if settings.args.ping_idle is not None:
        guard.ping_idle = settings.args.ping_idle
    try:
        await guard.open_store(settings.db)
    except muc_guard.StoreError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    metrics_server = None
    if settings.args.metrics_port is not None:
        metrics_server = await _serve_metrics(guard, settings.args.metrics_port)
        if metrics_server is None:
            await guard.shutdown()
            return EXIT_USAGE
    joins: list[asyncio.Task[None]] = []
    try:
        result = setup(bot)
        if inspect.isawaitable(result):
            await result
        to_join = await _reconcile_rooms(bot, frontend)

        @listener
        def failed(exc: BaseException) -> None:
            failure.append(exc)
            stop.set()

        frontend.start(bot, listener(lambda jid: logger.info("connected as %s", jid)), failed)
        joins = [loop.create_task(_join(frontend, guard, room, nick)) for room, nick in to_join]
        await stop.wait()
        if failure:
            logger.error("%s", frontend.failure(failure[0], settings))
        else:
            logger.info("stopping")
    finally:
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        if metrics_server is not None:
            await metrics_server.close()
        await guard.shutdown()       # flushes the store; rooms stay wanted
        await frontend.stop(client)
        bot.exit_stack.close()
    return EXIT_FAILED if failure else EXIT_OK


class _LibraryNoise(logging.Filter):
    """Below DEBUG, keep the dependencies' failures to one line each.

    When the client fails (wrong password, server unreachable, a refused
    certificate) aioxmpp logs "main failed" with the whole traceback, and
    :func:`run` then says the same in one line: only that line is kept. And
    aioxmpp 0.13 leaves one failed, never-awaited future per failed
    connection attempt, which asyncio reports at exit. slixmpp says
    "CERT: Invalid certificate trust chain." at ERROR: run() says which.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("aioxmpp", "slixmpp")):
            if record.getMessage() in ("main failed", "CERT: Invalid certificate trust chain."):
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
        for name in ("aioxmpp", "aiosasl", "aiosqlite", "slixmpp"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_LibraryNoise())


FRONTENDS = {"aioxmpp": "aioxmpp_client", "slixmpp": "slixmpp_client"}


def main(parser: argparse.ArgumentParser, setup: SetupFn,
         argv: Sequence[str] | None = None, frontend: str = "aioxmpp") -> int:
    """Parse, run, and return the exit code for ``sys.exit``. `frontend`
    names the XMPP library the bot's setup() is written for."""
    chosen: Frontend = importlib.import_module(FRONTENDS[frontend]).FRONTEND
    settings = parse_settings(parser, chosen.split_jid, argv)
    configure_logging(settings.log_level)
    return asyncio.run(run(settings, setup, chosen))
