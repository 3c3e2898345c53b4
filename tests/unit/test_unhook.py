"""aioxmpp Room objects the guard lets go of are freed (muc_guard.aioxmpp.unhook);
end to end, against Prosody, in tests/integration/test_room_objects.py."""

import asyncio
import gc

import aioxmpp
import aioxmpp.muc
import pytest

from muc_guard.aioxmpp.unhook import unhook_room
from harness import ROOM, ROOM_JID, Harness
from stanzas import self_available


@pytest.fixture
async def h():
    harness = Harness()
    # drops in a row must not count as flapping (a pause on purpose)
    harness.guard.backoff_min, harness.guard.backoff_max = 0.001, 0.002
    yield harness
    await harness.guard.shutdown()


def live_rooms(h: Harness) -> int:
    h.events.clear()    # on_rejoined's Rooms: the test's references, not the guard's
    gc.collect()
    return sum(1 for obj in gc.get_objects()
               if type(obj) is aioxmpp.muc.Room and obj.service is h.muc
               and obj.jid == ROOM_JID)


async def test_rejoins_keep_only_the_current_room_object(h):
    await h.joined()
    for _ in range(5):
        await asyncio.sleep(0.005)    # past backoff_max
        await h.drop_and_rejoin(333)
    assert [kind for kind, *_ in h.events] == ["dropped", "rejoined"] * 5
    assert live_rooms(h) == 1
    assert h.state().room.muc_joined
    assert h.violations() == []


async def test_a_room_mucclient_still_holds_is_left_alone(h):
    """Unhooking a Room whose join is pending would cut MUCClient's own
    connections (the join would never complete): it is left as it is."""
    join = asyncio.ensure_future(h.guard.join(ROOM, "bot"))
    await h.pending()
    room = h.muc.get_muc(ROOM_JID)
    unhook_room(room, h.muc)
    h.feed(self_available(ROOM, "bot"))
    assert await asyncio.wait_for(join, 1) is room
    assert room.muc_joined
