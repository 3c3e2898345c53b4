"""
The slixmpp side of the example bots: the client, its guard, connecting, stopping.

:mod:`common` runs a bot the same way whatever the XMPP library; this module
is what it needs of slixmpp (:class:`common.Frontend`). The guard is the
``muc_guard`` plugin (:mod:`muc_guard.slixmpp`).

slixmpp does not reconnect after a lost connection (a server restart, a
network cut); the plugin does (pconfig ``reconnect``, on by default, with
jittered backoff), and rejoins every room on the new session. As aioxmpp
does, a client that has never had a session gives up after a few failed
attempts (a wrong address should not look like a slow server).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import ssl
from collections.abc import Callable
from typing import Any

import slixmpp
from slixmpp.exceptions import PresenceError
from slixmpp.jid import JID

import common
import muc_guard.slixmpp

logger = logging.getLogger("muc_guard.examples.slixmpp")

__all__ = ["FRONTEND", "BotClient"]

#: rounds over every address that may fail before the first session: slixmpp
#: waits 3 s before the second; aioxmpp gives up after 4 attempts in about 4 s
INITIAL_ROUNDS = 2

#: OpenSSL's X509_V_ERR_* codes that mean "no trusted CA issued this chain"
_UNTRUSTED_CODES = {2, 19, 20, 21}


class AuthenticationFailed(Exception):
    """The server refused every login mechanism we tried."""


class BotClient(slixmpp.ClientXMPP):
    """A ClientXMPP that connects as a production bot does.

    The certificate is always verified: against the system's CAs (and
    ``SSL_CERT_FILE``), plus `ca_file`. With `server` it connects to exactly
    that address with STARTTLS (no DNS, no direct TLS); `insecure_plaintext`
    (with `server` only) also allows a server that offers no TLS at all.
    """

    def __init__(self, jid: str, password: str, *, server: tuple[str, int] | None = None,
                 ca_file: str | None = None, insecure_plaintext: bool = False) -> None:
        super().__init__(jid, password)
        self.pinned_address = server
        if ca_file is not None:
            self.ca_certs = pathlib.Path(ca_file)
        if server is not None:
            self.enable_direct_tls = False     # the pinned port speaks STARTTLS
        if insecure_plaintext:
            self.enable_plaintext = True
            mechanisms = self.plugin["feature_mechanisms"]
            mechanisms.unencrypted_scram = True
            mechanisms.unencrypted_plain = True
        #: the reason connecting is hopeless (a refused login or certificate)
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self._had_session = False
        self._failed_rounds = 0
        self._last_error: Any = None
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("connection_failed", self._attempt_failed)
        self.add_event_handler("reconnect_delay", self._round_failed)
        self.add_event_handler("failed_all_auth", self._auth_failed)
        self.add_event_handler("ssl_invalid_chain", self._certificate_refused)

    def keep_connected(self) -> None:
        """Connect now; the guard reconnects after a lost connection."""
        host, port = self.pinned_address or (None, None)
        self.connect(host=host, port=port)

    async def close(self, timeout: float = common.STOP_TIMEOUT) -> None:
        """End the stream (bounded); the guard shuts down with it."""
        self.cancel_connection_attempt()
        try:
            await asyncio.wait_for(self.disconnect(wait=timeout / 2), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            self.abort()

    def _session_start(self, _: Any) -> None:
        self._had_session = True
        self.send_presence()

    def _attempt_failed(self, error: Any) -> None:
        self._last_error = error
        logger.warning("connection failed: %s", error)

    def _round_failed(self, _: Any) -> None:
        """slixmpp is about to wait before another round of attempts."""
        if self._had_session or self.failure is not None:
            return
        self._failed_rounds += 1
        if self._failed_rounds >= INITIAL_ROUNDS:
            where = ("{}:{}".format(*self.pinned_address) if self.pinned_address
                     else f"XMPP domain {self.boundjid.domain!r}")
            self._fail(ConnectionError(f"failed to connect to {where}: {self._last_error}"))

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.cancel_connection_attempt()
        self.on_failure(exc)

    def _auth_failed(self, _: Any) -> None:
        self._fail(AuthenticationFailed("authentication failed"))

    def _certificate_refused(self, exc: BaseException) -> None:
        # Handling this event keeps slixmpp from disconnecting: close() does.
        self._fail(exc)


def certificate_problem(exc: BaseException) -> str:
    """What an operator needs to know about a refused certificate."""
    code = getattr(exc, "verify_code", None)
    message = getattr(exc, "verify_message", None) or str(exc)
    if code in _UNTRUSTED_CODES:
        return (f"the server's certificate is not signed by a CA this client trusts "
                f"({message}); trust its CA with --ca-file")
    return f"the server's certificate was refused: {message}"


def _log_guard_events(xmpp: slixmpp.ClientXMPP) -> None:
    events: dict[str, Callable[[dict[str, Any]], None]] = {
        "muc_guard_dropped": lambda data: common.log_dropped(data["room"], data["cause"]),
        "muc_guard_rejoined": lambda data: common.log_rejoined(data["room"], data["nick"]),
        "muc_guard_gave_up": lambda data: common.log_gave_up(data["room"], data["cause"]),
    }
    for name, handler in events.items():
        xmpp.add_event_handler(name, common.listener(handler))


class SlixmppFrontend:
    """:class:`common.Frontend` for slixmpp."""

    refusals = (PresenceError,)

    def split_jid(self, text: str) -> tuple[str | None, str, str | None]:
        jid = JID(text)
        return jid.user or None, jid.domain, jid.resource or None

    def room(self, text: str) -> JID:
        return JID(text)

    def make(self, settings: common.Settings) -> tuple[Any, Any]:
        xmpp = BotClient(settings.jid, settings.password, server=settings.server,
                         ca_file=settings.ca_file,
                         insecure_plaintext=settings.insecure_plaintext)
        xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp)
        _log_guard_events(xmpp)
        return xmpp, xmpp.plugin["muc_guard"]

    def start(self, bot: common.Bot, connected: Callable[[str], None],
              failed: Callable[[BaseException], None]) -> None:
        xmpp: BotClient = bot.client
        xmpp.on_failure = failed
        xmpp.add_event_handler("session_start", lambda _: connected(str(xmpp.boundjid.full)))
        xmpp.keep_connected()

    def failure(self, exc: BaseException, settings: common.Settings) -> str:
        if isinstance(exc, AuthenticationFailed):
            return (f"cannot log in as {settings.jid}: authentication failed; check the JID "
                    f"and {common.PASSWORD_ENV}")
        if isinstance(exc, ssl.SSLError):
            return f"cannot connect as {settings.jid}: {certificate_problem(exc)}"
        return f"cannot connect as {settings.jid}: {exc}"

    async def join(self, guard: Any, room: Any, nick: str) -> str:
        joined: str = await guard.join(room, nick)
        return joined

    async def stop(self, client: BotClient) -> None:
        await client.close()


FRONTEND = SlixmppFrontend()
