"""
The user's operations, as requests to the core: the part every front-end shares.

``join``, ``set_nick``, ``rooms``, ``room_info``, ``health``, ``open_store``
and ``close`` do the same thing whatever the XMPP library: hand the core a
request, run its commands, wait on a future the core resolves, flush the
store. A front-end's ``GuardDriver`` subclasses :class:`BaseDriver` and adds
the library's side: stanzas in (facts for the core), stream events, the nick
change and the leave as the library does them, and how a room's JID is
spelled there (:meth:`BaseDriver.room_key`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ..closer import StoreCloser
from ..core.commands import SendNick
from ..core.events import JoinRequested, NickRequested, StoreLoaded, TimerKind
from ..core.guard import REPLAYED, GuardCore
from ..core.health import Health
from ..core.invariants import violations
from ..core.joins import RUNNING_PHASES
from ..core.record import Phase, RoomInfo, RoomRecord, State
from ..core.settings import Settings
from ..store import RoomParser, Store, StoreError, StoreWriter
from .runner import BaseRunner, RoomIO

__all__ = ["BaseDriver", "never_raises"]

logger = logging.getLogger("muc_guard")

_JOINED = State.JOINED
_F = TypeVar("_F", bound=Callable[..., Any])


def never_raises(fn: _F) -> _F:
    """For callbacks the XMPP library calls: log errors, return None. A
    raising aioxmpp listener is disconnected for good; slixmpp would log it
    but our state would be half-updated all the same."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.exception("muc_guard: error in %s (ignored)", fn.__name__)
        return None

    return wrapper  # type: ignore[return-value]


class BaseDriver:
    """Keeps one client in the rooms it wants; subclasses bind a library."""

    #: reads a stored room's JID text as this front-end's room key (None:
    #: the store's default, aioxmpp JIDs)
    parse_room: RoomParser | None = None

    def __init__(self) -> None:
        self.settings = Settings()
        self.core = GuardCore(self.settings)
        self.runner: BaseRunner
        self.clock: Any
        self.store: Store | None = None
        self.writer: StoreWriter | None = None
        #: closes the store if the event loop ends before close() does
        self._closer: StoreCloser | None = None
        self._closed = False
        self._stored_resource: str | None = None

    # --- what a front-end says about its library ---------------------------------------

    @property
    def account(self) -> str:
        """The bare JID of the account, as text (the store's key)."""
        raise NotImplementedError

    def room_key(self, room: Any) -> Hashable:
        """The core's key for a room JID the user gave (ValueError if bad)."""
        raise NotImplementedError

    def service_of(self, key: Hashable) -> str:
        raise NotImplementedError

    def snapshot(self, rec: RoomRecord) -> RoomInfo:
        raise NotImplementedError

    def bound_resource(self) -> str | None:
        raise NotImplementedError

    async def adopt_stored_resource(self, store: Store) -> None:
        """stable_resource: ask for the resource this account had last time."""
        raise NotImplementedError

    async def send_nick(self, rec: RoomRecord, nick: str, *, explicit: bool) -> None:
        """Ask the room for `nick` and tell the core how it went (NickSent);
        an explicit request (the user's) raises what went wrong."""
        raise NotImplementedError

    def unhook(self) -> None:
        """Stop listening to the library (at close)."""
        raise NotImplementedError

    # --- public operations ----------------------------------------------------------

    def rooms(self) -> list[RoomInfo]:
        return [self.snapshot(rec) for rec in self.core.rooms.values()]

    def room_info(self, room: Any) -> RoomInfo | None:
        rec = self.core.rooms.get(self.room_key(room))
        return self.snapshot(rec) if rec is not None else None

    def set_ping_idle(self, value: float) -> None:
        try:
            now: float | None = asyncio.get_running_loop().time()
        except RuntimeError:    # no loop yet: no timers to move
            now = None
        commands = self.core.set_ping_idle(value, now if now is not None else 0.0)
        if now is not None:
            self.runner.run(commands)

    def health(self) -> Health:
        """The account's health snapshot (:mod:`muc_guard.core.health`)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:    # no loop: the default loop's clock is monotonic too
            now = time.monotonic()
        return self.core.health(self.account, now, time.time(), self.runner.public_jid)

    def offered(self, verdict: int) -> None:
        """After :meth:`GuardCore.offer`: a replayed message may have shown
        that the history fell short; the gap is reported before the message."""
        if verdict == REPLAYED:
            pending = self.core.take_output()
            if pending:
                self.runner.run(pending)

    def store_write_failed(self) -> None:
        self.core.stats.store_write_failures += 1

    def violations(self) -> list[str]:
        """Broken invariants (:mod:`muc_guard.core.invariants`), and the
        driver's own: every phase that waits for I/O has its task."""
        found = violations(self.core)
        for rec in self.core.rooms.values():
            io = rec.io if isinstance(rec.io, RoomIO) else None
            task = io.task if io is not None else None
            waiting = rec.phase is Phase.RECOVER and self.core.armed(rec, TimerKind.ARCHIVE_RETRY)
            if rec.phase in RUNNING_PHASES and not waiting and (task is None or task.done()):
                found.append(f"{rec.jid}: {rec.phase.name}, but no task runs for it")
            if rec.ping and (io is None or io.ping_task is None):
                found.append(f"{rec.jid}: a self-ping in flight without its task")
        return found

    def _feed_now(self, event: Any) -> None:
        """A request from the user: errors in it are the caller's."""
        loop = asyncio.get_running_loop()
        self.runner.run(self.core.handle(event, loop.time(), time.time()))

    async def open_store(self, path: Any) -> None:
        if self.store is not None:
            raise RuntimeError(f"a store is already open: {self.store.path!r}")
        if self.parse_room is None:
            store = await Store.open(path)
        else:
            store = await Store.open(path, parse_room=self.parse_room)
        try:
            stored = await store.load_rooms(self.account)
        except BaseException:
            await store.close()
            raise
        try:
            # After a clean shutdown our occupants left with the stream; only
            # a crash can leave one behind for the probe to find.
            crashed = not await store.take_clean_exit(self.account)
        except StoreError as exc:
            logger.warning("%s", exc)
            crashed = True
        self.store = store
        self.writer = StoreWriter(store, self.account, self.store_write_failed)
        self._closer = await StoreCloser.watch(store, self.writer)
        self._stored_resource = await store.load_resource(self.account)
        self.core.occupant_resource = self._stored_resource
        await self.adopt_stored_resource(store)
        self._feed_now(StoreLoaded(tuple(stored), crashed))
        logger.info("store %r opened for %s", store.path, self.account)

    async def _remember_resource(self) -> None:
        resource = self.bound_resource()
        if self.store is None or not resource or resource == self._stored_resource:
            return
        try:
            await self.store.save_resource(self.account, resource)
            self._stored_resource = resource
        except StoreError as exc:
            self.store_write_failed()
            logger.warning("%s", exc)

    async def join(self, room: Any, nick: str, *, password: str | None = None) -> Any:
        """Want the room; return once joined (what the front-end's runner
        says a join returns), raise on a permanent refusal."""
        key = self.room_key(room)
        nick = self.check_nick(nick)
        if self._closed:
            raise RuntimeError("muc_guard is shut down")
        loop = asyncio.get_running_loop()
        commands = self.core.handle(JoinRequested(key, self.service_of(key), nick, password),
                                    loop.time(), time.time())
        rec = self.core.rooms[key]
        io = self.runner.io_of(rec)
        waiter: asyncio.Future[Any] | None = None
        if rec.state is not _JOINED:
            # Waiting before the join goes out: its answer cannot be missed.
            waiter = loop.create_future()
            if io.waiters is None:
                io.waiters = []
            io.waiters.append(waiter)
        try:
            explicit = self._explicit_nick(commands)
            self.runner.run(commands)
            if explicit is not None:
                await self.send_nick(rec, explicit, explicit=True)
            await self._flush()
            if waiter is None:
                return self.runner.joined_value(rec, io)
            return await waiter
        finally:
            # Cancelling join() cancels only this wait: the room stays wanted.
            if waiter is not None and io.waiters and waiter in io.waiters:
                io.waiters.remove(waiter)
                if not io.waiters:
                    io.waiters = None

    @staticmethod
    def check_nick(nick: str) -> str:
        raise NotImplementedError

    @staticmethod
    def _explicit_nick(commands: list[Any]) -> str | None:
        for command in commands:
            if type(command) is SendNick and command.explicit:
                return str(command.nick)
        return None

    async def set_nick(self, room: Any, nick: str) -> None:
        """Change our nick in a joined room (or the nick used for the next join)."""
        key = self.room_key(room)
        nick = self.check_nick(nick)
        loop = asyncio.get_running_loop()
        commands = self.core.handle(NickRequested(key, nick), loop.time(), time.time())
        explicit = self._explicit_nick(commands)
        self.runner.run(commands)
        if explicit is not None:
            await self.send_nick(self.core.rooms[key], explicit, explicit=True)
        await self._flush()   # an explicit call: stored when it returns

    async def close(self) -> None:
        """Stop timers and tasks, flush and close the store. Rooms stay wanted."""
        if self._closed:
            return
        self._closed = True
        self.unhook()
        self.runner.run(self.core.close(asyncio.get_running_loop().time()))
        self.runner.stop_all()
        tasks = list(self.runner.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._closer is not None and not await self._closer.release():
            return   # the event loop is ending, and the closer closed the store
        if self.writer is not None:
            await self.writer.close()
        if self.store is not None:
            try:
                await self.store.set_clean_exit(self.account, True)
            except StoreError as exc:
                logger.warning("%s", exc)
            await self.store.close()

    async def _flush(self) -> None:
        if self.writer is None:
            return
        try:
            await self.writer.flush()
        except StoreError:
            pass  # logged by the writer, which keeps the change and retries
