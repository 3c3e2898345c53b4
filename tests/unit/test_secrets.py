"""Secrets and awkward names (issue #6, part 8), without a server.

The store file and its WAL files are private (0600) whatever the umask; room
passwords are hidden in aioxmpp's wire log, also when a password is cut
between two log records; and room names, nicks and passwords with quotes,
markup, unicode and the maximal lengths (1023 bytes) come back from the
store, the guard and the inspector exactly as they went in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time

import aioxmpp
import pytest

from muc_guard import State, cli
from muc_guard.aioxmpp.redact import RedactPasswords
from muc_guard.core.record import RoomRecord
from muc_guard.store import Store
from harness import Harness
from stanzas import self_available

ACCOUNT = "bot@localhost"
NICKS = ["o'brien \"the bot\" <&>", "ünïcødé 日本語 Ωμέγα", "n" * 1023,
         "ü" * 511 + "n", "\N{COMBINING ACUTE ACCENT}x", " spaced "]
ROOMS = ["a" * 1023, "ü" * 511 + "a", "日本語", "r.o-o_m+1"]   # localparts: no quotes allowed
PASSWORD = "pa'ss\"w<o>r&d ünï 🤖 " + "p" * 200


def room_jid(local: str) -> aioxmpp.JID:
    return aioxmpp.JID(local, "conference.localhost", None)


async def test_nicks_that_are_no_resourcepart_are_refused_at_join():
    """They used to fail inside every join attempt, retried for ever."""
    h = Harness()
    try:
        for bad in ("n" * 1024, "ü" * 512, "🤖"):    # too long; unassigned in stringprep
            with pytest.raises(ValueError, match="not a valid nick"):
                await asyncio.wait_for(h.guard.join("room@conference.localhost", bad), 2)
        assert h.guard.rooms() == []
    finally:
        await h.guard.shutdown()


def test_every_name_is_valid_xmpp_at_the_limit():
    for local in ROOMS:
        assert len(room_jid(local).localpart.encode()) <= 1023
    assert len(ROOMS[0].encode()) == len(ROOMS[1].encode()) == 1023
    assert len(NICKS[2].encode()) == len(NICKS[3].encode()) == 1023
    for nick in NICKS:
        room_jid("x").replace(resource=nick)         # a valid resourcepart


@pytest.mark.parametrize("umask", [0o000, 0o022])
async def test_store_and_its_wal_files_are_private(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = await Store.open(tmp_path / "bot.db")
        await store.write(ACCOUNT, [RoomRecord(jid=room_jid("r"), requested_nick="b",
                                                nick="b", password=PASSWORD,
                                                added=time.time())], [])
        files = sorted(p.name for p in tmp_path.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        await store.close()
    finally:
        os.umask(old)
    assert files == ["bot.db", "bot.db-shm", "bot.db-wal"]
    assert modes == dict.fromkeys(files, 0o600)


async def test_a_store_readable_by_others_is_warned_about(tmp_path, caplog):
    path = tmp_path / "bot.db"
    await (await Store.open(path)).close()
    path.chmod(0o644)
    store = await Store.open(path)
    await store.close()
    assert "readable by other users" in caplog.text


async def test_names_round_trip_through_store_guard_and_inspector(tmp_path, capsys):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    recs = [RoomRecord(jid=room_jid(local), requested_nick=nick, nick=nick[::-1],
                        password=PASSWORD, added=float(i))
            for i, (local, nick) in enumerate(zip(ROOMS * 2, NICKS + NICKS[:2]))]
    await store.write(ACCOUNT, recs, [])
    await store.close()

    store = await Store.open(path)
    back = {r.jid: r for r in await store.load_rooms(ACCOUNT)}
    await store.close()
    assert len(back) == len(ROOMS)
    for rec in recs[len(ROOMS):]:                     # the later write of each room wins
        got = back[rec.jid]
        assert (got.jid.localpart, got.requested_nick, got.nick, got.password) == (
            rec.jid.localpart, rec.requested_nick, rec.nick, PASSWORD)

    h = Harness()                                     # a restarted guard
    try:
        await h.guard.open_store(path)
        for jid, rec in back.items():
            await h.pending(str(jid))
            h.feed(self_available(str(jid), rec.nick).replace(
                f"from='{jid}/{rec.nick}'", f"from={_attr(f'{jid}/{rec.nick}')}"))
        await h.settle()
        infos = {info.jid: info for info in h.guard.rooms()}
        assert {j: (i.nick, i.requested_nick, i.state, i.has_password)
                for j, i in infos.items()} == {
            j: (r.nick, r.requested_nick, State.JOINED, True) for j, r in back.items()}
    finally:
        await h.guard.shutdown()

    assert await asyncio.to_thread(cli.main, ["rooms", "--db", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    shown = {row["room"]: (row["nick"], row["requested_nick"])
             for row in json.loads(out[out.index("["):])}
    assert shown == {str(j): (r.nick, r.requested_nick) for j, r in back.items()}
    assert PASSWORD not in out and repr(PASSWORD) not in out


def _attr(value: str) -> str:
    from xml.sax.saxutils import quoteattr
    return quoteattr(value)


def _sent(filt: logging.Filter, data: bytes) -> str:
    record = logging.LogRecord("aioxmpp.XMLStream", logging.DEBUG, __file__, 1, "SENT %r",
                               (data,), None)
    assert filt.filter(record)
    return record.getMessage()


def test_wire_log_hides_passwords_even_when_cut_between_records():
    filt = RedactPasswords()
    whole = (b"<presence to='r@c/bot'><x xmlns='http://jabber.org/protocol/muc'>"
             b"<password>s3cret&amp;'x</password><history maxstanzas='0'/></x></presence>")
    assert "s3cret" not in _sent(filt, whole) and "<password>***</password>" in _sent(filt, whole)
    prefixed = whole.replace(b"<password>", b"<ns0:password>").replace(b"</password>",
                                                                      b"</ns0:password>")
    assert "s3cret" not in _sent(filt, prefixed)
    cut = whole.index(b"cret")
    first, second = _sent(filt, whole[:cut]), _sent(filt, whole[cut:])
    assert "s3" not in first and "cret" not in second
    assert "<history maxstanzas='0'/>" in second           # the rest is left alone
    assert _sent(filt, b"<message><body>password</body></message>") == \
        "SENT b'<message><body>password</body></message>'"
