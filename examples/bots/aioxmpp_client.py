"""
The aioxmpp side of the example bots: the client, its guard, connecting, stopping.

:mod:`common` runs a bot the same way whatever the XMPP library; this module
is what it needs of aioxmpp (:class:`common.Frontend`). The guard is
:class:`muc_guard.MUCGuard`, summoned on an ``aioxmpp.PresenceManagedClient``,
which reconnects on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiosasl
import aioxmpp
import aioxmpp.connector
import aioxmpp.errors
import aioxmpp.node

import common
import muc_guard

__all__ = ["FRONTEND", "make_client"]


async def _no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list[Any]:
    return []


def make_client(settings: common.Settings) -> aioxmpp.PresenceManagedClient:
    """The client; must be called inside the running event loop.

    Certificates are verified as aioxmpp does by default (muc_guard makes
    that work on current Python and pyOpenSSL); --ca-file adds a private CA."""
    security = aioxmpp.make_security_layer(
        settings.password, ssl_context_factory=muc_guard.tls.context_factory(settings.ca_file))
    override_peer = []
    if settings.server is not None:
        host, port = settings.server
        override_peer.append((host, port, aioxmpp.connector.STARTTLSConnector()))
        # When the pinned address fails, aioxmpp falls back to DNS SRV and
        # <domain>:5222. --server means this address and nothing else.
        aioxmpp.node.discover_connectors = _no_discovery
        if settings.insecure_plaintext:
            # Certificates are still checked if the server offers TLS.
            security = security._replace(tls_required=False)
    return aioxmpp.PresenceManagedClient(aioxmpp.JID.fromstr(settings.jid), security,
                                         override_peer=override_peer)


def _log_guard_signals(guard: muc_guard.MUCGuard) -> None:
    def rejoined(room: aioxmpp.JID, muc_room: Any) -> None:
        common.log_rejoined(room, muc_room.me.nick if muc_room.me is not None else "?")

    guard.on_dropped.connect(common.listener(common.log_dropped))
    guard.on_rejoined.connect(common.listener(rejoined))
    guard.on_gave_up.connect(common.listener(common.log_gave_up))


class AioxmppFrontend:
    """:class:`common.Frontend` for aioxmpp."""

    refusals = (aioxmpp.errors.XMPPError,)

    def split_jid(self, text: str) -> tuple[str | None, str, str | None]:
        jid = aioxmpp.JID.fromstr(text)
        return jid.localpart, jid.domain, jid.resource

    def room(self, text: str) -> aioxmpp.JID:
        return aioxmpp.JID.fromstr(text)

    def make(self, settings: common.Settings) -> tuple[Any, Any]:
        client = make_client(settings)
        guard = client.summon(muc_guard.MUCGuard)
        _log_guard_signals(guard)
        return client, guard

    def start(self, bot: common.Bot, connected: Callable[[str], None],
              failed: Callable[[BaseException], None]) -> None:
        client = bot.client
        client.on_failure.connect(failed)
        client.on_stream_established.connect(lambda: connected(str(client.local_jid)))
        client.presence = aioxmpp.PresenceState(True)   # starts the client

    def failure(self, exc: BaseException, settings: common.Settings) -> str:
        if isinstance(exc, aiosasl.AuthenticationFailure):
            return (f"cannot log in as {settings.jid}: authentication failed; check the JID "
                    f"and {common.PASSWORD_ENV}")
        return f"cannot connect as {settings.jid}: {exc}"

    async def join(self, guard: Any, room: Any, nick: str) -> str:
        joined = await guard.join(room, nick)
        return joined.me.nick if joined.me is not None else nick

    async def stop(self, client: aioxmpp.PresenceManagedClient) -> None:
        # Unavailable first: while its presence is available, a client whose
        # stream just failed may start itself again.
        if client.presence.available:
            client.presence = aioxmpp.PresenceState(False)
        if not client.running:
            return
        stopped = asyncio.get_running_loop().create_future()
        client.on_stopped.connect(stopped, client.on_stopped.AUTO_FUTURE)
        client.on_failure.connect(stopped, client.on_failure.AUTO_FUTURE)
        client.stop()
        try:
            await asyncio.wait_for(stopped, common.STOP_TIMEOUT)
        except Exception as exc:   # the stream may already be gone: fine
            common.logger.debug("stopping the client: %r", exc)


FRONTEND = AioxmppFrontend()
