"""An offline aioxmpp client with a summoned MUCGuard, fed literal stanzas.

The stanzas go through the client's inbound path (the stream's filter chains,
then MUCClient), exactly where a server's stanzas would go. Joins complete
when the test feeds the room's self-presence.
"""

from __future__ import annotations

import asyncio

import aioxmpp

import muc_guard
from stanzas import parse, self_available, self_unavailable

ROOM = "room@conference.localhost"
ROOM_JID = aioxmpp.JID.fromstr(ROOM)


class Harness:
    def __init__(self) -> None:
        self.client = aioxmpp.Client(aioxmpp.JID.fromstr("bot@localhost/r"),
                                     aioxmpp.make_security_layer("unused"))
        self.guard = self.client.summon(muc_guard.MUCGuard)
        self.muc = self.client.summon(aioxmpp.MUCClient)
        self.events: list[tuple] = []
        self.guard.on_dropped.connect(lambda j, c: self.events.append(("dropped", j, c)))
        self.guard.on_rejoined.connect(lambda j, r: self.events.append(("rejoined", j, r)))
        self.guard.on_gave_up.connect(lambda j, c: self.events.append(("gave_up", j, c)))
        self.guard._guard.core.stream_up = True   # as if the stream were established

    def feed(self, xml: str) -> None:
        self.client.stream._process_incoming_presence(parse(xml))

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def pending(self, room: str = ROOM, timeout: float = 2.0) -> None:
        """Wait until MUCClient has sent a join for `room` (with a store the
        guard first writes the room, in SQLite's thread)."""
        jid = aioxmpp.JID.fromstr(room)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.settle()
            try:
                if not self.muc.get_muc(jid).muc_joined:
                    return
            except KeyError:
                pass
            assert loop.time() < deadline, f"no join for {room} was sent"
            await asyncio.sleep(0.005)

    async def joined(self, nick: str = "bot", *codes: int, room: str = ROOM,
                     asked: str = "bot") -> aioxmpp.muc.Room:
        join = asyncio.ensure_future(self.guard.join(room, asked))
        await self.pending(room)
        self.feed(self_available(room, nick, *codes))
        return await asyncio.wait_for(join, 1)

    async def drop_and_rejoin(self, *codes: int, room: str = ROOM, nick: str = "bot") -> None:
        """The room removes us with `codes`, and answers the rejoin."""
        self.feed(self_unavailable(room, nick, *codes))
        await self.pending(room)
        self.feed(self_available(room, nick))
        await self.settle()

    def violations(self) -> list[str]:
        """Broken invariants (muc_guard.core.invariants): [] after every scenario."""
        return self.guard._guard.violations()

    def state(self) -> muc_guard.RoomInfo:
        info = self.guard.room_info(ROOM)
        assert info is not None
        return info
