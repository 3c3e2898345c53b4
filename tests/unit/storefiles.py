"""Store files as older versions of muc_guard left them (test fixtures)."""

import sqlite3

from muc_guard.store import APPLICATION_ID, MIGRATIONS


def write_schema1_store(path, account: str, room: str, *, nick: str = "bot",
                        drops: int = 0) -> None:
    """A store of schema 1 (muc_guard before positions) with one wanted room."""
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO rooms (account, room, requested_nick, nick, wanted, drops, added)"
                 " VALUES (?, ?, 'bot', ?, 1, ?, 0)", (account, room, nick, drops))
    conn.commit()
    conn.close()
