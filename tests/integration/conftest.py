"""Integration-test plumbing of our own: figures measured by tests, printed at the end."""

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
