"""
GuardMixin: muc_guard's behaviour for a service of your own.

aioxmpp forbids subclassing services, and it only collects decorated handlers
(``depsignal``, filters) from the concrete class's own namespace, so a plain
mixin cannot declare them. This mixin therefore wires everything by hand in
``__init__`` (through a :class:`~muc_guard.aioxmpp.driver.GuardDriver` it owns) and
unwires it in ``_shutdown``. Use it as the first base of your service and list
:class:`aioxmpp.MUCClient` in ``ORDER_AFTER``::

    class Bot(muc_guard.GuardMixin, aioxmpp.service.Service):
        ORDER_AFTER = [aioxmpp.MUCClient]

        async def _shutdown(self):
            ...                          # your own clean-up
            await super()._shutdown()    # then the guard's

:class:`muc_guard.MUCGuard` is exactly this mixin on an otherwise empty service.
"""

from __future__ import annotations

import os
from typing import Any

import aioxmpp
import aioxmpp.callbacks
import aioxmpp.muc

from .aioxmpp.driver import GuardDriver
from .core.health import Health
from .core.record import RoomInfo

__all__ = ["GuardMixin"]


def _engine_setting(name: str, doc: str) -> property:
    """A setting of :class:`muc_guard.core.settings.Settings`, as an attribute."""
    def get(self: "GuardMixin") -> Any:
        return getattr(self._guard.settings, name)

    def set_(self: "GuardMixin", value: Any) -> None:
        setattr(self._guard.settings, name, value)

    return property(get, set_, doc=doc)


class GuardMixin:
    """Tracks wanted rooms, detects drops, rejoins; see the package docs."""

    #: ``on_dropped(room_jid, cause)``: a removal we did not ask for.
    on_dropped = aioxmpp.callbacks.Signal()
    #: ``on_rejoined(room_jid, room)``: back in, with the new :class:`aioxmpp.muc.Room`.
    on_rejoined = aioxmpp.callbacks.Signal()
    #: ``on_gave_up(room_jid, cause)``: the guard will not rejoin on its own.
    on_gave_up = aioxmpp.callbacks.Signal()
    #: ``on_gap(room_jid, since, until, reason)``: recovery could not fill an
    #: outage; messages said from `since` to `until` (UNIX times, the server's
    #: clock) are lost; `reason` a :class:`muc_guard.GapReason`.
    on_gap = aioxmpp.callbacks.Signal()
    #: ``on_message(room_jid, message, *, recovered, own)``: every groupchat
    #: message of a tracked room, once, whichever Room object it came through.
    on_message = aioxmpp.callbacks.Signal()

    def __init__(self, client: aioxmpp.Client, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[call-arg]
        dependencies = getattr(self, "dependencies", {})
        muc = dependencies.get(aioxmpp.MUCClient)
        if muc is None:
            raise TypeError(
                f"{type(self).__name__} uses GuardMixin: list aioxmpp.MUCClient in its "
                "ORDER_AFTER and create it with client.summon()"
            )
        self._guard = GuardDriver(self, client, muc)

    @property
    def ping_idle(self) -> float:
        """Seconds of silence from a room before a self-ping (default 300)."""
        return self._guard.settings.ping_idle

    @ping_idle.setter
    def ping_idle(self, value: float) -> None:
        self._guard.set_ping_idle(value)

    ping_timeout = _engine_setting(
        "ping_timeout", "Seconds to wait for a self-ping reply (default 30).")
    join_timeout = _engine_setting(
        "join_timeout", "Watchdog on each join attempt, in seconds (default 30).")
    leave_timeout = _engine_setting(
        "leave_timeout", "Seconds leave() waits for the room's answer (default 10).")
    permanent_error_limit = _engine_setting(
        "permanent_error_limit",
        "Consecutive permanent join errors before giving up on a rejoin (default 3).")
    max_concurrent_joins = _engine_setting(
        "max_concurrent_joins",
        "Join attempts in flight at once; more go out in waves (default 1024).")
    nick_conflict_retries = _engine_setting(
        "nick_conflict_retries",
        "409 on a rejoin: tries with our own nick before a fallback nick (default 2).")
    max_fallback_nicks = _engine_setting(
        "max_fallback_nicks", "How many fallback nicks to try (default 5).")
    fallback_nick = _engine_setting(
        "fallback_nick",
        "fallback_nick(nick, attempt) -> str; default appends one more '_' per attempt.")
    use_archive = _engine_setting(
        "use_archive",
        "Recover missed messages from the room's XEP-0313 archive when it has one "
        "(default True); otherwise from MUC history.")
    archive_limit = _engine_setting(
        "archive_limit", "Most messages recovered from an archive per rejoin (default 1000).")
    archive_page_size = _engine_setting(
        "archive_page_size", "Messages per archive page (default 50, Prosody's maximum).")
    stable_resource = _engine_setting(
        "stable_resource",
        "Store the bound resource and ask for it again after a restart (default True); "
        "applies to clients created with a JID that names no resource.")
    probe_before_rejoin = _engine_setting(
        "probe_before_rejoin",
        "Self-ping a room we may still be in (after a lost stream, or a restart) before "
        "joining it again; a room that kept us is refreshed, not announced (default True).")
    probe_timeout = _engine_setting(
        "probe_timeout", "Seconds to wait for that probe's reply (default 5).")
    nick_reclaim_interval = _engine_setting(
        "nick_reclaim_interval",
        "Seconds between attempts to win back a nick lost to a 409 (default 60).")
    health_grace = _engine_setting(
        "health_grace",
        "health(): seconds a wanted room (or the stream) may be out and still count "
        "as healthy, a bounded rejoin (default 120).")

    @property
    def backoff_min(self) -> float:
        """Smallest delay between failed join attempts, in seconds (default 1)."""
        return self._guard.settings.backoff.minimum

    @backoff_min.setter
    def backoff_min(self, value: float) -> None:
        self._set_backoff(float(value), self._guard.settings.backoff.maximum)

    @property
    def backoff_max(self) -> float:
        """Largest delay between failed join attempts, in seconds (default 60)."""
        return self._guard.settings.backoff.maximum

    @backoff_max.setter
    def backoff_max(self, value: float) -> None:
        self._set_backoff(self._guard.settings.backoff.minimum, float(value))

    def _set_backoff(self, minimum: float, maximum: float) -> None:
        self._guard.settings.set_backoff(minimum, maximum)

    async def open_store(self, path: str | os.PathLike[str]) -> None:
        """Open (creating or migrating) the SQLite state file and rejoin what it wants.

        Raises :class:`muc_guard.StoreError` for a corrupt, foreign or newer file.
        Close it with ``shutdown()``; if the event loop ends first, the store
        is flushed and closed anyway (:mod:`muc_guard.closer`), so that its
        thread does not keep the process from exiting.
        """
        await self._guard.open_store(path)

    async def join(self, room_jid: aioxmpp.JID | str, nick: str, *,
                   password: str | None = None) -> aioxmpp.muc.Room:
        """Want the room from now on and return its Room once joined.

        Raises the room's :class:`aioxmpp.errors.XMPPError` on a permanent
        refusal (the room is then not kept). Transient failures are retried
        while this waits; bound it with :func:`asyncio.wait_for` if needed:
        cancelling the wait does not forget the room.
        """
        return await self._guard.join(room_jid, nick, password=password)

    async def leave(self, room_jid: aioxmpp.JID | str) -> None:
        """Leave the room and forget it: it is never rejoined. Unknown rooms: no-op."""
        await self._guard.leave(room_jid)

    async def set_nick(self, room_jid: aioxmpp.JID | str, nick: str) -> None:
        """Change our nick in a tracked room; the store follows what the room reports."""
        await self._guard.set_nick(room_jid, nick)

    def rooms(self) -> list[RoomInfo]:
        """Snapshots of every tracked room, gave-up ones included."""
        return self._guard.rooms()

    def room_info(self, room_jid: aioxmpp.JID | str) -> RoomInfo | None:
        """Snapshot of one tracked room, or None."""
        return self._guard.room_info(room_jid)

    def health(self) -> Health:
        """The account's health snapshot: stream, rooms, counters, ``healthy``."""
        return self._guard.health()

    async def _shutdown(self) -> None:
        await self._guard.close()
        await super()._shutdown()  # type: ignore[misc]
