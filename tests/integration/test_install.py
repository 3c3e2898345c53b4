"""`pip install "muc_guard[slixmpp]"` in a fresh venv, as a new user does (issue #14).

On every Python the suite runs on (3.11, 3.12, 3.13): a new venv, this
checkout installed as a wheel with the ``slixmpp`` extra by plain pip (no
workaround step; packages come from the configured package index), then
``import muc_guard.slixmpp`` and a plugin registered on a client. On Python
3.13 aioxmpp cannot be installed the ordinary way, so it must not be pulled
in there, and nothing of the slixmpp front-end may need it.

This is the one test whose child process talks to something other than
127.0.0.1: pip, to the package index. It takes 10-40 s (pip's cache).
"""

from __future__ import annotations

import subprocess
import sys
import venv

import pytest

from guardkit import CHECKOUT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHECK = """
import importlib.util, sys
import slixmpp
import muc_guard, muc_guard.slixmpp
xmpp = slixmpp.ClientXMPP("bot@example.org", "secret")
xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig={"ping_idle": 60.0})
guard = xmpp.plugin["muc_guard"]
assert guard.rooms() == [] and guard.ping_idle == 60.0
print("aioxmpp", "present" if importlib.util.find_spec("aioxmpp") else "absent")
print("aioxmpp imported", "aioxmpp" in sys.modules)
"""


def test_pip_install_with_the_slixmpp_extra_in_a_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"{CHECKOUT}[slixmpp]"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    # cwd outside the checkout: the installed package, not the source tree
    run = subprocess.run([python, "-c", CHECK], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    if sys.version_info >= (3, 13):
        assert lines == ["aioxmpp absent", "aioxmpp imported False"], run.stdout
    else:
        # Where aioxmpp is installed, `import muc_guard` repairs its TLS
        # verifier at once (before any aioxmpp client can connect).
        assert lines == ["aioxmpp present", "aioxmpp imported True"], run.stdout
