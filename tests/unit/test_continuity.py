"""Exactly-once bookkeeping of a room's messages, from literal stanzas."""

import aioxmpp

from muc_guard.aioxmpp.facts import body_text, room_stamp_of, stanza_id_of
from muc_guard.core.continuity import DIGEST_TOLERANCE, Position, RoomStream
from stanzas import parse

ROOM = aioxmpp.JID.fromstr("room@conference.localhost")


class MessageStream:
    """A RoomStream fed whole stanzas: the front-end's fact extraction
    (muc_guard.aioxmpp.facts), then the core's decision."""

    def __init__(self, room: aioxmpp.JID, position: Position | None = None) -> None:
        self.room = room
        self.inner = RoomStream(position)

    def accept(self, message: aioxmpp.Message, *, now: float, replay: bool = False) -> bool:
        stamp = room_stamp_of(message, self.room) if replay else None
        return self.inner.accept(stanza_id_of(message, self.room),
                                 message.from_.resource or "", body_text(message),
                                 now=now, stamp=stamp, delayed=stamp is not None)

    def is_replay(self, message: aioxmpp.Message) -> bool:
        return self.inner.is_replay(room_stamp_of(message, self.room))

    @property
    def replaying(self) -> bool:
        return self.inner.replaying

    @replaying.setter
    def replaying(self, value: bool) -> None:
        self.inner.replaying = value

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def groupchat(body: str, *, nick: str = "alice", sid: str | None = None,
              stamp: str | None = None, sid_by: str = str(ROOM)) -> aioxmpp.Message:
    sid_el = f"<stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{sid_by}'/>" if sid else ""
    delay = f"<delay xmlns='urn:xmpp:delay' stamp='{stamp}' from='{ROOM}'/>" if stamp else ""
    return parse(f"<message from='{ROOM}/{nick}' to='bot@localhost/r' type='groupchat'>"
                 f"<body>{body}</body>{sid_el}{delay}</message>")


def test_same_stanza_id_is_delivered_once_live_or_as_history():
    stream = MessageStream(ROOM)
    assert stream.accept(groupchat("hi", sid="s1"), now=1000.0)
    assert not stream.accept(groupchat("hi", sid="s1", stamp="2023-11-14T22:13:20Z"), now=1005.0,
                             replay=True)
    assert stream.accept(groupchat("hi", sid="s2"), now=1006.0)   # same text, new message
    assert stream.position.last_id == "s2"


def test_stanza_ids_stamped_by_someone_else_do_not_count():
    stream = MessageStream(ROOM)
    assert stream.accept(groupchat("a", sid="x", sid_by="mallory@evil.example"), now=1.0)
    assert stream.position.last_id is None


def test_without_ids_a_history_copy_within_tolerance_is_a_duplicate():
    stream = MessageStream(ROOM)
    live_at = 1700000000.0                      # 2023-11-14T22:13:20Z
    assert stream.accept(groupchat("hello"), now=live_at)
    assert not stream.accept(groupchat("hello", stamp="2023-11-14T22:13:18Z"), now=live_at + 9,
                             replay=True)
    # the same words said again a minute later are a new message
    assert stream.accept(groupchat("hello", stamp="2023-11-14T22:14:20Z"), now=live_at + 90,
                         replay=True)


def test_history_older_than_the_position_is_dropped_after_a_restart():
    stream = MessageStream(ROOM, Position(None, 1700000000.0))
    old = groupchat("old", stamp="2023-11-14T22:13:00Z")          # 20 s before
    new = groupchat("new", stamp="2023-11-14T22:13:30Z")
    assert not stream.accept(old, now=1700000100.0, replay=True)
    assert stream.accept(new, now=1700000100.0, replay=True)
    assert stream.position.last_ts == 1700000010.0


def test_restart_position_id_is_remembered():
    stream = MessageStream(ROOM, Position("s9", 1.0))
    assert not stream.accept(groupchat("x", sid="s9"), now=2.0)


def test_window_is_bounded():
    stream = MessageStream(ROOM)
    for i in range(5000):
        assert stream.accept(groupchat(f"m{i}", sid=f"id{i}"), now=float(i))
    from muc_guard.core.continuity import WINDOW_MIN
    # one message a second: what is older than 10 s before the position goes,
    # but the newest WINDOW_MIN stay
    assert len(stream._keys) == len(stream._stamps) == WINDOW_MIN
    assert not stream.accept(groupchat("again", sid=f"id{5000 - WINDOW_MIN}"), now=4999.0)
    assert stream.accept(groupchat("again", sid=f"id{5000 - WINDOW_MIN - 1}"), now=4999.0)


def test_window_keeps_everything_within_the_tolerance_up_to_its_cap():
    from muc_guard.core.continuity import WINDOW_MAX
    stream = MessageStream(ROOM)
    for i in range(200):        # 200 messages within one second: all kept
        assert stream.accept(groupchat(f"m{i}"), now=1000.0 + i / 200)
    assert len(stream._keys) == 200
    for i in range(200, 5000):  # a flood: capped
        stream.accept(groupchat(f"m{i}"), now=1001.0 + i / 5000)
    assert len(stream._keys) == WINDOW_MAX
    history_copy = groupchat("m4990", stamp="1970-01-01T00:16:41Z")   # 1001 s
    assert not stream.accept(history_copy, now=1002.0, replay=True)
    assert DIGEST_TOLERANCE > 0


def test_a_restarted_stream_recognises_history_copies_from_stored_digests():
    before = MessageStream(ROOM)
    live_at = 1700000000.0
    assert before.accept(groupchat("one"), now=live_at - 2)
    assert before.accept(groupchat("two"), now=live_at)
    stored = Position(before.position.last_id, before.position.last_ts, before.recent())
    after = MessageStream(ROOM, stored)                 # a new process, same store
    assert not after.accept(groupchat("one", stamp="2023-11-14T22:13:18Z"), now=live_at + 60,
                            replay=True)
    assert not after.accept(groupchat("two", stamp="2023-11-14T22:13:20Z"), now=live_at + 60,
                            replay=True)
    assert after.accept(groupchat("three", stamp="2023-11-14T22:13:21Z"), now=live_at + 60,
                        replay=True)


def test_recent_digests_are_the_newest_64_oldest_first():
    from muc_guard.core.continuity import digest
    stream = MessageStream(ROOM)
    for i in range(100):
        assert stream.accept(groupchat(f"m{i}"), now=1700000000.0 + i * 0.1)
    recent = stream.recent()
    expected = [digest("alice", f"m{i}") for i in range(36, 100)]
    assert [key for key, _ in recent] == expected
    assert [ts for _, ts in recent] == sorted(ts for _, ts in recent)


def test_digests_stored_with_the_low_bit_set_still_match():
    """Stores written before 0.2 kept blake2b digests with all 64 bits."""
    import hashlib
    from muc_guard.core.continuity import digest
    full = hashlib.blake2b("alice\0hello".encode(), digest_size=8).hexdigest()
    odd = format(int(full, 16) | 1, "016x")
    stream = MessageStream(ROOM, Position(None, 1700000000.0, ((odd, 1700000000.0),)))
    assert not stream.accept(groupchat("hello", stamp="2023-11-14T22:13:20Z"),
                             now=1700000100.0, replay=True)
    assert digest("alice", "hello") in (full, format(int(full, 16) & ~1, "016x"))


def test_recent_json_is_what_the_store_wrote_before():
    """The one-pass JSON equals recent_to_json(recent()), byte for byte."""
    from muc_guard.core.continuity import recent_from_json, recent_to_json
    stream = MessageStream(ROOM)
    assert stream.recent_json() is None and recent_to_json(stream.recent()) is None
    for i in range(100):
        stream.accept(groupchat(f"m{i}"), now=1700000000.0 + i * 0.37)
        assert stream.recent_json() == recent_to_json(stream.recent())
    assert recent_from_json(stream.recent_json()) == stream.recent()


def test_a_live_message_is_timed_on_receipt_whatever_delay_it_carries():
    """Issue 12, defect 2: an occupant's <delay/> (even one naming the room,
    on a server that does not strip it) does not time a live message."""
    stream = MessageStream(ROOM)
    forged = groupchat("future", stamp="2099-01-01T00:00:00Z")
    assert stream.accept(forged, now=1700000000.0)
    assert stream.position.last_ts == 1700000000.0


def test_a_replayed_copy_is_timed_by_the_rooms_delay_only():
    """Prosody keeps an occupant's own <delay/> and appends the room's:
    the room's counts, and never past the time of receipt."""
    forged_then_room = parse(
        f"<message from='{ROOM}/mallory' to='bot@localhost/r' type='groupchat'>"
        "<body>x</body><delay xmlns='urn:xmpp:delay' stamp='2099-01-01T00:00:00Z'/>"
        f"<delay xmlns='urn:xmpp:delay' stamp='2023-11-14T22:13:20Z' from='{ROOM}'/></message>")
    stream = MessageStream(ROOM)
    stream.replaying = True
    assert stream.is_replay(forged_then_room)
    assert stream.accept(forged_then_room, now=1700000100.0, replay=True)
    assert stream.position.last_ts == 1700000000.0
    later = MessageStream(ROOM)
    assert later.accept(groupchat("y", stamp="2023-11-14T22:15:00Z"), now=1700000000.0,
                        replay=True)
    assert later.position.last_ts == 1700000000.0


def test_the_replay_ends_with_the_first_message_the_room_did_not_stamp():
    stream = MessageStream(ROOM)
    stream.replaying = True
    assert stream.is_replay(groupchat("old", stamp="2023-11-14T22:13:20Z"))
    assert not stream.is_replay(groupchat("live"))
    assert not stream.is_replay(groupchat("late", stamp="2023-11-14T22:13:20Z"))
