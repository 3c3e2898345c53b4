"""A rejoin that re-creates a vanished room (status 201) accepts the default
configuration (XEP-0045 §10.1.2); end to end, with Prosody's room locking,
in tests/integration/test_guard.py. Here: exactly what is sent, and that a
refused form does not undo the rejoin."""

import asyncio
import logging

import aioxmpp
import aioxmpp.forms
import aioxmpp.muc.xso
import pytest

from muc_guard import State
from harness import ROOM, ROOM_JID, Harness
from stanzas import self_available, self_unavailable


@pytest.fixture
async def h():
    harness = Harness()
    yield harness
    await harness.guard.shutdown()


def owner_sender(h, answer=None) -> list[aioxmpp.IQ]:
    """Record the owner IQs the guard sends; answer them with `answer`
    (an exception to raise) or a result."""
    sent: list[aioxmpp.IQ] = []

    async def fake_send(stanza, timeout=None):
        if isinstance(stanza.payload, aioxmpp.muc.xso.OwnerQuery):
            sent.append(stanza)
            if answer is not None:
                raise answer
        return None

    h.client.send = fake_send
    return sent


async def rejoin(h, *codes: int) -> None:
    h.feed(self_unavailable(ROOM, "bot", 110, 333))
    await h.pending()
    h.feed(self_available(ROOM, "bot", *codes))
    for _ in range(100):
        if ("rejoined", ROOM_JID) in [e[:2] for e in h.events]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no rejoin: {h.events}")


async def test_rejoin_that_created_the_room_submits_the_empty_form(h):
    sent = owner_sender(h)
    await h.joined()
    await rejoin(h, 201)
    [iq] = sent
    assert (iq.type_, iq.to) == (aioxmpp.IQType.SET, ROOM_JID)
    form = iq.payload.form
    assert form.type_ is aioxmpp.forms.DataType.SUBMIT and not form.fields
    assert h.state().state is State.JOINED


async def test_rejoin_into_an_existing_room_sends_no_form(h):
    sent = owner_sender(h)
    await h.joined("bot", 201)      # our first join created it: left to the bot
    await rejoin(h)
    assert sent == []


async def test_refused_form_does_not_undo_the_rejoin(h, caplog):
    sent = owner_sender(h, aioxmpp.errors.XMPPCancelError(aioxmpp.ErrorCondition.FORBIDDEN))
    await h.joined()
    await rejoin(h, 201)
    assert len(sent) == 1
    assert [e[0] for e in h.events] == ["dropped", "rejoined"]
    assert h.state().state is State.JOINED
    assert any(r.levelno == logging.WARNING and "default configuration failed" in r.getMessage()
               for r in caplog.records)
