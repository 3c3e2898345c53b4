#!/usr/bin/env python3
"""
The whole muc_guard story in one command, on a private Prosody server.

What it shows
=============

A logger bot (``examples/bots/logger_bot.py``, a real separate process; with
``--frontend slixmpp`` its slixmpp twin ``slixmpp_logger_bot.py``) sits
in three rooms of a Prosody server that this script starts on 127.0.0.1 for
itself. It connects as a bot in production does: TLS required, the server's
certificate (issued by a throw-away CA the demo creates) verified, the CA
given with ``--ca-file``. A second account, the talker, speaks in those rooms. Then the demo
breaks things, one at a time, and watches from the server's side (who is an
occupant of which room) and from the bot's own log how the bot gets back:

1. the bot joins its three rooms;
2. the server kicks it from room 1 with status codes 110+333 ("removed after
   an error"): the bot rejoins at once;
3. the server removes it from room 2 without telling anyone: the bot finds
   out by a XEP-0410 self-ping after ``--ping-idle`` seconds of silence, and
   rejoins;
4. the server crashes (SIGKILL) and comes back: the bot rejoins every room;
5. the bot crashes (SIGKILL) and is started again on the same state file,
   without any --room: it rejoins every room from its store.

The talker says numbered messages before and during each outage. At the end
every room's log file must hold every one of them exactly once, in order.
Then the bot is stopped gracefully and ``muc-guard rooms`` shows what its
state file recorded: drops, last cause, downtime.

The demo exits with 0 only when every rejoin happened and no message was
lost or duplicated. Everything it starts (Prosody, the bot) is killed by PID
at the end, and its temporary directory is removed unless --keep is given.

Run it with ``scripts/demo`` on a fresh Debian machine (it installs Prosody
and a virtualenv first), or directly with ``python examples/demo.py`` where
Prosody and muc_guard are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioxmpp
import aioxmpp.muc.xso
import aioxmpp.node

from muc_guard.core.continuity import digest
from muc_guard.store import Store
from muc_guard.testing.certs import TestCA
from muc_guard.testing.prosody import (
    ProsodyServer,
    ProsodyStartError,
    connected,
    make_client,
    pid_running,
    stop_client,
)

HERE = pathlib.Path(__file__).resolve().parent
#: The logger bot of each front-end: the same flags, behaviour and log lines.
LOGGER_BOTS = {"aioxmpp": "logger_bot.py", "slixmpp": "slixmpp_logger_bot.py"}

BOT_USER, BOT_PASSWORD, BOT_NICK = "logger", "logger-secret", "bot"
TALKER_USER, TALKER_PASSWORD, TALKER_NICK = "talker", "talker-secret", "talker"
ROOM_NAMES = ("lobby", "dev", "ops")
HISTORY_LENGTH = 100      # more than the demo ever says in one room
PING_IDLE = 2.0           # the bot's --ping-idle: seconds of silence before a self-ping

JOIN_TIMEOUT = 20.0       # the bot in all rooms after a (re)start
REJOIN_TIMEOUT = 15.0     # back in a room after a drop
PING_TIMEOUT = PING_IDLE * 3 + 5
GONE_TIMEOUT = 10.0       # the server noticing a killed bot
REFLECT_TIMEOUT = 5.0     # the room echoing a talker's message back
LOGGED_TIMEOUT = 10.0     # every message in the bot's log files
POSITION_TIMEOUT = 5.0    # the bot storing its message position
EXIT_TIMEOUT = 10.0       # the bot exiting after SIGTERM
CLI_TIMEOUT = 30.0
DUPLICATE_GRACE = 0.5     # a late duplicate would show up within this


class DemoFailed(Exception):
    """A step did not happen as it should: the message says what."""


# --- output ---------------------------------------------------------------------


class Narrator:
    """Timestamped lines: elapsed seconds since the start, a mark, the text."""

    def __init__(self, *, color: bool) -> None:
        self.t0 = time.monotonic()
        self.color = color
        encoding = sys.stdout.encoding or "ascii"
        try:
            "✓✗│─".encode(encoding)
            self.ok_mark, self.bad_mark, self.bar, self.rule = "✓", "✗", "│", "─"
        except UnicodeEncodeError:
            self.ok_mark, self.bad_mark, self.bar, self.rule = "+", "x", "|", "-"

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def _line(self, mark: str, text: str, at: float | None = None) -> None:
        stamp = f"[{self.now() if at is None else at:7.3f}s]"
        print(f"{self._paint(stamp, '2')} {mark} {text}", flush=True)

    def title(self, text: str) -> None:
        print(self._paint(text, "1"))
        print(self.rule * len(text), flush=True)

    def step(self, number: int, text: str) -> None:
        print(flush=True)
        print(self._paint(f"Step {number}: {text}", "1"), flush=True)

    def info(self, text: str) -> None:
        self._line(" ", text)

    def ok(self, text: str) -> None:
        self._line(self._paint(self.ok_mark, "32"), text)

    def bad(self, text: str) -> None:
        self._line(self._paint(self.bad_mark, "31"), text)

    def bot(self, at: float, text: str) -> None:
        """A line of the bot's own log, at the time it was read."""
        self._line(self._paint(self.bar, "36"), self._paint("bot: ", "36") + text, at)

    def plain(self, text: str = "") -> None:
        print(text, flush=True)


# --- the bot process ---------------------------------------------------------------


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:   # in the child, between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
#: Without -v, the bot's lines shown: the example bot's own (connected, joined,
#: back in...) and every warning or error, from any logger; but not the bot's
#: "dropped from" (muc_guard's own warning says the same, with its decision).
_SHOWN = re.compile(r"^(?:\S+\s+muc_guard\.examples\S*:|(?:WARNING|ERROR|CRITICAL)\b)")
_HIDDEN = re.compile(r"^\S+\s+muc_guard\.examples: dropped from ")


@dataclasses.dataclass
class BotLine:
    at: float      #: demo seconds when read
    text: str      #: without the bot's own date and time


class BotProcess:
    """The logger bot as a child process; its log is read line by line."""

    def __init__(self, narrator: Narrator, argv: list[str], env: dict[str, str],
                 log_path: pathlib.Path, *, verbose: bool) -> None:
        self.narrator = narrator
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.verbose = verbose
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[BotLine] = []
        self.pids: list[int] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, extra_args: list[str]) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, *extra_args, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,          # Ctrl-C is for the demo, which cleans up
            preexec_fn=_die_with_parent)     # and never outlives it
        self.pids.append(self.proc.pid)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.proc))
        return self.proc.pid

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as out:
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    return
                text = raw.decode(errors="replace").rstrip("\n")
                out.write(text + "\n")
                out.flush()
                line = BotLine(self.narrator.now(), _LOG_PREFIX.sub("", text))
                self.lines.append(line)
                if self.verbose or (_SHOWN.match(line.text)
                                    and not _HIDDEN.match(line.text)):
                    self.narrator.bot(line.at, line.text)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def mark(self) -> int:
        """Where the log stands now (for :meth:`find` later)."""
        return len(self.lines)

    def find(self, pattern: str, since: int = 0) -> BotLine | None:
        regex = re.compile(pattern)
        for line in self.lines[since:]:
            if regex.search(line.text):
                return line
        return None

    def tail(self, n: int = 25) -> str:
        return "\n".join(f"    {line.text}" for line in self.lines[-n:]) or "    (nothing)"

    async def _reap(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)
        return code

    async def kill(self) -> None:
        """SIGKILL by PID (a crash), and reap."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await self._reap(EXIT_TIMEOUT)

    async def terminate(self) -> int | None:
        """SIGTERM by PID (a clean stop); the exit code, or None if it hung."""
        if not self.running:
            return self.proc.returncode if self.proc is not None else None
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        return await self._reap(EXIT_TIMEOUT)


# --- the talker ------------------------------------------------------------------------


class Talker:
    """A second account, a plain aioxmpp client with MUCClient in every room.

    Only messages the room echoes back count as said: those are in the
    room's history, so the bot can be expected to log them.
    """

    def __init__(self, server: ProsodyServer, jid: aioxmpp.JID, password: str,
                 rooms: list[aioxmpp.JID]) -> None:
        self.server = server
        self.jid = jid.replace(resource="talker")
        self.password = password
        self.rooms = rooms
        self.client: aioxmpp.PresenceManagedClient | None = None
        self.joined: dict[aioxmpp.JID, Any] = {}
        self.said: dict[aioxmpp.JID, list[str]] = {room: [] for room in rooms}
        self.echoed: dict[aioxmpp.JID, set[str]] = {room: set() for room in rooms}
        self.counter = 0

    async def connect(self) -> None:
        await self.disconnect()
        client = make_client(self.server, self.jid, self.password)
        muc = client.summon(aioxmpp.MUCClient)
        self.client = client
        await connected(client)
        self.joined = {}
        for room_jid in self.rooms:
            room, fut = muc.join(room_jid, TALKER_NICK, autorejoin=False,
                                 history=aioxmpp.muc.xso.History(maxstanzas=0))
            await asyncio.wait_for(fut, 10.0)
            room.on_message.connect(self._echo_listener(room_jid))
            self.joined[room_jid] = room

    def _echo_listener(self, room_jid: aioxmpp.JID) -> Callable[..., None]:
        def on_message(message: aioxmpp.Message, member: Any, source: Any, **_: Any) -> None:
            with contextlib.suppress(Exception):   # a raising listener is cut off
                if message.from_ is not None and message.from_.resource == TALKER_NICK \
                        and message.body:
                    self.echoed[room_jid].add(message.body.any())
        return on_message

    async def disconnect(self) -> None:
        if self.client is not None:
            await stop_client(self.client)
            self.client = None

    async def say(self, room_jid: aioxmpp.JID, what: str) -> str:
        """Say the next numbered message in a room; wait until the room echoes it."""
        self.counter += 1
        body = f"#{self.counter:02d} {what}"
        message = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
        message.body[None] = body
        self.joined[room_jid].send_message(message)
        deadline = time.monotonic() + REFLECT_TIMEOUT
        while body not in self.echoed[room_jid]:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the room {room_jid} did not accept the talker's "
                                 f"message {body!r} within {REFLECT_TIMEOUT:g} s")
            await asyncio.sleep(0.01)
        self.said[room_jid].append(body)
        return body

    async def say_many(self, room_jid: aioxmpp.JID, count: int, what: str) -> list[str]:
        return [await self.say(room_jid, what) for _ in range(count)]

    def total(self) -> int:
        return sum(len(bodies) for bodies in self.said.values())


# --- helpers ------------------------------------------------------------------------------


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float, what: str,
                bot: BotProcess | None = None, interval: float = 0.02) -> None:
    """Poll until `predicate` holds; DemoFailed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if bot is not None and not bot.running:
            code = bot.proc.returncode if bot.proc is not None else None
            raise DemoFailed(f"{what}: the bot exited (code {code})")
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


def log_path(log_dir: pathlib.Path, room: aioxmpp.JID) -> pathlib.Path:
    """Where the logger bot writes a room's log (see its behaviour.log_path)."""
    import urllib.parse
    return log_dir / (urllib.parse.quote(str(room), safe="@.-_+") + ".log")


def logged_bodies(log_dir: pathlib.Path, room: aioxmpp.JID) -> list[tuple[str, str]]:
    """(nick, body) of every line of a room's log file."""
    path = log_path(log_dir, room)
    if not path.exists():
        return []
    result = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            result.append((fields[1], fields[2]))
        else:
            result.append(("?", line))
    return result


@dataclasses.dataclass
class Tally:
    sent: int = 0
    logged: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    foreign: int = 0     #: lines that are not a message the talker said

    @property
    def perfect(self) -> bool:
        return self.sent == self.logged and not (self.lost or self.duplicated or
                                                 self.out_of_order or self.foreign)


def compare(said: list[str], logged: list[tuple[str, str]]) -> Tally:
    tally = Tally(sent=len(said))
    wanted = set(said)
    bodies = []
    for nick, body in logged:
        if nick == TALKER_NICK and body in wanted:
            bodies.append(body)
        else:
            tally.foreign += 1
    tally.logged = len(bodies)
    seen: set[str] = set()
    first_copies = []
    for body in bodies:
        if body in seen:
            tally.duplicated += 1
        else:
            seen.add(body)
            first_copies.append(body)
    tally.lost = len(wanted - seen)
    in_said_order = [body for body in said if body in seen]
    tally.out_of_order = sum(a != b for a, b in zip(first_copies, in_said_order))
    return tally


# --- the demo ---------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace, narrator: Narrator) -> None:
        self.args = args
        self.say = narrator
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="muc-guard-demo-"))
        self.db = self.workdir / "bot.db"
        self.log_dir = self.workdir / "logs"
        # A CA of the demo's own issues the server's certificate; the bot and
        # the talker verify it against that CA.
        self.ca = TestCA(self.workdir / "ca")
        self.server = ProsodyServer(self.workdir / "prosody", log_level="info",
                                    tls=self.ca.issue(ProsodyServer.domain))
        self.rooms = [aioxmpp.JID(name, self.server.muc_domain, None) for name in ROOM_NAMES]
        self.script = LOGGER_BOTS[args.frontend]
        self.bot: BotProcess | None = None
        self.talker: Talker | None = None
        self.timings: list[tuple[str, float]] = []
        self.watchers: list[asyncio.Task[float]] = []

    # -- observation ------------------------------------------------------------

    async def bot_in(self, room: aioxmpp.JID) -> bool:
        try:
            return BOT_NICK in await self.server.occupants(room)
        except Exception:      # the server is restarting: not in the room (yet)
            return False

    async def rooms_with_bot(self) -> list[aioxmpp.JID]:
        return [room for room in self.rooms if await self.bot_in(room)]

    async def bot_in_all(self) -> bool:
        return len(await self.rooms_with_bot()) == len(self.rooms)

    async def bot_in_none(self) -> bool:
        return not await self.rooms_with_bot()

    def watch_back(self, rooms: list[aioxmpp.JID], timeout: float,
                   what: str) -> asyncio.Task[float]:
        """Poll the server, while the demo goes on, until it shows the bot in
        every one of `rooms`; the task's result is the demo time it did."""
        async def poll() -> float:
            async def back() -> bool:
                return all([await self.bot_in(room) for room in rooms])
            await until(back, timeout, what, self.bot, interval=0.01)
            return self.say.now()

        task = asyncio.get_running_loop().create_task(poll())
        self.watchers.append(task)
        return task

    def short(self, room: aioxmpp.JID) -> str:
        return room.localpart

    # -- steps ---------------------------------------------------------------------

    async def run(self) -> int:
        say = self.say
        say.title("muc_guard demo: a bot that stays in its rooms")
        say.plain("A private Prosody on 127.0.0.1, a logger bot in 3 rooms, and a talker.\n"
                  "The demo breaks things and watches the bot get back; at the end every\n"
                  "message the talker said must be in the bot's logs exactly once.")
        say.plain(f"The bot: {self.script}, muc_guard on {self.args.frontend}.")
        say.plain(f"Work dir: {self.workdir}"
                  + ("  (kept: --keep)" if self.args.keep else "  (removed at the end)"))
        say.plain()
        failure: str | None = None
        try:
            await self.setup()
            await self.step_join()
            await self.step_kick()
            await self.step_silent()
            await self.step_server_crash()
            await self.step_bot_crash()
            failure = await self.step_messages()
            await self.step_inspector()
        except DemoFailed as exc:
            failure = str(exc)
            say.bad(failure)
            if self.bot is not None and self.bot.lines:
                say.plain("The bot's last log lines:")
                say.plain(self.bot.tail())
        except ProsodyStartError as exc:
            failure = f"Prosody did not start: {exc}"
            say.bad(failure)
        finally:
            await self.cleanup()
        say.plain()
        if failure is None:
            say.plain(say._paint(f"{say.ok_mark} PASSED: every drop was followed by a rejoin, "
                                 "and no message was lost or duplicated.", "1;32"))
            return 0
        say.plain(say._paint(f"{say.bad_mark} FAILED: {failure}", "1;31"))
        return 1

    async def setup(self) -> None:
        say = self.say
        # --server pins the bot to our address; pin the demo's own clients too
        # (aioxmpp would otherwise fall back to DNS for "localhost").
        aioxmpp.node.discover_connectors = _no_discovery
        await self.server.astart()
        say.ok(f"Prosody started on {self.server.host}:{self.server.port} "
               f"(pid {self.server.pid}, in {self.server.last_start_seconds:.2f}s), "
               f"TLS required, certificate from the demo's own CA")
        bot_jid = await self.server.aregister(BOT_USER, BOT_PASSWORD)
        talker_jid = await self.server.aregister(TALKER_USER, TALKER_PASSWORD)
        for room in self.rooms:
            await self.server.create_room(room, history_length=HISTORY_LENGTH)
        say.ok(f"accounts {bot_jid} (the bot) and {talker_jid}; rooms "
               f"{', '.join(map(str, self.rooms))} (history {HISTORY_LENGTH})")
        env = {**os.environ, "MUC_GUARD_PASSWORD": BOT_PASSWORD}
        env.pop("MUC_GUARD_JID", None)
        self.bot_argv = [
            sys.executable, str(HERE / "bots" / self.script), "--jid", str(bot_jid),
            "--server", f"{self.server.host}:{self.server.port}",
            "--ca-file", str(self.ca.ca_file),
            "--ping-idle", f"{PING_IDLE:g}", "--db", str(self.db),
            "--log-dir", str(self.log_dir),
        ]
        self.bot = BotProcess(say, self.bot_argv, env, self.workdir / "bot.log",
                              verbose=self.args.verbose)
        self.talker = Talker(self.server, talker_jid, TALKER_PASSWORD, self.rooms)

    async def step_join(self) -> None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        say.step(1, "the bot joins its 3 rooms")
        room_args = [arg for room in self.rooms for arg in ("--room", str(room))]
        started = say.now()
        pid = await bot.start(room_args)
        say.info(f"started {self.script} (pid {pid}) with "
                 f"{' '.join(room_args)} --ping-idle {PING_IDLE:g}")
        await until(self.bot_in_all, JOIN_TIMEOUT, "the bot in all 3 rooms", bot)
        took = say.now() - started
        await self.wait_bot_says(r"muc_guard\.examples: in ", 0, "its joins")
        say.ok(f"the server shows the bot in all 3 rooms, {took:.2f}s after its start")
        self.timings.append(("first join (3 rooms, from process start)", took))
        await talker.connect()
        for room in self.rooms:
            await talker.say_many(room, 2, f"in {self.short(room)}, before anything broke")
        say.info(f"talker joined the 3 rooms and said 2 messages in each "
                 f"(#01-#{talker.counter:02d})")

    async def step_kick(self) -> None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        room = self.rooms[0]
        say.step(2, f"the server kicks the bot from {self.short(room)} with 110+333 "
                    "(\"removed after an error\")")
        mark = bot.mark()
        say.info(f"kicking {BOT_NICK} out of {room}")
        kicked = say.now()
        removed = await self.server.kick_with_codes(room, BOT_NICK, [333])
        if not removed:
            raise DemoFailed(f"the kick found no bot in {room}")
        watcher = self.watch_back([room], REJOIN_TIMEOUT, f"the bot back in {room} after the kick")
        first = talker.counter + 1
        await talker.say_many(room, 3, f"in {self.short(room)}, right after the kick")
        say.info(f"talker said #{first:02d}-#{talker.counter:02d} in {self.short(room)} at once")
        took = await watcher - kicked
        await until(lambda: bot.find(r"back in " + re.escape(str(room)), mark) is not None,
                    5.0, "the bot logging its rejoin", bot)
        say.ok(f"kick 333: the bot rejoined {self.short(room)} on its own, "
               f"{took * 1000:.0f} ms after the kick")
        self.timings.append(("rejoin after a 110+333 kick", took))

    async def step_silent(self) -> None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        room = self.rooms[1]
        say.step(3, f"the server silently removes the bot from {self.short(room)} "
                    "(nothing is sent to it)")
        mark = bot.mark()
        say.info(f"removing {BOT_NICK} from {room} without telling it")
        removed_at = say.now()
        removed = await self.server.silent_remove(room, BOT_NICK)
        if not removed:
            raise DemoFailed(f"the silent removal found no bot in {room}")
        watcher = self.watch_back([room], PING_TIMEOUT + REJOIN_TIMEOUT,
                                  f"the bot back in {room} after the silent removal")
        first = talker.counter + 1
        await talker.say_many(room, 3, f"in {self.short(room)}, while the bot is silently out")
        say.info(f"talker said #{first:02d}-#{talker.counter:02d} in {self.short(room)}: "
                 "they do not reach the bot")
        pattern = r"dropped from " + re.escape(str(room)) + r" \(ping\)"
        await until(lambda: bot.find(pattern, mark) is not None, PING_TIMEOUT,
                    f"the self-ping finding the silent drop from {room}", bot)
        found = bot.find(pattern, mark)
        assert found is not None
        took = await watcher - removed_at
        await until(lambda: bot.find(r"back in " + re.escape(str(room)), mark) is not None,
                    5.0, "the bot logging its rejoin", bot)
        detect = found.at - removed_at
        say.ok(f"self-ping found the silent drop {detect:.2f}s after it (--ping-idle "
               f"{PING_IDLE:g}); the bot was back in {self.short(room)} "
               f"{(took - detect) * 1000:.0f} ms later")
        self.timings.append(("silent drop found by self-ping", detect))
        self.timings.append(("back in the room after a silent drop", took))

    async def step_server_crash(self) -> None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        say.step(4, "the server crashes (SIGKILL) and comes back")
        for room in self.rooms:
            await talker.say(room, f"in {self.short(room)}, just before the server crash")
        say.info(f"talker said one more message in each room (up to #{talker.counter:02d})")
        await self.wait_logged("the messages before the crash")
        mark = bot.mark()
        say.info(f"killing Prosody with SIGKILL (pid {self.server.pid})")
        crashed = say.now()
        await self.server.kill()
        watcher = self.watch_back(self.rooms, REJOIN_TIMEOUT + JOIN_TIMEOUT,
                                  "the bot back in all 3 rooms after the server crash")
        await talker.disconnect()
        await self.server.astart()
        back = say.now()
        say.info(f"Prosody started again (pid {self.server.pid}), down for "
                 f"{back - crashed:.2f}s")
        await talker.connect()
        present = len(await self.rooms_with_bot())
        first = talker.counter + 1
        for room in self.rooms:
            await talker.say_many(room, 2, f"in {self.short(room)}, right after the server "
                                           "restart")
        say.info(f"talker rejoined and said #{first:02d}-#{talker.counter:02d} "
                 f"(2 per room; the bot was back in {present} of 3 rooms then)")
        all_back = await watcher
        took = all_back - crashed
        await self.wait_bot_says(r"back in ", mark, "its rejoins")
        say.ok(f"server restart: the bot was back in all 3 rooms {took:.2f}s after the crash "
               f"({all_back - back:.2f}s after the server was up again)")
        if bot.find(r"^ERROR\s+aioxmpp", mark) is not None:
            say.info("(the ERROR line is aioxmpp reporting the dead connection: muc_guard's "
                     "watchdog handed it that failure so that it reconnects)")
        self.timings.append(("all rooms back after a server crash", took))

    async def step_bot_crash(self) -> None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        say.step(5, "the bot crashes (SIGKILL) and is started again on the same --db")
        await self.wait_logged("the messages before the bot crash")
        # The guard writes its message position at most once a second. A bot
        # killed within that second logs its last messages once more after the
        # restart (a documented limit). Wait for the write: this is about crashes.
        await self.wait_position_stored()
        say.info("the bot has logged every message so far and stored its position")
        say.info(f"killing the bot with SIGKILL (pid {bot.pid})")
        crashed = say.now()
        await bot.kill()
        await until(self.bot_in_none, GONE_TIMEOUT, "the server noticing the killed bot")
        say.info(f"the server shows the bot gone from all rooms after {say.now() - crashed:.2f}s")
        first = talker.counter + 1
        for room in self.rooms:
            await talker.say_many(room, 2, f"in {self.short(room)}, while the bot is dead")
        say.info(f"talker said #{first:02d}-#{talker.counter:02d} (2 per room) while the bot "
                 "is dead")
        mark = bot.mark()
        restarted = say.now()
        pid = await bot.start([])
        say.info(f"started {self.script} again (pid {pid}) with the same --db and no --room")
        await until(self.bot_in_all, JOIN_TIMEOUT, "the restarted bot back in all 3 rooms", bot)
        took = say.now() - restarted
        await self.wait_bot_says(r"back in ", mark, "its rejoins")
        say.ok(f"bot restart: back in all 3 rooms from its store, {took:.2f}s after the "
               f"restart ({say.now() - crashed:.2f}s after the crash)")
        self.timings.append(("all rooms back after a bot restart", took))
        for room in self.rooms:
            await talker.say(room, f"in {self.short(room)}, after the bot restart")
        say.info(f"talker said one more message in each room (up to #{talker.counter:02d})")

    async def wait_bot_says(self, pattern: str, since: int, what: str) -> None:
        """Until the bot has logged `pattern` once for each room."""
        bot = self.bot
        assert bot is not None
        regex = re.compile(pattern)

        def said() -> bool:
            return all(any(regex.search(line.text) and str(room) in line.text
                           for line in bot.lines[since:]) for room in self.rooms)

        await until(said, 5.0, f"the bot logging {what}", bot)

    async def wait_logged(self, what: str) -> None:
        talker, bot = self.talker, self.bot
        assert talker is not None and bot is not None

        def complete() -> bool:
            for room in self.rooms:
                logged = {body for _, body in logged_bodies(self.log_dir, room)}
                if not set(talker.said[room]) <= logged:
                    return False
            return True

        await until(complete, LOGGED_TIMEOUT, f"{what} in the bot's log files", bot,
                    interval=0.05)

    async def wait_position_stored(self) -> None:
        talker = self.talker
        assert talker is not None
        last = {str(room): digest(TALKER_NICK, talker.said[room][-1]) for room in self.rooms}

        async def stored() -> bool:
            try:
                store = await Store.open(self.db, create=False)
            except Exception:
                return False
            try:
                records = await store.load_all()
            finally:
                await store.close()
            found = {str(rec.jid): {key for key, _ in rec.position.recent}
                     for _, rec in records}
            return all(key in found.get(room, ()) for room, key in last.items())

        await until(stored, POSITION_TIMEOUT, "the bot storing its message position",
                    self.bot, interval=0.1)

    async def step_messages(self) -> str | None:
        say, bot, talker = self.say, self.bot, self.talker
        assert bot is not None and talker is not None
        say.step(6, "every message logged exactly once?")
        await self.wait_logged("every message")
        await asyncio.sleep(DUPLICATE_GRACE)       # a late duplicate would show up now
        stopped = say.now()
        code = await bot.terminate()
        if code != 0:
            raise DemoFailed(f"the bot did not stop cleanly on SIGTERM (exit code {code})")
        say.ok(f"bot stopped with SIGTERM (exit code 0, in {say.now() - stopped:.2f}s)")
        total = Tally()
        for room in self.rooms:
            tally = compare(talker.said[room], logged_bodies(self.log_dir, room))
            for field in dataclasses.fields(Tally):
                setattr(total, field.name,
                        getattr(total, field.name) + getattr(tally, field.name))
            line = (f"{self.short(room):6} sent {tally.sent:2}, logged {tally.logged:2}, "
                    f"lost {tally.lost}, duplicated {tally.duplicated}")
            if tally.out_of_order:
                line += f", out of order {tally.out_of_order}"
            if tally.foreign:
                line += f", unexpected lines {tally.foreign}"
            (say.ok if tally.perfect else say.bad)(line)
        summary = (f"messages: sent {total.sent}, logged {total.logged}, lost {total.lost}, "
                   f"duplicated {total.duplicated}")
        if total.out_of_order:
            summary += f", out of order {total.out_of_order}"
        (say.ok if total.perfect else say.bad)(summary)
        if total.perfect:
            return None
        return summary

    async def step_inspector(self) -> None:
        say = self.say
        say.step(7, "what the bot's state file says (muc-guard rooms)")
        command = [sys.executable, "-m", "muc_guard", "rooms", "--db", str(self.db)]
        say.info("$ python -m muc_guard rooms --db " + str(self.db))
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise DemoFailed(f"the inspector did not answer within {CLI_TIMEOUT:g} s") from None
        for line in out.decode(errors="replace").splitlines():
            say.plain("    " + line)
        if proc.returncode != 0:
            raise DemoFailed(f"the inspector failed (exit code {proc.returncode})")
        say.plain("    (drops: the kick, the silent removal, the server crash; "
                  "a bot restart is no drop)")
        say.plain()
        say.plain("Timings:")
        for name, seconds in self.timings:
            say.plain(f"    {name:<42} {seconds:6.2f}s")

    async def cleanup(self) -> None:
        say = self.say
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        if self.talker is not None:
            with contextlib.suppress(Exception):
                await self.talker.disconnect()
        if self.bot is not None:
            await self.bot.kill()
        with contextlib.suppress(Exception):
            await self.server.astop(timeout=5.0)   # by PID, SIGKILL if it lingers
        pids = [("prosody", pid) for pid in self.server.started_pids]
        if self.bot is not None:
            pids += [("bot", pid) for pid in self.bot.pids]
        left = [f"{name} {pid}" for name, pid in pids if pid_running(pid)]
        say.plain()
        started = ", ".join(f"{name} pid {pid}" for name, pid in pids) or "none"
        if left:
            say.bad(f"still running: {', '.join(left)}")
        else:
            say.info(f"cleaned up: {started}: none left running")
        if self.args.keep:
            say.info(f"kept the work dir: {self.workdir} (bot.log, logs/, bot.db, prosody/)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self.server.socket_path.parent != self.server.data_dir:
                shutil.rmtree(self.server.socket_path.parent, ignore_errors=True)


async def _no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list[Any]:
    return []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Shows muc_guard at work, in well under a minute, on a private Prosody server
that it starts on 127.0.0.1 (nothing else is touched).

A logger bot (examples/bots/logger_bot.py, a separate process; on slixmpp
with --frontend slixmpp: examples/bots/slixmpp_logger_bot.py) joins 3 rooms.
Then, one after the other:
  - the server kicks it from a room with 110+333: it rejoins at once;
  - the server removes it from a room silently: a self-ping finds out;
  - the server crashes and restarts: it rejoins every room;
  - the bot itself crashes and is restarted: it rejoins from its state file.
A talker says numbered messages before and during each outage; every one
must end up in the bot's logs exactly once. Finally `muc-guard rooms` shows
the bot's state file.

Exit status: 0 when every rejoin happened and no message was lost or
duplicated, 1 otherwise (the output says what failed).""",
        epilog="""\
examples:
  scripts/demo            installs Prosody and a virtualenv first, then runs this
  python examples/demo.py -v --keep
  python examples/demo.py --frontend slixmpp""",
    )
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary work dir (Prosody's config and log, "
                             "the bot's log, its log files and state file) and print its path")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every line the bot logs, as it logs it")
    parser.add_argument("--frontend", choices=sorted(LOGGER_BOTS), default="aioxmpp",
                        help="the XMPP library of the bot: muc_guard.MUCGuard on aioxmpp, "
                             "or the muc_guard plugin on slixmpp (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("prosody") is None:
        print("demo: the 'prosody' command is not installed; run scripts/demo, which "
              "installs it (Debian), or install Prosody yourself", file=sys.stderr)
        return 1
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ \
        and os.environ.get("TERM") != "dumb"
    narrator = Narrator(color=color)

    async def run() -> int:
        demo = Demo(args, narrator)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await demo.run()
        except asyncio.CancelledError:
            print("\ndemo: interrupted", file=sys.stderr)
            return 130

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
