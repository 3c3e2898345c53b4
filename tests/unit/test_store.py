"""The SQLite store: creation, round trips, accounts, and files it must refuse."""

import os
import sqlite3
import stat
import time

import aioxmpp
import pytest
from hypothesis import given, settings, strategies as st

from muc_guard import Cause, State, StoreError
from muc_guard.core.record import RoomRecord
from muc_guard.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Store,
    StoreWriter,
    parse_stored_room,
)
from storefiles import write_schema1_store

ROOM = aioxmpp.JID.fromstr("room@conference.localhost")
OTHER = aioxmpp.JID.fromstr("other@conference.localhost")


def tracked(jid=ROOM, **kw) -> RoomRecord:
    defaults = dict(requested_nick="bot", nick="bot", added=time.time())
    defaults.update(kw)
    return RoomRecord(jid=jid, **defaults)


async def assert_refused_untouched(path, match: str) -> None:
    """Opening `path` raises a StoreError naming it, and leaves it byte for byte."""
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match) as info:
        await Store.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


async def test_new_store_is_private_wal_and_versioned(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_rooms_round_trip_with_every_field(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    rec = tracked(nick="bot_assigned", password="s3cret 'quoted' ünï", drops=3,
                  last_cause=Cause.SERVER_ERROR, last_joined=1.5, last_dropped=2.5)
    gone = tracked(OTHER, state=State.GAVE_UP, last_cause=Cause.BANNED)
    await store.write("bot@localhost", [rec, gone], [])
    await store.close()

    store = await Store.open(tmp_path / "bot.db")
    loaded = {r.jid: r for r in await store.load_rooms("bot@localhost")}
    await store.close()
    back = loaded[ROOM]
    assert (back.requested_nick, back.nick, back.password) == (
        "bot", "bot_assigned", "s3cret 'quoted' ünï")
    assert (back.state, back.drops, back.last_cause) == (State.JOINING, 3, Cause.SERVER_ERROR)
    assert (back.last_joined, back.last_dropped) == (1.5, 2.5)
    assert loaded[OTHER].state is State.GAVE_UP
    assert loaded[OTHER].last_cause is Cause.BANNED


async def test_accounts_do_not_mix(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    await store.write("a@localhost", [tracked(nick="a")], [])
    await store.write("b@localhost", [tracked(nick="b"), tracked(OTHER, nick="b")], [])
    await store.write("a@localhost", [], [OTHER])   # deleting in a must not touch b
    assert [r.nick for r in await store.load_rooms("a@localhost")] == ["a"]
    assert sorted(r.nick for r in await store.load_rooms("b@localhost")) == ["b", "b"]
    assert await store.load_rooms("c@localhost") == []
    await store.close()


async def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.execute("INSERT INTO notes VALUES ('precious')")
    conn.commit()
    conn.close()
    await assert_refused_untouched(path, "other program")


async def test_non_database_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a database\n" * 100)
    await assert_refused_untouched(path, "not a SQLite database")


async def test_corrupt_store_is_refused_and_untouched(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.write("bot@localhost", [tracked(jid=aioxmpp.JID.fromstr(f"r{i}@c.localhost"))
                                        for i in range(200)], [])
    await store.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 97):   # keep the header, smash the pages
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    await assert_refused_untouched(path, "corrupt")


async def test_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    await assert_refused_untouched(path, "newer")


async def test_unreadable_row_is_skipped_but_kept(tmp_path, caplog):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.write("bot@localhost", [tracked()], [])
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO rooms (account, room, requested_nick, nick, wanted, added, "
                 "last_cause) VALUES ('bot@localhost', 'not a jid@@/', 'x', 'x', 1, 0, NULL),"
                 " ('bot@localhost', 'r2@c.localhost', 'x', 'x', 1, 0, 'no-such-cause')")
    conn.commit()
    conn.close()
    store = await Store.open(path)
    rooms = await store.load_rooms("bot@localhost")
    await store.close()
    assert [r.jid for r in rooms] == [ROOM]
    assert "skipping unreadable row" in caplog.text
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM rooms").fetchone()[0] == 3
    conn.close()


async def test_writer_keeps_changes_while_the_file_is_read_only(tmp_path, caplog):
    # SQLite's own read-only switch: file modes do not stop root.
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    writer = StoreWriter(store, "bot@localhost")
    writer.RETRY_DELAY = 0.05
    await store._conn.execute("PRAGMA query_only = ON")   # every write now fails
    writer.mark(tracked(drops=1))
    with pytest.raises(StoreError):
        await writer.flush()
    assert writer.pending and writer.failed
    assert "keeping 1 change(s) in memory" in caplog.text
    await store._conn.execute("PRAGMA query_only = OFF")
    await writer.flush()
    assert not writer.pending and not writer.failed
    assert [r.drops for r in await store.load_rooms("bot@localhost")] == [1]
    await writer.close()
    await store.close()


async def test_version_1_store_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    write_schema1_store(path, "bot@localhost", str(ROOM), nick="bot_", drops=4)
    store = await Store.open(path)
    [rec] = await store.load_rooms("bot@localhost")
    assert (rec.nick, rec.drops, rec.position.last_id, rec.position.last_ts) == (
        "bot_", 4, None, None)
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_message_positions_round_trip(tmp_path):
    from muc_guard.core.continuity import Position
    store = await Store.open(tmp_path / "bot.db")
    await store.write("bot@localhost", [tracked(position=Position("abc-123", 1700000000.25))], [])
    [rec] = await store.load_rooms("bot@localhost")
    assert rec.position == Position("abc-123", 1700000000.25)
    await store.close()


async def test_lazy_marks_are_batched_into_one_transaction(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    writer = StoreWriter(store, "bot@localhost")
    writer.BATCH_DELAY = 0.2
    recs = [tracked(jid=aioxmpp.JID.fromstr(f"r{i}@c.localhost")) for i in range(50)]
    for _ in range(20):                         # 1,000 position updates
        for rec in recs:
            writer.mark(rec, lazy=True)
    import asyncio
    await asyncio.sleep(0.1)
    assert store.transactions == 0              # nothing written before the delay
    await asyncio.sleep(0.3)
    assert store.transactions == 1
    assert len(await store.load_rooms("bot@localhost")) == 50
    await writer.close()
    await store.close()


async def test_archive_knowledge_round_trips(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    rooms = {f"{name}@c.localhost": value
             for name, value in (("unknown", None), ("yes", True), ("no", False))}
    await store.write("bot@localhost",
                      [tracked(jid=aioxmpp.JID.fromstr(j), has_archive=v) for j, v in rooms.items()],
                      [])
    loaded = {str(r.jid): r.has_archive for r in await store.load_rooms("bot@localhost")}
    assert loaded == rooms
    await store.close()


async def test_clean_exit_mark_is_taken_once(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    assert await store.take_clean_exit("bot@localhost") is False   # never marked: a crash
    await store.set_clean_exit("bot@localhost", True)
    assert await store.take_clean_exit("other@localhost") is False
    assert await store.take_clean_exit("bot@localhost") is True
    assert await store.take_clean_exit("bot@localhost") is False   # this process may crash
    await store.close()


async def test_a_position_for_a_row_never_written_whole_is_not_lost(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    rec = tracked()
    from muc_guard.core.continuity import Position
    rec.position = Position("id-7", 1700000000.0)
    await store.write("bot@localhost", [], [], [rec])
    (loaded,) = await store.load_rooms("bot@localhost")
    assert loaded.position.last_id == "id-7"
    await store.close()


async def test_changes_marked_during_a_write_are_written_without_another_event(tmp_path):
    """A mark that finds the writer busy must not wait for some later event."""
    import asyncio
    from muc_guard.core.continuity import Position
    store = await Store.open(tmp_path / "bot.db")
    writer = StoreWriter(store, "bot@localhost")
    writer.BATCH_DELAY = 0.1
    first, second = tracked(), tracked(jid=aioxmpp.JID.fromstr("other@c.localhost"))
    writer.mark(first)                  # a write starts...
    await asyncio.sleep(0)
    writer.mark(second)                 # ...and this one finds it running
    await asyncio.sleep(0.5)
    stored = {str(r.jid) for r in await store.load_rooms("bot@localhost")}
    assert stored == {str(first.jid), str(second.jid)}
    second.position = Position("p1", 5.0)
    writer.mark(first)
    await asyncio.sleep(0)
    writer.mark(second)
    writer.mark(second, lazy=True)      # pending whole: must still be timed
    await asyncio.sleep(0.5)
    stored_pos = {str(r.jid): r.position for r in await store.load_rooms("bot@localhost")}
    assert stored_pos[str(second.jid)].last_id == "p1"
    await writer.close()
    await store.close()



# --- stored room JIDs: stringprep skipped where it is the identity ------------------

# Text near the edges of the shortcut: upper case, characters nodeprep forbids,
# non-ASCII, a soft hyphen (mapped to nothing), control characters, resources.
_JID_TEXT = st.from_regex(r"[a-zA-Z0-9!#$%()*+,.;=?\[\]^_`{|}~&'/:<>@ é\u00ad\x01-]{0,12}"
                          r"@[a-zA-Z0-9.é-]{0,12}(/[a-z]{0,3})?", fullmatch=True)


def _outcome(parse, text):
    try:
        return parse(text)
    except ValueError as exc:
        return type(exc)


@settings(max_examples=2000, deadline=None)
@given(_JID_TEXT | st.text(max_size=20))
def test_stored_room_parse_agrees_with_aioxmpp(text):
    ours, theirs = _outcome(parse_stored_room, text), _outcome(aioxmpp.JID.fromstr, text)
    assert ours == theirs
    if isinstance(theirs, aioxmpp.JID):
        assert type(ours) is aioxmpp.JID
        assert hash(ours) == hash(theirs) and str(ours) == str(theirs)


def test_plain_stored_rooms_skip_stringprep(monkeypatch):
    import aioxmpp.structs

    calls = []
    original = aioxmpp.structs.nodeprep
    monkeypatch.setattr(aioxmpp.structs, "nodeprep",
                        lambda *a, **kw: calls.append(a) or original(*a, **kw))
    parse_stored_room("room-1@conference.example.org")
    assert calls == []
    parse_stored_room("Room-1@conference.example.org")   # upper case: the full parse
    assert len(calls) == 1


async def test_rooms_with_unusual_jids_still_round_trip(tmp_path):
    jids = [aioxmpp.JID.fromstr(t) for t in
            ("Café@Conference.Localhost", "a.b_c~d@x-y.example", "ROOM@muc.localhost")]
    store = await Store.open(tmp_path / "s.db")
    try:
        await store.write("bot@localhost", [tracked(jid=j) for j in jids], [])
        loaded = {r.jid for r in await store.load_rooms("bot@localhost")}
    finally:
        await store.close()
    assert loaded == set(jids)


async def test_changes_are_batched_but_urgent_ones_written_at_once(tmp_path):
    import asyncio
    store = await Store.open(tmp_path / "bot.db")
    writer = StoreWriter(store, "bot@localhost")
    writer.BATCH_DELAY = 0.3
    recs = [tracked(jid=aioxmpp.JID.fromstr(f"r{i}@c.localhost")) for i in range(200)]
    for rec in recs:                            # a burst of rejoins
        writer.mark(rec)
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert store.transactions == 0
    await asyncio.sleep(0.4)
    assert store.transactions == 1 and len(await store.load_rooms("bot@localhost")) == 200
    recs[0].state = State.GAVE_UP               # kicked: must survive a crash
    writer.mark(recs[0], now=True)
    await asyncio.sleep(0.05)
    assert store.transactions == 2
    stored = {str(r.jid): r.state for r in await store.load_rooms("bot@localhost")}
    assert stored[str(recs[0].jid)] is State.GAVE_UP
    await writer.close()
    await store.close()


async def test_a_thousand_rooms_and_positions_in_one_write(tmp_path):
    """A restart's or a busy second's worth of rows, in one transaction each."""
    from muc_guard.core.continuity import Position

    store = await Store.open(tmp_path / "bot.db")
    recs = [tracked(jid=aioxmpp.JID.fromstr(f"r{i}@c.localhost"), password=f"pw{i}",
                    drops=i) for i in range(1000)]
    await store.write("bot@localhost", recs, [])
    for i, rec in enumerate(recs):
        rec.position = Position(f"id-{i}", 1700000000.0 + i, ((f"{i:016x}", 1.5),))
    other = tracked(jid=aioxmpp.JID.fromstr("never-written@c.localhost"),
                    position=Position("x", 5.0))
    await store.write("bot@localhost", [], [], recs + [other])
    loaded = {str(r.jid): r for r in await store.load_rooms("bot@localhost")}
    assert len(loaded) == 1001
    for i in (0, 61, 62, 199, 200, 999):
        r = loaded[f"r{i}@c.localhost"]
        assert (r.password, r.drops) == (f"pw{i}", i)
        assert r.position == Position(f"id-{i}", 1700000000.0 + i, ((f"{i:016x}", 1.5),))
    assert loaded["never-written@c.localhost"].position.last_id == "x"
    assert store.transactions == 2
    await store.close()


@pytest.mark.parametrize("statement", ["BEGIN IMMEDIATE", "COMMIT"])
async def test_a_write_cancelled_in_sqlites_queue_leaves_no_transaction_open(
        tmp_path, monkeypatch, statement):
    """A write cancelled while BEGIN (or COMMIT) waits for SQLite's thread:
    the thread still runs the statement, so the write must roll back after
    it, or the connection stays inside a transaction holding the file's
    write lock, and every later write fails ("within a transaction")."""
    import asyncio

    import aiosqlite
    store = await Store.open(tmp_path / "bot.db")
    execute = aiosqlite.Connection.execute
    queued = asyncio.Event()

    def noting(self, sql, *args, **kwargs):
        if sql == statement:
            queued.set()
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "execute", noting)
    task = asyncio.ensure_future(store.write("bot@localhost", [tracked(drops=1)], []))
    await queued.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.write("bot@localhost", [tracked(jid=OTHER)], [])
    other = sqlite3.connect(tmp_path / "bot.db", timeout=0.1)
    other.execute("BEGIN IMMEDIATE")             # the write lock is free
    other.rollback()
    other.close()
    assert {r.jid for r in await store.load_rooms("bot@localhost")} >= {OTHER}
    await store.close()
