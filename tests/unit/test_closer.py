"""muc_guard.closer: a store is closed when its event loop ends without shutdown().

aiosqlite's connection thread is not a daemon: while it runs, the interpreter
cannot exit. These tests run event loops of their own (asyncio.run, or a loop
closed by hand) and check that the thread ends, what was pending is written,
and shutdown() still closes the store itself, once. The same cases as real
processes are in tests/integration/test_exit.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import aiosqlite
import aioxmpp

import muc_guard
from muc_guard.closer import StoreCloser
from muc_guard.core.record import State, RoomRecord
from muc_guard.store import Store, StoreWriter

ACCOUNT = "bot@localhost"


def tracked(name: str, nick: str = "bot") -> RoomRecord:
    return RoomRecord(jid=aioxmpp.JID.fromstr(f"{name}@conference.localhost"),
                       requested_nick=nick, nick=nick, password=None, state=State.JOINING,
                       added=time.time())


def stored(path: Any) -> dict[str, str]:
    """room -> nick, read with plain sqlite3 after checking the file."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(conn.execute("SELECT room, nick FROM rooms"))
    finally:
        conn.close()


def thread_ended(store: Store) -> bool:
    thread = store._conn._thread
    thread.join(2.0)
    return not thread.is_alive()


async def open_watched(path: Any) -> tuple[Store, StoreWriter, StoreCloser]:
    store = await Store.open(path)
    writer = StoreWriter(store, ACCOUNT)
    return store, writer, await StoreCloser.watch(store, writer)


def test_asyncio_run_ending_flushes_and_closes(tmp_path):
    box: dict[str, Any] = {}

    async def main() -> None:
        store, writer, _ = await open_watched(tmp_path / "bot.db")
        await store.write(ACCOUNT, [tracked("old")], [])
        writer.mark(tracked("pending"))          # due within BATCH_DELAY: not yet
        box.update(store=store, writer=writer)

    asyncio.run(main())
    assert thread_ended(box["store"])
    assert stored(tmp_path / "bot.db") == {"old@conference.localhost": "bot",
                                           "pending@conference.localhost": "bot"}
    box["writer"].mark(tracked("late"))          # a closed writer takes nothing more
    assert not box["writer"].pending


def test_asyncio_run_ending_after_a_raise_closes_too(tmp_path):
    box: dict[str, Any] = {}

    async def main() -> None:
        box["store"], writer, _ = await open_watched(tmp_path / "bot.db")
        writer.mark(tracked("pending"), now=True)   # a write in flight when main raises
        raise RuntimeError("the bot failed")

    try:
        asyncio.run(main())
    except RuntimeError:
        pass
    assert thread_ended(box["store"])
    assert stored(tmp_path / "bot.db") == {"pending@conference.localhost": "bot"}


def test_shutdown_takes_over_and_closes_once(tmp_path, monkeypatch):
    closes = []
    close = Store.close

    async def counted(self: Store) -> None:
        closes.append(self)
        await close(self)

    monkeypatch.setattr(Store, "close", counted)

    async def main() -> None:
        client = aioxmpp.Client(aioxmpp.JID.fromstr(f"{ACCOUNT}/r"),
                                aioxmpp.make_security_layer("unused"))
        guard = client.summon(muc_guard.MUCGuard)
        await guard.open_store(tmp_path / "bot.db")
        closer = guard._guard._closer
        await guard.shutdown()
        await asyncio.sleep(0.01)
        assert closer._task.done() and closes == [guard._guard.store]

    asyncio.run(main())
    assert len(closes) == 1 and thread_ended(closes[0])
    conn = sqlite3.connect(tmp_path / "bot.db")
    assert conn.execute("SELECT clean_exit FROM accounts").fetchall() == [(1,)]
    conn.close()


async def test_release_while_the_closer_closes_waits_for_it(tmp_path):
    store, writer, closer = await open_watched(tmp_path / "bot.db")
    writer.mark(tracked("pending"))
    closer._task.cancel()                   # as asyncio.run does at its end
    await asyncio.sleep(0)                  # the closer has begun
    assert await closer.release() is False  # shutdown() must not close it again
    assert closer._task.done() and thread_ended(store)
    assert stored(tmp_path / "bot.db") == {"pending@conference.localhost": "bot"}


async def test_released_closer_closes_nothing(tmp_path):
    store, writer, closer = await open_watched(tmp_path / "bot.db")
    assert await closer.release() is True
    await asyncio.sleep(0.01)
    assert closer._task.done()
    await store.write(ACCOUNT, [tracked("still-open")], [])   # the store is the caller's
    await writer.close()
    await store.close()


def test_a_closed_loop_leaves_the_store_to_the_exit_hook(tmp_path):
    loop = asyncio.new_event_loop()

    async def setup() -> tuple[Store, StoreCloser]:
        store, writer, closer = await open_watched(tmp_path / "bot.db")
        writer.mark(tracked("pending"))
        return store, closer

    store, closer = loop.run_until_complete(setup())
    loop.close()                            # no task was cancelled: nothing ran
    assert store._conn._thread.is_alive()
    closer.close_stranded()                 # what the hook does at exit
    assert thread_ended(store)
    assert stored(tmp_path / "bot.db") == {"pending@conference.localhost": "bot"}


def test_a_write_cut_off_by_a_closed_loop_rolls_back(tmp_path, monkeypatch, caplog):
    execute = aiosqlite.Connection.execute
    held = []

    def hold_commit(self: aiosqlite.Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql != "COMMIT":
            return execute(self, sql, *args, **kwargs)

        async def never() -> None:
            held.append(sql)
            await asyncio.get_running_loop().create_future()

        return never()

    loop = asyncio.new_event_loop()

    async def setup() -> tuple[Store, StoreCloser]:
        store, writer, closer = await open_watched(tmp_path / "bot.db")
        await store.write(ACCOUNT, [tracked("old")], [])
        monkeypatch.setattr(aiosqlite.Connection, "execute", hold_commit)
        writer.mark(tracked("cut"), now=True)
        while not held:
            await asyncio.sleep(0.01)
        writer.mark(tracked("later"))
        return store, closer

    store, closer = loop.run_until_complete(setup())
    loop.close()
    monkeypatch.undo()
    started = time.monotonic()
    closer.close_stranded()
    assert time.monotonic() - started < 2.0 and thread_ended(store)
    assert stored(tmp_path / "bot.db") == {"old@conference.localhost": "bot"}
    assert "cut off when the event loop ended" in caplog.text
    assert "1 later one(s) are not written" in caplog.text
    # What garbage collection does to the frozen write: it must just end
    # (awaiting a rollback there raised from the closed connection).
    closer.writer._task.get_coro().close()


def test_a_loop_running_in_another_thread_is_left_alone(tmp_path):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        store, writer, closer = asyncio.run_coroutine_threadsafe(
            open_watched(tmp_path / "bot.db"), loop).result(5)
        closer.close_stranded()            # that loop's end will close it
        assert not closer._task.done() and store._conn._thread.is_alive()
        asyncio.run_coroutine_threadsafe(store.write(ACCOUNT, [tracked("after")], []),
                                         loop).result(5)
    finally:
        async def end() -> None:
            closer._task.cancel()
            await asyncio.wait([closer._task])

        asyncio.run_coroutine_threadsafe(end(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert thread_ended(store)
    assert stored(tmp_path / "bot.db") == {"after@conference.localhost": "bot"}
