"""
Keeping the client itself alive when its server vanishes.

Motivation
==========

aioxmpp 0.13 reconnects after a stream *failure*, but a server that dies
without a word (SIGKILL, a crash, a NAT dropping the TCP connection with a
FIN) does not produce one: the connection ends with a plain EOF, the stanza
stream treats that like a requested ``stop()``, and the ``Client`` main task
waits for a failure that never comes. The client stays "running", never
reconnects, and every room is lost for good — the worst case muc_guard exists
to prevent.

Solution
========

:class:`StreamWatchdog` recognises exactly that state: the client's main task
is parked on its own ``_failure_future`` while the stanza stream is no longer
running. Nothing else looks like that (a reconnect in progress waits on the
network, a backoff on a sleep). It then hands the client the failure it
missed, a :class:`ConnectionError`, and aioxmpp's normal reconnect with
backoff takes over. It checks right after each stream loss and every
:attr:`interval` seconds (for hibernated XEP-0198 streams, which fire no
signal at all).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aioxmpp

__all__ = ["StreamWatchdog"]

logger = logging.getLogger("muc_guard.stream")


class StreamWatchdog:
    interval = 5.0
    #: after a stream loss, give aioxmpp this long to report the failure itself
    grace = 0.2

    def __init__(self, client: aioxmpp.Client) -> None:
        self.client = client
        self._timer: asyncio.TimerHandle | None = None
        self.kicks = 0

    def start(self) -> None:
        self._schedule(self.interval)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stream_lost(self) -> None:
        self._schedule(self.grace)

    def _schedule(self, delay: float) -> None:
        self.stop()
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def hung(self) -> bool:
        """True when the client waits for a failure that will never be reported."""
        client: Any = self.client
        task = getattr(client, "_main_task", None)
        failure = getattr(client, "_failure_future", None)
        if task is None or task.done() or failure is None or failure.done():
            return False
        if client.stream.running:
            return False
        return getattr(task, "_fut_waiter", None) is failure

    def _check(self) -> None:
        self._timer = None
        try:
            if self.hung():
                self.kicks += 1
                logger.warning("%s: connection ended without a stream error; "
                               "making aioxmpp reconnect", self.client.local_jid)
                self.client._stream_failure(  # type: ignore[attr-defined]
                    ConnectionError("connection closed by the server without a stream error"))
        except Exception:
            logger.exception("stream watchdog check failed (ignored)")
        self._schedule(self.interval)
