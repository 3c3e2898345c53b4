"""What only the slixmpp front-end has, against a real Prosody (issue #14).

Every scenario the two front-ends share runs on both (the ``frontend``
fixture) in test_guard.py, test_continuity.py, test_ejabberd.py,
test_tls.py, test_faults.py, test_examples.py and test_exit.py; the slixmpp
test bot is tests/integration/frontends.py. Here: slixmpp's own MUC tables,
the plugin's reconnecting (aioxmpp reconnects by itself), and the user's
``disconnect()``.
"""

from __future__ import annotations

import asyncio

import pytest
from frontends import SlixBot

from guardkit import eventually, occupant_nicks_of
from muc_guard import Cause, State
from muc_guard.store import Store

pytestmark = pytest.mark.integration


async def test_xep_0045_tables_follow_the_guard(prosody, account, room_jid):
    """The guard enters its rooms into xep_0045's tables as join_muc_wait
    does (so xep_0045's own API sees them), keeps them across a kick and
    rejoin, and removes them on leave (xep_0045 alone never forgets a room)."""
    await prosody.create_room(room_jid)
    jid, password = account("slixbot")
    bot = SlixBot(prosody, jid, password)
    muc = bot.xmpp.plugin["xep_0045"]
    try:
        await bot.start()
        assert await asyncio.wait_for(bot.join(room_jid, "bot"), 15) == "bot"
        assert str(room_jid) in muc.rooms[None]
        assert muc.our_nicks[None][str(room_jid)] == "bot"
        await prosody.kick_with_codes(room_jid, "bot", [333])
        await bot.wait_event("rejoined", room_jid)
        assert str(room_jid) in muc.rooms[None]

        async def back() -> bool:
            return await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
        assert await eventually(back)
        await bot.leave(room_jid)
        assert str(room_jid) not in muc.rooms[None]
        assert str(room_jid) not in muc.our_nicks[None]
        bot.check_invariants()
    finally:
        await bot.close()


@pytest.mark.parametrize("hard", [True, False], ids=["killed", "stopped"])
async def test_the_plugin_reconnects_after_a_server_restart_and_the_rooms_come_back(
        hard, private_prosody, account):
    """slixmpp alone stays offline after the server goes away (SIGKILL: the
    connection just ends; SIGTERM: the server closes the stream first). The
    plugin reconnects with backoff while the server is down and after it is
    back, and every room is rejoined and announced once."""
    server = private_prosody
    jid, password = account("phoenix", server=server)
    bot = SlixBot(server, jid, password, reconnect_min=0.2, reconnect_max=1.0)
    rooms = [f"phoenix{i}@{server.muc_domain}" for i in range(2)]
    try:
        await bot.start()
        for room in rooms:
            await asyncio.wait_for(bot.join(room, "bot"), 15)
        await asyncio.sleep(0.5)
        if hard:
            await server.kill()
        else:
            await server.astop()
        keeper = bot.guard._keeper

        async def retried() -> bool:
            return keeper.attempts >= 2            # at least once more while down
        assert await eventually(retried, timeout=10)
        assert not bot.xmpp.is_connected() and bot.events == []
        resource = bot.xmpp.boundjid.resource
        await server.astart()
        for room in rooms:
            _, cause = await bot.wait_event("dropped", room, timeout=30)
            assert cause is Cause.STREAM_LOST
            _, nick = await bot.wait_event("rejoined", room, timeout=30)
            assert nick == "bot"

            async def back(room: str = room) -> bool:
                return await occupant_nicks_of(server, room, jid) == ["bot"]
            assert await eventually(back)
        assert keeper.failures == 0 and not keeper.scheduled
        assert bot.xmpp.boundjid.resource == resource     # stable_resource
        assert [info.state for info in bot.guard.rooms()] == [State.JOINED] * len(rooms)
        await asyncio.sleep(0.5)
        for room in rooms:                                 # nothing announced twice
            assert bot.kinds(room) == ["dropped", "rejoined"]
        bot.check_invariants()
    finally:
        await bot.close()


async def test_the_users_disconnect_shuts_the_guard_down_and_does_not_reconnect(
        prosody, account, room_jid, tmp_path):
    await prosody.create_room(room_jid)
    jid, password = account("leaver")
    db = tmp_path / "bot.db"
    bot = SlixBot(prosody, jid, password, reconnect_min=0.1, reconnect_max=0.2)
    try:
        await bot.open_store(db)
        await bot.start()
        await asyncio.wait_for(bot.join(room_jid, "bot"), 15)
        await asyncio.wait_for(bot.xmpp.disconnect(wait=2.0), 10)
        assert bot.guard._guard._closed and bot.guard._keeper.stopped
        await asyncio.sleep(0.5)                        # past any reconnect delay
        assert not bot.xmpp.is_connected() and not bot.xmpp.is_connecting()
        assert bot.guard._keeper.attempts == 0 and bot.events == []
        store = await Store.open(db)
        try:
            assert await store.take_clean_exit(str(jid.bare()))
            assert [str(r.jid) for r in await store.load_rooms(str(jid.bare()))] == \
                [str(room_jid)]                          # still wanted next time
        finally:
            await store.close()
    finally:
        await bot.close()
