"""The ``muc-guard`` inspector: tables, JSON, forget, and every way to misuse it.

Stores are built with the Store API in tmp dirs; ``muc_guard.cli.main`` runs
in-process (stdout/stderr through capsys) except for one ``python -m
muc_guard`` subprocess. Every error case also checks that the file was not
created or changed.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import sqlite3
import subprocess
import sys

import aioxmpp
import pytest

from muc_guard import Cause, State
from muc_guard.cli import human_duration, main
from muc_guard.core.record import RoomRecord
from muc_guard.store import APPLICATION_ID, SCHEMA_VERSION, Store

BOT = "bot@example.org"
HELPER = "helper@example.org"
LOUNGE = "lounge@conference.example.org"
SECRET = "secret@conference.example.org"
GONE = "gone@conference.example.org"
FLAKY = "flaky@conference.example.org"
PASSWORD = "hunter2-do-not-print"
NOW = 1_760_000_000.0   # fixed, so that expected strings are exact


def room(jid: str, **kw) -> RoomRecord:
    defaults = dict(requested_nick="bot", nick="bot", added=NOW - 1000)
    defaults.update(kw)
    return RoomRecord(jid=aioxmpp.JID.fromstr(jid), **defaults)


async def _build(path: pathlib.Path) -> None:
    store = await Store.open(path)
    await store.write(BOT, [
        # dropped at -3700 s, back at -3000 s: 11m 40s out; joined again at
        # -1000 s by a restart, which must not stretch that outage
        room(LOUNGE, drops=2, last_cause=Cause.SERVER_ERROR, last_downtime=700.0,
             last_dropped=NOW - 3700, last_joined=NOW - 1000, added=NOW - 5000),
        # a password, and a nick the room rewrote (210)
        room(SECRET, nick="bot_", password=PASSWORD, last_joined=NOW - 50),
        # kicked: given up, still out
        room(GONE, state=State.GAVE_UP, drops=1, last_cause=Cause.KICKED,
             last_joined=NOW - 500, last_dropped=NOW - 400),
        # dropped after its last join and not back yet
        room(FLAKY, drops=7, last_cause=Cause.PING, last_joined=NOW - 90,
             last_dropped=NOW - 30),
    ], [])
    await store.write(HELPER, [room(LOUNGE, requested_nick="helper", nick="helper")], [])
    await store.close()


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "bot.db"
    asyncio.run(_build(path))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(path: pathlib.Path) -> tuple[bytes, float] | None:
    return (path.read_bytes(), path.stat().st_mtime) if path.exists() else None


def siblings(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def local(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


# --- rooms: the table ---------------------------------------------------------------


def test_rooms_table_has_every_column_aligned(db, capsys):
    code, out, err = run(capsys, "rooms", "--db", str(db))
    assert code == 0 and err == ""
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == ["ACCOUNT", "ROOM", "NICK", "STATE", "DROPS", "LAST", "CAUSE",
                              "LAST", "JOINED", "DOWNTIME", "PASSWORD"]
    assert len(lines) == 6
    # Left-aligned columns start where their header starts, in every row.
    starts = {name: header.index(name) for name in
              ("ACCOUNT", "ROOM", "NICK", "STATE", "LAST CAUSE", "LAST JOINED", "DOWNTIME",
               "PASSWORD")}
    for line in lines[1:]:
        for name, col in starts.items():
            assert line[col] != " " and (col == 0 or line[col - 1] == " "), (name, line)
    # DROPS is right-aligned under its header.
    drops_end = header.index("DROPS") + len("DROPS")
    assert sorted(line[drops_end - 1] for line in lines[1:]) == sorted("02017")
    assert all(line[drops_end] == " " for line in lines[1:])

    # Every column, DROPS included, spans from its header's start to the next one's.
    names = ["ACCOUNT", "ROOM", "NICK", "STATE", "DROPS", "LAST CAUSE", "LAST JOINED",
             "DOWNTIME", "PASSWORD"]
    bounds = [header.index(name) for name in names] + [None]
    table = [{name: line[bounds[i]:bounds[i + 1]].strip() for i, name in enumerate(names)}
             for line in lines[1:]]
    rows = {(row["ACCOUNT"], row["ROOM"]): row for row in table}

    def cell(key, name):
        return rows[key][name]

    lounge = (BOT, LOUNGE)
    assert cell(lounge, "STATE") == "wanted"
    assert cell(lounge, "LAST CAUSE") == "server-error"
    assert cell(lounge, "LAST JOINED") == local(NOW - 1000)
    assert cell(lounge, "DOWNTIME") == "11m 40s"
    assert cell(lounge, "PASSWORD") == "-"
    assert cell((BOT, SECRET), "NICK") == "bot_ (wants bot)"
    assert cell((BOT, SECRET), "PASSWORD") == "set"
    assert cell((BOT, SECRET), "DOWNTIME") == "-"
    assert cell((BOT, GONE), "STATE") == "gave-up"
    assert cell((BOT, GONE), "DOWNTIME") == "still out"
    assert cell((BOT, FLAKY), "DOWNTIME") == "still out"
    assert cell((HELPER, LOUNGE), "LAST JOINED") == "-"
    assert cell((HELPER, LOUNGE), "LAST CAUSE") == "-"
    assert PASSWORD not in out


def test_rooms_for_one_account_drops_the_account_column(db, capsys):
    code, out, _ = run(capsys, "rooms", "--db", str(db), "--account", "Helper@Example.org")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ROOM", "NICK"]
    assert len(lines) == 2 and LOUNGE in lines[1] and "helper" in lines[1]
    assert BOT not in out


def test_rooms_of_an_unknown_account_name_the_known_ones(db, capsys):
    code, out, _ = run(capsys, "rooms", "--db", str(db), "--account", "nobody@example.org")
    assert code == 0
    assert "no rooms for nobody@example.org" in out
    assert BOT in out and HELPER in out


def test_empty_store(tmp_path, capsys):
    path = tmp_path / "empty.db"
    asyncio.run(_close(Store.open(path)))
    assert run(capsys, "rooms", "--db", str(path))[:2] == (0, f"no rooms in {path}\n")
    code, out, _ = run(capsys, "rooms", "--db", str(path), "--json")
    assert (code, json.loads(out)) == (0, [])


async def _close(opening) -> None:
    await (await opening).close()


def test_rooms_leaves_the_file_as_it_was(db, capsys):
    before = snapshot(db)
    assert run(capsys, "rooms", "--db", str(db))[0] == 0
    assert run(capsys, "rooms", "--db", str(db), "--json")[0] == 0
    assert snapshot(db) == before


def test_unreadable_row_is_skipped_with_a_warning(db, capsys):
    conn = sqlite3.connect(db)
    conn.execute("UPDATE rooms SET last_cause = 'martians' WHERE room = ?", (FLAKY,))
    conn.commit()
    conn.close()
    code, out, err = run(capsys, "rooms", "--db", str(db))
    assert code == 0
    assert FLAKY not in out and GONE in out
    assert "skipping unreadable row" in err and FLAKY in err


@pytest.mark.parametrize("seconds,text", [
    (0.4, "0.4s"), (12, "12s"), (185, "3m 05s"), (7620, "2h 07m"), (4 * 86400 + 3 * 3600, "4d 03h"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


# --- rooms --json --------------------------------------------------------------------


def test_json_has_machine_values_and_no_password(db, capsys):
    code, out, err = run(capsys, "rooms", "--db", str(db), "--json")
    assert code == 0 and err == ""
    assert PASSWORD not in out
    items = json.loads(out)
    assert [(i["account"], i["room"]) for i in items] == sorted(
        [(BOT, LOUNGE), (BOT, SECRET), (BOT, GONE), (BOT, FLAKY), (HELPER, LOUNGE)])
    by = {(i["account"], i["room"]): i for i in items}
    lounge = by[(BOT, LOUNGE)]
    assert lounge == {
        "account": BOT, "room": LOUNGE, "nick": "bot", "requested_nick": "bot",
        "state": "wanted", "drops": 2, "last_cause": "server-error",
        "last_joined": lounge["last_joined"], "last_dropped": lounge["last_dropped"],
        "downtime_seconds": 700.0, "still_out": False, "added": lounge["added"],
        "last_message": None, "has_password": False,
    }
    joined = datetime.datetime.fromisoformat(lounge["last_joined"])
    assert joined.utcoffset() == datetime.timedelta(0)
    assert joined.timestamp() == NOW - 1000
    assert datetime.datetime.fromisoformat(lounge["added"]).timestamp() == NOW - 5000
    assert by[(BOT, SECRET)]["has_password"] is True
    assert by[(BOT, SECRET)]["nick"] == "bot_"
    gone = by[(BOT, GONE)]
    assert (gone["state"], gone["still_out"], gone["downtime_seconds"]) == ("gave-up", True, None)
    assert isinstance(by[(BOT, FLAKY)]["drops"], int)
    helper = by[(HELPER, LOUNGE)]
    assert (helper["last_joined"], helper["last_cause"], helper["still_out"]) == (None, None, False)


def test_json_for_one_account(db, capsys):
    code, out, _ = run(capsys, "rooms", "--db", str(db), "--json", "--account", HELPER)
    assert code == 0
    assert [(i["account"], i["nick"]) for i in json.loads(out)] == [(HELPER, "helper")]


# --- forget ----------------------------------------------------------------------------


def remaining(path: pathlib.Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT account, room FROM rooms").fetchall())
    finally:
        conn.close()


def test_forget_for_every_account(db, capsys):
    code, out, err = run(capsys, "forget", LOUNGE, "--db", str(db))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"forgot {LOUNGE} for {BOT} (nick bot, wanted)",
        f"forgot {LOUNGE} for {HELPER} (nick helper, wanted)",
    ]
    assert remaining(db) == sorted([(BOT, SECRET), (BOT, GONE), (BOT, FLAKY)])


def test_forget_for_one_account(db, capsys):
    code, out, _ = run(capsys, "forget", "Lounge@Conference.Example.org", "--db", str(db),
                       "--account", HELPER)
    assert code == 0
    assert out == f"forgot {LOUNGE} for {HELPER} (nick helper, wanted)\n"
    assert (BOT, LOUNGE) in remaining(db) and (HELPER, LOUNGE) not in remaining(db)


def test_forget_a_given_up_room(db, capsys):
    code, out, _ = run(capsys, "forget", GONE, "--db", str(db))
    assert (code, out) == (0, f"forgot {GONE} for {BOT} (nick bot, gave-up)\n")


def test_forget_without_a_match_exits_1(db, capsys):
    before = remaining(db)
    code, out, err = run(capsys, "forget", "nowhere@conference.example.org", "--db", str(db))
    assert (code, out) == (1, "")
    assert "nowhere@conference.example.org is not in" in err and "nothing removed" in err
    code, _, err = run(capsys, "forget", SECRET, "--db", str(db), "--account", HELPER)
    assert code == 1 and f"for {HELPER}" in err
    assert remaining(db) == before


def test_forget_removes_an_unreadable_row_too(db, capsys):
    conn = sqlite3.connect(db)
    conn.execute("UPDATE rooms SET last_cause = 'martians' WHERE room = ?", (FLAKY,))
    conn.commit()
    conn.close()
    code, out, _ = run(capsys, "forget", FLAKY, "--db", str(db))
    assert code == 0 and "removed 1 row(s)" in out
    assert (BOT, FLAKY) not in remaining(db)


def test_store_forget_counts_rows(db):
    async def go() -> tuple[int, int, list[str]]:
        store = await Store.open(db, create=False)
        try:
            none = await store.forget(aioxmpp.JID.fromstr("x@y.org"))
            two = await store.forget(LOUNGE)
            return none, two, await store.accounts()
        finally:
            await store.close()

    assert asyncio.run(go()) == (0, 2, [BOT])   # helper had only the lounge


# --- errors: clear message, exit 2, file untouched ----------------------------------


@pytest.mark.parametrize("command", [["rooms"], ["rooms", "--json"], ["forget", LOUNGE]])
def test_missing_store_is_not_created(tmp_path, capsys, command):
    path = tmp_path / "typo.db"
    code, out, err = run(capsys, *command, "--db", str(path))
    assert code == 2 and out == ""
    assert err == f"muc-guard: no such store: {path}\n"
    assert siblings(path) == []


def test_missing_directory(tmp_path, capsys):
    path = tmp_path / "no" / "such" / "bot.db"
    code, _, err = run(capsys, "rooms", "--db", str(path))
    assert code == 2 and "no such store" in err
    assert not (tmp_path / "no").exists()


def test_empty_file_is_not_turned_into_a_store(tmp_path, capsys):
    path = tmp_path / "empty.db"
    path.touch()
    code, _, err = run(capsys, "rooms", "--db", str(path))
    assert code == 2 and "no such store" in err and "empty" in err
    assert path.read_bytes() == b"" and siblings(path) == ["empty.db"]


def _foreign(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()


def _newer(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("CREATE TABLE rooms (x)")
    conn.commit()
    conn.close()


def _garbage(path: pathlib.Path) -> None:
    path.write_bytes(b"this is not a database\n" * 50)


def _corrupt(path: pathlib.Path) -> None:
    asyncio.run(_build(path))
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)          # the first page after the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make,words", [
    (_foreign, "some other program"),
    (_newer, "newer than this muc_guard"),
    (_garbage, "not a SQLite database"),
    (_corrupt, "corrupt"),
])
@pytest.mark.parametrize("command", [["rooms"], ["forget", LOUNGE]])
def test_unusable_store_is_refused_untouched(tmp_path, capsys, make, words, command):
    path = tmp_path / "bad.db"
    make(path)
    before, names = snapshot(path), siblings(path)
    code, out, err = run(capsys, *command, "--db", str(path))
    assert code == 2 and out == ""
    assert err.startswith("muc-guard: ") and words in err and str(path) in err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("muc-guard: ") and words in err.splitlines()[-1]
    assert snapshot(path) == before and siblings(path) == names


@pytest.mark.parametrize("argv,words", [
    (["rooms", "--account", "bad@@"], "not a valid account JID"),
    (["rooms", "--account", "no domain@"], "not a valid account JID"),
    (["rooms", "--account", "example.org"], "needs user@domain"),
    (["forget", "bad room@x"], "not a valid room JID"),
    (["forget", "room@x@y"], "not a valid room JID"),
    (["forget", "conference.example.org"], "needs room@service"),
    (["forget", f"{LOUNGE}/bot"], "without a /nick"),
    (["forget", LOUNGE, "--account", "a@b c"], "not a valid account JID"),
])
def test_bad_jid_is_a_clear_error(db, capsys, argv, words):
    before = snapshot(db)
    code, out, err = run(capsys, *argv, "--db", str(db))
    assert code == 2 and out == ""
    assert err.startswith("muc-guard: ") and words in err
    assert snapshot(db) == before


def test_bad_jid_with_a_missing_store_creates_nothing(tmp_path, capsys):
    path = tmp_path / "typo.db"
    assert run(capsys, "forget", "bad@@", "--db", str(path))[0] == 2
    assert siblings(path) == []


# --- usage and help ---------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["rooms"], ["forget", LOUNGE], ["frobnicate"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: muc-guard" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--help"], ["rooms", "forget", "examples:", "Exit codes"]),
    (["rooms", "--help"], ["--db FILE", "--account JID", "--json", "examples:", "still out",
                           "Passwords are never shown"]),
    (["forget", "--help"], ["ROOM", "--account JID", "examples:", "Stop the bot first"]),
])
def test_help_reads_well(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out, word


def test_python_dash_m(db):
    env = {**os.environ, "TZ": "UTC"}
    done = subprocess.run([sys.executable, "-m", "muc_guard", "rooms", "--db", str(db)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("ACCOUNT")
    assert LOUNGE in done.stdout and PASSWORD not in done.stdout
    utc = datetime.datetime.fromtimestamp(NOW - 1000, datetime.timezone.utc)
    assert utc.strftime("%Y-%m-%d %H:%M:%S") in done.stdout   # local time, here UTC
    missing = subprocess.run([sys.executable, "-m", "muc_guard", "rooms", "--db",
                              str(db.parent / "nope.db")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr == f"muc-guard: no such store: {db.parent / 'nope.db'}\n"


# --- without aioxmpp ---------------------------------------------------------------


ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_blocked(blocked: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``muc-guard ARGV`` in a Python where the `blocked` modules cannot be imported."""
    shim = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "from muc_guard.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", shim, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("argv", [
    ("rooms",),
    ("rooms", "--json"),
    ("rooms", "--account", "Helper@Example.org"),
    ("forget", "Lounge@Conference.Example.org", "--account", "bot@example.org"),
], ids=["table", "json", "account", "forget"])
def test_the_command_needs_no_aioxmpp(db, tmp_path, capsys, argv):
    """With aioxmpp unimportable (only slixmpp installed) the command reads
    the store and the JIDs typed, and says exactly what it says with aioxmpp."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    copy.chmod(db.stat().st_mode & 0o777)
    command, *rest = argv
    expected = run(capsys, command, "--db", str(copy), *rest)
    done = run_blocked(["aioxmpp"], command, "--db", str(db), *rest)
    assert "aioxmpp" not in done.stderr
    assert (done.returncode, done.stdout.replace(str(db), str(copy)), done.stderr) == expected
    if command == "forget":
        assert LOUNGE not in run(capsys, "rooms", "--db", str(db), "--account", BOT)[1]


def test_without_either_front_end_the_command_says_what_it_needs(db):
    done = run_blocked(["aioxmpp", "slixmpp"], "rooms", "--db", str(db))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "muc-guard: reading a store needs aioxmpp or slixmpp installed\n"
