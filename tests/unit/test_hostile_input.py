"""Hostile and malformed input through a real client's inbound path (issue #6, part 4).

Hypothesis draws bytes that :class:`Choices` turns into presences and
messages written as XML; each one is parsed by aioxmpp's own parser and handed to ``StanzaStream._process_incoming``, the
point where stanzas from the server enter the client. The guard holds two
joined rooms. Properties checked after every example:

* nothing raises out of the client's inbound path, and nothing is logged at
  ERROR (an exception swallowed by a ``_never_raises`` wrapper counts too);
* no signal listener or filter of ours is disconnected, and neither is
  aioxmpp's own presence/message dispatcher, without which MUCClient (and so
  every rejoin) goes deaf;
* no drop, rejoin or give-up unless the stanza is an unavailable
  self-presence from our own occupant JID, whose outcome must follow the
  policy table;
* the rooms' state is unchanged, and aioxmpp still holds each room joined.

CI runs a fixed, derandomized set of examples (10,000 in all);
``MUC_GUARD_LONG=1`` runs ten times as many.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterator
from xml.sax.saxutils import escape, quoteattr

import aioxmpp
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from muc_guard import Decision, State
from muc_guard.core.policy import classify_removal, decide
from harness import ROOM, ROOM_JID, Harness
from stanzas import parse

pytestmark = pytest.mark.fuzz

ROOM2 = "other@conference.localhost"
ROOM2_JID = aioxmpp.JID.fromstr(ROOM2)
#: our occupant JID in each tracked room
OURS = {ROOM_JID: "bot", ROOM2_JID: "bot2"}

LONG = os.environ.get("MUC_GUARD_LONG") == "1"
SCALE = 10 if LONG else 1


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=False)


# --- stanza strategies ----------------------------------------------------------

MUC_USER = "http://jabber.org/protocol/muc#user"
KNOWN_CODES = [110, 100, 101, 102, 103, 104, 170, 171, 172, 173, 174, 201, 210, 301, 303,
               307, 321, 322, 330, 332, 333]
CODES = KNOWN_CODES + [0, 1, 99, 111, 200, 300, 309, 334, 404, 500, 999]   # and unknown ones
BAD_CODES = ["abc", "-1", "", "1e3", "110 ", "99999999999999999999"]
#: Nicks with quotes, markup characters, unicode, and the 1023-byte maximum.
NICKS = ["someone", "bot", "bot2", "Bot", "bot_", "o'brien", 'say "hi"', "<b>&amp;",
         "ünïcødé", "日本語", "🤖", "a b"]
#: Rarer, to keep the run short: aioxmpp's stringprep is pure Python.
LONG_NICKS = ["n" * 1023, "ü" * 511, "日" * 341]
#: Characters random nicks and reasons are made of.
ALPHABET = "ab Z09_-.'\"<>&;/@:éüßΩЖ日本🤖\u200d\u0301\u00a0\t"

OWN = (f"{ROOM}/bot", f"{ROOM2}/bot2")
#: Everyone who is not one of our own occupant JIDs, and a missing `from`.
SENDERS = [None,
           ROOM, ROOM2,                                      # the rooms' bare JIDs
           f"{ROOM2}/bot", f"{ROOM}/bot2",                   # our nick of the other room
           "room@evil.example/bot", "room@evil.example",     # the room's name elsewhere
           "never@conference.localhost/bot",                 # a room never joined
           "conference.localhost", "conference.localhost/bot",   # the MUC service itself
           "mallory@localhost/x", "mallory@localhost",       # another account
           "bot@localhost/r", "bot@localhost", "bot@localhost/other",   # ourselves
           "localhost",                                      # our server
           ] + [f"{room}/{nick}" for room in (ROOM, ROOM2) for nick in NICKS
                if f"{room}/{nick}" not in OWN]               # other occupants
TOS = ["bot@localhost/r", "bot@localhost", "mallory@localhost", None]
ALL_PRESENCE_TYPES = [None, "unavailable", "error", "subscribe", "subscribed", "unsubscribe",
                      "unsubscribed", "probe"]
MESSAGE_TYPES = [None, "groupchat", "chat", "normal", "headline", "error"]
AFFILIATIONS = [None, "owner", "admin", "member", "outcast", "none", "bogus"]
ROLES = [None, "moderator", "participant", "visitor", "none"]
ITEM_JIDS = [None, "mallory@localhost/x", "bot@localhost/r", "bot@localhost"]


class Choices:
    """Turns the bytes Hypothesis draws into the choices that build stanzas.

    One ``st.binary()`` draw per example instead of dozens of small draws
    keeps 10,000 examples fast; Hypothesis still shrinks the bytes, towards
    zero, i.e. towards the first (simplest) entry of every table."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def below(self, n: int) -> int:
        byte = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return byte % n

    def pick(self, options: list):
        return options[self.below(len(options))]

    def text(self, most: int) -> str:
        return "".join(self.pick(list(ALPHABET)) for _ in range(self.below(most + 1)))

    def nick(self) -> str:
        k = self.below(16)
        if k == 15:
            return self.text(12) or "x"
        return self.pick(LONG_NICKS) if k == 14 else self.pick(NICKS)

    def reason(self) -> str | None:
        k = self.below(16)
        if k == 15:
            return self.pick(["r" * 70_000, "ü" * 100_000])      # huge reasons
        return None if k < 8 else self.text(40)


def _valid_jid(text: str) -> bool:
    try:
        aioxmpp.JID.fromstr(text)
    except ValueError:
        return False
    return True


def foreign_sender(c: Choices) -> str | None:
    k = c.below(8)
    if k >= 6:                              # another occupant with a random or long nick
        jid = f"{c.pick([ROOM, ROOM2])}/{c.text(12) if k == 7 else c.pick(LONG_NICKS)}"
        if jid not in OWN and _valid_jid(jid):
            return jid
    return c.pick(SENDERS)


def attr(name: str, value: str | None) -> str:
    return f" {name}={quoteattr(value)}" if value is not None else ""


def muc_user_x(c: Choices) -> str:
    parts = []
    for _ in range(c.below(4)):                     # missing or repeated items
        reason = c.reason()
        parts.append(
            "<item" + attr("affiliation", c.pick(AFFILIATIONS)) + attr("role", c.pick(ROLES))
            + attr("nick", c.nick() if c.below(2) else None) + attr("jid", c.pick(ITEM_JIDS))
            + (f"><reason>{escape(reason)}</reason></item>" if reason else "/>"))
    parts += [f"<status code='{c.pick(CODES)}'/>" for _ in range(c.below(7))]
    extra = c.below(40)
    if extra == 39:
        parts.append(f"<status code={quoteattr(c.pick(BAD_CODES))}/>")
    elif extra >= 35:
        parts.append("<destroy><reason>gone</reason></destroy>")
    return f"<x xmlns='{MUC_USER}'>{''.join(parts)}</x>"


def _start(c: Choices, sender: str | None, types: list[str | None],
           text_tag: str) -> tuple[str, str | None, list[str]]:
    """The opening tag's attributes, the type, and a first child with text."""
    head = attr("from", sender) + attr("to", c.pick(TOS))
    type_ = c.pick(types)
    text = c.reason()
    children = [f"<{text_tag}>{escape(text)}</{text_tag}>"] if text else []
    return head + attr("type", type_), type_, children


def _error(condition: str) -> str:
    return (f"<error type='cancel'><{condition} "
            "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")


def presence(c: Choices, sender: str | None, types: list[str | None]) -> str:
    head, type_, body = _start(c, sender, types, "status")
    payload = c.below(10)
    if payload < 6:
        body.append(muc_user_x(c))
    if payload in (5, 6):
        body.append("<x xmlns='http://jabber.org/protocol/muc'/>")
    if type_ == "error":
        body.append(_error("item-not-found"))
    return f"<presence{head}>{''.join(body)}</presence>"


def message(c: Choices, sender: str | None) -> str:
    head, type_, body = _start(c, sender, MESSAGE_TYPES, "body")
    extras = c.below(16)                            # bits: subject, x, stanza-id, delay
    if extras & 1:
        body.append("<subject>topic</subject>")
    if extras & 2:
        body.append(muc_user_x(c))
    if extras & 4:
        body.append(f"<stanza-id xmlns='urn:xmpp:sid:0' id={quoteattr(c.nick())} "
                    f"by={quoteattr(ROOM)}/>")
    if extras & 8:
        body.append("<delay xmlns='urn:xmpp:delay' stamp='2001-01-01T00:00:00Z'/>")
    if type_ == "error":
        body.append(_error("not-acceptable"))
    return f"<message{head}>{''.join(body)}</message>"


def harmless(c: Choices) -> str:
    """A stanza that must change nothing: anything except an unavailable
    presence from one of our own occupant JIDs."""
    kind = c.below(3)
    if kind == 0:
        return presence(c, foreign_sender(c), ALL_PRESENCE_TYPES)
    if kind == 1:
        return presence(c, c.pick(list(OWN)), [None, "error"])
    return message(c, foreign_sender(c) if c.below(4) else c.pick(list(OWN)))


def stanza_lists(make, most: int) -> st.SearchStrategy[list[str]]:
    """1..`most` stanzas from one drawn byte string."""
    def build(data: bytes) -> list[str]:
        c = Choices(data)
        return [make(c) for _ in range(1 + c.below(most))]
    return st.binary(min_size=64 * most, max_size=64 * most).map(build)


# --- the guarded client -----------------------------------------------------------


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", autouse=True)
def _memoized_stringprep() -> Iterator[None]:
    """aioxmpp runs stringprep in pure Python on every JID it parses, and
    the same few domains and nicks come by thousands of times: memoize the
    (pure, deterministic) functions for speed; results are unchanged."""
    import aioxmpp.structs
    with pytest.MonkeyPatch.context() as mp:
        for name in ("nodeprep", "nameprep", "resourceprep"):
            mp.setattr(aioxmpp.structs, name,
                       functools.lru_cache(maxsize=65536)(getattr(aioxmpp.structs, name)))
        yield


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    while _reused:
        loop.run_until_complete(_reused.pop().guard.shutdown())
    loop.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    """Records every ERROR; INFO chatter of thousands of joins is not even
    created (formatting it would take most of the run)."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    quiet = [logging.getLogger(name) for name in ("muc_guard", "aioxmpp")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    yield handler
    for logger, level in zip(quiet, levels):
        logger.setLevel(level)
    root.removeHandler(handler)


class Guarded(Harness):
    """Two joined rooms; records what the guard sends and delivers."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[aioxmpp.stanza.StanzaBase] = []
        self.delivered: list[aioxmpp.JID] = []
        self.guard.on_message.connect(lambda j, m, **kw: self.delivered.append(j))
        self.client.send = self._send          # no server: record self-pings

    async def _send(self, stanza: aioxmpp.stanza.StanzaBase, **kwargs: object) -> None:
        self.sent.append(stanza)
        raise TimeoutError()                    # no reply: "undecided"

    async def start(self) -> "Guarded":
        self.rooms = {ROOM_JID: await self.joined(), ROOM2_JID: await self.joined(
            "bot2", room=ROOM2, asked="bot2")}
        engine = self.guard._guard
        stream = self.client.stream
        self.ours = [(signal, token) for signal, token in engine._connections]
        self.chains = [(chain, token) for chain, token in engine._filters]
        # aioxmpp's own dispatchers: if a listener raises, aioxmpp disconnects
        # it for good and MUCClient never hears of its rooms again.
        self.dispatch = [stream.on_presence_received, stream.on_message_received]
        self.dispatch_counts = [len(s._connections) for s in self.dispatch]
        self.before = {info.jid: info for info in self.guard.rooms()}
        await self.settle()
        self.sent.clear()                       # the archive probes after joining
        return self

    def deliver(self, xml: str) -> bool:
        """Parse `xml` as if off the wire and process it; False if aioxmpp's
        parser rejects it (a real stream never passes it on then)."""
        try:
            stanza = parse(xml)
        except Exception:
            return False
        self.client.stream._process_incoming(None, (stanza, None))
        return True

    def assert_wired(self) -> None:
        for signal, token in self.ours:
            assert token in signal._connections, f"our listener on {signal} is gone"
        for chain, token in self.chains:
            assert token in [t for _, t, _ in chain._filter_order], "our filter is gone"
        assert [len(s._connections) for s in self.dispatch] == self.dispatch_counts, \
            "an aioxmpp dispatcher listener was disconnected"

    def assert_unchanged(self) -> None:
        assert self.events == []
        for jid, before in self.before.items():
            info = self.guard.room_info(jid)
            assert info == before
            assert info.room is self.rooms[jid] and info.room.muc_joined
            assert self.muc.get_muc(jid) is self.rooms[jid]
            rec = self.guard._guard.core.rooms[jid]
            assert rec.io.task is None or rec.io.task.done()
        for stanza in self.sent:                # only self-pings to our own occupant JIDs
            assert isinstance(stanza, aioxmpp.IQ)
            assert stanza.to.bare() in OURS and stanza.to.resource == OURS[stanza.to.bare()]
        assert set(self.delivered) <= set(OURS)
        self.sent.clear()
        self.delivered.clear()


_reused: list[Guarded] = []


def _check(loop: asyncio.AbstractEventLoop, errors: ErrorLog, stanzas: list[str],
           *, unchanged: bool = True) -> Guarded:
    """Feed `stanzas` to a guarded client inside `loop` and check the
    invariants that hold for every input; return the client for more checks.

    Inputs that must change nothing share one client across examples (that
    state carried from one example into the next stays unchanged is part of
    the property); it is replaced after any failure, so that Hypothesis
    replays a failing example on a fresh one. Each stanza is noted, so a
    failure report shows the input."""
    for xml in stanzas:
        note(xml[:2000])

    async def run() -> Guarded:
        g = _reused.pop() if unchanged and _reused else await Guarded().start()
        errors.records.clear()
        ok = False
        try:
            for xml in stanzas:
                g.deliver(xml)
            await g.settle()
            assert not errors.records, [r.getMessage() for r in errors.records]
            g.assert_wired()
            if unchanged:
                g.assert_unchanged()
            g.before_shutdown = {info.jid: info for info in g.guard.rooms()}
            ok = True
        finally:
            if ok and unchanged:
                _reused.append(g)
            else:
                await g.settle()
                await g.guard.shutdown()
        return g
    return loop.run_until_complete(run())


# --- properties ---------------------------------------------------------------------


@examples(7000)
@given(stanzas=stanza_lists(harmless, 3))
def test_foreign_and_malformed_stanzas_change_nothing(loop, errors, stanzas):
    _check(loop, errors, stanzas)


def _self_unavailable(c: Choices) -> str:
    return presence(c, f"{ROOM}/bot", ["unavailable"])


@examples(2000)
@given(stanzas=stanza_lists(_self_unavailable, 1))
def test_unavailable_self_presence_follows_the_policy(loop, errors, stanzas):
    """Any codes, items and reasons: a drop exactly as the table says, or a
    nick change (303 naming the new nick), never an exception."""
    [stanza] = stanzas
    g = _check(loop, errors, [stanza], unchanged=False)
    try:
        muc_user = parse(stanza).xep0045_muc_user
    except Exception:
        return                                 # aioxmpp's parser refused it
    found = {int(code) for code in muc_user.status_codes} if muc_user else set()
    if 303 in found and not (muc_user.items and muc_user.items[0].nick):
        found.discard(303)                     # a nick change to no nick: leaving
    destroyed = muc_user is not None and muc_user.destroy is not None
    cause = classify_removal(found, destroyed=destroyed)
    info = g.before_shutdown[ROOM_JID]
    if cause is None:                          # 303: our nick is changing
        assert g.events == [] and info.state is State.JOINED
        return
    expected = [("dropped", ROOM_JID, cause)]
    if decide(cause) is Decision.GIVE_UP:
        expected.append(("gave_up", ROOM_JID, cause))
    assert g.events == expected
    assert (info.drops, info.last_cause) == (1, cause)
    assert info.state is (State.GAVE_UP if decide(cause) is Decision.GIVE_UP
                          else State.REJOINING)
    other = g.before_shutdown[ROOM2_JID]
    assert other.state is State.JOINED and other.drops == 0


def _junk(c: Choices) -> str:
    sender = foreign_sender(c)
    if c.below(2):
        return message(c, sender)
    return presence(c, sender, ALL_PRESENCE_TYPES)


@examples(1000)
@given(burst=stanza_lists(_junk, 20))
def test_a_long_burst_of_junk_changes_nothing(loop, errors, burst):
    """Longer sequences, so that state left behind by one stanza meets the next."""
    _check(loop, errors, burst)
