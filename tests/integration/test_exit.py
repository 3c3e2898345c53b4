"""A process that ends (issue #11): real processes, each with a time bound.

aiosqlite's connection thread is not a daemon, so a store left open keeps
the interpreter from exiting. Each bot here runs as a child process
(``sys.executable``, with PYTHONPATH on this checkout) and must exit within
EXIT_BOUND seconds with the status its own code calls for; the test then
reads the store with plain sqlite3: ``PRAGMA integrity_check`` is ok, what
was committed is there, and what was pending is written where it could be.

The first cases need no server (tests/integration/exitbot.py never
connects); the last run the example bots against Prosody and stop them with
SIGTERM and SIGINT, as a supervisor and a terminal do. Every case runs with
both front-ends (``frontend``).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from guardkit import checkout_env, over_frontends
import test_examples as examples
from test_examples import bots, talker  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: seconds a bot may take to exit (Python and aioxmpp start in about one)
EXIT_BOUND = 10.0
ROOM = "room@conference.localhost"
PENDING = "pending-position"          # exitbot's last_id, never written at once


def child_env() -> dict[str, str]:
    """This checkout's muc_guard, not an installed one."""
    return checkout_env({k: v for k, v in os.environ.items()
                         if not k.startswith("MUC_GUARD_")})


def _sigint_as_in_a_terminal() -> None:
    """In the child: SIGINT at its default, as a terminal's Ctrl-C finds it. A
    test run started in the background by a shell without job control (e.g.
    ``nohup scripts/run-tests &``) ignores SIGINT, and an ignored SIGINT is
    inherited across exec: Python then installs no KeyboardInterrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_exitbot(mode: str, frontend: str, db: pathlib.Path, *args: str,
                env: dict[str, str] | None = None,
                bound: float = EXIT_BOUND) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run exitbot.py to its end; returns it and its ``threads`` line."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(HERE / "exitbot.py"), mode, "--db", str(db),
                               "--frontend", frontend, *args],
                              env={**child_env(), **(env or {})}, cwd=db.parent,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=bound)
    except subprocess.TimeoutExpired as exc:   # run() has killed it
        pytest.fail(f"{mode}: still running after {bound} s (killed); "
                    f"stdout: {_text(exc.stdout)!r}; stderr: {_text(exc.stderr)!r}")
    lines = done.stdout.splitlines()
    assert lines[0] == f"module {ROOT / 'muc_guard' / '__init__.py'}", done.stdout
    assert "ready" in lines, (done.stdout, done.stderr)
    [threads] = [line.split()[1:] for line in lines if line.startswith("threads")]
    print(f"{mode}: exited {done.returncode} after {time.monotonic() - started:.2f} s")
    return done, threads


def _text(output: bytes | str | None) -> str:
    """TimeoutExpired keeps the output as bytes, even with text=True."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def store_state(db: pathlib.Path) -> dict[str, Any]:
    """What a fresh reader finds in the store, after checking the file."""
    conn = sqlite3.connect(db)
    try:
        state: dict[str, Any] = {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0]}
        state["rooms"] = dict(conn.execute("SELECT room, last_id FROM rooms"))
        state["clean"] = dict(conn.execute("SELECT account, clean_exit FROM accounts"))
        return state
    finally:
        conn.close()


def assert_failed_with_its_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 1, done.stderr
    assert "RuntimeError: the bot's own code failed" in done.stderr


@over_frontends
def test_raise_without_shutdown_exits_1_and_flushes(tmp_path, frontend):
    done, threads = run_exitbot("raise", frontend, tmp_path / "bot.db")
    assert_failed_with_its_traceback(done)
    assert threads == ["MainThread"]              # aiosqlite's thread ended with the loop
    state = store_state(tmp_path / "bot.db")
    assert state["integrity"] == "ok"
    assert state["rooms"] == {ROOM: PENDING}      # the join, and the pending change
    assert not any(state["clean"].values())       # not a clean exit: probe next time
    assert "without shutdown()" in done.stderr


@over_frontends
def test_raise_while_connected_and_joined_exits_1(prosody, account, room_jid, tmp_path, frontend):
    """The same with a live stream, a joined room and their timers (self-ping,
    stream watchdog): nothing of muc_guard or aioxmpp keeps the process."""
    jid, password = account("connected")
    done, threads = run_exitbot("raise", frontend, tmp_path / "bot.db", "--port", str(prosody.port),
                                "--jid", str(jid), "--room", str(room_jid),
                                env={"MUC_GUARD_PASSWORD": password},
                                bound=EXIT_BOUND + 20)   # the join itself may take a while
    assert "joined" in done.stdout.splitlines(), done.stderr
    assert_failed_with_its_traceback(done)
    assert threads == ["MainThread"]
    state = store_state(tmp_path / "bot.db")
    assert (state["integrity"], state["rooms"]) == ("ok", {str(room_jid): PENDING})


@over_frontends
def test_raise_after_shutdown_exits_1(tmp_path, frontend):
    done, threads = run_exitbot("shutdown-raise", frontend, tmp_path / "bot.db")
    assert_failed_with_its_traceback(done)
    assert threads == ["MainThread"]
    state = store_state(tmp_path / "bot.db")
    assert state["integrity"] == "ok"
    assert state["rooms"] == {ROOM: PENDING}
    assert state["clean"] == {"exitbot@localhost": 1}    # shutdown() did it all
    assert "without shutdown()" not in done.stderr


@over_frontends
def test_return_from_asyncio_run_without_shutdown_exits_0(tmp_path, frontend):
    done, threads = run_exitbot("return", frontend, tmp_path / "bot.db")
    assert done.returncode == 0, done.stderr
    assert threads == ["MainThread"]
    state = store_state(tmp_path / "bot.db")
    assert (state["integrity"], state["rooms"]) == ("ok", {ROOM: PENDING})
    assert not any(state["clean"].values())


@over_frontends
def test_loop_closed_without_cancelling_tasks_exits_0(tmp_path, frontend):
    """run_until_complete + close: no task is cancelled, so the exit hook
    closes the store (from a fresh loop) and writes what was pending."""
    done, _ = run_exitbot("loop-close", frontend, tmp_path / "bot.db")
    assert done.returncode == 0, done.stderr
    state = store_state(tmp_path / "bot.db")
    assert (state["integrity"], state["rooms"]) == ("ok", {ROOM: PENDING})


@over_frontends
def test_loop_closed_inside_a_write_exits_and_keeps_what_was_committed(tmp_path, frontend):
    """The loop ends while a write is inside its transaction (COMMIT held):
    that write rolls back, what was committed before stays."""
    done, _ = run_exitbot("loop-close-cut", frontend, tmp_path / "bot.db")
    assert done.returncode == 0, done.stderr
    assert "commit-begin" in done.stdout and "commit-end" not in done.stdout
    state = store_state(tmp_path / "bot.db")
    assert (state["integrity"], state["rooms"]) == ("ok", {ROOM: None})
    assert "cut off when the event loop ended" in done.stderr


@over_frontends
def test_ctrl_c_on_a_bot_without_signal_handlers(tmp_path, frontend):
    """asyncio.run turns SIGINT into a cancel of the main task: the process
    ends with KeyboardInterrupt, and the store is flushed and closed."""
    db = tmp_path / "bot.db"
    proc = subprocess.Popen([sys.executable, str(HERE / "exitbot.py"), "wait", "--db", str(db),
                             "--frontend", frontend],
                            env=child_env(), cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:                  # "module", then "ready"
            if line.strip() == "ready":
                break
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_BOUND} s after SIGINT (killed)")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == -signal.SIGINT, err     # Python's exit on KeyboardInterrupt
    assert "KeyboardInterrupt" in err and "threads MainThread\n" in out
    assert store_state(db)["rooms"] == {ROOM: PENDING}


# --- the example bots, stopped by signals ------------------------------------------------


@pytest.fixture
def this_checkout(monkeypatch):
    """The bots fixture passes os.environ on: give the bots this checkout."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    found = subprocess.run([sys.executable, "-c", "import muc_guard; print(muc_guard.__file__)"],
                           cwd=examples.BOTS, capture_output=True, text=True, timeout=30)
    assert found.stdout.strip() == str(ROOT / "muc_guard" / "__init__.py"), found


async def stopped_by(bot: examples.BotProcess, sig: int) -> None:
    bot.send_signal(sig)
    started = time.monotonic()
    assert await bot.wait(EXIT_BOUND) == 0, bot.log()
    print(f"exited {time.monotonic() - started:.2f} s after {signal.Signals(sig).name}")
    assert "Traceback" not in bot.log() and "without shutdown()" not in bot.log()


@over_frontends
async def test_sigterm_stops_the_echo_bot_cleanly(prosody, bots, account, room_jid,  # noqa: F811
                                                  tmp_path, this_checkout, frontend):
    jid, password = account("sigterm")
    db = tmp_path / "echo.db"
    bot = await bots(examples.bot_script("echo", frontend), jid, password, "--room", str(room_jid), "--db", str(db))
    await examples.until(lambda: examples.in_room(prosody, room_jid, "bot"), "echo bot in",
                         examples.START_TIMEOUT, bot)
    await stopped_by(bot, signal.SIGTERM)
    state = store_state(db)
    assert (state["integrity"], list(state["rooms"])) == ("ok", [str(room_jid)])
    assert state["clean"] == {str(jid): 1}


@over_frontends
async def test_sigint_stops_the_logger_bot_and_flushes(prosody, bots, account, room_jid,  # noqa: F811
                                                       talker, tmp_path, this_checkout,  # noqa: F811
                                                       frontend):
    jid, password = account("sigint")
    db, log_dir = tmp_path / "logger.db", tmp_path / "logs"
    bot = await bots(examples.bot_script("logger", frontend), jid, password, "--room", str(room_jid), "--db", str(db),
                     "--log-dir", str(log_dir))
    await examples.until(lambda: examples.in_room(prosody, room_jid, "bot"), "logger in",
                         examples.START_TIMEOUT, bot)
    me = await talker()
    me.say("the last word")
    logfile = log_dir / f"{room_jid}.log"
    await examples.until(lambda: examples.log_lines(logfile), "the message logged", 10, bot)
    await stopped_by(bot, signal.SIGINT)     # its position may still wait for its batch
    assert store_state(db)["integrity"] == "ok"
    assert examples.position_holds(db, room_jid, "talker", "the last word")
    assert store_state(db)["clean"] == {str(jid): 1}
