"""
Closing the store when the event loop ends without ``shutdown()``.

Motivation
==========

aiosqlite (0.22 and later) runs each connection in a thread that is not a
daemon and ends only when the connection is closed, and the interpreter
waits for every such thread before it exits. A bot whose code raises after
``open_store()``, or whose ``main()`` returns without ``guard.shutdown()``,
would never exit: under systemd's ``Restart=on-failure`` or any other
supervisor it is then neither running nor restarted.

Solution
========

:class:`StoreCloser` watches one open store, in two layers:

* A task that waits for ever. When the coroutine of ``asyncio.run()`` ends
  (returns or raises), asyncio cancels every task left and runs them to
  completion before it closes the loop. Cancelled, this task writes what the
  :class:`~muc_guard.store.StoreWriter` holds and closes the store, on that
  loop, within :attr:`StoreCloser.TIMEOUT`.
* A loop that is closed without cancelling its tasks
  (``loop.run_until_complete(main()); loop.close()``) never runs that task.
  For it, a hook the threading module calls at interpreter exit, before it
  waits for non-daemon threads (``threading._register_atexit``, which
  concurrent.futures uses for the same reason), closes the store from a
  fresh loop. It writes what is pending unless a write was cut off mid-way;
  SQLite rolls that transaction back when the connection closes, so the file
  stays consistent and nothing committed is lost.

``shutdown()`` takes over with :meth:`StoreCloser.release` and closes the
store as before, marking a clean exit. A store closed here is not marked:
the stream was never closed, so a server may keep our occupants, and the
next start probes for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

from .store import Store, StoreWriter

__all__ = ["StoreCloser"]

logger = logging.getLogger("muc_guard.closer")

#: closers whose store is open, for the exit hook
_open: set["StoreCloser"] = set()
_hooked = False


def _hook_exit() -> None:
    global _hooked
    if _hooked:
        return
    register = getattr(threading, "_register_atexit", None)
    if register is None:   # pragma: no cover - present in CPython 3.9 to 3.14
        logger.warning("threading._register_atexit is missing: a store left open by a "
                       "closed event loop will keep the process from exiting")
        return
    register(_close_stranded)
    _hooked = True


def _close_stranded() -> None:
    for closer in list(_open):
        closer.close_stranded()


class StoreCloser:
    """Closes a store whose event loop ends before the guard is shut down."""

    #: seconds a last flush and close may take (a locked file alone may take
    #: Store.BUSY_TIMEOUT)
    TIMEOUT = 10.0

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        """Use :meth:`watch`."""
        self.store = store
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self._released = False
        self._closing = False
        self._started = False
        self._task = self._loop.create_task(self._watch(),
                                            name=f"muc_guard store closer {store.path!r}")
        _hook_exit()
        _open.add(self)

    @classmethod
    async def watch(cls, store: Store, writer: StoreWriter) -> "StoreCloser":
        """Watch `store`; returns once the task runs (a task cancelled before
        its first step would never get to close anything)."""
        closer = cls(store, writer)
        while not closer._started:
            await asyncio.sleep(0)
        return closer

    async def _watch(self) -> None:
        self._started = True
        try:
            await self._loop.create_future()
        except asyncio.CancelledError:
            if not self._released:
                self._closing = True
                logger.warning("event loop ending without shutdown(): closing store %r",
                               self.store.path)
                await self._close(self.writer.close)
            raise

    async def release(self) -> bool:
        """Hand the store to ``shutdown()``: True if it is still open for the
        caller to close; False if this closer has closed it (after waiting
        for that to finish)."""
        if self._closing:
            await asyncio.wait([self._task])
            return False
        self._released = True
        _open.discard(self)
        self._task.cancel()
        return True

    async def _close(self, flush: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(self._flush_and_close(flush), self.TIMEOUT)
        except Exception as exc:
            logger.error("store %r: closing it failed: %r", self.store.path, exc)

    async def _flush_and_close(self, flush: Callable[[], Awaitable[None]]) -> None:
        try:
            await flush()
        finally:
            await self.store.close()
        _open.discard(self)

    def close_stranded(self) -> None:
        """The interpreter is exiting and our loop ended without cancelling
        us: close the store from a fresh loop, so that its thread ends."""
        if self._loop.is_running():
            return   # in another thread: when it ends, it cancels our task
        self._closing = True
        logger.warning("event loop closed without shutdown(): closing store %r at exit",
                       self.store.path)
        # The task can never run again; asyncio need not report it at exit.
        self._task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._close(self.writer.close_stranded))
        finally:
            loop.close()
