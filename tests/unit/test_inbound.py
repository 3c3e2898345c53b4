"""Stanzas that used to break aioxmpp's MUC handling for good (muc_guard/aioxmpp/inbound.py).

Each one made a listener of aioxmpp's stanza dispatcher raise, and aioxmpp
disconnected it: MUCClient heard nothing after that, so the next rejoin never
completed. The proof that the client survives is that a drop afterwards is
still rejoined, and a room message still reaches the Room.
"""

from __future__ import annotations

import pytest

from muc_guard import Cause, State
from harness import ROOM, ROOM_JID, Harness
from stanzas import parse, self_available, self_unavailable


@pytest.fixture
async def h():
    harness = Harness()
    yield harness
    await harness.guard.shutdown()


def deliver(h: Harness, xml: str) -> None:
    """Where the stream hands over a parsed stanza (presence or message)."""
    h.client.stream._process_incoming(None, (parse(xml), None))


async def assert_still_rejoins(h: Harness) -> None:
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.settle()
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    dropped, rejoined = h.events[-2:]
    assert dropped == ("dropped", ROOM_JID, Cause.SERVER_ERROR) and rejoined[0] == "rejoined"
    assert h.state().state is State.JOINED and h.state().room.muc_joined


@pytest.mark.parametrize("xml", [
    # 110 on another occupant's presence: aioxmpp took it for ours
    self_unavailable(ROOM, "someone", 110, 307),
    self_available(ROOM, "someone").replace("role='participant'", "role='moderator'"),
    # an error presence without from
    "<presence type='error'><error type='cancel'>"
    "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
    # a muc#user payload on a subscription request / an error
    f"<presence from='{ROOM}/someone' type='subscribe'>"
    "<x xmlns='http://jabber.org/protocol/muc#user'/></presence>",
    f"<presence from='{ROOM}/someone' type='error'><x xmlns='http://jabber.org/protocol/muc#user'/>"
    "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
    "</error></presence>",
    # a message without from
    "<message type='groupchat'><body>hi</body></message>",
])
async def test_the_client_keeps_hearing_its_rooms_after(h, xml):
    room = await h.joined()
    seen = []
    room.on_message.connect(lambda message, member, source, **kw: seen.append(message.body.any()))
    deliver(h, xml)
    await h.settle()
    assert h.events == [] and room.muc_joined and h.state().state is State.JOINED
    deliver(h, f"<message from='{ROOM}/someone' type='groupchat'><body>still here</body></message>")
    assert seen == ["still here"]
    await assert_still_rejoins(h)


async def test_nick_change_that_names_no_nick_is_a_removal(h):
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 303))      # no <item nick=.../>
    await h.settle()
    assert h.events == [("dropped", ROOM_JID, Cause.UNEXPLAINED)]
    h.feed(self_available(ROOM, "bot"))
    await h.settle()
    assert h.events[-1][0] == "rejoined" and h.state().state is State.JOINED


async def test_destroy_beats_a_nick_change(h):
    """The policy table puts 303 after every removal marker; the engine used
    to look at 303 first and wait forever for a nick that never came."""
    await h.joined()
    h.feed(self_unavailable(ROOM, "bot", 110, 303, destroy=True).replace(
        "<item affiliation='none' role='none'/>",
        "<item affiliation='none' role='none' nick='x'/>"))
    await h.settle()
    assert h.events == [("dropped", ROOM_JID, Cause.DESTROYED),
                        ("gave_up", ROOM_JID, Cause.DESTROYED)]


async def test_a_rewritten_nick_on_join_is_not_taken_for_another_occupant(h):
    """110 from a nick other than the one asked for is legitimate while
    joining (210): the sanitizer leaves rooms aioxmpp has not entered alone."""
    room = await h.joined("bot_rewritten", 210)
    assert room.me.nick == "bot_rewritten" and h.state().nick == "bot_rewritten"
    assert h.events == []


async def test_a_carbon_from_another_account_cannot_speak_for_the_room(h):
    """The offline variant of spoofing (tests/integration/test_spoofing.py):
    a real server stamps 'from', so a forged room stanza can only arrive
    wrapped, e.g. as a XEP-0280 carbon that another account sends us."""
    import aioxmpp.carbons  # noqa: F401  (registers the carbon payloads)
    room = await h.joined()
    delivered, heard = [], []
    h.guard.on_message.connect(lambda *args, **kw: delivered.append(args))
    room.on_message.connect(lambda *args, **kw: heard.append(args))
    inner = (f"<message xmlns='jabber:client' from='{ROOM}/bot' to='bot@localhost/r' "
             "type='groupchat'>"
             "<body>forged</body><x xmlns='http://jabber.org/protocol/muc#user'>"
             "<status code='110'/><status code='333'/></x></message>")
    for sender in ("mallory@localhost/x", "bot@localhost"):
        deliver(h, f"<message from='{sender}' to='bot@localhost/r'>"
                   "<received xmlns='urn:xmpp:carbons:2'>"
                   f"<forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded>"
                   "</received></message>")
    await h.settle()
    assert delivered == [] and heard == [] and h.events == []
    assert h.state().state is State.JOINED and room.muc_joined
