"""A guarded bot to be killed: the child process of the bot crash-loop test.

Run as ``python crashbot.py --port PORT --jid JID --db FILE --room ROOM ...``
with the password in ``MUC_GUARD_PASSWORD``; ``--frontend slixmpp`` runs the
slixmpp plugin instead of ``muc_guard.MUCGuard`` (the same steps, the same
output). It connects to 127.0.0.1:PORT
only, opens the store (which rejoins the rooms stored as wanted), joins the
given rooms not stored yet, and runs until it is killed. It reports on
stdout, one line each, flushed at once:

* ``module PATH``: the muc_guard it imported (the test checks it is the
  checkout under test);
* ``joined ROOM`` when ``guard.join()`` returned (the room is stored);
* ``rejoined ROOM`` when a stored room is back;
* ``commit-begin`` / ``commit-end`` around every COMMIT of a store write.

``--hold SECONDS`` holds every store transaction open that long before its
COMMIT, as a slow disk would: a kill at ``commit-begin`` then lands inside a
write transaction, not between two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import aiosqlite
import aioxmpp
import aioxmpp.connector
import aioxmpp.node

import muc_guard
from muc_guard.testing.prosody import LOOPBACK, security_layer


def say(*words: Any) -> None:
    sys.stdout.write(" ".join(str(word) for word in words) + "\n")
    sys.stdout.flush()


def slow_commits(hold: float) -> None:
    execute = aiosqlite.Connection.execute

    def patched(self: aiosqlite.Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql != "COMMIT":
            return execute(self, sql, *args, **kwargs)

        async def commit() -> Any:
            say("commit-begin")
            if hold > 0:
                await asyncio.sleep(hold)
            result = await execute(self, sql, *args, **kwargs)
            say("commit-end")
            return result

        return commit()

    aiosqlite.Connection.execute = patched  # type: ignore[method-assign]


async def no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list[Any]:
    return []


def aioxmpp_guard(args: argparse.Namespace) -> tuple[Any, Callable[[], None], Any]:
    """(guard, start, room): MUCGuard on a client pinned to the test server."""
    aioxmpp.node.discover_connectors = no_discovery
    jid = aioxmpp.JID.fromstr(args.jid).replace(resource="bot")
    client = aioxmpp.PresenceManagedClient(
        jid, security_layer(os.environ["MUC_GUARD_PASSWORD"]),
        override_peer=[(LOOPBACK, args.port, aioxmpp.connector.STARTTLSConnector())])
    guard = client.summon(muc_guard.MUCGuard)
    guard.on_rejoined.connect(lambda room, _: say("rejoined", room))

    def start() -> None:
        client.presence = aioxmpp.PresenceState(True)

    return guard, start, aioxmpp.JID.fromstr


def slixmpp_guard(args: argparse.Namespace) -> tuple[Any, Callable[[], None], Any]:
    """(guard, start, room): the muc_guard plugin on a client pinned to the test server."""
    from slixkit import guarded_client

    xmpp, guard = guarded_client(LOOPBACK, args.port, f"{args.jid}/bot",
                                 os.environ["MUC_GUARD_PASSWORD"])
    xmpp.add_event_handler("muc_guard_rejoined", lambda data: say("rejoined", data["room"]))
    return guard, xmpp.keep_connected, str


FRONTENDS = {"aioxmpp": aioxmpp_guard, "slixmpp": slixmpp_guard}


async def run(args: argparse.Namespace) -> None:
    guard, start, room_of = FRONTENDS[args.frontend](args)
    await guard.open_store(args.db)
    stored = {str(info.jid) for info in guard.rooms()}
    start()

    async def join(room: Any) -> None:
        await guard.join(room, "bot")
        say("joined", room)

    rooms = [room_of(room) for room in args.room]
    await asyncio.gather(*(join(room) for room in rooms if str(room) not in stored))
    await asyncio.Event().wait()        # until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frontend", choices=sorted(FRONTENDS), default="aioxmpp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--room", action="append", default=[])
    args = parser.parse_args()
    say("module", muc_guard.__file__)
    slow_commits(args.hold)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
