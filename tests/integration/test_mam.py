"""muc_guard.aioxmpp.mam against a real Prosody 0.12 with mod_muc_mam on the MUC component.

A sender joins a room and talks; a reader (usually not in the room) reads
the room's archive.  What the sender's reflections carried (body and the
room's XEP-0359 stanza-id) is the ground truth the archive must match.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import aioxmpp
import aioxmpp.muc
import pytest

from muc_guard.aioxmpp import mam
from prosody import connected

pytestmark = pytest.mark.integration


class Sender:
    """A plain aioxmpp MUC occupant that records its own reflections."""

    def __init__(self, client: aioxmpp.Client, room_jid: aioxmpp.JID, nick: str) -> None:
        self.client = client
        self.room_jid = room_jid
        self.nick = nick
        self.room: aioxmpp.muc.Room | None = None
        self.reflected: list[tuple[str, str | None]] = []   # (body, stanza-id by the room)
        self._changed = asyncio.Event()

    async def join(self) -> "Sender":
        await connected(self.client)
        muc = self.client.summon(aioxmpp.MUCClient)
        self.room, fut = muc.join(self.room_jid, self.nick, autorejoin=False)
        await asyncio.wait_for(fut, 10)
        self.room.on_message.connect(self._on_message)
        return self

    def _on_message(self, message, member, source, **kwargs) -> None:
        if member is not self.room.me or message.xep0203_delay:
            return
        ids = [s.id_ for s in message.xep0359_stanza_ids if s.by == self.room_jid]
        self.reflected.append((message.body.any(), ids[0] if len(ids) == 1 else None))
        self._changed.set()

    async def say(self, bodies: list[str], timeout: float = 20.0) -> list[tuple[str, str | None]]:
        """Send `bodies` back to back; wait for all their reflections."""
        start = len(self.reflected)
        for body in bodies:
            msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
            msg.body[None] = body
            self.room.send_message(msg)
        async with asyncio.timeout(timeout):
            while len(self.reflected) < start + len(bodies):
                self._changed.clear()
                await self._changed.wait()
        return self.reflected[start:start + len(bodies)]


async def sender_in(server, room_jid, make_client, account, nick="sender") -> Sender:
    jid, password = account("sender", server=server)
    return await Sender(make_client(jid, password, server=server), room_jid, nick).join()


async def reader_on(server, make_client, account) -> aioxmpp.Client:
    jid, password = account("reader", server=server)
    return await connected(make_client(jid, password, server=server))


def count_pages(client: aioxmpp.Client) -> list[mam.Query]:
    """Record every MAM query `client` sends (wraps client.send)."""
    sent: list[mam.Query] = []
    original = client.send

    async def send(stanza, **kwargs):
        if isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, mam.Query):
            sent.append(stanza.payload)
        return await original(stanza, **kwargs)

    client.send = send
    return sent


def bodies_of(messages: list[mam.ArchivedMessage]) -> list[str]:
    return [m.message.body.any() for m in messages]


# --- the main scenario ---------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_archive_returns_what_the_room_said(prosody_factory, make_client, account,
                                                  room_jid, figure):
    server = prosody_factory(mam=True)
    before = datetime.now(timezone.utc)
    # No create_room: a room made by a plain join, with default config.
    sender = await sender_in(server, room_jid, make_client, account)
    assert (await server.room_info(room_jid)).get("archiving") is None  # never configured
    t0 = time.monotonic()
    bodies = [f"message #{i:03d}" for i in range(1, 251)]
    reflected = await sender.say(bodies)
    figure("mam: send 250 + reflections", time.monotonic() - t0)
    after = datetime.now(timezone.utc)
    assert [b for b, _ in reflected] == bodies
    ids = [i for _, i in reflected]
    assert None not in ids and len(set(ids)) == 250

    reader = await reader_on(server, make_client, account)   # not an occupant
    assert await mam.room_has_archive(reader, room_jid) is True
    pages = count_pages(reader)
    filters_before = len(reader.stream.app_inbound_message_filter._filter_order)

    # everything since `before`, default page_size=100
    t0 = time.monotonic()
    got, complete = await mam.fetch(reader, room_jid, since=before)
    figure("mam: fetch 250 (page_size=100)", time.monotonic() - t0)
    assert complete is True
    assert bodies_of(got) == bodies
    assert [m.archive_id for m in got] == ids
    assert all(m.message.from_ == room_jid.replace(resource="sender") for m in got)
    assert all(m.message.type_ == aioxmpp.MessageType.GROUPCHAT for m in got)
    floor = before.replace(microsecond=0)
    assert all(m.timestamp.tzinfo is not None and m.timestamp.utcoffset() == timedelta(0)
               for m in got)
    assert all(floor <= m.timestamp <= after for m in got)
    # Prosody caps a page at 50 (max_archive_query_results) whatever we ask.
    assert [q.rsm.max_ for q in pages] == [100] * 5
    assert len(pages) == 5
    assert pages[0].rsm.after is None and pages[1].rsm.after.value == ids[49]
    assert len({q.queryid for q in pages}) == 5

    # the whole archive, no bound at all: the same
    got_all, complete = await mam.fetch(reader, room_jid)
    assert complete and [m.archive_id for m in got_all] == ids

    # after the id of #100: exactly #101..#250
    pages.clear()
    t0 = time.monotonic()
    got, complete = await mam.fetch(reader, room_jid, after_id=ids[99])
    figure("mam: fetch 150 after id", time.monotonic() - t0)
    assert complete is True
    assert bodies_of(got) == bodies[100:]
    assert [m.archive_id for m in got] == ids[100:]
    assert pages[0].rsm.after.value == ids[99] and pages[0].form is None

    # page_size=20 forces paging: 150 / 20 -> 8 pages
    pages.clear()
    t0 = time.monotonic()
    got, complete = await mam.fetch(reader, room_jid, after_id=ids[99], page_size=20)
    figure("mam: fetch 150 after id, page_size=20", time.monotonic() - t0)
    assert complete is True and [m.archive_id for m in got] == ids[100:]
    assert len(pages) == 8 and {q.rsm.max_ for q in pages} == {20}

    # limit=50: the first 50, not complete; continuing from the last one finishes
    pages.clear()
    got, complete = await mam.fetch(reader, room_jid, since=before, limit=50)
    assert complete is False and bodies_of(got) == bodies[:50]
    assert len(pages) == 1
    rest, complete = await mam.fetch(reader, room_jid, after_id=got[-1].archive_id)
    assert complete is True and bodies_of(rest) == bodies[50:]

    # a limit that is not a multiple of the page size: the last page asks for less
    pages.clear()
    got, complete = await mam.fetch(reader, room_jid, since=before, page_size=20, limit=45)
    assert complete is False and bodies_of(got) == bodies[:45]
    assert [q.rsm.max_ for q in pages] == [20, 20, 5]

    # nothing after the newest id: empty and complete
    got, complete = await mam.fetch(reader, room_jid, after_id=ids[-1])
    assert (got, complete) == ([], True)

    # since a moment after the last message: nothing (the second may still match)
    later = after + timedelta(seconds=2)
    got, complete = await mam.fetch(reader, room_jid, since=later)
    assert (got, complete) == ([], True)

    # the filter is gone after every fetch
    assert len(reader.stream.app_inbound_message_filter._filter_order) == filters_before


# --- gaps, refusals, rooms without archive -----------------------------------------------


async def test_unknown_after_id_is_a_gap(prosody_factory, make_client, account, room_jid):
    server = prosody_factory(mam=True)
    sender = await sender_in(server, room_jid, make_client, account)
    reader = await reader_on(server, make_client, account)
    # Prosody's internal storage: an empty archive does not know any id either.
    with pytest.raises(mam.ArchiveGapError) as info:
        await mam.fetch(reader, room_jid, after_id="no-such-id")
    assert info.value.after_id == "no-such-id" and info.value.messages == []
    await sender.say(["one", "two", "three"])
    with pytest.raises(mam.ArchiveGapError):
        await mam.fetch(reader, room_jid, after_id="no-such-id")
    # the caller's fallback
    got, complete = await mam.fetch(reader, room_jid, since=datetime.now(timezone.utc) - timedelta(minutes=1))
    assert complete and bodies_of(got) == ["one", "two", "three"]


async def test_room_with_archiving_off(prosody_factory, make_client, account, room_jid):
    server = prosody_factory(mam=True)
    await server.create_room(room_jid, mam=False)
    sender = await sender_in(server, room_jid, make_client, account)
    await sender.say(["not archived"])
    reader = await reader_on(server, make_client, account)
    assert await mam.room_has_archive(reader, room_jid) is False
    # Prosody still answers the query (from an archive that stays empty).
    got, complete = await mam.fetch(reader, room_jid, since=datetime.now(timezone.utc) - timedelta(minutes=1))
    assert (got, complete) == ([], True)


async def test_server_without_muc_mam(prosody_factory, make_client, account, room_jid):
    server = prosody_factory(mam=False)
    sender = await sender_in(server, room_jid, make_client, account)
    await sender.say(["hello"])
    reader = await reader_on(server, make_client, account)
    assert await mam.room_has_archive(reader, room_jid) is False
    with pytest.raises(mam.ArchiveQueryError) as info:
        await mam.fetch(reader, room_jid, since=datetime.now(timezone.utc) - timedelta(minutes=1))
    assert info.value.condition == "service-unavailable"


async def test_missing_room(prosody_factory, make_client, account, room_jid):
    server = prosody_factory(mam=True)
    reader = await reader_on(server, make_client, account)
    assert await mam.room_has_archive(reader, room_jid) is False
    with pytest.raises(mam.ArchiveQueryError) as info:
        await mam.fetch(reader, room_jid)
    assert info.value.condition == "item-not-found"


async def test_members_only_archive_needs_membership(prosody_factory, make_client, account,
                                                    room_jid):
    server = prosody_factory(mam=True)
    sender_jid, sender_pw = account("sender", server=server)
    await server.create_room(room_jid, members_only=True, mam=True)
    await server.grant_membership(room_jid, sender_jid)
    sender = await Sender(make_client(sender_jid, sender_pw, server=server), room_jid,
                          "sender").join()
    await sender.say(["members only"])
    reader_jid, reader_pw = account("reader", server=server)
    reader = await connected(make_client(reader_jid, reader_pw, server=server))
    # disco#info is public; the archive is not
    assert await mam.room_has_archive(reader, room_jid) is True
    with pytest.raises(mam.ArchiveQueryError) as info:
        await mam.fetch(reader, room_jid)
    assert info.value.condition == "forbidden"
    await server.grant_membership(room_jid, reader_jid)
    got, complete = await mam.fetch(reader, room_jid)   # a member, still not an occupant
    assert complete and bodies_of(got) == ["members only"]


async def test_banned_user_is_refused(prosody_factory, make_client, account, room_jid):
    server = prosody_factory(mam=True)
    sender = await sender_in(server, room_jid, make_client, account)
    await sender.say(["hi"])
    reader_jid, reader_pw = account("reader", server=server)
    await server.ban(room_jid, reader_jid)
    reader = await connected(make_client(reader_jid, reader_pw, server=server))
    with pytest.raises(mam.ArchiveQueryError) as info:
        await mam.fetch(reader, room_jid)
    assert info.value.condition == "forbidden"


# --- the filter in a live client ---------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_occupant_fetch_leaves_live_traffic_alone(prosody_factory, make_client, account,
                                                        room_jid):
    """The real use: a bot that is in the room reads the archive while the
    room keeps talking.  Live messages still reach the bot's room; no archive
    result reaches anything but fetch()."""
    server = prosody_factory(mam=True)
    sender = await sender_in(server, room_jid, make_client, account)
    early = [f"early {i}" for i in range(60)]
    await sender.say(early)

    bot = await sender_in(server, room_jid, make_client, account, nick="bot")
    live: list[str] = []
    bot.room.on_message.connect(
        lambda message, member, source, **kw: None if message.xep0203_delay
        else live.append(message.body.any()))
    leaked: list[aioxmpp.Message] = []
    bot.client.stream.on_message_received.connect(
        lambda message: leaked.append(message) if message.xep0313_result else None)
    chain = bot.client.stream.app_inbound_message_filter
    filters_before = len(chain._filter_order)

    # Every archive page the bot asks for makes the sender say 2 more things,
    # so live groupchat and archive results interleave on the bot's stream
    # (3 fetches x 2 < page_size: the fetches catch up with the room).
    talking: list[str] = []
    original = bot.client.send

    async def send(stanza, **kwargs):
        if isinstance(stanza, aioxmpp.IQ) and isinstance(stanza.payload, mam.Query):
            batch = [f"live {len(talking) + i}" for i in range(2)]
            talking.extend(batch)
            for body in batch:
                msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
                msg.body[None] = body
                sender.room.send_message(msg)
        return await original(stanza, **kwargs)

    bot.client.send = send
    results = await asyncio.gather(*(mam.fetch(bot.client, room_jid, page_size=10)
                                     for _ in range(3)))
    async with asyncio.timeout(10):
        while len(live) < len(talking):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)

    assert len(talking) >= 3 * 7 * 2   # each fetch needed at least 7 pages
    assert live == talking
    assert leaked == []
    assert len(chain._filter_order) == filters_before
    for got, complete in results:
        assert complete is True
        # each fetch ran until the archive was complete at its last page,
        # which includes some of the live messages
        assert bodies_of(got)[:60] == early
        assert bodies_of(got)[60:] == talking[:len(got) - 60]
        assert len(got) > 60
        assert len({m.archive_id for m in got}) == len(got)
