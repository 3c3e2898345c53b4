"""What only the slixmpp front-end has, against a real Prosody (issue #14).

Every scenario the two front-ends share runs on both (the ``frontend``
fixture) in test_guard.py, test_continuity.py, test_ejabberd.py and
test_tls.py; the slixmpp test bot is tests/integration/frontends.py.
"""

from __future__ import annotations

import asyncio

import pytest

from guardkit import eventually, occupant_nicks_of

slixmpp = pytest.importorskip("slixmpp")

from frontends import SlixBot  # noqa: E402

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
