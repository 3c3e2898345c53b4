"""
Persistent state: the rooms each account wants, in one SQLite file.

Motivation
==========

A bot that restarts must rejoin its rooms with the nick the rooms really gave
it, and must keep respecting a kick or a ban it received before the restart.
aioxmpp forgets all of that with the process.

Solution
========

:class:`Store` keeps one row per (account, room) in SQLite through aiosqlite.
The rules it follows:

* Only this module speaks SQL.
* Writes are rare (join, leave, drop, nick change) and precious, so each is a
  real transaction (``BEGIN IMMEDIATE`` … ``COMMIT``) with
  ``synchronous=FULL`` in WAL mode. :class:`StoreWriter` batches changes
  into at most one transaction a second; a give-up, a deletion and the
  guard's explicit flushes (join, leave) are written at once.
* The file is created with mode 0600 before SQLite touches it: it may hold
  room passwords. SQLite gives its ``-wal`` and ``-shm`` files the same mode.
* ``PRAGMA application_id`` marks the file as ours and ``PRAGMA user_version``
  holds the schema version. A file that is corrupt, foreign (another
  program's database, or not a database at all) or from a newer version of
  muc_guard raises :class:`StoreError` naming the file, and is never
  overwritten or reset.
* A row that cannot be read back (a bad JID, an unknown cause) is skipped
  with a warning and left in the file untouched.
* Another process may use the same file at the same time (another bot or
  account, the ``muc-guard`` inspector): SQLite's locking keeps writers
  apart, and a write that finds the file locked for longer than
  :attr:`Store.BUSY_TIMEOUT` fails like one on a full disk, so
  :class:`StoreWriter` keeps the change in memory and retries. A file locked
  while being opened raises :class:`StoreError` ("in use by another process").
  Processes may open one file at the same moment, even a new or old-schema
  one: the version is read again under the write lock before migrating.
* A file SQLite could only open read-only stays read-only for that
  connection; after such a failed write the next write reconnects, so the
  store is written again as soon as the file is writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import stat
import time
import urllib.parse
import functools
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from .core.continuity import Position, recent_from_json, recent_to_json
from .core.policy import Cause
from .core.record import RoomRecord, State

if TYPE_CHECKING:
    import aioxmpp

__all__ = ["Store", "StoreError", "StoreWriter", "SCHEMA_VERSION", "APPLICATION_ID",
           "RoomParser", "parse_stored_room", "aioxmpp_room"]

logger = logging.getLogger("muc_guard.store")

#: "MUCG": marks a SQLite file as a muc_guard store.
APPLICATION_ID = 0x4D554347
SCHEMA_VERSION = 3
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Primary SQLite result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8

# A bare JID on which stringprep is the identity: nodeprep (RFC 6122 A.5)
# maps nothing in lower-case ASCII and forbids only " & ' / : < > @ and space
# there; nameprep maps and forbids nothing in lower-case LDH labels.
_PLAIN_BARE_JID = re.compile(
    r"([a-z0-9!#$%()*+,.;=?\[\]^_`{|}~-]{1,1023})@([a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*)")
#: How a front-end reads a stored room JID: (the key its rooms are tracked
#: under, the MUC service's domain); ValueError or TypeError for a value that
#: is not a bare room JID with a local part (the row is then skipped). The
#: store writes ``str(rec.jid)``, so every front-end reads every other's rows.
RoomParser = Callable[[str], tuple[Hashable, str]]


@functools.cache
def _aioxmpp_jid() -> tuple[Any, Any]:
    """aioxmpp's JID class, and its namedtuple base's ``__new__`` (JID.__new__
    runs stringprep; the base stores the parts as given). Imported on first
    use: the store serves front-ends that have no aioxmpp."""
    import aioxmpp
    return aioxmpp.JID, super(aioxmpp.JID, aioxmpp.JID).__new__


def parse_stored_room(text: str) -> aioxmpp.JID:
    """Parse a room JID the store wrote from a parsed JID. Such text is
    usually in the plain form above, and aioxmpp's pure-Python stringprep
    (~70 µs per JID, most of reading 1,000 rooms) is skipped for it; anything
    else takes aioxmpp's full parse. Either way the JID is the one
    ``JID.fromstr`` returns (tests/unit/test_store.py checks that)."""
    jid_class, from_prepared = _aioxmpp_jid()
    match = _PLAIN_BARE_JID.fullmatch(text) if isinstance(text, str) else None
    if match is None or len(match[2]) > 1023:
        return jid_class.fromstr(text)  # type: ignore[no-any-return]
    return from_prepared(jid_class, match[1], match[2], None)  # type: ignore[no-any-return]


def aioxmpp_room(text: str) -> tuple[Hashable, str]:
    """The aioxmpp front-end's :data:`RoomParser`: an ``aioxmpp.JID``."""
    jid = parse_stored_room(text)
    if not jid.is_bare or not jid.localpart:
        raise ValueError(f"not a bare room JID: {text!r}")
    return jid, jid.domain

#: MIGRATIONS[n] brings a store from user_version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE rooms (
            account        TEXT NOT NULL,
            room           TEXT NOT NULL,
            requested_nick TEXT NOT NULL,
            nick           TEXT NOT NULL,
            password       TEXT,
            wanted         INTEGER NOT NULL,
            drops          INTEGER NOT NULL DEFAULT 0,
            last_cause     TEXT,
            last_joined    REAL,
            last_dropped   REAL,
            added          REAL NOT NULL,
            PRIMARY KEY (account, room)
        ) WITHOUT ROWID""",
    ),
    (   # 2: the position of the last delivered message (the continuity stream)
        "ALTER TABLE rooms ADD COLUMN last_id TEXT",
        "ALTER TABLE rooms ADD COLUMN last_ts REAL",
        "ALTER TABLE rooms ADD COLUMN recent TEXT",
        "ALTER TABLE rooms ADD COLUMN last_downtime REAL",
        # the resource each account last bound, for a stable full JID
        """CREATE TABLE accounts (
            account  TEXT PRIMARY KEY,
            resource TEXT
        ) WITHOUT ROWID""",
    ),
    (   # 3: facts that spare a restart a round trip per room
        # does the room advertise XEP-0313? NULL: not asked yet
        "ALTER TABLE rooms ADD COLUMN has_archive INTEGER",
        # 1 when the last process of this account shut its guard down cleanly
        "ALTER TABLE accounts ADD COLUMN clean_exit INTEGER",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

#: The columns _room_from_row reads, in its order.
_ROOM_COLUMNS = ("room, requested_nick, nick, password, wanted, drops, last_cause, "
                 "last_joined, last_dropped, added, last_id, last_ts, recent, last_downtime, "
                 "has_archive")

_UPSERT = """
INSERT INTO rooms (account, room, requested_nick, nick, password, wanted, drops,
                   last_cause, last_joined, last_dropped, added, last_id, last_ts, recent,
                   last_downtime, has_archive)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account, room) DO UPDATE SET
    requested_nick = excluded.requested_nick, nick = excluded.nick,
    password = excluded.password, wanted = excluded.wanted, drops = excluded.drops,
    last_cause = excluded.last_cause, last_joined = excluded.last_joined,
    last_dropped = excluded.last_dropped, last_id = excluded.last_id,
    last_ts = excluded.last_ts, recent = excluded.recent,
    last_downtime = excluded.last_downtime, has_archive = excluded.has_archive
"""


#: A message position changes many times a second in a busy bot: it updates
#: its three columns only (the row exists: joins are written at once).
_UPDATE_POSITION = """
UPDATE rooms SET last_id = ?, last_ts = ?, recent = ? WHERE account = ? AND room = ?
"""


class StoreError(Exception):
    """The store file cannot be used; the message names the file and why."""


def _recent_json(rec: RoomRecord) -> str | None:
    """The digests of the messages delivered just before the position."""
    if rec.stream is not None:
        return rec.stream.recent_json()
    return recent_to_json(rec.position.recent)


def _room_row(account: str, rec: RoomRecord) -> tuple[Any, ...]:
    return (
        account, str(rec.jid), rec.requested_nick, rec.nick, rec.password,
        int(rec.wanted), rec.drops,
        rec.last_cause.value if rec.last_cause is not None else None,
        rec.last_joined, rec.last_dropped,
        rec.added if rec.added is not None else time.time(),
        rec.position.last_id, rec.position.last_ts,
        _recent_json(rec),
        rec.last_downtime,
        None if rec.has_archive is None else int(rec.has_archive),
    )


def _position_row(account: str, rec: RoomRecord) -> tuple[Any, ...]:
    return (
        rec.position.last_id, rec.position.last_ts, _recent_json(rec),
        account, str(rec.jid),
    )


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _describe(exc: sqlite3.Error) -> str:
    """SQLite's message, with what it means for a store."""
    code = _primary_code(exc)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return f"{exc} (in use by another process)"
    if code == _SQLITE_READONLY:
        return f"{exc} (the file or its directory is read-only)"
    return str(exc)


def _create_private(path: str) -> None:
    """Create `path` empty with mode 0600 unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _check_header(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(f"cannot use store {path!r}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"store {path!r} is not a regular file")
    if st.st_size:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
        if header != _SQLITE_MAGIC:
            raise StoreError(
                f"store {path!r} is not a SQLite database (corrupt, or some other file); "
                "refusing to touch it"
            )
    if st.st_mode & 0o077:
        logger.warning("store %r is readable by other users (mode %o); it may hold "
                       "room passwords: chmod 600 it", path, stat.S_IMODE(st.st_mode))


class Store:
    """One open store file. Use :meth:`open`; close with :meth:`close`."""

    #: seconds a statement waits for another process's lock before failing
    BUSY_TIMEOUT = 5.0

    def __init__(self, path: str, conn: aiosqlite.Connection,
                 parse_room: RoomParser | None = None) -> None:
        self.path = path
        self._conn = conn
        #: how stored room JIDs are read back (the front-end's room keys)
        self.parse_room: RoomParser = parse_room or aioxmpp_room
        self._lock = asyncio.Lock()
        #: set by a write refused as read-only: reconnect before the next one
        self._reconnect = False
        #: number of write transactions committed (for tests and benchmarks)
        self.transactions = 0

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, create: bool = True,
                   parse_room: RoomParser | None = None) -> "Store":
        """Open the store at `path`.

        `parse_room` reads the stored room JIDs back as the front-end's room
        keys (default: ``aioxmpp.JID``, :func:`aioxmpp_room`).

        With ``create=False`` (tools that inspect an existing store) nothing
        is created: a missing file, or an empty one that would become a new
        store, raises :class:`StoreError` ("no such store").
        """
        path = os.fspath(path)
        if create:
            _create_private(path)
        elif not os.path.lexists(path):
            raise StoreError(f"no such store: {path}")
        _check_header(path)
        if not create and os.stat(path).st_size == 0:
            raise StoreError(f"no such store: {path} (the file is empty)")
        store = cls(path, await cls._connect(path, create), parse_room)
        try:
            await store._prepare()
        except BaseException:
            await store._conn.close()
            raise
        return store

    @classmethod
    async def _connect(cls, path: str, create: bool) -> aiosqlite.Connection:
        try:
            if create:
                conn = await aiosqlite.connect(path, isolation_level=None)
            else:
                # mode=rw: SQLite itself must not create the file either, even
                # if it vanished since the check above.
                uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
                conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            await conn.execute(f"PRAGMA busy_timeout = {int(cls.BUSY_TIMEOUT * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path!r}: {_describe(exc)}") from exc
        return conn

    async def _scalar(self, sql: str) -> Any:
        async with self._conn.execute(sql) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def _identify(self) -> int:
        """The file's schema version, after checking it is a store of ours
        that this version understands. Reads one snapshot: another process
        may be creating or migrating the schema at this very moment."""
        path = self.path
        outer = not self._conn.in_transaction
        if outer:
            await self._conn.execute("BEGIN")
        try:
            app_id = await self._scalar("PRAGMA application_id")
            version = await self._scalar("PRAGMA user_version")
            tables = await self._scalar("SELECT count(*) FROM sqlite_master")
        finally:
            if outer:
                await self._conn.execute("COMMIT")
        if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables):
            raise StoreError(
                f"store {path!r} is a SQLite database of some other program "
                f"(application_id={app_id}, user_version={version}); refusing to touch it"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {path!r} has schema version {version}, newer than this "
                f"muc_guard understands ({SCHEMA_VERSION}); upgrade muc_guard"
            )
        return version

    async def _prepare(self) -> None:
        path = self.path
        try:
            version = await self._identify()
            check = await self._scalar("PRAGMA quick_check")
            if check != "ok":
                raise StoreError(f"store {path!r} is corrupt: {check}")
            await self._enable_wal()
            await self._conn.execute("PRAGMA synchronous = FULL")
            if version != SCHEMA_VERSION:
                await self._migrate()
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise StoreError(f"store {path!r} is in use by another process ({exc}); "
                                 "try again when it is done") from exc
            raise StoreError(f"store {path!r} is corrupt or unreadable: {exc}") from exc

    async def _enable_wal(self) -> None:
        """Switch the file to WAL mode (a no-op once it is). Switching needs
        the file to itself, and SQLite answers "locked" at once, without
        waiting out the busy timeout, while another process merely reads it
        (e.g. one opening the same old store at the same moment): retry
        within the timeout."""
        deadline = time.monotonic() + self.BUSY_TIMEOUT
        delay = 0.005
        while True:
            try:
                await self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if (_primary_code(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED)
                        or time.monotonic() + delay > deadline):
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _migrate(self) -> None:
        """Bring the schema up to date in one write transaction. The version
        is read again under the write lock: a second process opening the
        file at the same moment waits here, then finds the work done."""
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            version = await self._identify()
            for step in MIGRATIONS[version:]:
                for sql in step:
                    await self._conn.execute(sql)
            if version != SCHEMA_VERSION:
                await self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                await self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await self._conn.execute("COMMIT")
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        if version != SCHEMA_VERSION:
            logger.info("store %r migrated from schema %d to %d", self.path, version,
                        SCHEMA_VERSION)

    async def load_rooms(self, account: str) -> list[RoomRecord]:
        """All rooms stored for `account`; unreadable rows are skipped, not lost."""
        rooms = []
        async with self._conn.execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE account = ? ORDER BY added",
            (account,),
        ) as cur:
            async for row in cur:
                try:
                    rooms.append(self._room_from_row(row, self.parse_room))
                except (ValueError, TypeError) as exc:
                    logger.warning("store %r: skipping unreadable row for room %r of %s: %s",
                                   self.path, row[0], account, exc)
        return rooms

    async def accounts(self) -> list[str]:
        """Every account the store knows (with rooms or a stored resource), sorted."""
        async with self._conn.execute(
                "SELECT account FROM rooms UNION SELECT account FROM accounts "
                "ORDER BY account") as cur:
            return [row[0] async for row in cur]

    async def load_all(self) -> list[tuple[str, RoomRecord]]:
        """(account, room) for every stored room of every account, for
        inspection tools; unreadable rows are skipped with a warning, not lost."""
        rooms = []
        async with self._conn.execute(
            f"SELECT account, {_ROOM_COLUMNS} FROM rooms ORDER BY account, added",
        ) as cur:
            async for row in cur:
                account = row[0]
                try:
                    rooms.append((account, self._room_from_row(row[1:], self.parse_room)))
                except (ValueError, TypeError) as exc:
                    logger.warning("store %r: skipping unreadable row for room %r of %s: %s",
                                   self.path, row[1], account, exc)
        return rooms

    async def forget(self, room: Hashable, account: str | None = None) -> int:
        """Delete `room` for `account` (for every account if None) in one
        durable transaction; returns the number of rows removed.

        Meant for a store no guard has open: a running guard writes its own
        rooms back on its next change.
        """
        sql = "DELETE FROM rooms WHERE room = ?"
        args: tuple[str, ...] = (str(room),)
        if account is not None:
            sql += " AND account = ?"
            args += (account,)
        async with self._write_transaction() as conn:
            async with conn.execute(sql, args) as cur:
                removed = cur.rowcount
        return max(removed, 0)

    @staticmethod
    def _room_from_row(row: Sequence[Any], parse_room: RoomParser = aioxmpp_room) -> RoomRecord:
        (room, requested_nick, nick, password, wanted, drops, last_cause,
         last_joined, last_dropped, added, last_id, last_ts, recent, last_downtime,
         has_archive) = row
        jid, service = parse_room(room)
        if not isinstance(requested_nick, str) or not isinstance(nick, str):
            raise TypeError("nick is not text")
        return RoomRecord(
            jid=jid,
            requested_nick=requested_nick,
            nick=nick or requested_nick,
            password=password,
            state=State.JOINING if wanted else State.GAVE_UP,
            drops=int(drops),
            last_cause=Cause(last_cause) if last_cause is not None else None,
            last_joined=last_joined,
            last_dropped=last_dropped,
            added=added,
            position=Position(last_id, last_ts, recent_from_json(recent)),
            last_downtime=last_downtime,
            has_archive=None if has_archive is None else bool(has_archive),
            service=service,
        )

    async def load_resource(self, account: str) -> str | None:
        async with self._conn.execute(
                "SELECT resource FROM accounts WHERE account = ?", (account,)) as cur:
            row = await cur.fetchone()
        return row[0] if row and isinstance(row[0], str) and row[0] else None

    async def take_clean_exit(self, account: str) -> bool:
        """Whether the last process of `account` shut its guard down cleanly;
        clears the mark, so that a crash of this process shows next time."""
        async with self._conn.execute(
                "SELECT clean_exit FROM accounts WHERE account = ?", (account,)) as cur:
            row = await cur.fetchone()
        clean = bool(row and row[0])
        if clean:
            await self.set_clean_exit(account, False)
        return clean

    async def set_clean_exit(self, account: str, clean: bool) -> None:
        async with self._write_transaction() as conn:
            await conn.execute(
                "INSERT INTO accounts (account, clean_exit) VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET clean_exit = excluded.clean_exit",
                (account, int(clean)))

    async def save_resource(self, account: str, resource: str) -> None:
        async with self._write_transaction() as conn:
            await conn.execute(
                "INSERT INTO accounts (account, resource) VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET resource = excluded.resource",
                (account, resource))

    async def write(self, account: str, upserts: Iterable[RoomRecord],
                    deletes: Iterable[Hashable],
                    positions: Iterable[RoomRecord] = ()) -> None:
        """Apply upserts, deletes and position updates for `account` in one
        durable transaction."""
        rows = [_room_row(account, rec) for rec in upserts]
        positions = list(positions)
        moved = [_position_row(account, rec) for rec in positions]
        gone = [(account, str(jid)) for jid in deletes]
        async with self._write_transaction() as conn:
            if rows:
                # An iterator, not the list: aiosqlite logs the arguments of
                # every call at DEBUG, and these rows hold room passwords.
                await conn.executemany(_UPSERT, iter(rows))
            if moved:
                before = conn.total_changes
                await conn.executemany(_UPDATE_POSITION, moved)
                if conn.total_changes - before < len(moved):
                    # A row that was never written whole (not by the guard,
                    # which writes a room at once when it is added): write
                    # them whole rather than lose a position.
                    await conn.executemany(_UPSERT, iter([_room_row(account, rec)
                                                          for rec in positions]))
            if gone:
                await conn.executemany("DELETE FROM rooms WHERE account = ? AND room = ?", gone)

    @contextlib.asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One durable write transaction: BEGIN IMMEDIATE ... COMMIT, rolled
        back on any error; SQLite errors become StoreError naming the file."""
        async with self._lock:
            if self._reconnect:
                await self._reopen()
            try:
                try:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    yield self._conn
                    await self._conn.execute("COMMIT")
                except GeneratorExit:
                    # Dropped with a closed event loop (muc_guard.closer): it
                    # cannot await, and closing the connection rolls back.
                    raise
                except BaseException:
                    # Also when cancelled while BEGIN or COMMIT waited for
                    # SQLite's thread: that thread still runs it, and runs
                    # this rollback (a no-op outside a transaction) after it.
                    await self._conn.rollback()
                    raise
            except sqlite3.Error as exc:
                # SQLite opens a file it cannot write read-only, for good.
                self._reconnect = _primary_code(exc) == _SQLITE_READONLY
                raise StoreError(f"cannot write store {self.path!r}: {_describe(exc)}") from exc
            self.transactions += 1

    async def _reopen(self) -> None:
        """A fresh connection to the same file (see _write_transaction);
        never one that creates it, should it have vanished meanwhile."""
        conn = await self._connect(self.path, create=False)
        await conn.execute("PRAGMA synchronous = FULL")
        await self._conn.close()
        self._conn = conn
        self._reconnect = False

    @property
    def busy(self) -> bool:
        """A write transaction is under way (or waiting for its turn)."""
        return self._lock.locked()

    async def close(self) -> None:
        await self._conn.close()


class StoreWriter:
    """Coalesces changes to one account's rooms into few durable transactions.

    The guard marks records dirty as events happen (written within
    BATCH_DELAY, or at once with ``now=True``) and awaits :meth:`flush` where
    the caller must know the change is stored (join, leave). When a write fails (disk full, file
    read-only) the changes stay pending and are retried later: the guard keeps
    guarding from memory meanwhile, and nothing already stored is lost.
    """

    RETRY_DELAY = 5.0
    #: changes wait at most this long, to be written together: a burst of
    #: 1,000 rejoins becomes one or two transactions, not one per room (and
    #: SQLite's thread does not compete with the joins for the GIL). Changes
    #: that must survive a crash (a give-up, a deletion) are written at once,
    #: as is everything when the guard awaits flush() (join, leave).
    BATCH_DELAY = 1.0

    def __init__(self, store: Store, account: str,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.store = store
        self.account = account
        #: called once per failed write (the health counters)
        self._on_failure = on_failure
        self._dirty: dict[Hashable, RoomRecord] = {}
        #: records whose message position alone changed (lazy marks)
        self._moved: dict[Hashable, RoomRecord] = {}
        self._deleted: set[Hashable] = set()
        self._lock = asyncio.Lock()
        self._retry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._batch: asyncio.TimerHandle | None = None
        #: pending changes are to be written now (not at the batch timer)
        self._due = False
        self.failed = False
        #: closed: changes marked from now on are not written
        self._closed = False

    def mark(self, rec: RoomRecord, *, lazy: bool = False, now: bool = False) -> None:
        """Note a changed record, to be written within BATCH_DELAY s (`now`:
        at once). `lazy` marks say that only its message position changed."""
        if self._closed:
            return
        if not lazy:
            self._deleted.discard(rec.jid)
            self._moved.pop(rec.jid, None)
            self._dirty[rec.jid] = rec
        elif rec.jid in self._deleted:
            return    # gone
        elif rec.jid not in self._dirty:    # else it is written whole anyway
            self._moved[rec.jid] = rec
        if now:
            self._write_now()
        elif self._batch is None and self._retry is None:
            self._batch = asyncio.get_running_loop().call_later(self.BATCH_DELAY, self._batch_due)

    def _batch_due(self) -> None:
        self._batch = None
        self._write_now()

    def mark_deleted(self, jid: Hashable) -> None:
        if self._closed:
            return
        self._dirty.pop(jid, None)
        self._moved.pop(jid, None)
        self._deleted.add(jid)
        self._write_now()

    @property
    def pending(self) -> bool:
        return bool(self._dirty or self._deleted or self._moved)

    def _write_now(self) -> None:
        self._due = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._background_flush())

    async def _background_flush(self) -> None:
        try:
            # Changes due while a write ran found this task busy: write them
            # next (the others wait for their batch timer).
            while self._due and self.pending:
                self._due = False
                await self.flush()
        except StoreError:
            pass  # logged in flush(); retried by the timer

    async def flush(self) -> None:
        """Write everything pending; raises :class:`StoreError` if that fails."""
        async with self._lock:
            if not self.pending:
                return
            dirty, deleted, moved = self._dirty, self._deleted, self._moved
            self._dirty, self._deleted, self._moved = {}, set(), {}
            try:
                await self.store.write(self.account, dirty.values(), deleted, moved.values())
            except BaseException as exc:
                # Put back what newer changes have not superseded.
                for jid, rec in dirty.items():
                    if jid not in self._deleted:
                        self._dirty.setdefault(jid, rec)
                        self._moved.pop(jid, None)
                for jid, rec in moved.items():
                    if jid not in self._deleted and jid not in self._dirty:
                        self._moved.setdefault(jid, rec)
                for jid in deleted:
                    if jid not in self._dirty:
                        self._deleted.add(jid)
                if isinstance(exc, StoreError):
                    if self._on_failure is not None:
                        self._on_failure()
                    if not self.failed:
                        logger.warning("%s; keeping %d change(s) in memory and retrying",
                                       exc, len(dirty) + len(deleted) + len(moved))
                    self.failed = True
                    self._schedule_retry()
                raise
            if self.failed:
                logger.warning("store %r writable again", self.store.path)
                self.failed = False

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(
                self.RETRY_DELAY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._write_now()

    async def close(self) -> None:
        """Flush what can be flushed and stop retrying; later marks are ignored."""
        self._closed = True
        self._stop_timers()
        if self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)
        await self._last_flush()

    async def close_stranded(self) -> None:
        """:meth:`close` for a writer whose event loop has ended, called from
        another loop (see :mod:`muc_guard.closer`): the old loop's tasks never
        run again. A write they left cut off mid-way holds the locks; its
        transaction rolls back when the store closes, and nothing is written."""
        self._closed = True
        self._stop_timers()
        if self._lock.locked() or self.store.busy:
            logger.error("store %r: a write cut off when the event loop ended rolls back; "
                         "its changes and %d later one(s) are not written",
                         self.store.path, self._count())
            return
        await self._last_flush()

    def _stop_timers(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _count(self) -> int:
        return len(self._dirty) + len(self._deleted) + len(self._moved)

    async def _last_flush(self) -> None:
        try:
            await self.flush()
        except StoreError:
            self._stop_timers()    # flush() scheduled a retry that never comes
            logger.error("store %r: %d change(s) could not be written before closing",
                         self.store.path, self._count())
