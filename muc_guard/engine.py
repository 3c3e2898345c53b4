"""
The guard itself: tracking, detection, rejoining.

Motivation
==========

aioxmpp joins a room and then believes it is in it until told otherwise, and
even when told (110+333, 332, a bare 110) it only forgets the room. It never
notices a room that went quiet because it forgot us, and its own autorejoin
path has crash bugs (see the README). A bot needs the opposite: keep wanting
its rooms, notice every way of losing one, and come back unless the room made
clear it does not want us.

Solution
========

:class:`GuardEngine` sits beside :class:`aioxmpp.MUCClient`:

* It reads every inbound presence and message in the stream's application
  filter chain, which runs *before* MUCClient sees them. Any stanza from a
  tracked room is proof of membership and postpones the self-ping; an
  unavailable self-presence is classified by :mod:`muc_guard.policy`.
* A room silent for :attr:`ping_idle` seconds gets a XEP-0410 self-ping
  (:mod:`muc_guard.selfping` reads the reply). Timers are re-armed lazily:
  traffic only stores a timestamp, the timer checks it when it fires.
* Joins go through MUCClient with ``autorejoin=False`` (its autorejoin crashes
  on error presences after a reconnect) inside our own loop: one task per room
  that needs joining, a watchdog per attempt, :class:`~muc_guard.rejoin.Backoff`
  between failures, and a bound on concurrent joins.
* Every change of a room's record goes to the :class:`~muc_guard.store.StoreWriter`;
  a :class:`~muc_guard.closer.StoreCloser` closes the store if the event
  loop ends before :meth:`GuardEngine.close` does.

The engine is a plain object so that both :class:`~muc_guard.MUCGuard` and
:class:`~muc_guard.GuardMixin` (a user's own service) can own one without
their attribute names colliding. It fires its events through the owner's
signals. No callback of ours may raise into aioxmpp: a raising signal
listener is disconnected for good, so every entry point catches and logs.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aioxmpp
import aioxmpp.errors
import aioxmpp.muc
import aioxmpp.ping

from . import mam, redact
from .closer import StoreCloser
from .inbound import sanitize_message, sanitize_presence
from .clock import ServerClock
from .continuity import DIGEST_TOLERANCE, RoomStream, message_facts
from .instant import CreationWatch, settle_created_room
from .recovery import read_archive
from .policy import (
    Cause,
    Decision,
    classify_join_error,
    classify_removal,
    decide,
)
from .rejoin import Backoff, JoinWaves
from .invariants import join_task_name
from .rooms import RoomInfo, State, TrackedRoom, merge_stored
from .selfping import PingOutcome, PingVerdict, read_ping_reply
from .store import Store, StoreError, StoreWriter
from .stream import StreamWatchdog
from .unhook import unhook_room

__all__ = ["GuardEngine", "GuardError", "RoomLeftError", "GaveUpError"]

logger = logging.getLogger("muc_guard")

STATUS_SELF = 110
# Enum members compared by identity: aioxmpp's enums have a slow __eq__.
_ERROR = aioxmpp.MessageType.ERROR
_GROUPCHAT = aioxmpp.MessageType.GROUPCHAT
#: Long enough that aioxmpp's own MUC self-ping never fires.
_NEVER = 10 * 365 * 24 * 3600.0


class GuardError(Exception):
    """Base class of muc_guard's own errors."""


class RoomLeftError(GuardError):
    """The room was left with :meth:`leave` while :meth:`join` was waiting."""


class GaveUpError(GuardError):
    """The guard gave up on the room while :meth:`join` was waiting."""

    def __init__(self, room_jid: aioxmpp.JID, cause: Cause) -> None:
        super().__init__(f"{room_jid}: gave up ({cause.value})")
        self.room_jid = room_jid
        self.cause = cause


class _JoinTimeout(Exception):
    pass


class _Expiry:
    """The join timer: cancels the pending join, and remembers doing so."""

    __slots__ = ("fut", "fired")

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut
        self.fired = False

    def __call__(self) -> None:
        if not self.fut.done():
            self.fired = True
            self.fut.cancel()


def _cancelling() -> bool:
    """Whether the running task itself was asked to stop (not just a future
    it awaited being cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _ExitedDuringJoin(Exception):
    pass


_F = TypeVar("_F", bound=Callable[..., Any])


def _never_raises(fn: _F) -> _F:
    """For callbacks aioxmpp calls: log errors, return None (keeps us connected)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.exception("muc_guard: error in %s (ignored)", fn.__name__)
        return None

    return wrapper  # type: ignore[return-value]


def error_condition(exc: aioxmpp.errors.XMPPError) -> str:
    """The defined condition of a stanza error, e.g. ``"item-not-found"``."""
    try:
        return str(exc.condition.value[1])
    except (AttributeError, IndexError, TypeError):
        return "undefined-condition"


def _error_type(exc: aioxmpp.errors.XMPPError) -> str | None:
    kind = getattr(type(exc), "TYPE", None)
    return getattr(kind, "value", None)


def room_jid_from(value: aioxmpp.JID | str) -> aioxmpp.JID:
    """Validate a room JID given as :class:`aioxmpp.JID` or string."""
    if isinstance(value, str):
        try:
            value = aioxmpp.JID.fromstr(value)
        except ValueError as exc:
            raise ValueError(f"not a valid room JID: {value!r} ({exc})") from None
    if not isinstance(value, aioxmpp.JID):
        raise TypeError(f"room JID must be aioxmpp.JID or str, not {type(value).__name__}")
    if not value.is_bare or not value.localpart:
        raise ValueError(f"room JID must be bare and have a local part: {value}")
    # aioxmpp's domain check lets "r@b@c" and "r@b c" through.
    if any(ch in value.domain for ch in "@/ \t\n") or not value.domain.strip("."):
        raise ValueError(f"not a valid room JID domain: {value.domain!r}")
    return value


def _check_nick(nick: str) -> str:
    if not isinstance(nick, str) or not nick.strip():
        raise ValueError(f"nick must be a non-empty string, not {nick!r}")
    # A nick is a resourcepart (resourceprep, at most 1023 bytes); aioxmpp
    # would only refuse it inside every join attempt, retried for ever.
    try:
        aioxmpp.JID("room", "example.org", nick)
    except ValueError as exc:
        raise ValueError(f"not a valid nick: {nick!r} ({exc})") from None
    return nick


def default_fallback_nick(nick: str, attempt: int) -> str:
    """``bot`` -> ``bot_``, ``bot__``, ...: one more underscore per attempt."""
    return nick + "_" * attempt


#: Joins in flight at once (max_concurrent_joins); more go out in waves. Prosody
#: spends ~0.35 ms per join, so a full window is ~0.35 s of server work, far
#: inside join_timeout. A tighter window cost a 1,000-room restart 5-10 % more
#: client CPU and saved the server nothing measurable (bench scenario 4).
DEFAULT_MAX_CONCURRENT_JOINS = 1024


class GuardEngine:
    """Keeps one client in the rooms it wants. Owned by MUCGuard or GuardMixin."""

    def __init__(self, owner: Any, client: aioxmpp.Client, muc: aioxmpp.MUCClient) -> None:
        self._owner = owner
        self.client = client
        self.muc = muc
        self._rooms: dict[aioxmpp.JID, TrackedRoom] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stream_up = asyncio.Event()
        self._join_waves = JoinWaves(DEFAULT_MAX_CONCURRENT_JOINS)
        self._store: Store | None = None
        self._writer: StoreWriter | None = None
        #: closes the store if the event loop ends before close() does
        self._closer: StoreCloser | None = None
        self._closed = False

        self._ping_idle = 300.0
        self.ping_timeout = 30.0
        self.join_timeout = 30.0
        self.leave_timeout = 10.0
        self.permanent_error_limit = 3
        self.backoff = Backoff(1.0, 60.0)
        #: 409 on a rejoin: tries with our nick before falling back (it may be
        #: our own ghost, which the server drops within seconds)
        self.nick_conflict_retries = 2
        self.max_fallback_nicks = 5
        self.fallback_nick: Callable[[str, int], str] = default_fallback_nick
        #: seconds between attempts to win back the nick a fallback replaced
        self.nick_reclaim_interval = 60.0
        #: come back with the resource stored for this account (see open_store)
        self.stable_resource = True
        self._stored_resource: str | None = None
        #: the resource our occupants had when we last knew them: the stored
        #: one after a restart, the stream's after a stream loss
        self._occupant_resource: str | None = None
        #: loop time of the last correlated check per MUC service domain
        self._service_checks: dict[str, float] = {}
        #: idle pings are paced (see _pace_ping): rooms waiting for their turn,
        #: the loop time of the next free slot, and the timer that drains them
        self._ping_queue: collections.deque[TrackedRoom] = collections.deque()
        self._ping_next_slot = 0.0
        self._ping_drain: asyncio.TimerHandle | None = None
        #: the pace never drops below this many idle pings per second
        self.min_ping_rate = 10.0
        #: recover missed messages from the room's XEP-0313 archive when it has one
        self.use_archive = True
        self.archive_limit = 1000
        self.archive_page_size = 50     # Prosody's maximum page
        #: self-ping a room we may still be in (after a restart or a lost
        #: stream) before joining it again; see _still_joined
        self.probe_before_rejoin = True
        self.probe_timeout = 5.0
        #: the MUC services' clocks: positions are kept in the server's time
        self.clock = ServerClock(client)

        stream = client.stream
        self._connections = [
            (client.on_stream_established,
             client.on_stream_established.connect(self._on_stream_established)),
            (client.on_stream_destroyed,
             client.on_stream_destroyed.connect(self._on_stream_destroyed)),
            (client.on_stream_suspended,
             client.on_stream_suspended.connect(self._on_stream_suspended)),
            (client.on_stream_resumed,
             client.on_stream_resumed.connect(self._on_stream_resumed)),
        ]
        self._filters = [
            (stream.app_inbound_presence_filter,
             stream.app_inbound_presence_filter.register(self._presence_filter, 0)),
            (stream.app_inbound_message_filter,
             stream.app_inbound_message_filter.register(self._message_filter, 0)),
        ]
        if client.established:
            self._stream_up.set()
        redact.protect(client)   # room passwords stay out of aioxmpp's DEBUG wire log
        self._watchdog = StreamWatchdog(client)
        self._watchdog_started = False

    # --- configuration ---------------------------------------------------------

    @property
    def max_concurrent_joins(self) -> int:
        """Joins in flight at once; the waiting ones go out in waves (JoinWaves)."""
        return self._join_waves.limit

    @max_concurrent_joins.setter
    def max_concurrent_joins(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_concurrent_joins must be a positive int, got {value!r}")
        self._join_waves.limit = value

    @property
    def ping_idle(self) -> float:
        return self._ping_idle

    @ping_idle.setter
    def ping_idle(self, value: float) -> None:
        value = float(value)
        if value <= 0:
            raise ValueError("ping_idle must be positive")
        self._ping_idle = value
        for rec in self._rooms.values():
            if rec.state is State.JOINED and rec.ping_task is None:
                self._arm_ping(rec)

    # --- public operations -------------------------------------------------------

    def rooms(self) -> list[RoomInfo]:
        return [rec.snapshot() for rec in self._rooms.values()]

    def room_info(self, room_jid: aioxmpp.JID | str) -> RoomInfo | None:
        rec = self._rooms.get(room_jid_from(room_jid))
        return rec.snapshot() if rec is not None else None

    @property
    def account(self) -> str:
        return str(self.client.local_jid.bare())

    async def open_store(self, path: Any) -> None:
        if self._store is not None:
            raise RuntimeError(f"a store is already open: {self._store.path!r}")
        store = await Store.open(path)
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
        self._store = store
        self._writer = StoreWriter(store, self.account)
        self._closer = await StoreCloser.watch(store, self._writer)
        await self._adopt_stored_resource(store)
        restored = 0
        for row in stored:
            # Joined when the last process ended: a server may have kept
            # that occupant (e.g. a hibernated XEP-0198 session).
            probe = crashed and row.wanted and row.last_joined is not None and (
                row.last_dropped is None or row.last_joined >= row.last_dropped)
            rec = self._rooms.get(row.jid)
            if rec is not None:
                # join() before open_store(): its wishes win, the stored
                # knowledge (position, drops, archive) is kept.
                merge_stored(rec, row)
                if rec.state is not State.JOINED and row.wanted and rec.wanted:
                    rec.announce_rejoin = True
                    rec.probe = probe
                continue
            row.confirmed = True
            row.announce_rejoin = row.wanted
            row.probe = probe
            self._rooms[row.jid] = row
            if row.wanted:
                restored += 1
                self._start_joining(row, 0.0)
        for rec in self._rooms.values():
            self._writer.mark(rec)
        logger.info("store %r opened for %s: %d room(s), %d to rejoin",
                    store.path, self.account, len(stored), restored)

    async def _adopt_stored_resource(self, store: Store) -> None:
        """Bind the resource this account had last time, so rooms (and a
        hibernated ghost session) see the same occupant JID, not a new one.
        Only for a client whose JID names no resource and is not connected."""
        self._stored_resource = await store.load_resource(self.account)
        self._occupant_resource = self._stored_resource
        client: Any = self.client
        if (self.stable_resource and self._stored_resource
                and client.local_jid.resource is None and not client.running):
            # aioxmpp binds the resource of Client._local_jid; there is no setter.
            client._local_jid = client.local_jid.replace(resource=self._stored_resource)
            logger.info("%s: asking for stored resource %r", self.account,
                        self._stored_resource)

    async def _remember_resource(self) -> None:
        resource = self.client.local_jid.resource
        if self._store is None or not resource or resource == self._stored_resource:
            return
        try:
            await self._store.save_resource(self.account, resource)
            self._stored_resource = resource
        except StoreError as exc:
            logger.warning("%s", exc)

    async def join(self, room_jid: aioxmpp.JID | str, nick: str, *,
                   password: str | None = None) -> aioxmpp.muc.Room:
        jid = room_jid_from(room_jid)
        nick = _check_nick(nick)
        if self._closed:
            raise RuntimeError("muc_guard is shut down")
        rec = self._rooms.get(jid)
        if rec is None:
            rec = TrackedRoom(jid=jid, requested_nick=nick, nick=nick, password=password,
                              state=State.JOINING, added=time.time())
            self._rooms[jid] = rec
            await self._persist_now(rec)
        elif rec.state is State.JOINED:
            if nick not in (rec.nick, rec.requested_nick):
                await self.set_nick(jid, nick)
            if password is not None and password != rec.password:
                rec.password = password
                await self._persist_now(rec)
            return rec.room
        else:
            rewanted = rec.state is State.GAVE_UP
            if rewanted:
                rec.state = State.JOINING
                rec.announce_rejoin = False
            if rewanted or nick != rec.requested_nick:
                rec.requested_nick = rec.nick = nick
            if password is not None:
                rec.password = password
            await self._persist_now(rec)

        waiter: asyncio.Future[aioxmpp.muc.Room] = asyncio.get_running_loop().create_future()
        if rec.waiters is None:
            rec.waiters = []
        rec.waiters.append(waiter)
        self._start_joining(rec, 0.0)
        try:
            return await waiter
        finally:
            # Cancelling join() cancels only this wait: the room stays wanted.
            if rec.waiters and waiter in rec.waiters:
                rec.waiters.remove(waiter)

    async def set_nick(self, room_jid: aioxmpp.JID | str, nick: str) -> None:
        """Change our nick in a joined room (or the nick used for the next join)."""
        jid = room_jid_from(room_jid)
        nick = _check_nick(nick)
        rec = self._rooms.get(jid)
        if rec is None:
            raise KeyError(f"{jid} is not tracked")
        if rec.state is not State.JOINED or rec.room is None:
            rec.requested_nick = rec.nick = nick
            await self._persist_now(rec)
            return
        if nick == rec.nick and not rec.nick_change_pending:
            # Already ours (a bot re-applying its configuration): nothing to ask.
            if (rec.requested_nick, rec.preferred_nick) != (nick, None):
                rec.requested_nick, rec.preferred_nick = nick, None
                await self._persist_now(rec)
            return
        self._begin_nick_change(rec, nick)
        try:
            await rec.room.set_nick(nick)
        except BaseException:
            self._end_nick_change(rec)
            raise
        rec.requested_nick = nick
        rec.preferred_nick = None
        await self._persist_now(rec)   # an explicit call: stored when it returns

    async def leave(self, room_jid: aioxmpp.JID | str) -> None:
        jid = room_jid_from(room_jid)
        rec = self._rooms.pop(jid, None)
        if rec is None:
            return
        rec.cancel_timers()
        task = rec.join_task
        if task is not None:
            task.cancel()
        self._fail_waiters(rec, RoomLeftError(f"{jid} was left"))
        if self._writer is not None:
            self._writer.mark_deleted(jid)
            await self._flush()
        room = rec.room
        rec.room = None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if room is not None and room.muc_joined:
            try:
                await asyncio.wait_for(room.leave(), self.leave_timeout)
            except (asyncio.TimeoutError, ConnectionError, aioxmpp.errors.XMPPError) as exc:
                logger.info("%s: no answer to our leave (%r); forgetting it anyway", jid, exc)
        self._release_aioxmpp_room(jid)
        unhook_room(room, self.muc)
        logger.info("%s: left and forgotten", jid)

    async def close(self) -> None:
        """Stop timers and tasks, flush and close the store. Rooms stay wanted."""
        if self._closed:
            return
        self._closed = True
        self._watchdog.stop()
        if self._ping_drain is not None:
            self._ping_drain.cancel()
            self._ping_drain = None
        self._ping_queue.clear()
        for signal, token in self._connections:
            signal.disconnect(token)
        for chain, token in self._filters:
            chain.unregister(token)
        for rec in self._rooms.values():
            rec.cancel_timers()
            if rec.join_task is not None:
                rec.join_task.cancel()
            self._fail_waiters(rec, ConnectionError("muc_guard shut down"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._closer is not None and not await self._closer.release():
            return   # the event loop is ending, and the closer closed the store
        if self._writer is not None:
            await self._writer.close()
        if self._store is not None:
            try:
                await self._store.set_clean_exit(self.account, True)
            except StoreError as exc:
                logger.warning("%s", exc)
            await self._store.close()

    # --- inbound stanzas -----------------------------------------------------------

    def _presence_filter(self, stanza: aioxmpp.Presence) -> aioxmpp.Presence:
        try:
            stanza = sanitize_presence(stanza, self.client.local_jid, self.muc)
            self._inspect_presence(stanza)
        except Exception:
            logger.exception("muc_guard: cannot inspect presence %r (ignored)", stanza)
        return stanza

    def _room_of(self, sender: aioxmpp.JID | None) -> TrackedRoom | None:
        """The tracked room a stanza comes from. Runs for every inbound
        stanza: a JID is a namedtuple, so the plain tuple (local, domain, None)
        finds its bare JID's entry without building one (5 µs -> 0.1 µs)."""
        if sender is None:
            return None
        return self._rooms.get((sender.localpart, sender.domain, None))  # type: ignore[call-overload]

    def _message_filter(self, message: aioxmpp.Message) -> aioxmpp.Message:
        try:
            message = sanitize_message(message, self.client.local_jid)
            rec = self._room_of(message.from_)
            if rec is not None:
                kind = message.type_
                if kind is _ERROR:
                    # Prosody answers a non-occupant's message with not-acceptable:
                    # an error from the room is a reason to check, not proof.
                    self._ping_soon(rec)
                else:
                    self._saw_traffic(rec)
                    if kind is _GROUPCHAT:
                        if message.body:
                            self._offer(rec, message)
                        elif message.subject and rec.stream is not None:
                            rec.stream.replaying = False   # the subject ends the history
        except Exception:
            logger.exception("muc_guard: cannot inspect message %r (ignored)", message)
        return message

    def _stream(self, rec: TrackedRoom) -> RoomStream:
        if rec.stream is None:
            rec.stream = RoomStream(rec.jid, rec.position)
        return rec.stream

    def _offer(self, rec: TrackedRoom, message: aioxmpp.Message,
               archive_id: str | None = None, stamp: float | None = None,
               recovered: bool | None = None, received: float | None = None) -> None:
        """Deliver `message` through on_message unless it was delivered before.
        `received`: the server's time when it reached us, if not now."""
        stream = self._stream(rec)
        now = self.clock.now(rec.jid.domain) if received is None else received
        if stream.recovering and archive_id is None:
            if stream.buffer is None:
                stream.buffer = []
            stream.buffer.append((message, now))      # after what the archive returns
            return
        replay = archive_id is None and stream.is_replay(message)
        if not stream.accept(message, now=now, replay=replay, archive_id=archive_id,
                             stamp=stamp):
            return
        rec.position = stream.position
        if self._writer is not None:
            self._writer.mark(rec, lazy=True)
        if recovered is None:
            recovered = archive_id is not None or replay
        own = message.from_ is not None and message.from_.resource == rec.nick
        self._owner.on_message(rec.jid, message, recovered=recovered, own=own)

    def _saw_traffic(self, rec: TrackedRoom) -> None:
        rec.last_traffic = asyncio.get_running_loop().time()
        rec.judge.reset()

    def _inspect_presence(self, stanza: aioxmpp.Presence) -> None:
        sender = stanza.from_
        rec = self._room_of(sender)
        if rec is None or sender is None or sender.is_bare:
            return
        if stanza.type_ == aioxmpp.PresenceType.ERROR:
            # Join errors reach the join attempt through MUCClient; this is
            # about our own nick change being refused (e.g. 409).
            if rec.nick_change_pending and sender.resource == rec.pending_nick:
                # Also what a room that silently dropped us answers.
                logger.info("%s: nick %r refused", rec.jid, rec.pending_nick)
                self._end_nick_change(rec, check=True)
            return
        if rec.state is not State.JOINED:
            return  # the join attempt in progress handles its own presences
        muc_user = stanza.xep0045_muc_user
        codes = {int(code) for code in muc_user.status_codes} if muc_user is not None else set()

        if stanza.type_ != aioxmpp.PresenceType.UNAVAILABLE:
            self._saw_traffic(rec)
            if STATUS_SELF in codes and rec.nick_change_pending:
                # Any self-presence answers the change; only the nick we
                # asked for (or the 303 named) is adopted.
                if sender.resource == rec.pending_nick:
                    self._nick_changed(rec, sender.resource)
                else:
                    self._end_nick_change(rec, check=sender.resource != rec.nick)
            return
        if rec.nick_change_pending and sender.resource == rec.pending_nick != rec.nick:
            logger.info("%s: nick change to %r answered with unavailable", rec.jid,
                        rec.pending_nick)
            self._end_nick_change(rec, check=True)   # the room may have lost us
            return
        if sender.resource != rec.nick:
            self._saw_traffic(rec)   # another occupant left
            return
        if STATUS_SELF not in codes:
            logger.info("%s: unavailable presence from our occupant JID without 110",
                        rec.jid)
        destroyed = muc_user is not None and muc_user.destroy is not None
        # A removal marker beats 303, as in the policy table (a destroyed room
        # is not a nick change); a 303 naming no nick was dropped by sanitize.
        cause = classify_removal(codes, destroyed=destroyed)
        if cause is None:
            self._begin_nick_change(
                rec, muc_user.items[0].nick if muc_user and muc_user.items else None)
            return
        reason = stanza.status.any() if stanza.status else None
        logger.debug("%s: unavailable self-presence, codes %s -> %s", rec.jid,
                     sorted(codes), cause.name)
        # Let MUCClient process this presence (and forget the Room) first.
        asyncio.get_running_loop().call_soon(self._dropped, rec, cause, reason)

    def _begin_nick_change(self, rec: TrackedRoom, nick: str | None) -> None:
        """Self-pings wait while our nick changes (XEP-0410 would read the
        moment as not joined); an unanswered change ends after ping_timeout."""
        rec.nick_change_pending = True
        rec.pending_nick = nick
        if rec.nick_timer is not None:
            rec.nick_timer.cancel()
        rec.nick_timer = asyncio.get_running_loop().call_later(
            self.ping_timeout, self._nick_change_unanswered, rec)

    def _end_nick_change(self, rec: TrackedRoom, *, check: bool = False) -> None:
        """`check`: the answer suggests the room lost us: self-ping at once."""
        rec.nick_change_pending = False
        rec.pending_nick = None
        if rec.nick_timer is not None:
            rec.nick_timer.cancel()
            rec.nick_timer = None
        if check:
            self._ping_soon(rec)

    @_never_raises
    def _nick_change_unanswered(self, rec: TrackedRoom) -> None:
        rec.nick_timer = None
        if rec.nick_change_pending:
            logger.info("%s: no answer to our nick change to %r", rec.jid, rec.pending_nick)
            self._end_nick_change(rec, check=True)

    def _nick_changed(self, rec: TrackedRoom, nick: str) -> None:
        logger.info("%s: our nick is now %r", rec.jid, nick)
        rec.nick = nick
        self._end_nick_change(rec)
        if nick == rec.preferred_nick:
            rec.preferred_nick = None
            if rec.reclaim_timer is not None:
                rec.reclaim_timer.cancel()
                rec.reclaim_timer = None
        self._mark(rec)

    def _arm_reclaim(self, rec: TrackedRoom) -> None:
        if rec.preferred_nick is None or rec.reclaim_timer is not None:
            return
        rec.reclaim_timer = asyncio.get_running_loop().call_later(
            self.nick_reclaim_interval, self._reclaim_due, rec)

    @_never_raises
    def _reclaim_due(self, rec: TrackedRoom) -> None:
        rec.reclaim_timer = None
        if (rec.preferred_nick is None or rec.state is not State.JOINED
                or self._rooms.get(rec.jid) is not rec):
            return
        if not rec.nick_change_pending and self._stream_up.is_set():
            self._spawn(self._request_nick(rec, rec.preferred_nick))
        self._arm_reclaim(rec)

    async def _request_nick(self, rec: TrackedRoom, nick: str) -> None:
        self._begin_nick_change(rec, nick)
        try:
            await rec.room.set_nick(nick)
        except (ConnectionError, aioxmpp.errors.XMPPError) as exc:
            logger.info("%s: cannot ask for nick %r: %r", rec.jid, nick, exc)
            self._end_nick_change(rec)

    # --- stream --------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if not self._watchdog_started and not self._closed:
            self._watchdog_started = True
            self._watchdog.start()

    @_never_raises
    def _on_stream_established(self) -> None:
        self._stream_up.set()
        self.clock.new_stream()
        self._ensure_watchdog()
        if self.stable_resource:
            self._spawn(self._remember_resource())
        for rec in self._rooms.values():
            if rec.wanted and rec.state is not State.JOINED:
                self._start_joining(rec, 0.0)

    @_never_raises
    def _on_stream_destroyed(self, reason: Any = None) -> None:
        self._stream_up.clear()
        self._watchdog.stream_lost()
        self._occupant_resource = self.client.local_jid.resource
        lost = [rec for rec in self._rooms.values() if rec.state is State.JOINED]
        if lost:
            logger.warning("stream lost%s: %d room(s) to rejoin",
                           f" ({reason})" if reason is not None else "", len(lost))
        for rec in lost:
            if self.probe_before_rejoin:
                self._suspect(rec)
            else:
                self._dropped(rec, Cause.STREAM_LOST)

    @_never_raises
    def _on_stream_suspended(self, reason: Any = None) -> None:
        # XEP-0198 hibernation: the rooms may survive; pause pings and joins.
        self._stream_up.clear()

    @_never_raises
    def _on_stream_resumed(self) -> None:
        self._stream_up.set()
        for rec in self._rooms.values():
            if rec.state is State.JOINED and rec.ping_task is None:
                self._arm_ping(rec)

    # --- drops -----------------------------------------------------------------------

    def _suspect(self, rec: TrackedRoom) -> None:
        """The stream is gone, and with it maybe (not surely) our occupant:
        the server may keep it, e.g. for a remote MUC that never noticed. The
        join loop self-pings first; only a room that let us go counts as a
        drop (see _still_joined)."""
        self._detach(rec)
        rec.state = State.REJOINING
        rec.probe = True
        rec.suspect_since = time.time()
        self._start_joining(rec, 0.0)

    def _detach(self, rec: TrackedRoom) -> None:
        """Stop watching a room we are (maybe) no longer in."""
        rec.cancel_timers()
        self._release_aioxmpp_room(rec.jid)
        room, rec.room = rec.room, None
        unhook_room(room, self.muc)

    @staticmethod
    def _record_drop(rec: TrackedRoom, cause: Cause, at: float) -> None:
        rec.drops += 1
        rec.last_cause = cause
        rec.last_dropped = at

    def _confirm_suspected_drop(self, rec: TrackedRoom) -> None:
        """The probe after a lost stream says we are out: now it is a drop."""
        since, rec.suspect_since = rec.suspect_since, None
        if since is None:
            return
        self._record_drop(rec, Cause.STREAM_LOST, since)
        rec.announce_rejoin = True
        self._mark(rec)
        logger.warning("%s: dropped (%s); rejoin", rec.jid, Cause.STREAM_LOST.value)
        self._owner.on_dropped(rec.jid, Cause.STREAM_LOST)

    @_never_raises
    def _dropped(self, rec: TrackedRoom, cause: Cause, reason: str | None = None) -> None:
        if self._rooms.get(rec.jid) is not rec or rec.state is not State.JOINED:
            return
        self._detach(rec)
        self._record_drop(rec, cause, time.time())
        decision = decide(cause)
        logger.warning("%s: dropped (%s%s); %s", rec.jid, cause.value,
                       f": {reason}" if reason else "", decision.value)
        if decision is Decision.GIVE_UP:
            self._give_up(rec, cause, dropped=True)
            return
        rec.state = State.REJOINING
        rec.announce_rejoin = True
        self._mark(rec)
        self._owner.on_dropped(rec.jid, cause)
        flaps = self._count_flap(rec, cause)
        self._start_joining(rec, self.backoff.first_delay(cause, flaps), flaps)
        if cause is not Cause.STREAM_LOST:
            self._check_siblings(rec)

    def _count_flap(self, rec: TrackedRoom, cause: Cause) -> int:
        """A drop within backoff_max of the rejoin that ended the last drop
        continues that failure sequence (see rejoin.py); a stream loss is
        the connection's failure, not the room's, and counts nothing."""
        if cause is Cause.STREAM_LOST:
            return 0
        since = (asyncio.get_running_loop().time() - rec.rejoined_at
                 if rec.rejoined_at is not None else None)
        rec.flaps = rec.flaps + 1 if since is not None and since < self.backoff.maximum else 0
        rec.rejoined_at, rec.drop_pending = None, True
        return rec.flaps

    def _check_siblings(self, rec: TrackedRoom) -> None:
        """Rooms on one MUC service usually drop together (the service or the
        s2s link to it went away): self-ping the others now instead of
        waiting for their idle timers."""
        service = rec.jid.domain
        now = asyncio.get_running_loop().time()
        # One check per service at a time: the drops it finds must not each
        # start another round (n drops would cost n² pings).
        if now - self._service_checks.get(service, -_NEVER) < self.ping_timeout:
            return
        self._service_checks[service] = now
        siblings = [other for other in self._rooms.values()
                    if other is not rec and other.state is State.JOINED
                    and other.jid.domain == service]
        if siblings:
            logger.info("%s: checking %d other room(s) on %s", rec.jid, len(siblings), service)
        for other in siblings:
            self._ping_soon(other)

    def _give_up(self, rec: TrackedRoom, cause: Cause,
                 exc: BaseException | None = None, *, dropped: bool = False) -> None:
        rec.state = State.GAVE_UP
        rec.last_cause = cause
        rec.room = None
        rec.cancel_timers()
        self._mark(rec, now=True)   # a crash must not lead to a rejoin against the room's will
        self._fail_waiters(rec, exc if exc is not None else GaveUpError(rec.jid, cause))
        logger.warning("%s: gave up (%s)", rec.jid, cause.value)
        if dropped:
            self._owner.on_dropped(rec.jid, cause)
        self._owner.on_gave_up(rec.jid, cause)

    def _release_aioxmpp_room(self, jid: aioxmpp.JID) -> None:
        """Make MUCClient forget a Room the server no longer has us in.

        aioxmpp has no public way to do this; Room._disconnect() is what it
        uses itself on stream loss: it fires on_exit(DISCONNECTED) and drops
        the Room from MUCClient's bookkeeping, so the next join() starts fresh.
        """
        try:
            room = self.muc.get_muc(jid)
        except KeyError:
            return
        if room.muc_joined:
            room._disconnect()
            unhook_room(room, self.muc)

    # --- self-ping ---------------------------------------------------------------------

    def _arm_ping(self, rec: TrackedRoom, at: float | None = None, *,
                  force: bool = False) -> None:
        if rec.ping_timer is not None:
            rec.ping_timer.cancel()
        loop = asyncio.get_running_loop()
        due = rec.last_traffic + self._ping_idle if at is None else at
        rec.ping_timer = loop.call_at(due, self._ping_due, rec, force)

    def _ping_soon(self, rec: TrackedRoom) -> None:
        if rec.state is State.JOINED and rec.ping_task is None:
            self._arm_ping(rec, asyncio.get_running_loop().time(), force=True)

    @_never_raises
    def _ping_due(self, rec: TrackedRoom, force: bool = False) -> None:
        rec.ping_timer = None
        if (self._closed or rec.state is not State.JOINED
                or self._rooms.get(rec.jid) is not rec or rec.ping_task is not None):
            return
        now = asyncio.get_running_loop().time()
        due = rec.last_traffic + self._ping_idle
        if due > now and not force:
            self._arm_ping(rec, due)   # traffic came meanwhile
            return
        if not self._stream_up.is_set() or rec.nick_change_pending:
            self._arm_ping(rec, now + self._ping_idle)
            return
        if force:
            rec.ping_task = self._spawn(self._self_ping(rec))   # a check: no waiting
        else:
            self._pace_ping(rec)

    def _ping_interval(self) -> float:
        """Seconds between two idle pings: 1.2 x rooms per ping_idle per second
        spreads one ping per room and period over five sixths of the period."""
        rate = max(self.min_ping_rate, 1.2 * len(self._rooms) / self._ping_idle)
        return 1.0 / rate

    def _pace_ping(self, rec: TrackedRoom) -> None:
        """Send an idle ping now, or queue it for the next free slot.

        Rooms joined together (a restart, a reconnect) fall idle together; a
        ping for each at the same second would be a burst for the server and
        would stay one, period after period. Pacing spreads them once, and
        their next deadlines keep the spread. A room waits at most
        ping_idle / 1.2 for its turn in the worst burst; checks after a drop
        (_ping_soon) do not wait.
        """
        now = asyncio.get_running_loop().time()
        if not self._ping_queue and now >= self._ping_next_slot:
            self._ping_next_slot = now + self._ping_interval()
            rec.ping_task = self._spawn(self._self_ping(rec))
            return
        self._ping_queue.append(rec)
        self._schedule_ping_drain()

    def _schedule_ping_drain(self) -> None:
        if self._ping_drain is None and self._ping_queue and not self._closed:
            self._ping_drain = asyncio.get_running_loop().call_at(
                self._ping_next_slot, self._drain_pings)

    @_never_raises
    def _drain_pings(self) -> None:
        self._ping_drain = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._ping_queue and now >= self._ping_next_slot:
            rec = self._ping_queue.popleft()
            if (rec.state is not State.JOINED or self._rooms.get(rec.jid) is not rec
                    or rec.ping_task is not None or rec.ping_timer is not None):
                continue    # left, dropped, or already pinged or re-armed meanwhile
            if rec.last_traffic + self._ping_idle > now:
                self._arm_ping(rec)     # traffic came while it waited
                continue
            if not self._stream_up.is_set():
                self._arm_ping(rec, now + self._ping_idle)
                continue
            self._ping_next_slot = max(self._ping_next_slot, now) + self._ping_interval()
            rec.ping_task = self._spawn(self._self_ping(rec))
        self._schedule_ping_drain()

    async def _ping_own_occupant(self, rec: TrackedRoom,
                                 timeout: float) -> tuple[str | None, bool] | None:
        """XEP-0410 self-ping: (error condition or None for a result, timed
        out), or None when the stream failed (its handlers take over)."""
        try:
            await self.client.send(
                aioxmpp.IQ(to=rec.jid.replace(resource=rec.nick), type_=aioxmpp.IQType.GET,
                           payload=aioxmpp.ping.Ping()),
                timeout=timeout,
            )
        except TimeoutError:
            return None, True
        except aioxmpp.errors.XMPPError as exc:
            return error_condition(exc), False
        except (ConnectionError, aioxmpp.errors.StreamError):
            return None
        except Exception:
            # Whatever went wrong, this room must keep being watched.
            logger.exception("%s: self-ping failed; treating it as no reply", rec.jid)
            return None, True
        return None, False

    async def _self_ping(self, rec: TrackedRoom) -> None:
        try:
            reply = await self._ping_own_occupant(rec, self.ping_timeout)
        finally:
            rec.ping_task = None
        if reply is None:
            return
        condition, timed_out = reply
        if rec.state is not State.JOINED or self._rooms.get(rec.jid) is not rec:
            return
        verdict = read_ping_reply(condition, timed_out=timed_out)
        outcome = rec.judge.judge(verdict, timed_out=timed_out)
        logger.debug("%s: self-ping %s -> %s", rec.jid,
                     "timeout" if timed_out else (condition or "result"), outcome.value)
        loop = asyncio.get_running_loop()
        if outcome is PingOutcome.JOINED:
            rec.last_traffic = loop.time()
            self._arm_ping(rec)
        elif outcome is PingOutcome.RETRY:
            self._arm_ping(rec, loop.time() + self._ping_idle)
        else:
            self._dropped(rec, Cause.PING, condition)

    # --- joining ---------------------------------------------------------------------

    def _start_joining(self, rec: TrackedRoom, delay: float, failures: int = 0) -> None:
        if self._closed:
            return
        if rec.join_task is not None and not rec.join_task.done():
            # The running loop may be past its last check (e.g. reading the
            # archive after a join): it hands over when it ends.
            rec.next_join = (delay, failures)
            return
        rec.next_join = None
        rec.join_task = self._spawn(self._keep_joining(rec, delay, failures),
                                    name=join_task_name(rec.jid))

    async def _keep_joining(self, rec: TrackedRoom, delay: float, failures: int = 0) -> None:
        crashed = False
        try:
            await self._join_loop(rec, delay, failures)
        except Exception:
            crashed = True
            logger.exception("%s: join loop failed unexpectedly", rec.jid)
        finally:
            if rec.join_task is asyncio.current_task():
                rec.join_task = None    # a finished task is half a KiB per room
                self._join_loop_ended(rec, crashed)

    def _join_loop_ended(self, rec: TrackedRoom, crashed: bool) -> None:
        """Whatever ended a join loop (success, failure, cancellation, or a
        drop while it was still reading the archive), a wanted room that is
        not joined gets the next one: no state may leave it with none."""
        pending, rec.next_join = rec.next_join, None
        if (self._closed or self._rooms.get(rec.jid) is not rec or not rec.wanted
                or rec.state is State.JOINED):
            return
        delay, failures = pending if pending is not None else (0.0, 0)
        if crashed:
            failures += 1
            delay = max(delay, self.backoff.delay(failures))
        self._start_joining(rec, delay, failures)

    async def _join_loop(self, rec: TrackedRoom, delay: float, failures: int) -> None:
        permanent = 0
        conflicts = 0
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            await self._stream_up.wait()
            if self._rooms.get(rec.jid) is not rec or not rec.wanted:
                return
            if rec.probe:
                still = await self._still_joined(rec)
                if still is None:
                    continue    # the stream went away meanwhile: wait for it
                rec.probe = False
                if still:
                    rec.suspect_since = None
                    rec.announce_rejoin = False   # nothing was lost but the Room object
                else:
                    self._confirm_suspected_drop(rec)
            try:
                room = await self._attempt(rec)
            except aioxmpp.errors.XMPPError as exc:
                condition = error_condition(exc)
                if not classify_join_error(condition, _error_type(exc)):
                    permanent = 0
                    logger.info("%s: join failed (%s), will retry", rec.jid, condition)
                elif not rec.confirmed:
                    self._join_refused(rec, exc)   # a bad join(): raised, not kept
                    return
                elif condition == "conflict":
                    conflicts += 1
                    self._nick_conflict(rec, conflicts)
                else:
                    permanent += 1
                    logger.warning("%s: join refused (%s), %d/%d", rec.jid, condition,
                                   permanent, self.permanent_error_limit)
                    if permanent >= self.permanent_error_limit:
                        self._give_up(rec, Cause.JOIN_ERROR, exc)
                        return
            except (_JoinTimeout, _ExitedDuringJoin) as exc:
                logger.info("%s: join attempt failed (%s), will retry", rec.jid,
                            type(exc).__name__.strip("_"))
            except ConnectionError:
                if not self._stream_up.is_set():
                    delay = 0.0   # wait for the stream, then try at once
                    continue
            except Exception:
                # A bug or an aioxmpp surprise must not leave the room stuck.
                logger.exception("%s: join attempt failed unexpectedly, will retry", rec.jid)
            else:
                self._joined(rec, room)
                if rec.stream is not None and rec.stream.recovering:
                    await self._recover_from_archive(rec)
                return
            failures += 1
            delay = self.backoff.delay(failures)

    async def _still_joined(self, rec: TrackedRoom) -> bool | None:
        """Self-ping a room we may still be in; None if the stream failed.

        A room that still has our occupant is not rejoined blindly: no drop is
        announced and nothing counted. The join presence is still sent, as a
        refresh: aioxmpp has no Room object without one, and some servers
        resume delivery or send the room's state only on a fresh join.
        """
        if not self.probe_before_rejoin:
            return False
        resource = self.client.local_jid.resource
        if self._occupant_resource is not None and resource != self._occupant_resource:
            return False   # a new full JID: the old occupant cannot be ours now
        reply = await self._ping_own_occupant(rec, self.probe_timeout)
        if reply is None:
            return None
        condition, timed_out = reply
        # Only a clear "joined" counts: item-not-found (XEP-0410 §3.2: maybe a
        # changed nick) and no answer cost nothing to settle with a join.
        still = read_ping_reply(condition, timed_out=timed_out) is PingVerdict.JOINED
        logger.info("%s: probe before rejoin: %s", rec.jid,
                    "still an occupant, refreshing" if still else (condition or "?"))
        return still

    def _nick_conflict(self, rec: TrackedRoom, conflicts: int) -> None:
        """409 on a rejoin: someone holds our nick. It may be our own ghost,
        so retry it a few times; then join under a fallback nick and win the
        wanted one back later (see _arm_reclaim)."""
        if rec.preferred_nick is None:
            rec.preferred_nick = rec.nick
        fallback = conflicts - self.nick_conflict_retries
        if fallback <= 0:
            logger.warning("%s: nick %r is taken, will retry it", rec.jid, rec.nick)
            return
        if fallback > self.max_fallback_nicks:
            rec.nick = rec.preferred_nick   # all taken: keep trying ours at the cap
        else:
            rec.nick = self.fallback_nick(rec.preferred_nick, fallback)
        logger.warning("%s: nick %r is taken, trying %r", rec.jid, rec.preferred_nick,
                       rec.nick)

    async def _attempt(self, rec: TrackedRoom) -> aioxmpp.muc.Room:
        async with self._join_waves:
            await self.clock.learn(rec.jid.domain)   # once per stream and service
            archive = await self._archive_usable(rec)
            self._release_aioxmpp_room(rec.jid)
            history = (aioxmpp.muc.xso.History(maxchars=0, maxstanzas=0) if archive
                       else self._history_for(rec))
            stream = self._stream(rec)
            # With an archive, live messages wait until the archive has been read.
            stream.recovering = archive
            stream.replaying = not archive
            stream.buffer = None    # what waited for an earlier join comes back from there
            room, fut = self.muc.join(rec.jid, rec.nick, password=rec.password,
                                      history=history, autorejoin=False)
            rec.room = room
            creation = CreationWatch(room)
            # One timer per attempt rather than wait_for(shield()): two futures
            # and a callback fewer per join, a thousand times over at a restart.
            expiry = _Expiry(fut)
            timer = asyncio.get_running_loop().call_later(self.join_timeout, expiry)
            try:
                try:
                    # Cancelling fut (on expiry, or when we are cancelled) makes
                    # MUCClient forget the pending join and send an unjoin.
                    await fut
                except asyncio.CancelledError:
                    if _cancelling():
                        raise
                    if expiry.fired:
                        raise _JoinTimeout() from None
                    raise _ExitedDuringJoin() from None   # aioxmpp dropped the join
                finally:
                    timer.cancel()
                if creation.created:    # 201: the room had vanished (see instant.py)
                    await settle_created_room(self.muc, rec.jid, rejoin=rec.confirmed,
                                              timeout=self.join_timeout)
                if not room.muc_joined:
                    raise _ExitedDuringJoin()   # removed again before the join completed
            except BaseException:
                stream.recovering = stream.replaying = False
                stream.buffer = None
                unhook_room(room, self.muc)    # a failed attempt's Room, once MUCClient let it go
                raise
            return room

    async def _archive_usable(self, rec: TrackedRoom, *, probe_only: bool = False) -> bool:
        """Whether to recover this (re)join from the room's archive: only when
        there is something to recover from (a position) and the room
        advertises XEP-0313 (asked when not known yet; the answer is
        stored, and refreshed once per process after a join)."""
        if not self.use_archive or (self._recover_since(rec) is None and not probe_only):
            return False
        if rec.has_archive is None or probe_only:
            found = await mam.archive_advertised(
                self.client, rec.jid, timeout=min(self.join_timeout, 10.0))
            if found is None:
                return bool(rec.has_archive)   # no answer: ask again next time
            changed = found != rec.has_archive
            rec.has_archive = found
            rec.archive_checked = True
            logger.debug("%s: archive %s", rec.jid, "yes" if found else "no")
            if changed:
                self._mark(rec)    # stored: a restart need not ask before joining
        return rec.has_archive

    @_never_raises
    def _check_archive_soon(self, rec: TrackedRoom) -> None:
        if not self._closed:
            self._spawn(self._check_archive(rec))

    async def _check_archive(self, rec: TrackedRoom) -> None:
        if self._rooms.get(rec.jid) is rec and rec.state is State.JOINED:
            await self._archive_usable(rec, probe_only=True)

    async def _recover_from_archive(self, rec: TrackedRoom) -> None:
        """Deliver what the archive holds after our position, then what
        arrived live meanwhile; duplicates fall out by stanza-id. A read that
        ends early is retried with backoff from where it ended, live messages
        waiting behind it (see muc_guard.recovery)."""
        stream = self._stream(rec)
        room = rec.room
        failures = 0
        total = 0
        while True:
            read = await read_archive(
                self.client, rec.jid, stream.position, self._recover_since(rec),
                page_size=self.archive_page_size, limit=self.archive_limit - total,
                timeout=self.join_timeout)
            if self._stale_recovery(rec, room):
                return
            self._deliver_archived(rec, read.found)
            total += len(read.found)
            if read.lost_stream:
                # The rejoin after the reconnect reads the archive again from our
                # position, and what arrived live meanwhile comes back from there
                # in order. Delivered now, it would move the position past what
                # the archive has not returned yet, and that would be lost.
                stream.recovering, stream.buffer = False, None
                return
            if not read.retry or total >= self.archive_limit:
                break
            failures += 1
            delay = self.backoff.delay(failures)
            logger.warning("%s: archive recovery incomplete; reading on from the last "
                           "recovered message in %.1f s (attempt %d)", rec.jid, delay,
                           failures + 1)
            await asyncio.sleep(delay)
            if self._stale_recovery(rec, room):
                return
        if read.error is not None:
            logger.warning("%s: the archive refused the rest (%s): messages may be missing",
                           rec.jid, read.error)
        elif not read.complete and total:
            logger.warning("%s: archive recovery stopped after %d message(s) "
                           "(archive_limit)", rec.jid, total)
        stream.recovering = False
        buffered, stream.buffer = stream.buffer or [], None
        for message, received in buffered:
            self._offer(rec, message, received=received)
        logger.info("%s: recovered %d message(s) from the archive", rec.jid, total)

    def _stale_recovery(self, rec: TrackedRoom, room: aioxmpp.muc.Room | None) -> bool:
        """Whether the join a recovery belongs to is over. A newer join owns
        the stream and reads the archive again itself; without one, live
        messages stop waiting (the next rejoin reads from the position)."""
        if self._rooms.get(rec.jid) is not rec:
            return True
        if rec.room is not room and rec.room is not None:
            return True
        if room is None or rec.room is None or not room.muc_joined \
                or not self._stream_up.is_set():
            stream = self._stream(rec)
            stream.recovering, stream.buffer = False, None
            return True
        return False

    def _deliver_archived(self, rec: TrackedRoom, found: list[mam.ArchivedMessage]) -> None:
        """Deliver archived messages in order; those that also reached us
        live while we read were not missed (`recovered` false)."""
        stream = self._stream(rec)
        if not found:
            return
        now = self.clock.now(rec.jid.domain)
        live_ids = {message_facts(message, rec.jid, now)[0]
                    for message, _ in stream.buffer or ()}
        for item in found:
            self._offer(rec, item.message, archive_id=item.archive_id,
                        stamp=item.timestamp.timestamp(),
                        recovered=item.archive_id not in live_ids)

    def _recover_since(self, rec: TrackedRoom) -> datetime.datetime | None:
        """From when to recover, on the server's clock: the last delivered
        message, or, when none was delivered (a quiet room, or a crash before
        the lazy position write), the last successful join, which is stored
        at once. None on a first join: a bot has missed nothing before it
        ever joined. Never after the server's now (a position from a bad
        clock or an older muc_guard must not switch recovery off)."""
        domain = rec.jid.domain
        last = rec.position.last_ts
        if last is None and rec.last_joined is not None:
            last = self.clock.to_server(rec.last_joined, domain)
        if last is None:
            return None
        last = min(last, self.clock.now(domain))
        # A little earlier than our own stamp: clocks differ; dedup drops repeats.
        return datetime.datetime.fromtimestamp(last - DIGEST_TOLERANCE,
                                               tz=datetime.timezone.utc)

    def _history_for(self, rec: TrackedRoom) -> aioxmpp.muc.xso.History:
        since = self._recover_since(rec)
        if since is None:
            return aioxmpp.muc.xso.History(maxchars=0, maxstanzas=0)
        return aioxmpp.muc.xso.History(since=since)

    def _joined(self, rec: TrackedRoom, room: aioxmpp.muc.Room) -> None:
        if rec.drop_pending:    # this join ends a drop that _count_flap saw
            rec.drop_pending = False
            rec.rejoined_at = asyncio.get_running_loop().time()
        rec.room = room
        rec.state = State.JOINED
        if room.me is not None and room.me.nick and room.me.nick != rec.nick:
            logger.info("%s: the room gave us nick %r instead of %r", rec.jid,
                        room.me.nick, rec.nick)
            rec.nick = room.me.nick
        rec.confirmed = True
        self._end_nick_change(rec)
        now = time.time()
        if rec.last_dropped is not None and (rec.last_joined is None
                                             or rec.last_joined < rec.last_dropped):
            rec.last_downtime = now - rec.last_dropped   # this join ends that outage
        rec.last_joined = now
        self._saw_traffic(rec)
        self._quiet_builtin_self_ping(room)
        self._mark(rec)
        for waiter in rec.waiters or ():
            if not waiter.done():
                waiter.set_result(room)
        rec.waiters = None
        self._arm_ping(rec)
        if self.use_archive and not rec.archive_checked:
            # Learn it (or, when the store knew it, refresh it: rooms can be
            # reconfigured) off the rejoin path a later drop will take. When
            # the store knew it, spread over the second minute: a restart
            # with many rooms must not double its burst of queries, nor slow
            # the joins still in flight.
            rec.archive_checked = True
            if rec.has_archive is None:
                self._spawn(self._check_archive(rec))
            else:   # a timer, not a sleeping task: cheaper by the thousand
                asyncio.get_running_loop().call_later(
                    random.uniform(60, 120), self._check_archive_soon, rec)
        if rec.preferred_nick == rec.nick:
            rec.preferred_nick = None
        self._arm_reclaim(rec)
        announce, rec.announce_rejoin = rec.announce_rejoin, False
        logger.info("%s: %s as %r", rec.jid, "rejoined" if announce else "joined", rec.nick)
        if announce:
            self._owner.on_rejoined(rec.jid, room)

    @staticmethod
    def _quiet_builtin_self_ping(room: aioxmpp.muc.Room) -> None:
        """Switch off aioxmpp's own MUC self-ping: it would cycle the room behind
        our back and ignore errors on that rejoin (room stuck in JOIN_PRESENCE).

        Its timers are re-armed on every stanza from the room (two timers
        cancelled and two scheduled per message); with no limits, its
        AlivenessMonitor arms none. The limits also stay off if aioxmpp
        enables the monitor again (it copies them from _soft/_hard_timeout)."""
        monitor: Any = getattr(room, "_monitor", None)
        if monitor is None:
            return
        try:
            monitor._soft_timeout = monitor._hard_timeout = None
            monitor._monitor.deadtime_soft_limit = None
            monitor._monitor.deadtime_hard_limit = None
        except AttributeError:  # pragma: no cover - a future aioxmpp may differ
            try:
                monitor.soft_timeout = datetime.timedelta(seconds=_NEVER)
                monitor.hard_timeout = datetime.timedelta(seconds=_NEVER)
            except Exception:
                logger.debug("cannot quiet aioxmpp's self-ping", exc_info=True)

    def _join_refused(self, rec: TrackedRoom, exc: aioxmpp.errors.XMPPError) -> None:
        """A permanent error on the first join() of a room never joined:
        raise it, do not keep the room. (A known room follows the rejoin
        rules, and only _give_up ends it.)"""
        logger.warning("%s: join refused (%s)", rec.jid, error_condition(exc))
        self._fail_waiters(rec, exc)
        rec.room = None
        self._rooms.pop(rec.jid, None)
        if self._writer is not None:
            self._writer.mark_deleted(rec.jid)

    @staticmethod
    def _fail_waiters(rec: TrackedRoom, exc: BaseException) -> None:
        for waiter in rec.waiters or ():
            if not waiter.done():
                waiter.set_exception(exc)
        rec.waiters = None

    # --- persistence and tasks -----------------------------------------------------------

    def _mark(self, rec: TrackedRoom, *, now: bool = False) -> None:
        """Store the record's change (within StoreWriter.BATCH_DELAY, or `now`)."""
        if self._writer is not None and self._rooms.get(rec.jid) is rec:
            self._writer.mark(rec, now=now)

    async def _persist_now(self, rec: TrackedRoom) -> None:
        self._mark(rec)
        await self._flush()

    async def _flush(self) -> None:
        if self._writer is None:
            return
        try:
            await self._writer.flush()
        except StoreError:
            pass  # logged by the writer, which keeps the change and retries

    def _spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("muc_guard task failed", exc_info=task.exception())
