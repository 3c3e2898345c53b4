"""``muc-guard health``: what a store can tell (``--db``), and a running bot's
/healthz (``--url``, served by muc_guard.metrics.serve for hand-built Health)
with its exit codes 0 healthy, 1 not, 2 unreachable."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import pytest
from aiohttp import web

from healthkit import MIXED, FakeGuard, health
from muc_guard import metrics
from muc_guard.cli import healthz_url, main
from muc_guard.testing.process import free_port
from test_cli import BOT, FLAKY, GONE, HELPER, LOUNGE, NOW, PASSWORD, _build, local

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def arun(capsys, *argv: str) -> tuple[int, str, str]:
    """main() in a thread (it runs asyncio.run), while this loop serves."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- --db ---------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    """test_cli's store: two accounts, a given-up room, one still out."""
    path = tmp_path / "bot.db"
    asyncio.run(_build(path))
    return path


def test_health_from_the_store_says_what_it_cannot_know(db, capsys):
    code, out, err = run(capsys, "health", "--db", str(db))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ACCOUNT", "ROOM", "STATE", "DROPS", "LAST", "CAUSE", "LAST",
                                "JOINED", "LAST", "DROPPED", "LAST", "DOWNTIME"]
    flaky = next(line for line in lines if FLAKY in line)
    assert flaky.split()[2:5] == ["wanted", "7", "ping"]
    assert local(NOW - 90) in flaky and local(NOW - 30) in flaky
    assert flaky.endswith("still out")
    lounge = next(line for line in lines if LOUNGE in line and line.startswith(BOT))
    assert lounge.endswith("11m 40s") and local(NOW - 3700) in lounge
    gone = next(line for line in lines if GONE in line)
    assert "gave-up" in gone and "kicked" in gone
    assert "cannot tell whether the bot is running" in out
    assert PASSWORD not in out


def test_health_from_the_store_as_json_for_one_account(db, capsys):
    code, out, _ = run(capsys, "health", "--db", str(db), "--account", HELPER, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["source"] == "store" and body["running"] is None
    assert "cannot tell" in body["note"]
    assert [(r["account"], r["room"]) for r in body["rooms"]] == [(HELPER, LOUNGE)]


def test_health_needs_exactly_one_source(db, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["health"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        main(["health", "--db", str(db), "--url", "http://127.0.0.1:1"])
    code, _, err = run(capsys, "health", "--url", "http://127.0.0.1:1", "--account", BOT)
    assert code == 2 and "--account goes with --db" in err


# --- --url --------------------------------------------------------------------------


def test_healthz_url_adds_the_path_only_when_there_is_none():
    assert healthz_url("http://127.0.0.1:9110") == "http://127.0.0.1:9110/healthz"
    assert healthz_url("http://127.0.0.1:9110/") == "http://127.0.0.1:9110/healthz"
    assert healthz_url("http://127.0.0.1:9/x/healthz") == "http://127.0.0.1:9/x/healthz"


async def test_health_from_a_running_bot_exits_0_then_1(capsys):
    guard = FakeGuard(health(rooms=MIXED[:1]))
    async with await metrics.serve(guard, port=0) as server:
        code, out, err = await arun(capsys, "health", "--url", server.url)
        assert (code, err) == (0, "")
        assert out.splitlines()[0] == "healthy"
        assert "bot@example.org: stream up, 1 room(s)" in out
        assert "a@muc.example.org" in out

        guard.h = health(rooms=MIXED, healthy=False,
                         problems=("b@muc.example.org out for 75 s",))
        code, out, err = await arun(capsys, "health", "--url", f"{server.url}/healthz")
        assert code == 1
        assert out.splitlines()[:2] == [
            "NOT healthy", "  problem: bot@example.org: b@muc.example.org out for 75 s"]
        row = next(line for line in out.splitlines() if "b@muc.example.org" in line
                   and "problem" not in line)
        assert row.split()[2:6] == ["rejoining", "NO", "1m", "15s"]

        code, out, _ = await arun(capsys, "health", "--url", server.url, "--json")
        assert code == 1
        body = json.loads(out)
        assert body["healthy"] is False and body["accounts"] == [guard.h.to_dict()]


async def test_health_of_nothing_listening_exits_2(capsys):
    code, out, err = await arun(capsys, "health", "--url", f"http://127.0.0.1:{free_port()}")
    assert (code, out) == (2, "")
    assert err.startswith("muc-guard: cannot reach http://127.0.0.1:")


async def test_health_of_something_else_exits_2(capsys):
    """A server that is not a muc_guard endpoint (wrong port) is not 'unhealthy'."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>ok</html>")

    app = web.Application()
    app.router.add_get("/healthz", page)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        code, _, err = await arun(capsys, "health", "--url", f"http://127.0.0.1:{port}")
        assert code == 2 and "not as a muc_guard /healthz" in err
    finally:
        await runner.cleanup()


async def test_health_as_a_command_ignores_proxy_settings():
    """As a container HEALTHCHECK runs it: the installed command's module in a
    process of its own, with a proxy in the environment that must not be used."""
    guard = FakeGuard(health(healthy=False, problems=("stream down",), stream_up=False))
    async with await metrics.serve(guard, port=0) as server:
        env = {**os.environ, "PYTHONPATH": ROOT, "http_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "muc_guard", "health", "--url", server.url,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, err
    assert b"NOT healthy" in out and b"stream DOWN" in out
