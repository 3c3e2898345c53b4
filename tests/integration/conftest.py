"""Integration-test plumbing of our own: figures measured by tests, printed at the end.

Under pytest-xdist (scripts/run-tests runs the suite on several workers) each
worker sends what it recorded to the controller at its end, which prints the
summary."""

from __future__ import annotations

import statistics
from typing import Any, AsyncIterator, Callable

import pytest

from guardkit import Bot, GuardedBot

#: the front-ends a parametrised scenario runs on
FRONTENDS = ["aioxmpp", "slixmpp"]

_figures: dict[str, list[float]] = {}
_reports: list[str] = []


@pytest.fixture
def figure():
    """``figure(name, seconds)`` records a measured duration for the summary."""
    def record(name: str, value: float) -> None:
        _figures.setdefault(name, []).append(value)
    return record


@pytest.fixture
def fault_report(request):
    """``fault_report(key=value, ...)`` records what a fault test tried and
    measured (counts, seconds), printed at the end under the test's name."""
    def record(**figures) -> None:
        text = ", ".join(f"{key}={value}" for key, value in figures.items())
        _reports.append(f"{request.node.name}: {text}")
    return record


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:    # an xdist worker: hand over to the controller
        workeroutput["muc_guard_figures"] = _figures
        workeroutput["muc_guard_reports"] = _reports


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller's side of pytest_sessionfinish (only called under xdist)."""
    output = getattr(node, "workeroutput", {})
    for name, values in output.get("muc_guard_figures", {}).items():
        _figures.setdefault(name, []).extend(values)
    _reports.extend(output.get("muc_guard_reports", []))


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """Which front-end the test's bots use: the test runs once for each."""
    return request.param


@pytest.fixture
async def make_bot(request: pytest.FixtureRequest, frontend: str,
                   make_client: Any) -> AsyncIterator[Callable[..., GuardedBot]]:
    """``make_bot(jid, password, server=None, resource="bot")`` -> an unstarted
    bot of the test's front-end (``await bot.start()``), on the shared Prosody
    unless `server` is given (over verified TLS when that server has TLS).
    Every bot is closed at teardown."""
    bots: list[GuardedBot] = []

    def factory(jid: Any, password: str, server: Any = None,
                resource: str | None = "bot") -> GuardedBot:
        if frontend == "aioxmpp":
            bot: GuardedBot = Bot(make_client, jid, password, server=server, resource=resource)
        else:
            from frontends import SlixBot
            bot = SlixBot(server or request.getfixturevalue("_shared_prosody"), jid, password,
                          resource=resource)
        bots.append(bot)
        return bot

    try:
        yield factory
    finally:
        for bot in reversed(bots):
            try:
                await bot.close()
            except Exception:
                pass


def pytest_terminal_summary(terminalreporter):
    if _reports:
        terminalreporter.section("muc_guard fault figures")
        for line in _reports:
            terminalreporter.write_line(line)
    if not _figures:
        return
    terminalreporter.section("muc_guard measured figures (ms)")
    for name, values in sorted(_figures.items()):
        ms = sorted(v * 1000 for v in values)
        terminalreporter.write_line(
            f"{name:<40} n={len(ms):<3} min={ms[0]:8.1f} median={statistics.median(ms):8.1f} "
            f"max={ms[-1]:8.1f}")
