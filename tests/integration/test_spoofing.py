"""Spoofing against a real Prosody (issue #6, part 5).

What another account can really do: Prosody stamps the real ``from`` on
every stanza a client sends, so mallory cannot send a presence from the
room. She can send the bot a presence (or message) from her own JID that
carries everything else a room's "you were removed" presence carries (110,
333, our nick in an item, a <destroy/>, a 'to' of the bot's full JID), try a
forged ``from``, or act through the room itself: send an error to the bot's
occupant JID (Prosody's way of learning that an occupant is gone) or a
private message of type error. None of it may make the guard drop, rejoin or
give up, and the server must still hold the bot in the room.
"""

from __future__ import annotations

import asyncio

import aioxmpp
import aioxmpp.muc.xso as muc_xso
import pytest

from muc_guard import State
from guardkit import Bot, occupant_nicks_of
from prosody import connected

pytestmark = pytest.mark.integration


def removal(to: aioxmpp.JID, *, nick: str, bot: aioxmpp.JID,
            destroy: bool = False) -> aioxmpp.Presence:
    """A presence with every part of a room's 110+333 removal of `nick`."""
    presence = aioxmpp.Presence(type_=aioxmpp.PresenceType.UNAVAILABLE, to=to)
    ext = muc_xso.UserExt(status_codes=[110, 333, 307])
    ext.items.append(muc_xso.UserItem(affiliation="none", role="none", nick=nick, jid=bot))
    if destroy:
        ext.destroy = muc_xso.DestroyNotification()
    presence.xep0045_muc_user = ext
    presence.status[None] = "you were removed (not really)"
    return presence


@pytest.fixture
async def scene(prosody, make_client, account, room_jid):
    bot_jid, bot_pw = account("bot")
    bot = await Bot(make_client, bot_jid, bot_pw).start()
    bot.jid = bot.client.local_jid
    mallory_jid, mallory_pw = account("mallory")
    mallory = make_client(mallory_jid.replace(resource="m"), mallory_pw)
    await connected(mallory)
    room = await bot.guard.join(room_jid, "bot")
    seen: list[aioxmpp.stanza.StanzaBase] = []    # what reached the bot from mallory

    def record(stanza):
        if stanza.from_ is not None and stanza.from_.bare() == mallory_jid.bare():
            seen.append(stanza)
        return stanza
    bot.client.stream.app_inbound_presence_filter.register(record, -1)
    bot.client.stream.app_inbound_message_filter.register(record, -1)
    yield bot, mallory, room, seen
    await bot.stop()


async def assert_untouched(prosody, bot, room, room_jid) -> None:
    await asyncio.sleep(0.5)            # time for anything that would follow
    assert bot.events == []
    info = bot.info(room_jid)
    assert (info.state, info.drops, info.room) == (State.JOINED, 0, room)
    assert room.muc_joined
    assert await occupant_nicks_of(prosody, room_jid, bot.jid) == ["bot"]


async def until_seen(seen: list, count: int) -> None:
    for _ in range(100):
        if len(seen) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {len(seen)} of {count} spoofed stanzas reached the bot")


async def test_a_removal_presence_from_another_account_is_ignored(prosody, scene, room_jid):
    bot, mallory, room, seen = scene
    await mallory.send(removal(bot.jid, nick="bot", bot=bot.jid))
    await mallory.send(removal(bot.jid, nick="bot", bot=bot.jid, destroy=True))
    await mallory.send(removal(bot.jid.bare(), nick="bot", bot=bot.jid))
    await until_seen(seen, 3)
    assert all(s.xep0045_muc_user is not None for s in seen)   # 110+333 arrived intact
    await assert_untouched(prosody, bot, room, room_jid)


async def test_a_forged_room_from_is_replaced_by_the_server(prosody, scene, room_jid):
    bot, mallory, room, seen = scene
    forged = removal(bot.jid, nick="bot", bot=bot.jid)
    forged.from_ = room_jid.replace(resource="bot")          # what mallory would like
    await mallory.send(forged)
    await mallory.send(aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT, to=bot.jid,
                                       from_=room_jid.replace(resource="someone")))
    await until_seen(seen, 2)        # both arrived, with mallory's own JID stamped on
    assert [type(s) for s in seen] == [aioxmpp.Presence, aioxmpp.Message]
    await assert_untouched(prosody, bot, room, room_jid)


async def test_errors_sent_through_the_room_do_not_remove_the_bot(prosody, scene, room_jid):
    bot, mallory, room, seen = scene
    _, joined = mallory.summon(aioxmpp.MUCClient).join(room_jid, "mallory")
    await asyncio.wait_for(joined, 10)
    target = room_jid.replace(resource="bot")
    # An error "from" mallory to the bot's occupant JID: Prosody reads errors
    # from an occupant as that occupant being gone (it removes mallory, not us).
    bounce = aioxmpp.Message(type_=aioxmpp.MessageType.ERROR, to=target)
    bounce.error = aioxmpp.stanza.Error(
        condition=aioxmpp.ErrorCondition.RECIPIENT_UNAVAILABLE)
    await mallory.send(bounce)
    presence_error = aioxmpp.Presence(type_=aioxmpp.PresenceType.ERROR, to=target)
    presence_error.error = aioxmpp.stanza.Error(
        condition=aioxmpp.ErrorCondition.RECIPIENT_UNAVAILABLE)
    await mallory.send(presence_error)
    # And a private message through the room that claims 110+333.
    pm = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=target)
    pm.body[None] = "you were removed"
    pm.xep0045_muc_user = muc_xso.UserExt(status_codes=[110, 333])
    await mallory.send(pm)
    await assert_untouched(prosody, bot, room, room_jid)
    # Prosody took the bounce for mallory's own and removed her: it arrived.
    assert "mallory" not in await prosody.occupants(room_jid)
