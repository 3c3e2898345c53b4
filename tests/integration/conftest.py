"""Integration-test plumbing of our own: figures measured by tests, printed at the end."""

from __future__ import annotations

import statistics

import pytest

_figures: dict[str, list[float]] = {}


@pytest.fixture
def figure():
    """``figure(name, seconds)`` records a measured duration for the summary."""
    def record(name: str, value: float) -> None:
        _figures.setdefault(name, []).append(value)
    return record


def pytest_terminal_summary(terminalreporter):
    if not _figures:
        return
    terminalreporter.section("muc_guard measured figures (ms)")
    for name, values in sorted(_figures.items()):
        ms = sorted(v * 1000 for v in values)
        terminalreporter.write_line(
            f"{name:<40} n={len(ms):<3} min={ms[0]:8.1f} median={statistics.median(ms):8.1f} "
            f"max={ms[-1]:8.1f}")
