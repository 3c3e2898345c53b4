"""A guarded bot that ends badly: the child process of tests/integration/test_exit.py.

Run as ``python exitbot.py MODE --db FILE`` (``--frontend slixmpp``: with the
slixmpp plugin instead of ``muc_guard.MUCGuard``, the same steps). It needs
no XMPP server: the client is never started. It opens the store, joins ROOM (the join is stored
at once, then waits for a server that never comes: it is bounded).
With ``--port PORT --jid JID --room ROOM`` (password in
``MUC_GUARD_PASSWORD``) it connects to 127.0.0.1:PORT and really joins. Then it
leaves a change pending in the store writer: the room's message position,
as a delivered message would (written within a second, unless flushed).
Then, by MODE:

* ``raise``: raises without ``guard.shutdown()``;
* ``shutdown-raise``: calls ``guard.shutdown()``, then raises;
* ``return``: returns from ``asyncio.run()`` without ``shutdown()``;
* ``loop-close``: runs on ``loop.run_until_complete(main())`` and
  ``loop.close()`` (no task is cancelled), without ``shutdown()``;
* ``loop-close-cut``: the same, but ``main()`` returns while a write of
  the pending change is inside its transaction (its COMMIT held);
* ``wait``: waits until interrupted (SIGINT), without handlers of its own.

It reports on stdout, one line each: ``module PATH`` (the muc_guard it
imported), ``ready`` when the pending change is made, and after the loop
has ended ``threads NAME...``: the threads still alive (after waiting up
to a second for non-daemon ones that are ending, unless MODE closes no loop).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

from collections.abc import Callable
from typing import Any

import aioxmpp

import muc_guard
import muc_guard.slixmpp
from muc_guard.core.continuity import Position

from crashbot import FRONTENDS, say, slow_commits

ACCOUNT = "exitbot@localhost"
ROOM = "room@conference.localhost"
LAST_ID = "pending-position"


def unconnected_guard(args: argparse.Namespace) -> tuple[Any, Callable[[], None], Any]:
    """(guard, start, room) of a client of ACCOUNT that never connects."""
    if args.frontend == "aioxmpp":
        client = aioxmpp.PresenceManagedClient(aioxmpp.JID.fromstr(ACCOUNT),
                                               aioxmpp.make_security_layer("unused"))
        return client.summon(muc_guard.MUCGuard), client.start, aioxmpp.JID.fromstr
    from slixkit import BotClient

    xmpp = BotClient(ACCOUNT, "unused")
    xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp)
    return xmpp.plugin["muc_guard"], xmpp.keep_connected, str


async def main(args: argparse.Namespace) -> None:
    if args.port is None:
        guard, _, room_of = unconnected_guard(args)
    else:
        guard, start, room_of = FRONTENDS[args.frontend](args)
    room = room_of(args.room)
    await guard.open_store(args.db)
    if args.port is not None:
        start()
        await asyncio.wait_for(guard.join(room, "bot"), 20)
        say("joined")
    else:
        try:
            await asyncio.wait_for(guard.join(room, "bot"), 0.1)   # stored, not joined
        except asyncio.TimeoutError:
            pass
    if args.mode == "loop-close-cut":
        slow_commits(3600.0)
    engine = guard._guard
    rec = engine.core.rooms[room]
    rec.position = Position(LAST_ID, time.time(), ())
    engine.writer.mark(rec, lazy=True, now=args.mode == "loop-close-cut")
    await asyncio.sleep(0.05)      # a cut write is inside its transaction now
    say("ready")
    if args.mode == "shutdown-raise":
        await guard.shutdown()
    if args.mode in ("raise", "shutdown-raise"):
        raise RuntimeError("the bot's own code failed")
    if args.mode == "wait":
        await asyncio.Event().wait()


def run() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["raise", "shutdown-raise", "return", "loop-close",
                                         "loop-close-cut", "wait"])
    parser.add_argument("--frontend", choices=sorted(FRONTENDS), default="aioxmpp")
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--jid")
    parser.add_argument("--room", default=ROOM)
    args = parser.parse_args()
    say("module", muc_guard.__file__)
    try:
        if args.mode.startswith("loop-close"):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(main(args))
            loop.close()
        else:
            asyncio.run(main(args))
    finally:
        say("threads", *alive_threads(0.0 if args.mode.startswith("loop-close") else 1.0))


def alive_threads(wait: float) -> list[str]:
    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(thread.name for thread in threading.enumerate())


if __name__ == "__main__":
    run()
