#!/usr/bin/env python3
"""
A room logger: every message of its rooms, one line each, one file per room.

Motivation
==========

A logger is only useful if its log is complete. A plain aioxmpp logger
misses what is said while it is out of the room (the server kicked it, the
MUC service restarted, the bot crashed), and a naive fix, asking for history
on every rejoin, writes the same lines twice.

Solution
========

The guard's ``on_message`` fires for every groupchat message exactly once,
whichever ``Room`` object it arrived on, and it asks for the history missed
since the last delivered message on every rejoin and restart. This bot only
appends each one to ``LOG_DIR/<room JID>.log`` as
``ISO-timestamp<TAB>nick<TAB>body``. The timestamp is the room's (XEP-0203)
for replayed messages and the time of receipt for live ones; backslash, tab,
CR and newline are escaped as ``\\\\``, ``\\t``, ``\\r`` and ``\\n``, so each
message is exactly one line.

Each line is written (flushed to the operating system) before the guard
records the message as delivered, so a killed bot loses no line. Limits are
those of muc_guard (0.1.0): the room must keep enough history to cover the
time the bot was out (set the room's history length); the guard writes its
position at most once a second, so a bot killed within a second of a message
may write that message again after its restart, and a bot killed within the
first second of its first join to a room restarts without any position for
it and asks for no history: what was said meanwhile is not logged.
"""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import sys
import time
import urllib.parse
from typing import TextIO

import aioxmpp

import common
from muc_guard.aioxmpp.facts import room_stamp_of

logger = logging.getLogger("muc_guard.examples.logger")

DESCRIPTION = """\
Appends every message of its rooms to LOG_DIR/<room>.log, one line per message:
ISO-timestamp<TAB>nick<TAB>body (newlines escaped as \\n). Messages said while
the bot was out (dropped by the server, or stopped) are recovered from the
room's history when it comes back: no gaps and no duplicates."""

EXAMPLES = """\
  MUC_GUARD_PASSWORD=secret python examples/bots/logger_bot.py \\
      --jid logger@example.org --room lounge@conference.example.org --log-dir /var/log/muc
  MUC_GUARD_PASSWORD=secret python examples/bots/logger_bot.py --jid logger@localhost \\
      --room a@conference.localhost --room b@conference.localhost/scribe \\
      --server 127.0.0.1:5222 --insecure-plaintext
"""

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"})


def escape(text: str) -> str:
    return text.translate(_ESCAPES)


def log_path(log_dir: pathlib.Path, room: aioxmpp.JID) -> pathlib.Path:
    """``room@service.log``; anything unusual in a file name is %-quoted."""
    return log_dir / (urllib.parse.quote(str(room), safe="@.-_+") + ".log")


def format_line(message: aioxmpp.Message, room: aioxmpp.JID) -> str:
    # The room's own <delay/> (a recovered copy); any other is the sender's claim.
    stamp = room_stamp_of(message, room) or time.time()
    when = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    nick = message.from_.resource if message.from_ is not None else None
    return (f"{when.isoformat(timespec='milliseconds')}\t{escape(nick or '')}\t"
            f"{escape(message.body.any())}\n")


def setup(bot: common.Bot) -> None:
    log_dir = pathlib.Path(bot.args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    files: dict[aioxmpp.JID, TextIO] = {}

    def on_message(room_jid, message, *, recovered, own):
        try:
            out = files.get(room_jid)
            if out is None:
                out = bot.exit_stack.enter_context(
                    open(log_path(log_dir, room_jid), "a", encoding="utf-8", newline="\n"))
                files[room_jid] = out
            out.write(format_line(message, room_jid))
            out.flush()   # in the OS before the guard records the message as delivered
        except Exception:
            # The guard counts this message as delivered once we return. Stop
            # hard, before it writes that down: after a restart the message
            # comes back from the room's history instead of leaving a gap.
            logger.critical("cannot log a message of %s; stopping at once", room_jid,
                            exc_info=True)
            os._exit(common.EXIT_FAILED)

    bot.guard.on_message.connect(on_message)


if __name__ == "__main__":
    parser = common.make_parser("logger_bot", DESCRIPTION, EXAMPLES)
    parser.add_argument("--log-dir", default="logs", metavar="DIR",
                        help="where the per-room log files go, created if missing "
                             "(default: %(default)s)")
    sys.exit(common.main(parser, setup))
