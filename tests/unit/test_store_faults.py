"""The store under faults (issue #6, part 6): disk full, read-only, corrupt,
newer, and a second process on the same file.

What must hold in every case: a clear StoreError or one logged warning; the
guard keeps guarding from memory; it writes again once it can; nothing that
was already stored is lost, and a file it refuses is not changed by a byte.

Second process: allowed. The store is one SQLite file in WAL mode, and
SQLite's locking keeps concurrent writers apart (several bots, or accounts,
may share a file; ``muc-guard rooms`` may read it while a bot runs). A
writer that finds the file locked for longer than the busy timeout keeps its
changes in memory and retries, as for a full disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import aioxmpp
import pytest

import muc_guard
from muc_guard import Cause, State, StoreError
from muc_guard.core.record import RoomRecord
from muc_guard.store import SCHEMA_VERSION, Store, StoreWriter
from harness import ROOM, ROOM_JID, Harness
from stanzas import self_available
from storefiles import write_schema1_store

ACCOUNT = "bot@localhost"


def rows(path) -> dict[str, tuple]:
    """What is committed in the file, read by a connection of its own."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {room: (nick, drops, cause) for room, nick, drops, cause in conn.execute(
            "SELECT room, nick, drops, last_cause FROM rooms WHERE account = ?", (ACCOUNT,))}
    finally:
        conn.close()


def tracked(i: int, **kw) -> RoomRecord:
    return RoomRecord(jid=aioxmpp.JID.fromstr(f"r{i}@conference.localhost"),
                       requested_nick="bot", nick=kw.pop("nick", "bot"), added=time.time(), **kw)


def written(writer: StoreWriter) -> bool:
    """Everything marked is committed (`pending` alone is false mid-write)."""
    return not writer.pending and not writer.failed


def warnings_about(caplog, path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and str(path) in r.getMessage()]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def h():
    harness = Harness()
    yield harness
    await harness.guard.shutdown()


# --- disk full -------------------------------------------------------------------


async def test_disk_full_keeps_guarding_from_memory_and_writes_later(h, tmp_path, caplog):
    path = tmp_path / "bot.db"
    await h.guard.open_store(path)
    await h.joined()
    engine = h.guard._guard
    engine.writer.RETRY_DELAY = 0.1
    conn = engine.store._conn
    stored = rows(path)
    assert stored == {ROOM: ("bot", 0, None)}
    pages = (await (await conn.execute("PRAGMA page_count")).fetchone())[0]
    await conn.execute(f"PRAGMA max_page_count = {pages}")          # the disk is full

    # 40 new rooms with maximal nicks (they do not fit), then a drop and rejoin.
    long_nick = "ü" * 511                                             # 1022 bytes
    joins = [asyncio.ensure_future(h.guard.join(f"r{i}@conference.localhost", long_nick))
             for i in range(40)]
    for i in range(40):
        await h.pending(f"r{i}@conference.localhost")
        h.feed(self_available(f"r{i}@conference.localhost", long_nick))
    await asyncio.wait_for(asyncio.gather(*joins), 5)
    await h.drop_and_rejoin(110, 333)

    # The guard kept guarding: the drop was seen and healed, all rooms joined.
    assert [e[0] for e in h.events] == ["dropped", "rejoined"]
    assert h.state().state is State.JOINED and h.state().drops == 1
    assert all(info.state is State.JOINED for info in h.guard.rooms())
    # One clear warning, however many writes failed; nothing stored was lost.
    full = warnings_about(caplog, path)
    assert len(full) == 1 and "full" in full[0] and "keeping" in full[0]
    assert rows(path) == stored
    assert engine.writer.failed
    # health() counts each failed write (the first and the retries so far)
    assert h.guard.health().counters.store_write_failures >= 1

    await conn.execute("PRAGMA max_page_count = 1073741823")        # space again
    await until(lambda: written(engine.writer))
    now = rows(path)
    assert now[ROOM] == ("bot", 1, Cause.SERVER_ERROR.value)
    assert len(now) == 41 and now["r39@conference.localhost"][0] == long_nick
    assert any("writable again" in m for m in warnings_about(caplog, path))


# --- read-only ---------------------------------------------------------------------


@contextlib.contextmanager
def read_only(*paths) -> None:
    """Make files read-only for this process: chmod for a normal user; root
    ignores modes, so there the immutable attribute (chattr +i) is used."""
    if os.geteuid() != 0:
        for p in paths:
            os.chmod(p, 0o400)
        undo = [lambda p=p: os.chmod(p, 0o600) for p in paths]
    else:
        done = []
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
                for q in done:
                    subprocess.run(["chattr", "-i", str(q)], check=True)
                # Not a skip: without chattr, root cannot make a file
                # read-only, and the scenario would go untested.
                pytest.fail("running as root, but chattr +i failed: cannot make a file "
                            "read-only here (install e2fsprogs, or run as a normal user)")
            done.append(p)
        undo = [lambda p=p: subprocess.run(["chattr", "-i", str(p)], check=True) for p in done]
    try:
        yield
    finally:
        for fn in undo:
            fn()


async def test_read_only_store_is_loaded_and_writes_resume_when_writable(h, tmp_path, caplog):
    """A store that became read-only while the bot was down: its rooms are
    restored, the bot works, and changes wait in memory until it can write."""
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.write(ACCOUNT, [RoomRecord(jid=ROOM_JID, requested_nick="bot", nick="bot",
                                            added=1.0)], [])
    await store.close()
    before = path.read_bytes()
    with read_only(path):
        await h.guard.open_store(path)                   # loads what is there
        engine = h.guard._guard
        engine.writer.RETRY_DELAY = 0.1
        await h.pending()                                # the restored room rejoins
        h.feed(self_available(ROOM, "bot"))
        await h.settle()
        assert h.state().state is State.JOINED
        await h.drop_and_rejoin(110, 333)
        assert h.state().state is State.JOINED and h.state().drops == 1
        await until(lambda: warnings_about(caplog, path))
        [warning] = warnings_about(caplog, path)
        assert "readonly" in warning or "read-only" in warning
        assert path.read_bytes() == before               # not a byte changed
    await until(lambda: written(engine.writer))
    assert rows(path)[ROOM] == ("bot", 1, Cause.SERVER_ERROR.value)


# --- refused files -------------------------------------------------------------------


def _smash(data: bytearray) -> None:
    for offset in range(4096, len(data), 61):          # keep the header, break the pages
        data[offset] ^= 0x5A


def _truncate(data: bytearray) -> None:
    del data[len(data) // 2:]


def _newer(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage, match", [
    (_smash, "corrupt"),
    (_truncate, "corrupt"),
    (_newer, "newer"),
    (lambda data: data.__setitem__(slice(0, 16), b"SQLite format 2\x00"), "not a SQLite"),
    (lambda data: data.__setitem__(slice(100, 4096), bytes(3996)), "corrupt"),
], ids=["pages", "truncated", "newer", "header", "page-1"])
async def test_refused_store_is_never_touched_and_the_guard_works_without_it(
        h, tmp_path, damage, match):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.write(ACCOUNT, [tracked(i, nick="x" * 200) for i in range(100)], [])
    await store.close()
    if damage is _newer:
        damage(path)
    else:
        data = bytearray(path.read_bytes())
        damage(data)
        path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match) as info:
        await h.guard.open_store(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    await h.joined()                                     # guarding from memory
    await h.drop_and_rejoin(110, 333)
    assert [e[0] for e in h.events] == ["dropped", "rejoined"]
    assert path.read_bytes() == before


# --- a second process ------------------------------------------------------------------


def _spawn(code: str, *args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(muc_guard.__file__)))
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


_LOCKER = """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")          # holds the write lock until killed
    print("locked", flush=True)
    time.sleep(600)
"""

_WRITER = """
    import asyncio, sys, time
    import aioxmpp
    from muc_guard.core.record import RoomRecord
    from muc_guard.store import Store, StoreWriter

    async def main():
        store = await Store.open(sys.argv[1])
        writer = StoreWriter(store, "other@localhost")
        for i in range(200):
            writer.mark(RoomRecord(jid=aioxmpp.JID.fromstr(f"o{i}@conference.localhost"),
                                    requested_nick="o", nick="o", added=time.time()))
            await writer.flush()
        await writer.close()
        await store.close()
        print("done", flush=True)

    asyncio.run(main())
"""


async def test_second_process_holding_the_lock_delays_writes_and_loses_nothing(
        tmp_path, caplog, monkeypatch):
    path = tmp_path / "bot.db"
    monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)  # fail fast in this test
    store = await Store.open(path)
    writer = StoreWriter(store, ACCOUNT)
    writer.RETRY_DELAY = 0.1
    await store.write(ACCOUNT, [tracked(0)], [])
    locker = _spawn(_LOCKER, str(path))
    try:
        assert await asyncio.to_thread(locker.stdout.readline) == "locked\n"
        for i in range(1, 4):
            writer.mark(tracked(i))
        await until(lambda: writer.failed)
        [warning] = warnings_about(caplog, path)
        assert "locked" in warning and "keeping" in warning
        assert len(await store.load_rooms(ACCOUNT)) == 1     # readers still read
    finally:
        _kill(locker)
    await until(lambda: written(writer))
    assert sorted(rows(path)) == [f"r{i}@conference.localhost" for i in range(4)]
    await writer.close()
    await store.close()


async def test_two_processes_writing_one_file_lose_nothing(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    writer = StoreWriter(store, ACCOUNT)
    other = _spawn(_WRITER, str(path))
    written = 0
    try:
        # Write for as long as the other process does: their transactions interleave.
        while (other.poll() is None or written < 200) and written < 20_000:
            writer.mark(tracked(written))
            await writer.flush()
            written += 1
        out = await asyncio.wait_for(asyncio.to_thread(other.communicate), 30)
        assert out[0] == "done\n", out[1][-2000:]
        assert other.returncode == 0
    finally:
        _kill(other)
    await writer.close()
    await store.close()
    assert len(rows(path)) == written
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM rooms WHERE account = 'other@localhost'"
                        ).fetchone()[0] == 200
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_open_while_another_process_holds_an_exclusive_lock_says_so(tmp_path, monkeypatch):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.close()
    before = path.read_bytes()
    locker = _spawn("""
        import sqlite3, sys, time
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        time.sleep(600)
    """, str(path))
    try:
        assert await asyncio.to_thread(locker.stdout.readline) == "locked\n"
        monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)
        with pytest.raises(StoreError, match="in use by another process") as info:
            await Store.open(path)
        assert str(path) in str(info.value)
    finally:
        _kill(locker)
    assert path.read_bytes() == before
    store = await Store.open(path)                         # free again
    await store.close()


# --- two processes opening one file at the same moment ---------------------------------

_OPENER = """
    import asyncio, sys
    from muc_guard.store import Store, StoreError

    async def main():
        print("ready", flush=True)
        for line in sys.stdin:                   # one path a round: the start signal
            try:
                store = await Store.open(line.strip())
                try:
                    rooms = await store.load_rooms("bot@localhost")
                finally:
                    await store.close()
            except StoreError as exc:
                print("error", exc, flush=True)
            else:
                print("ok", len(rooms), flush=True)

    asyncio.run(main())
"""


@pytest.mark.timeout(300)
async def test_two_processes_opening_a_new_or_old_store_together_both_succeed(tmp_path):
    """Two bots sharing a store start at the same moment: the one that loses
    the race to create (or migrate) the schema must find it done, not replay
    the migrations ("table rooms already exists") and call the file corrupt."""
    openers = [_spawn(_OPENER, stdin=subprocess.PIPE) for _ in range(2)]
    try:
        for proc in openers:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            assert line == "ready\n", proc.stderr.read()
        for i in range(30):
            for kind in ("new", "old"):
                path = tmp_path / f"{kind}{i}.db"
                if kind == "old":
                    write_schema1_store(path, ACCOUNT, "old@conference.localhost")
                for proc in openers:            # both start within microseconds
                    proc.stdin.write(f"{path}\n")
                    proc.stdin.flush()
                answers = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
                           for proc in openers]
                rooms = 1 if kind == "old" else 0
                assert answers == [f"ok {rooms}\n"] * 2, (kind, i, answers)
                conn = sqlite3.connect(path)
                try:
                    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                    columns = {row[1] for row in conn.execute("PRAGMA table_info(rooms)")}
                    assert {"last_id", "has_archive"} <= columns
                    assert conn.execute("SELECT count(*) FROM rooms").fetchone()[0] == rooms
                finally:
                    conn.close()
    finally:
        for proc in openers:
            proc.stdin.close()
            _kill(proc)
