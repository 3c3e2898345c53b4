"""The example bots in examples/bots/, run as real processes against Prosody.

Every bot exists for both front-ends (echo_bot.py and slixmpp_echo_bot.py,
logger_bot.py and slixmpp_logger_bot.py); each scenario runs with both
(``over_frontends``, ``bot_script``).

Each bot runs as a subprocess of this test (``sys.executable``), pinned to
the test server with ``--server 127.0.0.1:PORT`` and given its password
through ``MUC_GUARD_PASSWORD``. Against the TLS server (``over_both``) it
verifies the server's certificate as in production, trusting the test CA
with ``--ca-file``; against the plain one it runs with ``--insecure-plaintext``. A second account, the
talker, speaks in the room through a plain aioxmpp MUCClient. Faults come
from the server side (a 333 kick) or from killing the bot with SIGKILL.
Every process started here is killed by PID at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import aiohttp
import aioxmpp
import pytest

from guardkit import checkout_env, over_both, over_frontends, over_verified_tls
from muc_guard.core.continuity import digest, recent_from_json
from muc_guard.testing.certs import TestCA
from muc_guard.testing.process import free_port
from scrapekit import Scraper
from prosody import ProsodyServer, connected

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOTS = ROOT / "examples" / "bots"
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0

FRONTENDS = ("aioxmpp", "slixmpp")


def bot_script(kind: str, frontend: str) -> str:
    """``bot_script("echo", "slixmpp")`` -> "slixmpp_echo_bot.py"."""
    return f"{kind}_bot.py" if frontend == "aioxmpp" else f"{frontend}_{kind}_bot.py"


ALL_SCRIPTS = [bot_script(kind, frontend) for frontend in FRONTENDS
               for kind in ("echo", "logger")]


class BotProcess:
    """One example bot as a child process; stderr and stdout go to a file."""

    def __init__(self, script: str, args: list[str], env: dict[str, str],
                 log_path: pathlib.Path, cwd: pathlib.Path) -> None:
        self.argv = [sys.executable, str(BOTS / script), *args]
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> "BotProcess":
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    async def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL by PID and reap (bounded)."""
        if self.proc is None:
            return
        self.send_signal(signal.SIGKILL)
        try:
            await self.wait()
        except asyncio.TimeoutError:  # pragma: no cover - the kernel did not reap it
            pass


@pytest.fixture
async def bots(prosody: ProsodyServer, tmp_path: pathlib.Path):
    """``start(script, jid, password, *args)`` -> a started BotProcess pinned
    to the shared Prosody; every one is killed at teardown."""
    started: list[BotProcess] = []

    async def start(script: str, jid: aioxmpp.JID, password: str, *args: str) -> BotProcess:
        env = checkout_env({**os.environ, "MUC_GUARD_PASSWORD": password})
        env.pop("MUC_GUARD_JID", None)
        transport = (["--ca-file", str(prosody.tls.ca_file)] if prosody.tls
                     else ["--insecure-plaintext"])
        bot = BotProcess(
            script,
            ["--jid", str(jid), "--server", f"{prosody.host}:{prosody.port}",
             *transport, *args],
            env, tmp_path / f"{script}.log", tmp_path)
        started.append(bot)
        return await bot.start()

    try:
        yield start
    finally:
        for bot in started:
            await bot.kill()


async def until(predicate: Any, what: str, timeout: float, bot: BotProcess | None = None,
                interval: float = 0.05) -> None:
    """Poll an async or plain predicate; fail with the bot's log when it does not come."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if bot is not None and not bot.running:
            pytest.fail(f"{what}: the bot exited ({bot.proc.returncode}); its log:\n{bot.log()}")
        if time.monotonic() > deadline:
            log = f"; bot log:\n{bot.log()}" if bot is not None else ""
            pytest.fail(f"{what}: not within {timeout} s{log}")
        await asyncio.sleep(interval)


async def in_room(prosody: ProsodyServer, room: aioxmpp.JID, nick: str) -> bool:
    return nick in await prosody.occupants(room)


class Talker:
    """A second account in the room, through plain aioxmpp."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self.heard: list[tuple[str, str]] = []       # (nick, body)
        room.on_message.connect(self._record)

    def _record(self, message: aioxmpp.Message, member: Any, source: Any, **kwargs: Any) -> None:
        if message.body:
            self.heard.append((message.from_.resource if message.from_ else "",
                               message.body.any()))

    def say(self, text: str) -> None:
        message = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
        message.body[None] = text
        self.room.send_message(message)


@pytest.fixture
def talker(make_client, account, room_jid):
    async def join() -> Talker:
        jid, password = account("talker")
        client = make_client(jid.replace(resource="t"), password)
        muc = client.summon(aioxmpp.MUCClient)
        await connected(client)
        room, fut = muc.join(room_jid, "talker", autorejoin=False)
        await asyncio.wait_for(fut, 10)
        return Talker(room)
    return join


# --- flags, without a server -----------------------------------------------------


def run_script(script: str, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MUC_GUARD_PASSWORD", "MUC_GUARD_JID")}
    return subprocess.run([sys.executable, str(BOTS / script), *args],
                          env=checkout_env({**base, **(env or {})}),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_help_explains_the_password_variable(script):
    done = run_script(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "MUC_GUARD_PASSWORD" in done.stdout
    assert "--server" in done.stdout and "examples:" in done.stdout


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_missing_password_is_a_clear_error(script, tmp_path):
    done = run_script(script, "--jid", "bot@localhost", "--room", "r@conference.localhost",
                      "--db", str(tmp_path / "bot.db"))
    assert done.returncode == 2
    assert "MUC_GUARD_PASSWORD" in done.stderr
    assert not (tmp_path / "bot.db").exists()


@over_frontends
def test_bad_flags_are_clear_errors(tmp_path, frontend):
    env = {"MUC_GUARD_PASSWORD": "x"}
    for args, words in [
        (["--room", "r@conference.localhost"], "--jid"),
        (["--jid", "not a jid", "--room", "r@c"], "--jid"),
        (["--jid", "bot@localhost", "--room", "r@@c"], "--room"),
        (["--jid", "bot@localhost", "--insecure-plaintext"], "--server"),
        (["--jid", "bot@localhost", "--server", "host:99999"], "--server"),
        (["--jid", "bot@localhost", "--metrics-port", "99999"], "--metrics-port"),
    ]:
        done = run_script(bot_script("echo", frontend), *args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr.splitlines()[-1], (args, done.stderr)


# --- metrics and health (--metrics-port) ----------------------------------------


@pytest.fixture
async def scraper():
    """``scraper(port)`` -> a Scraper of 127.0.0.1:PORT on one aiohttp session,
    closed at teardown."""
    async with aiohttp.ClientSession() as http:
        yield lambda port: Scraper(http, f"http://127.0.0.1:{port}")


# --- the echo bot -------------------------------------------------------------------


@over_both
@over_frontends
async def test_echo_bot_answers_and_survives_a_333_kick(prosody, bots, account, room_jid,
                                                         talker, tmp_path, frontend, scraper):
    """... and serves its metrics and health (--metrics-port) all along: the
    kick is one more drop (server-error) and one more rejoin there."""
    jid, password = account("echo")
    port = free_port()
    bot = await bots(bot_script("echo", frontend), jid, password, "--room", str(room_jid),
                     "--db", str(tmp_path / "echo.db"), "--metrics-port", str(port))
    await until(lambda: in_room(prosody, room_jid, "bot"), "echo bot in the room",
                START_TIMEOUT, bot)
    scrape = scraper(port)
    await until(lambda: scrape.status_is(200), "/healthz answers 200", 10, bot)
    status, body = await scrape.healthz()
    [account_health] = body["accounts"]
    assert account_health["account"] == str(jid) and account_health["stream_up"] is True
    assert [(r["room"], r["state"]) for r in account_health["rooms"]] == [
        (str(room_jid), "joined")]
    assert await scrape.value("muc_guard_drops_total", jid, cause="server-error") == 0
    rejoins = await scrape.value("muc_guard_rejoins_total", jid)
    me = await talker()

    me.say("bot: ping")
    await until(lambda: ("bot", "ping") in me.heard, "echo of 'ping'", 10, bot)
    me.say("nobody: ping")                      # not addressed: no answer

    removed = await prosody.kick_with_codes(room_jid, "bot", [333])
    assert removed
    await until(lambda: in_room(prosody, room_jid, "bot"), "echo bot back in the room", 15, bot)
    await until(lambda: "back in" in bot.log(), "the rejoin logged", 5, bot)
    assert "dropped from" in bot.log() and "server-error" in bot.log()
    assert await scrape.value("muc_guard_drops_total", jid, cause="server-error") == 1
    assert await scrape.value("muc_guard_rejoins_total", jid) == rejoins + 1
    assert await scrape.value("muc_guard_rooms", jid, state="joined") == 1
    checked = await asyncio.to_thread(cli, "health", "--url", scrape.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("healthy")

    me.say("bot, pong")
    await until(lambda: ("bot", "pong") in me.heard, "echo of 'pong' after the rejoin", 10, bot)
    await asyncio.sleep(0.3)                    # an extra answer would show up now
    assert [body for nick, body in me.heard if nick == "bot"] == ["ping", "pong"]

    bot.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0, bot.log()
    assert not await in_room(prosody, room_jid, "bot")
    assert not await scrape.status_is(200)        # the endpoint ended with the bot


@over_frontends
async def test_kicked_bot_stays_out_until_forgotten(prosody, bots, account, room_jid, tmp_path,
                                                    frontend):
    """A 307 kick is the room's will: the bot gives up, a restart does not
    rejoin, and `muc-guard forget` on its store makes it want the room again."""
    jid, password = account("kicked")
    db = tmp_path / "kicked.db"
    args = ("--room", str(room_jid), "--db", str(db))
    script = bot_script("echo", frontend)
    bot = await bots(script, jid, password, *args)
    await until(lambda: in_room(prosody, room_jid, "bot"), "bot in the room", START_TIMEOUT, bot)
    await prosody.kick(room_jid, "bot")
    await until(lambda: "gave up on" in bot.log(), "the guard gives up", 10, bot)
    bot.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0, bot.log()

    listed = cli("rooms", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["room"], item["state"], item["last_cause"], item["drops"]) == (
        str(room_jid), "gave-up", "kicked", 1)

    seen = len(bot.log())
    bot = await bots(script, jid, password, *args)
    await until(lambda: "not joining" in bot.log()[seen:], "the restart refuses", 10, bot)
    assert "muc-guard forget" in bot.log()[seen:]
    await until(lambda: "connected as" in bot.log()[seen:], "the restart connects", 10, bot)
    await asyncio.sleep(0.3)
    assert not await in_room(prosody, room_jid, "bot")
    bot.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0, bot.log()

    forgot = cli("forget", str(room_jid), "--db", str(db))
    assert forgot.returncode == 0 and f"forgot {room_jid}" in forgot.stdout, forgot.stderr
    bot = await bots(script, jid, password, *args)
    await until(lambda: in_room(prosody, room_jid, "bot"), "back after forget", START_TIMEOUT, bot)
    bot.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0, bot.log()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "muc_guard", *args], capture_output=True,
                          text=True, timeout=30)


@over_verified_tls
@over_frontends
@pytest.mark.parametrize("ca_flag", [False, True], ids=["system-cas", "other-ca-file"])
def test_untrusted_certificate_exits_1_with_one_clear_line(prosody, account, tmp_path,
                                                            ca_flag, frontend):
    """Verification is on by default: a certificate from a CA the bot does
    not trust ends the bot at once (no retries), with one line saying why."""
    jid, password = account("untrusting")
    other = tmp_path / "other-ca.pem"
    other.write_bytes(TestCA(tmp_path / "other").ca_file.read_bytes())
    started = time.monotonic()
    done = run_script(bot_script("echo", frontend), "--jid", str(jid),
                      "--room", "r@conference.localhost", "--db", str(tmp_path / "bot.db"),
                      "--server", f"{prosody.host}:{prosody.port}",
                      *(["--ca-file", str(other)] if ca_flag else []),
                      env={"MUC_GUARD_PASSWORD": password})
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 10
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot connect as" in errors[0] and "not signed by a CA this client trusts" in errors[0]
    assert "Traceback" not in done.stderr and "InvalidStateError" not in done.stderr


@over_frontends
def test_wrong_password_exits_1(prosody, account, tmp_path, frontend):
    jid, _ = account("wrongpw")
    done = run_script(bot_script("echo", frontend), "--jid", str(jid), "--room", "r@conference.localhost",
                      "--db", str(tmp_path / "bot.db"),
                      "--server", f"{prosody.host}:{prosody.port}", "--insecure-plaintext",
                      env={"MUC_GUARD_PASSWORD": "not the password"})
    assert done.returncode == 1
    assert "authentication failed" in done.stderr and "MUC_GUARD_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


@over_frontends
def test_unreachable_server_exits_1_after_a_few_attempts(tmp_path, frontend):
    """Nothing listens at --server: a few attempts, then exit status 1 and one
    line saying why (a bot that never had a session does not wait for ever)."""
    started = time.monotonic()
    done = run_script(bot_script("echo", frontend), "--jid", "bot@localhost",
                      "--room", "r@conference.localhost", "--db", str(tmp_path / "bot.db"),
                      "--server", f"127.0.0.1:{free_port()}", "--insecure-plaintext",
                      env={"MUC_GUARD_PASSWORD": "x"})
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 15
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot connect as bot@localhost" in errors[0], done.stderr
    assert "connection failed" in done.stderr and "Traceback" not in done.stderr


# --- the logger bot ------------------------------------------------------------------


def log_lines(path: pathlib.Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def position_holds(db: pathlib.Path, room: aioxmpp.JID, nick: str, body: str) -> bool:
    """True once the store's message position for `room` includes `nick`
    saying `body`: the guard's lazy position write has reached the disk.
    (The shared test server stamps no stanza-ids, so the position keeps the
    digests of the last messages; their times are on the server's clock,
    which the test cannot compare with its own.)"""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute("SELECT recent FROM rooms WHERE room = ?", (str(room),)).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return bool(row) and digest(nick, body) in {key for key, _ in recent_from_json(row[0])}


async def _logger_in(prosody, bots, account, room_jid, tmp_path, frontend, *,
                     history_length: int) -> tuple[Any, pathlib.Path, pathlib.Path]:
    """A room keeping `history_length` messages, and ``start()``: the logger
    bot (the first or a restarted one) started and in the room; its log
    file and its store."""
    await prosody.create_room(room_jid, history_length=history_length)
    jid, password = account("logger")
    db, log_dir = tmp_path / "logger.db", tmp_path / "logs"
    args = ("--room", str(room_jid), "--db", str(db), "--log-dir", str(log_dir))

    async def start() -> Any:
        bot = await bots(bot_script("logger", frontend), jid, password, *args)
        await until(lambda: in_room(prosody, room_jid, "bot"), "logger in the room",
                    START_TIMEOUT, bot)
        return bot
    return start, log_dir / f"{room_jid}.log", db


@over_frontends
async def test_logger_bot_loses_nothing_across_sigkill(prosody, bots, account, room_jid,
                                                        talker, tmp_path, frontend):
    start, logfile, db = await _logger_in(prosody, bots, account, room_jid, tmp_path,
                                          frontend, history_length=100)
    bot = await start()
    me = await talker()

    texts = [f"message {i:02d}" for i in range(70)]
    texts[3] = "two\nlines\twith a tab and a \\ backslash"
    for text in texts[:29]:
        me.say(text)
    await until(lambda: len(log_lines(logfile)) >= 29, "29 lines logged", 10, bot)
    me.say(texts[29])
    await until(lambda: len(log_lines(logfile)) >= 30, "30 lines logged", 10, bot)
    # The guard writes message positions lazily (within a second), so wait
    # for it. Killed before that write, the restarted guard replays the last
    # second's messages (duplicates, a documented limit) or, if no position
    # was ever written for the room, asks for no history at all and the
    # messages said meanwhile never arrive (a gap; see muc_guard's
    # engine._history_for). Neither is what this test is about.
    await until(lambda: position_holds(db, room_jid, "talker", texts[29]),
                "the position of message 29 stored", 5, bot)

    await bot.kill()                            # SIGKILL: no goodbye, no flush
    await until(lambda: _not(in_room(prosody, room_jid, "bot")), "the killed bot gone", 10)
    for text in texts[30:60]:
        me.say(text)
    await until(lambda: sum(nick == "talker" for nick, _ in me.heard) >= 60,
                "the talker's 60 messages reflected (so they are in the room's history)", 10)

    bot = await start()
    await until(lambda: len(log_lines(logfile)) >= 60, "60 lines after the restart", 10, bot)
    for text in texts[60:]:
        me.say(text)
    await until(lambda: len(log_lines(logfile)) >= 70, "70 lines", 10, bot)
    await asyncio.sleep(0.5)                    # a duplicate would show up now

    lines = log_lines(logfile)
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 3 for f in fields), lines
    assert [nick for _, nick, _ in fields] == ["talker"] * 70
    expected = [t.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t") for t in texts]
    assert [body for _, _, body in fields] == expected
    for stamp, _, _ in fields:
        assert stamp.endswith("+00:00") and "T" in stamp

    bot.send_signal(signal.SIGINT)
    assert await bot.wait() == 0, bot.log()


@over_frontends
async def test_logger_bot_writes_a_gap_marker_where_the_history_falls_short(
        prosody, bots, account, room_jid, talker, tmp_path, frontend):
    """Stopped while 12 messages are said in a room that keeps 5: after its
    restart the log holds what came before, the gap marker, the last 5."""
    start, logfile, _ = await _logger_in(prosody, bots, account, room_jid, tmp_path,
                                         frontend, history_length=5)
    bot = await start()
    me = await talker()
    texts = [f"message {i:02d}" for i in range(15)]
    for text in texts[:3]:
        me.say(text)
    await until(lambda: len(log_lines(logfile)) >= 3, "3 lines logged", 10, bot)
    bot.send_signal(signal.SIGINT)
    assert await bot.wait() == 0, bot.log()
    await until(lambda: _not(in_room(prosody, room_jid, "bot")), "the logger gone", 10)
    for text in texts[3:]:
        me.say(text)
    await until(lambda: sum(nick == "talker" for nick, _ in me.heard) >= 15,
                "the talker's 15 messages reflected", 10)

    bot = await start()
    await until(lambda: len(log_lines(logfile)) >= 9, "the marker and 5 lines", 15, bot)
    await asyncio.sleep(0.5)                    # anything extra would show up now
    lines = log_lines(logfile)
    assert [line.split("\t")[-1] for line in lines[:3]] == texts[:3]
    assert lines[3].startswith(f"--- gap in {room_jid} from ") and "\t" not in lines[3]
    assert lines[3].endswith(" (history-short) ---"), lines[3]
    assert [line.split("\t")[-1] for line in lines[4:]] == texts[-5:]
    bot.send_signal(signal.SIGINT)
    assert await bot.wait() == 0, bot.log()


async def _not(awaitable: Any) -> bool:
    return not await awaitable
