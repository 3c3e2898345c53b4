"""Message positions: whose time they are in, and how far they may move.

The position (last message delivered) decides what a rejoin asks for. It must
be in the server's time, it must not be set by an occupant, and it must not
pass messages the archive has not returned yet. Each test has the bot miss
messages across a restart and checks that on_message delivers exactly what
was said, once, in order.
"""

from __future__ import annotations

import asyncio
import datetime

import aioxmpp
import aioxmpp.misc
import pytest
import time_machine

from guardkit import Bot, Inbox, eventually, groupchat, occupant_nicks_of, send_all, talker_in

pytestmark = pytest.mark.integration


async def _restart(bot: Bot, make_client, jid, pw, server, db, inbox: Inbox,
                   while_away) -> tuple[Bot, Inbox]:
    """Stop the bot, run `while_away()`, start a new bot process on the same
    store whose inbox continues `inbox`."""
    await bot.stop()
    assert await eventually(lambda: _out_of_all(server, [i.jid for i in bot.guard.rooms()], jid))
    await while_away()
    again = Bot(make_client, jid, pw, server=server)
    await again.guard.open_store(db)
    second = Inbox(again)
    second.items = inbox.items                    # one list across both processes
    await again.start()
    return again, second


async def _out_of_all(server, rooms, jid) -> bool:
    for room in rooms:
        if await occupant_nicks_of(server, room, jid):
            return False
    return True


class RoomInbox:
    """What a bot's on_message delivered, per room: bodies in order."""

    def __init__(self) -> None:
        self.rooms: dict[aioxmpp.JID, list[str]] = {}

    def attach(self, bot: Bot) -> None:
        bot.guard.on_message.connect(self.record)

    def record(self, room_jid, message, *, recovered, own):
        self.rooms.setdefault(room_jid, []).append(message.body.any())

    async def count(self, n: int) -> bool:
        return sum(map(len, self.rooms.values())) >= n


async def test_a_forged_delay_from_an_occupant_moves_nothing(prosody, make_client, account,
                                                            room_jid, tmp_path):
    """Issue 12, defect 2: another account puts <delay stamp='2099-...'/> on a
    live message. It is live (not `recovered`), and it does not move the
    position into 2099: what the bot misses afterwards still comes back."""
    await prosody.create_room(room_jid, history_length=100)
    db = tmp_path / "bot.db"
    jid, pw = account("forgebot")
    bot = Bot(make_client, jid, pw)
    await bot.guard.open_store(db)
    inbox = Inbox(bot)
    await bot.start()
    await bot.guard.join(room_jid, "bot")
    mallory = await talker_in(room_jid, prosody, account, make_client)

    forged = groupchat("from the future")
    forged.xep0203_delay.append(aioxmpp.misc.Delay())
    forged.xep0203_delay[0].stamp = datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc)
    await send_all(mallory, ["before"])
    await mallory.send_message(forged)
    assert await eventually(lambda: _count(inbox, 2))
    assert inbox.items == [("before", False, False), ("from the future", False, False)]

    missed = [f"missed {i}" for i in range(5)]
    bot, inbox = await _restart(bot, make_client, jid, pw, prosody, db, inbox,
                                lambda: send_all(mallory, missed))
    await bot.wait_event("rejoined", room_jid)
    await send_all(mallory, ["after"])
    expected = ["before", "from the future", *missed, "after"]
    assert await eventually(lambda: _count(inbox, len(expected)))
    await asyncio.sleep(0.3)
    assert inbox.bodies() == expected
    assert [rec for body, rec, _ in inbox.items if body in missed] == [True] * len(missed)
    await bot.stop()


@pytest.mark.parametrize("mode", ["error", "drop"])
async def test_an_archive_failing_mid_way_is_read_on_later(mode, prosody_factory, make_client,
                                                          account, room_jid, tmp_path):
    """Issue 12, defect 3: the archive answers its second page with an error
    (or not at all). What the first page returned is delivered, the position
    stays there, and the rest is read later; live messages follow in order."""
    server = prosody_factory(mam=True)
    await server.create_room(room_jid)
    db = tmp_path / "bot.db"
    jid, pw = account("pagebot", server=server)
    bot = Bot(make_client, jid, pw, server=server)
    await bot.guard.open_store(db)
    inbox = Inbox(bot)
    await bot.start()
    await bot.guard.join(room_jid, "bot")
    talker = await talker_in(room_jid, server, account, make_client)
    await send_all(talker, ["before"])
    assert await eventually(lambda: _count(inbox, 1))

    missed = [f"missed {i}" for i in range(23)]

    async def away():
        await send_all(talker, missed)
        await server.fail_archive_pages(room_jid, pass_=1, fail=1, mode=mode)

    bot, inbox = await _restart(bot, make_client, jid, pw, server, db, inbox, away)
    bot.guard.archive_page_size = 5
    bot.guard.join_timeout = 2.0          # how long a dropped page is waited for
    bot.guard.backoff_min, bot.guard.backoff_max = 0.5, 1.0
    await bot.wait_event("rejoined", room_jid)
    after = [f"after {i}" for i in range(3)]
    await send_all(talker, after)         # live, while the archive is retried
    expected = ["before", *missed, *after]
    assert await eventually(lambda: _count(inbox, len(expected)), timeout=20)
    await asyncio.sleep(0.5)
    assert await server.archive_faults_fired(room_jid) == 1
    assert inbox.bodies() == expected
    assert [rec for body, rec, _ in inbox.items if body in missed] == [True] * len(missed)
    await bot.stop()


@pytest.mark.parametrize("shift", [60, -60], ids=["ahead", "behind"])
async def test_a_bot_clock_off_by_a_minute_recovers_exactly_what_it_missed(
        shift, prosody_factory, make_client, account, tmp_path):
    """Issue 12, defect 7: the bot's clock runs a minute ahead of the
    server's, or behind. Prosody evaluates <history since> and the archive's
    start time by its own clock. Three rooms: one with MUC history only (no
    stanza-ids), one with an archive where the bot saw messages, and one
    with an archive where it saw none (recovery from its join time)."""
    server = prosody_factory(mam=True)
    history_room = aioxmpp.JID.fromstr(f"hist-{shift + 100}@{server.muc_domain}")
    talked_room = aioxmpp.JID.fromstr(f"talked-{shift + 100}@{server.muc_domain}")
    quiet_room = aioxmpp.JID.fromstr(f"quiet-{shift + 100}@{server.muc_domain}")
    await server.create_room(history_room, mam=False, history_length=100)
    await server.create_room(talked_room, mam=True)
    await server.create_room(quiet_room, mam=True)
    rooms = [history_room, talked_room, quiet_room]
    talker = {room: await talker_in(room, server, account, make_client) for room in rooms}
    # Said before the bot ever joins the quiet room: never to be delivered.
    await send_all(talker[quiet_room], ["before the bot came"])
    await asyncio.sleep(6)   # past the few seconds of slack a recovery start allows

    db = tmp_path / "bot.db"
    jid, pw = account("skewbot", server=server)
    expected: dict[aioxmpp.JID, list[str]] = {room: [] for room in rooms}
    inbox = RoomInbox()
    shifted = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=shift)
    with time_machine.travel(shifted, tick=True):
        bot = Bot(make_client, jid, pw, server=server)
        await bot.guard.open_store(db)
        inbox.attach(bot)
        await bot.start()
        for room in rooms:
            await bot.guard.join(room, "bot")
        for room in (history_room, talked_room):
            said = [f"{room.localpart} before {i}" for i in range(3)]
            await send_all(talker[room], said)
            expected[room] += said
        assert await eventually(lambda: inbox.count(6))
        await bot.stop()
        assert await eventually(lambda: _out_of_all(server, rooms, jid))
        for room in rooms:
            said = [f"{room.localpart} missed {i}" for i in range(4)]
            await send_all(talker[room], said)
            expected[room] += said
        bot = Bot(make_client, jid, pw, server=server)
        await bot.guard.open_store(db)
        inbox.attach(bot)
        await bot.start()
        for room in rooms:
            await bot.wait_event("rejoined", room)
        for room in rooms:
            said = [f"{room.localpart} after {i}" for i in range(2)]
            await send_all(talker[room], said)
            expected[room] += said
        total = sum(map(len, expected.values()))
        assert await eventually(lambda: inbox.count(total), timeout=15)
        await asyncio.sleep(0.5)
        await bot.stop()
    assert {room: inbox.rooms.get(room, []) for room in rooms} == expected


async def _count(inbox: Inbox, n: int) -> bool:
    return len(inbox.items) >= n
