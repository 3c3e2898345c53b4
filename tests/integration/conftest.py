"""Integration-test plumbing of our own: figures measured by tests, printed at the end.

Under pytest-xdist (scripts/run-tests runs the suite on several workers) each
worker sends what it recorded to the controller at its end, which prints the
summary."""

from __future__ import annotations

import statistics

import pytest

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
