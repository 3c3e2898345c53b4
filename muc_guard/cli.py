"""
``muc-guard``: look into a guard's store from the shell.

Motivation
==========

A bot's rooms live in its SQLite store. When a bot is not where it should
be, the first questions are which rooms it wants, which it gave up on and
why, how often each dropped and how long it was out. Answering them with
``sqlite3`` means knowing the schema, and it shows the room passwords to
whoever is looking over your shoulder.

Solution
========

Three subcommands, two on top of :class:`~muc_guard.store.Store`:

* ``muc-guard rooms --db FILE`` prints the tracked rooms as a table (or as
  JSON with ``--json``). Passwords are never printed, only whether one is set.
* ``muc-guard forget ROOM --db FILE`` deletes a room so that the bot does not
  rejoin it at its next start.
* ``muc-guard health --db FILE`` prints what the store can tell about each
  room's health (drops, last cause, when it was last joined and dropped, the
  last downtime); ``muc-guard health --url http://127.0.0.1:PORT`` asks a
  running bot's ``/healthz`` (:mod:`muc_guard.metrics`) and exits 0 when it
  is healthy, 1 when not, 2 when it cannot be reached: a container
  HEALTHCHECK or a systemd timer can run it as it is.

The store commands open it with ``create=False``: a mistyped path is an
error, not a new empty store. The store knows whether a room is wanted or
given up, not whether a running bot is in it right now, so that is all
``rooms`` and ``health --db`` show (and ``health --db`` says so).

Exit codes: 0 success, 1 ``forget`` matched nothing or ``health --url``
found the bot unhealthy, 2 bad usage, an unusable store or an unreachable
bot.

Neither front-end is needed to list a store: JIDs typed on the command line
(``--account``, ``forget ROOM``) and the stored rooms are read by aioxmpp
when it is installed, else by slixmpp (both normalise a JID the same way),
imported only then.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import re
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from . import __version__
from .core.record import RoomRecord
from .store import RoomParser, Store, StoreError

__all__ = ["main"]

logger = logging.getLogger("muc_guard.cli")

PROG = "muc-guard"
EXIT_OK = 0
EXIT_NO_MATCH = 1
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 2


class CliError(Exception):
    """A user-facing error: printed as ``muc-guard: message``, exit code 2."""


# --- values -----------------------------------------------------------------


#: A host name (no empty label, no space, '@' or '/') or a bracketed IP literal.
_DOMAIN = re.compile(r"(?:[^\s@/\[\]\.]+(?:\.[^\s@/\[\]\.]+)*|\[[0-9A-Fa-f:.]+\])")


def _jid_parts(value: str) -> tuple[str, str, str]:
    """(localpart, domain, resource) of `value`, normalised by aioxmpp or,
    without it, by slixmpp; ValueError for a JID that is not valid."""
    try:
        import aioxmpp
    except ImportError:
        pass
    else:
        jid = aioxmpp.JID.fromstr(value)
        return jid.localpart or "", jid.domain, jid.resource or ""
    try:
        from slixmpp import JID
        from slixmpp.jid import InvalidJID
    except ImportError:
        raise CliError("reading a JID needs aioxmpp or slixmpp installed") from None
    try:
        sjid = JID(value)
    except InvalidJID as exc:
        raise ValueError(str(exc)) from None
    return sjid.node, sjid.domain, sjid.resource


def _parse_jid(value: str, what: str) -> tuple[str, str, str]:
    try:
        localpart, domain, resource = _jid_parts(value)
    except ValueError as exc:
        raise CliError(f"not a valid {what} JID: {value!r} ({exc})") from None
    # aioxmpp accepts domains such as "@", "b@c" or "b c"; no server has those.
    if not _DOMAIN.fullmatch(domain):
        raise CliError(f"not a valid {what} JID: {value!r} (bad domain {domain!r})")
    return localpart, domain, resource


def parse_account(value: str) -> str:
    """The account as the store spells it: a bare JID, normalised."""
    localpart, domain, _ = _parse_jid(value, "account")
    if not localpart:
        raise CliError(f"not a valid account JID: {value!r} (it needs user@domain)")
    return f"{localpart}@{domain}"


def parse_room(value: str) -> str:
    """A bare room JID, normalised so that it matches the stored spelling."""
    localpart, domain, resource = _parse_jid(value, "room")
    if not localpart or resource:
        raise CliError(f"not a valid room JID: {value!r} (it needs room@service, "
                       "without a /nick)")
    return f"{localpart}@{domain}"


def _stored_room_parser() -> RoomParser:
    """How rows are read back (and bad ones skipped): by the installed
    front-end's own parser, aioxmpp's first."""
    try:
        import aioxmpp  # noqa: F401
    except ImportError:
        pass
    else:
        from .store import aioxmpp_room
        return aioxmpp_room
    try:
        from .slixmpp.driver import slixmpp_room
    except ImportError:
        raise CliError("reading a store needs aioxmpp or slixmpp installed") from None
    return slixmpp_room


def iso_utc(timestamp: float | None) -> str | None:
    """Machine form for --json: ISO 8601 in UTC, or None."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def local_time(timestamp: float | None) -> str:
    """Human form for the table: local time to the second, or "-"."""
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def downtime(rec: RoomRecord) -> tuple[float | None, bool]:
    """(seconds from the last drop to the rejoin after it, still out).

    The guard records that duration at the rejoin that ends the outage
    (last_joined alone would also move with later joins, e.g. a restart).
    Still out means the last drop came after the last join.
    """
    dropped, joined = rec.last_dropped, rec.last_joined
    if dropped is None:
        return None, False
    if joined is None or joined < dropped:
        return None, True
    return rec.last_downtime, False


def human_duration(seconds: float) -> str:
    """Two units at most: "0.4s", "12s", "3m 05s", "2h 07m", "4d 03h"."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def downtime_text(seconds: float | None, still_out: bool) -> str:
    if still_out:
        return "still out"
    return human_duration(seconds) if seconds is not None else "-"


def state_of(rec: RoomRecord) -> str:
    """The store knows wanted or given up, never whether a bot is in the room now."""
    return "wanted" if rec.wanted else "gave-up"


def room_record(account: str, rec: RoomRecord) -> dict[str, Any]:
    """One room as plain JSON values (no password, only whether there is one)."""
    seconds, still_out = downtime(rec)
    return {
        "account": account,
        "room": str(rec.jid),
        "nick": rec.nick,
        "requested_nick": rec.requested_nick,
        "state": state_of(rec),
        "drops": rec.drops,
        "last_cause": rec.last_cause.value if rec.last_cause is not None else None,
        "last_joined": iso_utc(rec.last_joined),
        "last_dropped": iso_utc(rec.last_dropped),
        "downtime_seconds": seconds,
        "still_out": still_out,
        "added": iso_utc(rec.added),
        "last_message": iso_utc(rec.position.last_ts),
        "has_password": rec.password is not None,
    }


def render_table(rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell, two spaces apart; `right` columns
    (numbers) right-aligned. The last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def rooms_table(rooms: list[tuple[str, RoomRecord]], *, with_account: bool) -> str:
    header = ["ROOM", "NICK", "STATE", "DROPS", "LAST CAUSE", "LAST JOINED", "DOWNTIME",
              "PASSWORD"]
    if with_account:
        header.insert(0, "ACCOUNT")
    rows = [header]
    for account, rec in rooms:
        seconds, still_out = downtime(rec)
        nick = rec.nick
        if rec.requested_nick != rec.nick:
            nick += f" (wants {rec.requested_nick})"
        row = [
            str(rec.jid),
            nick,
            state_of(rec),
            str(rec.drops),
            rec.last_cause.value if rec.last_cause is not None else "-",
            local_time(rec.last_joined),
            downtime_text(seconds, still_out),
            "set" if rec.password is not None else "-",
        ]
        if with_account:
            row.insert(0, account)
        rows.append(row)
    drops_column = header.index("DROPS")
    return render_table(rows, right=frozenset({drops_column}))


# --- commands ------------------------------------------------------------------


async def _open(path: str) -> Store:
    # create=False: a mistyped --db must fail, not leave an empty store behind.
    return await Store.open(path, create=False, parse_room=_stored_room_parser())


async def cmd_rooms(args: argparse.Namespace) -> int:
    account = parse_account(args.account) if args.account is not None else None
    store = await _open(args.db)
    try:
        rooms = await store.load_all()
        known = await store.accounts() if account is not None else []
    finally:
        await store.close()
    if account is not None:
        rooms = [(acc, rec) for acc, rec in rooms if acc == account]
    rooms.sort(key=lambda item: (item[0], str(item[1].jid)))
    if args.json:
        print(json.dumps([room_record(acc, rec) for acc, rec in rooms], indent=2))
        return EXIT_OK
    if not rooms:
        if account is None:
            print(f"no rooms in {args.db}")
        elif account in known:
            print(f"no rooms for {account} in {args.db}")
        else:
            others = ", ".join(known) or "none"
            print(f"no rooms for {account} in {args.db} (accounts there: {others})")
        return EXIT_OK
    print(rooms_table(rooms, with_account=account is None))
    return EXIT_OK


async def cmd_forget(args: argparse.Namespace) -> int:
    room = parse_room(args.room)
    account = parse_account(args.account) if args.account is not None else None
    store = await _open(args.db)
    try:
        matching = [(acc, rec) for acc, rec in await store.load_all()
                    if str(rec.jid) == room and (account is None or acc == account)]
        removed = await store.forget(room, account)
    finally:
        await store.close()
    whom = f" for {account}" if account is not None else ""
    if not removed:
        print(f"{PROG}: {room} is not in {args.db}{whom}; nothing removed", file=sys.stderr)
        return EXIT_NO_MATCH
    for acc, rec in matching:
        print(f"forgot {rec.jid} for {acc} (nick {rec.nick}, {state_of(rec)})")
    if removed != len(matching):   # e.g. a row load_all could not read
        print(f"removed {removed} row(s) for {room}{whom}")
    return EXIT_OK


STORE_CANNOT_TELL = ("The store cannot tell whether the bot is running, nor whether it is in "
                     "its rooms right now: ask a running bot with --url.")


def store_health_table(rooms: list[tuple[str, RoomRecord]]) -> str:
    rows = [["ACCOUNT", "ROOM", "STATE", "DROPS", "LAST CAUSE", "LAST JOINED", "LAST DROPPED",
             "LAST DOWNTIME"]]
    for account, rec in rooms:
        seconds, still_out = downtime(rec)
        rows.append([account, str(rec.jid), state_of(rec), str(rec.drops),
                     rec.last_cause.value if rec.last_cause is not None else "-",
                     local_time(rec.last_joined), local_time(rec.last_dropped),
                     downtime_text(seconds, still_out)])
    return render_table(rows, right=frozenset({3}))


async def health_from_store(args: argparse.Namespace) -> int:
    account = parse_account(args.account) if args.account is not None else None
    store = await _open(args.db)
    try:
        rooms = await store.load_all()
    finally:
        await store.close()
    rooms = sorted(((acc, rec) for acc, rec in rooms if account is None or acc == account),
                   key=lambda item: (item[0], str(item[1].jid)))
    if args.json:
        print(json.dumps({"source": "store", "running": None, "note": STORE_CANNOT_TELL,
                          "rooms": [room_record(acc, rec) for acc, rec in rooms]}, indent=2))
        return EXIT_OK
    print(store_health_table(rooms) if rooms else f"no rooms in {args.db}")
    print()
    print(STORE_CANNOT_TELL)
    return EXIT_OK


def healthz_url(url: str) -> str:
    """`url` as given, or with ``/healthz`` when it names no path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--url: expected http://HOST:PORT[/healthz], got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/healthz")
    return urllib.parse.urlunsplit(parts)


def fetch_healthz(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a muc_guard /healthz; ConnectionError
    when it cannot be asked or does not answer as one."""
    # No proxy from the environment: the endpoint is this machine's (loopback).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:   # 503 (and any other answer but 2xx)
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {url}: {reason}") from None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if status not in (200, 503) or not isinstance(body, dict) or "healthy" not in body:
        raise ConnectionError(f"{url} answered {status}, not as a muc_guard /healthz")
    return status, body


def _outage_text(room: dict[str, Any]) -> str:
    seconds = room.get("outage_seconds")
    return human_duration(seconds) if isinstance(seconds, (int, float)) else "-"


def live_health_text(body: dict[str, Any]) -> str:
    lines = ["healthy" if body.get("healthy") else "NOT healthy"]
    lines += [f"  problem: {problem}" for problem in body.get("problems", [])]
    rows = [["ACCOUNT", "ROOM", "STATE", "HEALTHY", "OUT FOR", "DROPS", "LAST CAUSE",
             "LAST CONFIRMED"]]
    for account in body.get("accounts", []):
        stream = "up" if account.get("stream_up") else "DOWN"
        lines.append(f"{account.get('account')}: stream {stream}, "
                     f"{len(account.get('rooms', []))} room(s)")
        for room in account.get("rooms", []):
            rows.append([str(account.get("account")), str(room.get("room")),
                         str(room.get("state")), "yes" if room.get("healthy") else "NO",
                         _outage_text(room), str(room.get("drops")),
                         room.get("last_cause") or "-",
                         local_time(room.get("last_confirmed"))])
    if len(rows) > 1:
        lines += ["", render_table(rows, right=frozenset({5}))]
    return "\n".join(lines)


async def health_from_url(args: argparse.Namespace) -> int:
    url = healthz_url(args.url)
    try:
        status, body = await asyncio.to_thread(fetch_healthz, url, args.timeout)
    except ConnectionError as exc:
        if args.json:
            print(json.dumps({"healthy": None, "error": str(exc)}, indent=2))
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(body, indent=2) if args.json else live_health_text(body))
    return EXIT_OK if status == 200 and body.get("healthy") is True else EXIT_UNHEALTHY


async def cmd_health(args: argparse.Namespace) -> int:
    if args.url is not None:
        if args.account is not None:
            raise CliError("--account goes with --db: a running bot's endpoint "
                           "answers for all its accounts")
        return await health_from_url(args)
    return await health_from_store(args)


# --- argument parsing --------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped descriptions and examples as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Inspect and edit the SQLite store of a muc_guard bot: the rooms\n"
                    "each account wants, the ones it gave up on, and their drop history.",
        epilog="examples:\n"
               "  muc-guard rooms --db bot.db\n"
               "  muc-guard rooms --db bot.db --account bot@example.org --json\n"
               "  muc-guard forget room@conference.example.org --db bot.db\n"
               "  muc-guard health --url http://127.0.0.1:9110\n"
               "\n"
               "Run 'muc-guard COMMAND --help' for the options of a command.\n"
               "Exit codes: 0 success, 1 nothing to forget or not healthy, 2 bad usage,\n"
               "unusable store or unreachable bot.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rooms = commands.add_parser(
        "rooms", formatter_class=_Formatter,
        help="list the tracked rooms",
        description="List the rooms stored in a muc_guard store.\n\n"
                    "STATE is what the store knows: 'wanted' (the bot rejoins it at start\n"
                    "and after every drop) or 'gave-up' (kicked, banned, destroyed...: never\n"
                    "rejoined on its own). Whether a running bot is in the room right now\n"
                    "is not stored. DOWNTIME is the time from the last drop to the rejoin\n"
                    "after it, or 'still out' when no join followed the last drop.\n"
                    "Times are local; --json gives UTC ISO 8601. Passwords are never shown.",
        epilog="examples:\n"
               "  muc-guard rooms --db bot.db\n"
               "  muc-guard rooms --db bot.db --account bot@example.org\n"
               "  muc-guard rooms --db bot.db --json | jq '.[] | select(.state == \"gave-up\")'",
    )
    rooms.add_argument("--db", required=True, metavar="FILE",
                       help="the store file (never created by this command)")
    rooms.add_argument("--account", metavar="JID",
                       help="only this account's rooms (default: every account)")
    rooms.add_argument("--json", action="store_true",
                       help="print a JSON list with machine values instead of a table")
    rooms.set_defaults(func=cmd_rooms)

    forget = commands.add_parser(
        "forget", formatter_class=_Formatter,
        help="delete a room so the bot no longer rejoins it",
        description="Delete a room from a muc_guard store, for every account or one.\n\n"
                    "Stop the bot first: a running bot keeps its rooms in memory and\n"
                    "writes them back on its next change, and forgetting does not make\n"
                    "it leave the room. (A running bot leaves and forgets a room with\n"
                    "guard.leave().)",
        epilog="examples:\n"
               "  muc-guard forget room@conference.example.org --db bot.db\n"
               "  muc-guard forget room@conference.example.org --db bot.db "
               "--account bot@example.org\n"
               "\n"
               "Exits with 1 when nothing matched.",
    )
    forget.add_argument("room", metavar="ROOM", help="the room's bare JID, room@service")
    forget.add_argument("--db", required=True, metavar="FILE",
                        help="the store file (never created by this command)")
    forget.add_argument("--account", metavar="JID",
                        help="only for this account (default: every account)")
    forget.set_defaults(func=cmd_forget)

    health = commands.add_parser(
        "health", formatter_class=_Formatter,
        help="is the bot in its rooms? (a running bot, or what its store tells)",
        description="With --url, ask a running bot's health endpoint (muc_guard.metrics.serve,\n"
                    "the example bots' --metrics-port) and exit 0 when it is healthy, 1 when\n"
                    "it is not, 2 when it cannot be reached. Healthy: the stream is up and\n"
                    "every wanted room is joined or inside a bounded rejoin (health_grace).\n\n"
                    "With --db, print what the store tells about each room: state, drops,\n"
                    "last cause, last joined and dropped, the last downtime. The store\n"
                    "cannot tell whether the bot runs or is in its rooms right now; this\n"
                    "form always exits 0 (2 for an unusable store).",
        epilog="examples:\n"
               "  muc-guard health --url http://127.0.0.1:9110\n"
               "  muc-guard health --url http://127.0.0.1:9110/healthz --json\n"
               "  muc-guard health --db bot.db",
    )
    source = health.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", metavar="URL",
                        help="a running bot's endpoint, http://127.0.0.1:PORT (/healthz "
                             "is added when the URL has no path)")
    source.add_argument("--db", metavar="FILE",
                        help="the store file (never created by this command)")
    health.add_argument("--account", metavar="JID",
                        help="with --db: only this account's rooms")
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="with --url: how long to wait for the answer (default: "
                             "%(default)s)")
    health.add_argument("--json", action="store_true",
                        help="print JSON: the endpoint's answer as it came, or the "
                             "store's rooms")
    health.set_defaults(func=cmd_health)
    return parser


class _LowerLevelFormatter(logging.Formatter):
    """``muc-guard: warning: ...``, like the command's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def _stderr_handler() -> logging.Handler:
    """Library warnings (a skipped row, a world-readable store) go to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LowerLevelFormatter())
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``muc-guard`` and ``python -m muc_guard``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)    # exits with 2 on bad usage, 0 on --help
    library_logger = logging.getLogger("muc_guard")
    handler = _stderr_handler()
    library_logger.addHandler(handler)
    try:
        return asyncio.run(args.func(args))
    except (CliError, StoreError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.Error as exc:   # e.g. locked beyond the busy timeout
        print(f"{PROG}: cannot use store {args.db!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `muc-guard rooms ... | head`: the reader went away, which is fine.
        # Point stdout at /dev/null so the final flush at exit does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        library_logger.removeHandler(handler)
