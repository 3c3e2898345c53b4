"""Room state that must never get stuck, on a real Prosody (issue #12).

Each scenario ends with the invariant check of muc_guard.invariants: a
wanted room that is not joined has exactly one join pending, a joined room a
self-ping pending, a given-up room neither.
"""

from __future__ import annotations

import asyncio

import aioxmpp
import pytest

from muc_guard import State, mam
from guardkit import Bot, eventually, occupant_nicks_of
from prosody import connected

pytestmark = pytest.mark.integration


async def speaker(room_jid, server, account, make_client):
    """Another account in the room (plain aioxmpp): ``await say(texts)``."""
    talker, password = account("talker", server=server)
    client = make_client(talker, password, server=server)
    muc = client.summon(aioxmpp.MUCClient)
    await connected(client)
    room, fut = muc.join(room_jid, "talker", autorejoin=False)
    await fut

    async def say(texts: list[str]) -> None:
        for text in texts:
            msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
            msg.body[None] = text
            await room.send_message(msg)
    return say


def on_archive_page(client: aioxmpp.Client, page: int, action) -> list[int]:
    """Run `action()` (a coroutine function) before `client` sends its
    `page`-th MAM query, once: the archive read is then certainly under way."""
    sent: list[int] = []
    original = client.send

    async def send(stanza, **kwargs):
        if isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, mam.Query):
            sent.append(1)
            if len(sent) == page:
                await action()
        return await original(stanza, **kwargs)

    client.send = send
    return sent


@pytest.mark.timeout(90)
async def test_a_drop_while_the_archive_is_read_is_rejoined(prosody_factory, make_client,
                                                            account, room_jid, tmp_path):
    """Issue #12, defect 1: after a restart the archive is read inside the
    join task; a 110+333 arriving meanwhile must still lead to a rejoin."""
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    db = tmp_path / "bot.db"
    jid, pw = account("bot", server=server)
    first = Bot(make_client, jid, pw, server=server)
    await first.guard.open_store(db)
    seen: list[str] = []
    first.guard.on_message.connect(lambda r, m, **kw: seen.append(m.body.any()))
    await first.start()
    await first.guard.join(room_jid, "bot")
    say = await speaker(room_jid, server, account, make_client)
    await say(["before"])
    assert await eventually(lambda: _true(seen))      # a position to recover from
    await first.stop()
    assert await eventually(lambda: _absent(server, room_jid, jid))
    await say([f"missed {i}" for i in range(30)])

    second = Bot(make_client, jid, pw, server=server)
    second.guard.archive_page_size = 5          # several pages: a wide window
    await second.guard.open_store(db)

    async def kick_and_wait() -> None:
        await server.kick_with_codes(room_jid, "bot", [333])
        await second.wait_event("dropped", room_jid)

    pages = on_archive_page(second.client, 2, kick_and_wait)
    await second.start()
    await second.wait_event("dropped", room_jid, timeout=20)
    assert len(pages) >= 2, "the drop did not come while the archive was read"
    dropped_at = second.kinds(room_jid).index("dropped")
    await second.wait_event("rejoined", room_jid, after=dropped_at + 1, timeout=20)
    assert second.kinds(room_jid) == ["rejoined", "dropped", "rejoined"]
    assert second.info(room_jid).state is State.JOINED
    assert await occupant_nicks_of(server, room_jid, jid) == ["bot"]
    assert second.violations() == []
    await second.stop()


async def _true(value) -> bool:
    return bool(value)


async def _absent(server, room, jid) -> bool:
    return await occupant_nicks_of(server, room, jid) == []
