"""Secrets against a real Prosody (issue #6, part 8): no password in any log.

Every logger (aioxmpp's wire log included) is captured at DEBUG while a bot
joins a password-protected room, is removed and rejoins, writes its store,
and while ``muc-guard rooms`` shows that store. Neither the room password
nor the account password may appear in a log record or in the output.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import stat

import aioxmpp
import pytest

from muc_guard import Cause, cli
from guardkit import Bot

pytestmark = pytest.mark.integration

#: Letters and digits only, so that no escaping (XML, bytes repr) can hide a
#: leak from the search below; quotes and unicode are the store's test's job.
ROOM_PASSWORD = "r00m" + secrets.token_hex(12)


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.texts.append(f"{record.name}: {text}")


@contextlib.contextmanager
def everything_at_debug():
    handler = Everything()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Loggers that set a level of their own (pytest's log_level, earlier tests).
    named = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)]
    levels = [(lg, lg.level) for lg in named if isinstance(lg, logging.Logger)]
    for lg, _ in levels:
        lg.setLevel(logging.NOTSET)
    try:
        yield handler
    finally:
        for lg, level in levels:
            lg.setLevel(level)
        root.setLevel(old)
        root.removeHandler(handler)


async def test_no_password_in_any_log_at_debug(prosody, make_client, account, room_jid,
                                               tmp_path, capsys):
    jid, account_password = account("secret")
    await prosody.create_room(room_jid, password=ROOM_PASSWORD)
    db = tmp_path / "bot.db"
    with everything_at_debug() as captured:
        bot = Bot(make_client, jid, account_password)
        await bot.start()
        try:
            await bot.guard.open_store(db)
            await bot.guard.join(room_jid, "bot", password=ROOM_PASSWORD)
            await prosody.kick_with_codes(room_jid, "bot", [333])
            await bot.wait_event("rejoined", room_jid)          # the password again
            assert bot.info(room_jid).last_cause is Cause.SERVER_ERROR
        finally:
            await bot.stop()
        # the inspector runs its own event loop
        assert await asyncio.to_thread(cli.main, ["rooms", "--db", str(db)]) == 0
        assert await asyncio.to_thread(cli.main, ["rooms", "--db", str(db), "--json"]) == 0
    out = capsys.readouterr()
    logs = "\n".join(captured.texts)

    plain = f"\0{jid.localpart}\0{account_password}".encode()
    for secret in (ROOM_PASSWORD, account_password,
                   base64.b64encode(plain).decode()):
        assert secret not in logs
        assert secret not in out.out + out.err
    # The capture really saw the wire, and the joins' password elements in it.
    assert "SENT" in logs and "RECV" in logs
    assert logs.count("password>***</") >= 2 or logs.count(":password>***</") >= 2, \
        "no redacted <password/> in the wire log: was the password sent at all?"
    assert json.loads(out.out[out.out.index("["):])[0]["has_password"] is True

    # The store: private, and it does keep the password (rejoins need it).
    for suffix in ("", "-wal", "-shm"):
        path = f"{db}{suffix}"
        if os.path.exists(path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


async def test_the_password_is_really_needed(prosody, make_client, account, room_jid):
    """Without it the room refuses the join: the test above did send it."""
    jid, password = account("nopw")
    await prosody.create_room(room_jid, password=ROOM_PASSWORD)
    bot = Bot(make_client, jid, password)
    await bot.start()
    try:
        with pytest.raises(aioxmpp.errors.XMPPAuthError):
            await bot.guard.join(room_jid, "bot")
    finally:
        await bot.stop()
