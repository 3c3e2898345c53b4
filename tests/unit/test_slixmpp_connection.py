"""The slixmpp plugin's connection handling, on a client that never connects:
reconnecting after a loss, the user's disconnect() as a shutdown, raising
handlers, and a process that ends without shutdown()."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import slixmpp  # noqa: E402

import muc_guard.slixmpp  # noqa: E402
from muc_guard import State  # noqa: E402
from muc_guard.store import Store  # noqa: E402
from tests.unit.test_slixmpp import (  # noqa: E402
    ROOM,
    SlixHarness,
    groupchat,
    self_available,
    self_unavailable,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Offline:
    """A client with the plugin whose connect() and cancel_connection_attempt()
    are recorded instead of run; nothing goes to a socket."""

    def __init__(self, **pconfig: Any) -> None:
        self.xmpp = slixmpp.ClientXMPP("bot@localhost", "unused")
        self.xmpp.send = lambda data, use_filters=True: None
        self.connects: list[tuple[Any, Any]] = []
        self.cancels = 0
        self.xmpp.connect = self._connect
        self.xmpp.cancel_connection_attempt = self._cancel
        self.xmpp.custom_address = ("127.0.0.1", 5299)
        self.xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp, pconfig={
            "reconnect_min": 0.01, "reconnect_max": 0.04, **pconfig})
        self.guard = self.xmpp.plugin["muc_guard"]
        self.keeper = self.guard._keeper

    def _connect(self, host: Any = None, port: Any = None) -> asyncio.Future[None]:
        self.connects.append((host, port))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def _cancel(self) -> None:
        self.cancels += 1

    def delay(self) -> float:
        timer = self.keeper._timer
        assert timer is not None
        return timer.when() - asyncio.get_running_loop().time()


async def test_a_lost_connection_reconnects_to_the_same_address_with_backoff():
    c = Offline()
    try:
        c.xmpp.event("session_start")
        c.xmpp.event("disconnected", "End of stream")
        assert c.keeper.scheduled and 0.0 < c.delay() <= 0.02     # [min, 2 min]
        await asyncio.sleep(0.05)
        assert c.connects == [("127.0.0.1", 5299)] and not c.keeper.scheduled
        # The whole round failed: slixmpp would now sleep on its own schedule.
        c.xmpp.event("reconnect_delay", 3)
        assert c.cancels == 1
        assert c.keeper.failures == 2 and 0.01 < c.delay() <= 0.04
        c.xmpp.event("reconnect_delay", 7)      # not ours any more: left alone
        assert c.cancels == 1
        await asyncio.sleep(0.05)
        assert len(c.connects) == 2
        # A connection made, then lost before the session: one more failure.
        c.xmpp.event("disconnected", None)
        assert c.keeper.failures == 3 and 0.02 <= c.delay() <= 0.04   # capped
        c.xmpp.event("session_start")           # someone else connected first
        assert not c.keeper.scheduled and c.keeper.failures == 0
        assert not c.guard._guard._closed
    finally:
        await c.guard.shutdown()


async def test_no_reconnect_before_a_session_when_disabled_or_after_refused_credentials():
    c = Offline()
    try:
        c.xmpp.event("disconnected", None)      # the user's first connect() failing
        assert not c.keeper.scheduled
        c.xmpp.event("session_start")
        c.guard.reconnect = False
        c.xmpp.event("disconnected", None)
        assert not c.keeper.scheduled
        c.guard.reconnect = True
        c.xmpp.event("disconnected", None)
        assert c.keeper.scheduled
        c.xmpp.event("failed_all_auth")
        assert not c.keeper.scheduled
        c.xmpp.event("disconnected", None)
        assert not c.keeper.scheduled
        await asyncio.sleep(0.05)
        assert c.connects == []
    finally:
        await c.guard.shutdown()


async def test_an_attempt_is_skipped_while_the_client_is_connecting_already():
    c = Offline()
    try:
        c.xmpp.event("session_start")
        c.xmpp.event("disconnected", None)
        c.xmpp._current_connection_attempt = asyncio.get_running_loop().create_future()
        await asyncio.sleep(0.05)
        assert c.connects == []
    finally:
        c.xmpp._current_connection_attempt = None
        await c.guard.shutdown()


async def test_bad_reconnect_bounds_are_refused():
    with pytest.raises(ValueError, match="reconnect_min"):
        Offline(reconnect_min=5.0, reconnect_max=1.0)
    c = Offline()
    try:
        with pytest.raises(ValueError, match="reconnect_min"):
            c.guard.reconnect_min = 0
        c.guard.reconnect_max = 2.0
        assert c.guard.config["reconnect_max"] == 2.0
    finally:
        await c.guard.shutdown()


async def test_shutdown_leaves_nothing_scheduled():
    c = Offline()
    c.xmpp.event("session_start")
    c.xmpp.event("disconnected", None)
    timer = c.keeper._timer
    assert timer is not None
    await c.guard.shutdown()
    assert timer.cancelled() and not c.keeper.scheduled
    assert "disconnect" not in c.xmpp.__dict__
    c.xmpp.event("session_start")
    c.xmpp.event("disconnected", None)
    await asyncio.sleep(0.05)
    assert not c.keeper.scheduled and c.connects == []


async def test_the_users_disconnect_shuts_the_guard_down(tmp_path, caplog):
    c = Offline()
    db = tmp_path / "bot.db"
    await c.guard.open_store(db)
    c.xmpp.event("session_start")
    await asyncio.wait_for(c.xmpp.disconnect(), 5)
    assert c.guard._guard._closed and c.keeper.stopped and not c.keeper.scheduled
    assert "disconnect" not in c.xmpp.__dict__        # the wrapper is gone
    with pytest.raises(RuntimeError, match="shut down"):
        await c.guard.join(ROOM, "bot")
    c.xmpp.event("session_start")                     # a later connect(): said plainly
    assert "not guarded" in caplog.text
    store = await Store.open(db)                       # closed, marked clean
    try:
        assert await store.take_clean_exit("bot@localhost")
    finally:
        await store.close()
    await c.guard.shutdown()                           # idempotent


async def test_slixmpps_own_disconnect_only_pauses_the_guard():
    c = Offline()
    try:
        c.xmpp.event("session_start")
        c.xmpp.reconnect(0.0, "Ping timeout")   # xep_0199's keepalive does this
        for _ in range(5):
            await asyncio.sleep(0)
        assert not c.guard._guard._closed and not c.keeper.stopped
        assert c.connects        # reconnect() connected again by itself
        assert c.xmpp.__dict__["disconnect"] == c.keeper._disconnect
    finally:
        await c.guard.shutdown()


async def test_handlers_raising_on_every_event_are_logged_and_change_nothing(caplog):
    h = SlixHarness()
    calls: list[str] = []
    for name in ("muc_guard_dropped", "muc_guard_rejoined", "muc_guard_gave_up",
                 "muc_guard_message"):
        def bad(data: Any, name: str = name) -> None:
            calls.append(name)
            raise RuntimeError(f"bug in {name}")

        async def bad_async(data: Any, name: str = name) -> None:
            calls.append(name + " async")
            raise RuntimeError(f"async bug in {name}")

        h.xmpp.add_event_handler(name, bad)
        h.xmpp.add_event_handler(name, bad_async)
    try:
        with caplog.at_level(logging.ERROR):
            await h.joined()
            h.feed(groupchat(ROOM, "alice", "hi", "id-1"))
            await h.settle()
            h.feed(self_unavailable(ROOM, "bot", 110, 333))
            await h.settle()
            h.feed(self_available(ROOM, "bot"))
            await h.settle()
            h.feed(self_unavailable(ROOM, "bot", 110, 301))      # banned: gave up
            await h.settle()
        order = ["muc_guard_message", "muc_guard_dropped", "muc_guard_rejoined",
                 "muc_guard_dropped", "muc_guard_gave_up"]
        assert [c for c in calls if not c.endswith(" async")] == order
        assert [c[:-6] for c in calls if c.endswith(" async")] == order
        assert h.names() == order
        logged = [r for r in caplog.records if r.name.startswith("slixmpp")
                  and r.exc_info and "bug in" in str(r.exc_info[1])]
        assert len(logged) == 10                             # slixmpp logged each one
        assert not [r for r in caplog.records if r.name.startswith("muc_guard")
                    and r.levelno >= logging.ERROR]
        assert h.guard._guard.violations() == []
        assert h.info().state is State.GAVE_UP
    finally:
        await h.guard.shutdown()


def test_a_main_that_returns_without_shutdown_lets_the_process_exit(tmp_path):
    """Nothing of ours (store thread, timers, the reconnect keeper) keeps the
    process alive once asyncio.run() ends, with a join still waiting."""
    code = textwrap.dedent(f"""
        import asyncio, slixmpp, muc_guard.slixmpp

        async def main():
            xmpp = slixmpp.ClientXMPP("bot@localhost", "x")
            xmpp.send = lambda data, use_filters=True: None
            xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp)
            guard = xmpp.plugin["muc_guard"]
            await guard.open_store({str(tmp_path / 'bot.db')!r})
            xmpp.event("session_start")
            asyncio.ensure_future(guard.join("{ROOM}", "bot"))
            xmpp.event("disconnected", None)        # a reconnect is now scheduled
            assert guard._keeper.scheduled
            await asyncio.sleep(0.05)

        asyncio.run(main())
        print("ended")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ended"


# --- stable_resource -------------------------------------------------------------------


async def _stored_resource(db: Any, resource: str | None = None) -> str | None:
    store = await Store.open(db)
    try:
        if resource is not None:
            await store.save_resource("bot@localhost", resource)
        return await store.load_resource("bot@localhost")
    finally:
        await store.close()


async def test_a_store_opened_before_connect_asks_for_the_stored_resource(tmp_path):
    db = tmp_path / "bot.db"
    await _stored_resource(db, "kept")
    c = Offline()
    try:
        await c.guard.open_store(db)
        assert c.xmpp.requested_jid.resource == "kept"
    finally:
        await c.guard.shutdown()


async def test_a_store_opened_during_a_bound_session_warns_and_keeps_that_resource(
        tmp_path, caplog):
    db = tmp_path / "bot.db"
    await _stored_resource(db, "old")
    c = Offline()
    try:
        c.xmpp.boundjid.resource = "fresh"          # the server bound this one
        c.xmpp.event("session_start")
        assert c.xmpp.requested_jid.resource == "fresh"   # a reconnect asks for it
        with caplog.at_level(logging.WARNING, logger="muc_guard"):
            await c.guard.open_store(db)
        (warning,) = [r for r in caplog.records if "stable_resource" in r.getMessage()]
        assert "'old' does not apply" in warning.getMessage()
        assert c.xmpp.requested_jid.resource == "fresh"
    finally:
        await c.guard.shutdown()
    assert await _stored_resource(db) == "fresh"      # the next start asks for it


async def test_a_jid_with_its_own_resource_is_left_alone(tmp_path):
    db = tmp_path / "bot.db"
    await _stored_resource(db, "old")
    xmpp = slixmpp.ClientXMPP("bot@localhost/mine", "unused")
    xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp)
    guard = xmpp.plugin["muc_guard"]
    try:
        await guard.open_store(db)
        assert xmpp.requested_jid.resource == "mine"
        xmpp.event("session_start")
        assert xmpp.requested_jid.resource == "mine"
    finally:
        await guard.shutdown()


async def test_without_stable_resource_every_connection_takes_what_the_server_gives(tmp_path):
    db = tmp_path / "bot.db"
    await _stored_resource(db, "old")
    c = Offline(stable_resource=False)
    try:
        await c.guard.open_store(db)
        c.xmpp.boundjid.resource = "fresh"
        c.xmpp.event("session_start")
        assert c.xmpp.requested_jid.resource == ""
    finally:
        await c.guard.shutdown()
