"""The benchmark suite in smoke size, so that it cannot rot.

Runs ``python -m bench --smoke`` as a subprocess (it starts its own Prosody on
127.0.0.1 and kills every process it starts), bounded in time, and checks that
it exits 0, prints the table with every scenario and writes its report. The
figures of a smoke run mean nothing: targets may pass or fail; only a
scenario that cannot run fails this test.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from guardkit import checkout_env

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 90.0

pytestmark = pytest.mark.integration

#: per scenario that measures the slixmpp front-end: a figure of the guard
#: and one of plain slixmpp, each of which must have samples
SLIXMPP_ROWS = [
    (1, "slixmpp guard: 110+333 received → muc_guard_rejoined", "ms"),
    (1, "slixmpp hand-written loop: 110+333 received → join_muc_wait returned", "ms"),
    (2, "slixmpp guard: last stanza → detected", "s"),
    (2, "plain slixmpp: detected → rejoined (hand-written loop)", "ms"),
    (3, "slixmpp guard: first detection → each room rejoined", "s"),
    (3, "plain slixmpp: first detection → each room rejoined", "s"),
    (5, "slixmpp guard: CPU per message delivered", "µs"),
    (5, "slixmpp plain: CPU per message received", "µs"),
    (5, "slixmpp guard with metrics: CPU per message delivered", "µs"),
    (5, "slixmpp guard with metrics: /metrics scrape duration", "ms"),
    (9, "slixmpp guard in 10 rooms: 110+333 received → muc_guard_rejoined", "ms"),
    (9, "slixmpp floor: plain slixmpp join of a fresh room", "ms"),
]


@pytest.mark.timeout(TIMEOUT + 30)
def test_bench_smoke(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "RESULTS.md"
    env = checkout_env(dict(os.environ))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(results)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # By its PID; its Prosody and bot processes die with it (PR_SET_PDEATHSIG).
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        pytest.fail(f"bench --smoke did not finish within {TIMEOUT:g} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"bench --smoke exited {proc.returncode}:\n{out[-4000:]}"
    assert "targets:" in out, out[-4000:]
    for number in range(1, 11):
        assert f"[bench] scenario {number} done" in out, out[-4000:]
    assert "ERROR" not in out, out[-4000:]
    text = results.read_text()
    assert "## Targets" in text and "## Figures" in text
    assert "Prosody (`dpkg-query -W prosody`)" in text
    # scenarios 1, 2, 3, 5 and 9 measure the slixmpp front-end too (--frontend both)
    assert "| front-ends measured (scenarios 1, 2, 3, 5, 9) | aioxmpp, slixmpp |" in text
    for number, figure, unit in SLIXMPP_ROWS:
        row = re.compile(rf"^\| {number} \| {re.escape(figure)} \| {unit} \| [1-9]\d* \|",
                         re.MULTILINE)
        assert row.search(text), f"no samples for ({number}, {figure!r})"
    # scenario 5's third aioxmpp bot: the guard with metrics served and scraped
    assert re.search(r"^\| 5 \| guard with metrics: /metrics scrape duration \| ms \| [1-9]\d* \|",
                     text, re.MULTILINE), "scenario 5 scraped no /metrics"
