"""Exactly-once bookkeeping of a room's messages, from literal stanzas."""

import aioxmpp

from muc_guard.continuity import DIGEST_TOLERANCE, Position, RoomStream
from stanzas import parse

ROOM = aioxmpp.JID.fromstr("room@conference.localhost")


def groupchat(body: str, *, nick: str = "alice", sid: str | None = None,
              stamp: str | None = None, sid_by: str = str(ROOM)) -> aioxmpp.Message:
    sid_el = f"<stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{sid_by}'/>" if sid else ""
    delay = f"<delay xmlns='urn:xmpp:delay' stamp='{stamp}' from='{ROOM}'/>" if stamp else ""
    return parse(f"<message from='{ROOM}/{nick}' to='bot@localhost/r' type='groupchat'>"
                 f"<body>{body}</body>{sid_el}{delay}</message>")


def test_same_stanza_id_is_delivered_once_live_or_as_history():
    stream = RoomStream(ROOM)
    assert stream.accept(groupchat("hi", sid="s1"), now=1000.0)
    assert not stream.accept(groupchat("hi", sid="s1", stamp="2023-11-14T22:13:20Z"), now=1005.0)
    assert stream.accept(groupchat("hi", sid="s2"), now=1006.0)   # same text, new message
    assert stream.position.last_id == "s2"


def test_stanza_ids_stamped_by_someone_else_do_not_count():
    stream = RoomStream(ROOM)
    assert stream.accept(groupchat("a", sid="x", sid_by="mallory@evil.example"), now=1.0)
    assert stream.position.last_id is None


def test_without_ids_a_history_copy_within_tolerance_is_a_duplicate():
    stream = RoomStream(ROOM)
    live_at = 1700000000.0                      # 2023-11-14T22:13:20Z
    assert stream.accept(groupchat("hello"), now=live_at)
    assert not stream.accept(groupchat("hello", stamp="2023-11-14T22:13:18Z"), now=live_at + 9)
    # the same words said again a minute later are a new message
    assert stream.accept(groupchat("hello", stamp="2023-11-14T22:14:20Z"), now=live_at + 90)


def test_history_older_than_the_position_is_dropped_after_a_restart():
    stream = RoomStream(ROOM, Position(None, 1700000000.0))
    old = groupchat("old", stamp="2023-11-14T22:13:00Z")          # 20 s before
    new = groupchat("new", stamp="2023-11-14T22:13:30Z")
    assert not stream.accept(old, now=1700000100.0)
    assert stream.accept(new, now=1700000100.0)
    assert stream.position.last_ts == 1700000010.0


def test_restart_position_id_is_remembered():
    stream = RoomStream(ROOM, Position("s9", 1.0))
    assert not stream.accept(groupchat("x", sid="s9"), now=2.0)


def test_window_is_bounded():
    stream = RoomStream(ROOM)
    for i in range(5000):
        assert stream.accept(groupchat(f"m{i}", sid=f"id{i}"), now=float(i))
    assert len(stream._ids) <= 512 and len(stream._digest_order) <= 512
    assert sum(len(v) for v in stream._digests.values()) <= 512
    assert DIGEST_TOLERANCE > 0


def test_a_restarted_stream_recognises_history_copies_from_stored_digests():
    before = RoomStream(ROOM)
    live_at = 1700000000.0
    assert before.accept(groupchat("one"), now=live_at - 2)
    assert before.accept(groupchat("two"), now=live_at)
    stored = Position(before.position.last_id, before.position.last_ts, before.recent())
    after = RoomStream(ROOM, stored)                 # a new process, same store
    assert not after.accept(groupchat("one", stamp="2023-11-14T22:13:18Z"), now=live_at + 60)
    assert not after.accept(groupchat("two", stamp="2023-11-14T22:13:20Z"), now=live_at + 60)
    assert after.accept(groupchat("three", stamp="2023-11-14T22:13:21Z"), now=live_at + 60)
