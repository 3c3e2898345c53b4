"""
The client's connection: reconnected after a loss; the user's ``disconnect()`` ends the guard.

Motivation
==========

aioxmpp reconnects on its own; slixmpp does not. After a lost connection it
fires ``disconnected`` and stays offline unless the application calls
``connect()`` again, so a bot whose server restarts is out of every room for
good: the case muc_guard exists for. slixmpp's ``connect()`` does retry a
connection that cannot be made, but on a fixed schedule without jitter
(1, 3, 7, … s up to 300 s, each failed TLS mode adding to it): after a server
restart, every client retries in the same instants, and a long outage leaves
a bot out for five minutes after the server is back.

slixmpp also fires ``disconnected`` for the user's own ``disconnect()``, with
nothing that tells it from a loss: the reason is None or "End of stream"
either way, and ``reconnect()``, the SASL code, the TLS code and
``xep_0199``'s keepalive call ``disconnect()`` themselves.

Solution
========

:class:`ConnectionKeeper`, owned by the plugin:

* Once a session was established, every ``disconnected`` that is not the
  user's arms a timer with a jittered exponential delay
  (:class:`~muc_guard.core.backoff.Backoff` between ``reconnect_min`` and
  ``reconnect_max``); when it fires, the client connects again to the same
  address, unless it is connected or connecting already (the user's own
  reconnect logic, or ``reconnect()``, came first). A round of slixmpp's
  connect loop that failed ends in ``reconnect_delay`` (slixmpp about to
  sleep on its own schedule): that attempt is cancelled and the next delay is
  ours. A session (``session_start``, ``session_resumed``) starts the delays
  over; ``failed_all_auth`` ends the retries (a refused password does not
  heal by waiting).
* The user's ``disconnect()`` is recognised by its caller: the plugin puts a
  wrapper on the client's ``disconnect`` attribute (this client only), and a
  call from outside the ``slixmpp`` package is the user's. It stops the
  keeper at once and shuts the guard down; the future it returns completes
  once the stream is closed *and* the guard is shut down (store flushed and
  closed), so ``await xmpp.disconnect()`` leaves nothing behind.
* :meth:`stop` (from the plugin's shutdown) cancels the timer and removes
  every handler and the wrapper: nothing of ours stays scheduled.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.backoff import Backoff

__all__ = ["ConnectionKeeper", "check_bounds"]

logger = logging.getLogger("muc_guard.slixmpp.connection")


def check_bounds(minimum: Any, maximum: Any) -> Backoff:
    """The reconnect delays as a Backoff; ValueError for bounds that are not
    0 < reconnect_min <= reconnect_max."""
    try:
        return Backoff(float(minimum), float(maximum))
    except (TypeError, ValueError):
        raise ValueError("reconnect needs 0 < reconnect_min <= reconnect_max, got "
                         f"{minimum!r}, {maximum!r}") from None


def _called_by_slixmpp(depth: int) -> bool:
    """Whether the frame `depth` levels up belongs to the slixmpp package."""
    module = sys._getframe(depth + 1).f_globals.get("__name__", "")
    return module == "slixmpp" or module.startswith("slixmpp.")


class ConnectionKeeper:
    """Reconnects one slixmpp client after a loss; turns the user's
    ``disconnect()`` into a shutdown of the guard."""

    def __init__(self, xmpp: Any, config: dict[str, Any],
                 shutdown: Callable[[], Awaitable[None]]) -> None:
        self.xmpp = xmpp
        #: the plugin's live config: "reconnect", "reconnect_min", "reconnect_max"
        self.config = config
        self._shutdown = shutdown
        self._timer: asyncio.TimerHandle | None = None
        #: failed attempts since the last session
        self.failures = 0
        #: connect() calls of ours (tests and logs)
        self.attempts = 0
        self._had_session = False
        self._ours: Any = None          # the connection attempt we started
        self.stopped = False
        self._handlers: list[tuple[str, Callable[[Any], None]]] = [
            ("session_start", self._on_session),
            ("session_resumed", self._on_session),
            ("disconnected", self._on_disconnected),
            ("reconnect_delay", self._on_reconnect_delay),
            ("failed_all_auth", self._on_auth_failed),
        ]
        for name, handler in self._handlers:
            xmpp.add_event_handler(name, handler)
        self._original_disconnect = xmpp.disconnect
        xmpp.disconnect = self._disconnect     # this client only
        if getattr(xmpp, "_session_started", False):
            self._had_session = True

    @property
    def scheduled(self) -> bool:
        """A reconnect attempt is waiting for its delay."""
        return self._timer is not None

    def stop(self) -> None:
        """No more reconnects: cancel the timer, remove handlers and wrapper."""
        self.stopped = True
        self._cancel_timer()
        for name, handler in self._handlers:
            self.xmpp.del_event_handler(name, handler)
        if self.xmpp.__dict__.get("disconnect") == self._disconnect:
            del self.xmpp.__dict__["disconnect"]

    # --- the user's disconnect() --------------------------------------------------------

    def _disconnect(self, *args: Any, **kwargs: Any) -> Any:
        if self.stopped or _called_by_slixmpp(1):
            return self._original_disconnect(*args, **kwargs)
        logger.info("%s: disconnect() called: muc_guard shuts down", self.xmpp.boundjid.bare)
        if self._ours is not None and self.xmpp.is_connecting():
            self.xmpp.cancel_connection_attempt()   # slixmpp leaves it running offline
        self.stop()
        loop = self.xmpp.loop
        closing = loop.create_task(self._shutdown())
        stream = self._original_disconnect(*args, **kwargs)
        return asyncio.ensure_future(self._both(stream, closing), loop=loop)

    @staticmethod
    async def _both(stream: Any, closing: asyncio.Task[None]) -> Any:
        try:
            return await stream
        finally:
            await closing

    # --- reconnecting -----------------------------------------------------------------

    def _on_session(self, _: Any = None) -> None:
        self._had_session = True
        self._ours = None
        self.failures = 0
        self._cancel_timer()

    def _on_disconnected(self, reason: Any = None) -> None:
        self._ours = None
        if self.stopped or not self._had_session or not self.config.get("reconnect"):
            return
        self._schedule(f"connection lost ({reason})" if reason else "connection lost")

    def _on_reconnect_delay(self, wait: Any = None) -> None:
        """slixmpp failed a whole round of our attempt and is about to sleep
        on its own schedule: cancel that, ours decides."""
        if self._ours is None or self.stopped:
            return
        self._ours = None
        self.xmpp.cancel_connection_attempt()
        self._schedule("cannot connect")

    def _on_auth_failed(self, _: Any = None) -> None:
        if self._had_session and not self.stopped:
            logger.error("%s: the server refused our credentials; not reconnecting",
                         self.xmpp.boundjid.bare)
        self._had_session = False       # retry only after a session again
        self._cancel_timer()

    def _schedule(self, why: str) -> None:
        try:
            backoff = check_bounds(self.config.get("reconnect_min"),
                                   self.config.get("reconnect_max"))
        except ValueError:
            logger.exception("muc_guard: cannot reconnect")
            return
        self.failures += 1
        delay = backoff.delay(self.failures)
        self._cancel_timer()
        self._timer = self.xmpp.loop.call_later(delay, self._reconnect)
        logger.info("%s: %s; reconnecting in %.1f s (attempt %d)",
                    self.xmpp.boundjid.bare, why, delay, self.failures)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reconnect(self) -> None:
        self._timer = None
        xmpp = self.xmpp
        if self.stopped or xmpp.transport is not None or xmpp.is_connecting():
            return
        host, port = xmpp.custom_address if xmpp.custom_address else (None, None)
        self.attempts += 1
        try:
            self._ours = xmpp.connect(host=host, port=port)
        except Exception:
            logger.exception("%s: connect() failed", xmpp.boundjid.bare)
            self._schedule("connect() failed")
