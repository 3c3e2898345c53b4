"""A slixmpp client with the muc_guard plugin, pinned to a test server.

For test bots that run as child processes (crashbot.py, exitbot.py): it
imports neither pytest nor the test harness. The client is the slixmpp example bots' own
(examples/bots/slixmpp_client.py, :class:`BotClient`): it connects as they
do; the plugin reconnects it after a lost connection.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import muc_guard.slixmpp

_BOTS = pathlib.Path(__file__).resolve().parents[2] / "examples" / "bots"
if str(_BOTS) not in sys.path:
    sys.path.append(str(_BOTS))

from slixmpp_client import BotClient  # noqa: E402

__all__ = ["BotClient", "guarded_client"]


def guarded_client(host: str, port: int, jid: str, password: str, *,
                   ca_file: str | None = None, **pconfig: Any) -> tuple[BotClient, Any]:
    """(client, its muc_guard plugin) for the test server at host:port:
    plain TCP, or TLS verified against `ca_file` when given."""
    xmpp = BotClient(jid, password, server=(host, port), ca_file=ca_file,
                     insecure_plaintext=ca_file is None)
    xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig=pconfig)
    return xmpp, xmpp.plugin["muc_guard"]
