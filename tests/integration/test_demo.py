"""examples/demo.py, run as a newcomer runs it: one process, its exit code, its output.

The demo starts its own Prosody and bot processes; here it runs with TMPDIR
pointed at the test's own directory, so that whatever it leaves behind (a
work dir, a process whose command line names it) is found, and with this
checkout first on PYTHONPATH (the demo and its bot run this muc_guard, not
an installed one). Each case runs with both front-ends (``--frontend``).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from guardkit import checkout_env
from prosody import pid_running

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.py"
RUN_TIMEOUT = 120.0

STEP_LINES = [
    "the server shows the bot in all 3 rooms",
    "kick 333: the bot rejoined lobby on its own",
    "self-ping found the silent drop",
    "server restart: the bot was back in all 3 rooms",
    "bot restart: back in all 3 rooms from its store",
    "lost 0, duplicated 0",
    "PASSED",
]


def run_demo(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MUC_GUARD_PASSWORD", "MUC_GUARD_JID")}
    env["TMPDIR"] = str(tmp_path)
    checkout_env(env)
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def processes_naming(path: pathlib.Path) -> list[str]:
    """PID and command line of every live process whose command line names `path`."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or not pid_running(int(proc.name)):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("frontend", ["aioxmpp", "slixmpp"])
@pytest.mark.parametrize("args", [(), ("-v", "--keep")], ids=["plain", "verbose-keep"])
def test_demo_tells_the_whole_story_and_cleans_up(tmp_path, args, frontend):
    done = run_demo(tmp_path, *args, *(["--frontend", frontend] if frontend != "aioxmpp" else []))
    out = done.stdout
    report = f"exit code {done.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 0, report
    for text in STEP_LINES:
        assert text in out, f"missing {text!r}\n{report}"
    assert re.search(r"messages: sent (\d+), logged \1, lost 0, duplicated 0", out), report
    # The production path: TLS required by the server, the certificate verified
    # by the bot against the demo's own CA (never switched off).
    assert "TLS required, certificate from the demo's own CA" in out, report
    if "--keep" in args:
        config = (next(tmp_path.glob("muc-guard-demo-*")) / "prosody" / "prosody.cfg.lua")
        assert "c2s_require_encryption = true" in config.read_text(), report
    script = "logger_bot.py" if frontend == "aioxmpp" else "slixmpp_logger_bot.py"
    assert f"The bot: {script}, muc_guard on {frontend}." in out, report
    assert f"started {script} (pid" in out, report
    assert "\033[" not in out, "no colours when stdout is not a terminal"
    assert re.search(r"^\[\s*\d+\.\d{3}s\] ", out, re.MULTILINE), "timestamped lines"
    # the inspector's table
    assert re.search(r"ROOM\s+NICK\s+STATE\s+DROPS", out), report
    assert len(re.findall(r"@conference\.localhost\s+bot\s+wanted\s", out)) == 3, report

    # Every process it started is gone.
    pids = {int(pid) for pid in re.findall(r"\bpid (\d+)", out)}
    assert len(pids) >= 4, f"prosody x2 and bot x2 expected among {pids}\n{report}"
    assert [pid for pid in pids if pid_running(pid)] == [], report
    assert processes_naming(tmp_path) == []

    work_dirs = list(tmp_path.glob("muc-guard-demo-*"))
    if "--keep" in args:
        assert len(work_dirs) == 1 and f"kept the work dir: {work_dirs[0]}" in out, report
        logs = sorted(p.name for p in (work_dirs[0] / "logs").iterdir())
        assert logs == [f"{room}@conference.localhost.log" for room in ("dev", "lobby", "ops")]
        assert (work_dirs[0] / "bot.db").exists()
        assert "muc_guard.core: lobby@conference.localhost: joined as" in out   # -v: every bot line
        shutil.rmtree(work_dirs[0])
    else:
        assert work_dirs == [], "the work dir is removed without --keep"
        assert "muc_guard.core: lobby@conference.localhost: joined as" not in out


def test_demo_help_reads_well(tmp_path):
    done = run_demo(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    for text in ("--keep", "--verbose", "127.0.0.1", "110+333", "self-ping", "Exit status",
                 "scripts/demo", "--frontend", "slixmpp_logger_bot.py"):
        assert text in done.stdout, text
    assert list(tmp_path.iterdir()) == []   # --help starts nothing
