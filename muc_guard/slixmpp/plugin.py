"""
The slixmpp plugin class: settings as pconfig, the public calls, the events.

Every setting of the aioxmpp front-end (:class:`muc_guard.GuardMixin`) is a
key of ``default_config`` with the same default, taken from one
:class:`~muc_guard.core.settings.Settings`, and the same meaning. slixmpp
reads ``default_config`` keys as attributes of the plugin
(``guard.ping_idle``); assigning one (``guard.ping_idle = 60``) applies it to
the running guard, validated as in aioxmpp. (Changing ``guard.config[...]``
directly bypasses that: use the attributes.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from slixmpp import JID
from slixmpp.plugins import BasePlugin

from ..core.health import Health
from ..core.record import RoomInfo
from ..core.settings import Settings
from .connection import ConnectionKeeper, check_bounds
from .driver import GuardDriver

__all__ = ["MUCGuardPlugin", "SETTINGS", "CONNECTION"]

logger = logging.getLogger("muc_guard")

_DEFAULTS = Settings()

#: The settings of muc_guard, as pconfig keys, with their defaults.
SETTINGS: dict[str, Any] = {
    "ping_idle": _DEFAULTS.ping_idle,
    "ping_timeout": _DEFAULTS.ping_timeout,
    "join_timeout": _DEFAULTS.join_timeout,
    "leave_timeout": _DEFAULTS.leave_timeout,
    "permanent_error_limit": _DEFAULTS.permanent_error_limit,
    "max_concurrent_joins": _DEFAULTS.max_concurrent_joins,
    "nick_conflict_retries": _DEFAULTS.nick_conflict_retries,
    "max_fallback_nicks": _DEFAULTS.max_fallback_nicks,
    "fallback_nick": _DEFAULTS.fallback_nick,
    "use_archive": _DEFAULTS.use_archive,
    "archive_limit": _DEFAULTS.archive_limit,
    "archive_page_size": _DEFAULTS.archive_page_size,
    "stable_resource": _DEFAULTS.stable_resource,
    "probe_before_rejoin": _DEFAULTS.probe_before_rejoin,
    "probe_timeout": _DEFAULTS.probe_timeout,
    "nick_reclaim_interval": _DEFAULTS.nick_reclaim_interval,
    "health_grace": _DEFAULTS.health_grace,
    "backoff_min": _DEFAULTS.backoff.minimum,
    "backoff_max": _DEFAULTS.backoff.maximum,
}

#: The slixmpp front-end's own pconfig keys: reconnecting the client after a
#: lost connection (:mod:`.connection`); aioxmpp does that by itself.
CONNECTION: dict[str, Any] = {
    "reconnect": True,
    "reconnect_min": 1.0,
    "reconnect_max": 60.0,
}


class MUCGuardPlugin(BasePlugin):
    """Keeps this client inside the MUC rooms it wants to be in.

    Events (``xmpp.add_event_handler(name, handler)``, one dict argument):

    * ``muc_guard_dropped``: ``{"room": JID, "cause": muc_guard.Cause}``, a
      removal we did not ask for;
    * ``muc_guard_rejoined``: ``{"room": JID, "nick": str}``, back in;
    * ``muc_guard_gave_up``: ``{"room": JID, "cause": muc_guard.Cause}``, the
      guard will not rejoin on its own;
    * ``muc_guard_gap``: ``{"room": JID, "since": float, "until": float,
      "reason": muc_guard.GapReason}``, recovery could not fill an outage:
      messages said between the two UNIX times (the server's clock) are lost;
    * ``muc_guard_message``: ``{"room": JID, "message": Message, "recovered":
      bool, "own": bool}``, every groupchat message of a tracked room, once.

    The user's ``xmpp.disconnect()`` shuts the guard down (its future
    completes once the store is closed); a lost connection only pauses it,
    and with ``reconnect`` (the default) the plugin connects again.
    """

    name = "muc_guard"
    description = "muc_guard: stay inside XEP-0045 rooms (drop detection, self-ping, rejoin)"
    dependencies = {"xep_0030", "xep_0045", "xep_0082", "xep_0199", "xep_0203",
                    "xep_0313", "xep_0359"}
    default_config = {"store": None, **CONNECTION, **SETTINGS}

    _guard: GuardDriver
    _keeper: ConnectionKeeper

    # --- slixmpp's hooks ------------------------------------------------------------

    def plugin_init(self) -> None:
        self._store_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._guard = GuardDriver(self.xmpp)
        for key in SETTINGS:
            if key not in ("backoff_min", "backoff_max"):
                self._apply(key, self.config[key])
        self._guard.settings.set_backoff(float(self.config["backoff_min"]),
                                         float(self.config["backoff_max"]))
        check_bounds(self.config["reconnect_min"], self.config["reconnect_max"])
        self._keeper = ConnectionKeeper(self.xmpp, self.config, self.shutdown)
        unknown = set(self.config) - set(self.default_config)
        if unknown:
            logger.warning("muc_guard: unknown pconfig key(s) ignored: %s",
                           ", ".join(sorted(unknown)))
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self._open_configured_store()

    def plugin_end(self) -> None:
        """Disabling the plugin shuts the guard down (on the running loop)."""
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self._keeper.stop()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # no loop: muc_guard.closer closes the store at exit
        self._close_task = loop.create_task(self.shutdown())

    def __setattr__(self, key: str, value: Any) -> None:
        if key in SETTINGS and "_guard" in self.__dict__:
            self._apply(key, value)
            self.config[key] = value
            return
        if key in ("reconnect_min", "reconnect_max"):
            bounds = {**self.config, key: value}
            check_bounds(bounds["reconnect_min"], bounds["reconnect_max"])
        super().__setattr__(key, value)

    def _apply(self, key: str, value: Any) -> None:
        settings = self._guard.settings
        if key == "ping_idle":
            self._guard.set_ping_idle(value)
        elif key == "backoff_min":
            settings.set_backoff(float(value), settings.backoff.maximum)
        elif key == "backoff_max":
            settings.set_backoff(settings.backoff.minimum, float(value))
        else:
            setattr(settings, key, value)

    def _on_session_start(self, _: Any) -> None:
        if self._keeper.stopped:
            logger.warning("%s: muc_guard was shut down (disconnect() or shutdown()); "
                           "this session's rooms are not guarded", self.xmpp.boundjid.bare)
            return
        self._open_configured_store()

    def _open_configured_store(self) -> None:
        """pconfig "store": opened as soon as a loop runs (plugin_init may
        come before it: then at the first session_start or join())."""
        path = self.config.get("store")
        if path is None or self._store_task is not None or self._guard.store is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._store_task = loop.create_task(self._open_store_logged(path))

    async def _open_store_logged(self, path: Any) -> None:
        try:
            await self._guard.open_store(path)
        except Exception:
            logger.exception("muc_guard: cannot open the store %r", path)
            raise

    async def _store_ready(self) -> None:
        self._open_configured_store()
        task = self._store_task
        if task is not None and not task.done():
            await asyncio.shield(task)

    # --- the public interface -----------------------------------------------------

    async def open_store(self, path: str | os.PathLike[str]) -> None:
        """Open (creating or migrating) the SQLite state file and rejoin what
        it wants; the same file the aioxmpp front-end uses. Raises
        :class:`muc_guard.StoreError` for a corrupt, foreign or newer file."""
        await self._guard.open_store(path)

    async def join(self, room: JID | str, nick: str, *, password: str | None = None) -> str:
        """Want the room from now on; returns the nick the room gave us once joined.

        Raises the room's :class:`slixmpp.exceptions.PresenceError` on a
        permanent refusal (the room is then not kept). Transient failures are
        retried while this waits; cancelling the wait does not forget the room.
        """
        await self._store_ready()
        return await self._guard.join(room, nick, password=password)

    async def leave(self, room: JID | str) -> None:
        """Leave the room and forget it: it is never rejoined. Unknown rooms: no-op."""
        await self._guard.leave(room)

    async def set_nick(self, room: JID | str, nick: str) -> None:
        """Change our nick in a tracked room; the store follows what the room reports."""
        await self._guard.set_nick(room, nick)

    def rooms(self) -> list[RoomInfo]:
        """Snapshots of every tracked room, gave-up ones included (jid: slixmpp.JID)."""
        return self._guard.rooms()

    def room_info(self, room: JID | str) -> RoomInfo | None:
        return self._guard.room_info(room)

    def health(self) -> Health:
        """The account's health snapshot: stream, rooms, counters, ``healthy``."""
        return self._guard.health()

    async def shutdown(self) -> None:
        """Stop timers and tasks (reconnecting included), flush and close the
        store. Rooms stay wanted. Also done by the user's ``xmpp.disconnect()``."""
        self._keeper.stop()
        task = self._store_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._guard.close()
