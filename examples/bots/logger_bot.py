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
``ISO-timestamp<TAB>nick<TAB>body``, and where the guard reports a gap
(``on_gap``: the history or archive could not cover an outage) a marker line
``--- gap in ROOM from ISO to ISO (reason) ---``. The timestamp is the room's (XEP-0203)
for replayed messages and the time of receipt for live ones; backslash, tab,
CR and newline are escaped as ``\\\\``, ``\\t``, ``\\r`` and ``\\n``, so each
message is exactly one line (see behaviour.py; slixmpp_logger_bot.py is the
same bot on slixmpp).

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

import sys

import behaviour
import common
from muc_guard.aioxmpp.facts import room_stamp_of


def setup(bot: common.Bot) -> None:
    logs = behaviour.RoomLogs(bot)

    def on_message(room_jid, message, *, recovered, own):
        nick = message.from_.resource if message.from_ is not None else None
        logs.write(room_jid, room_stamp_of(message, room_jid), nick, message.body.any())

    bot.guard.on_message.connect(on_message)
    bot.guard.on_gap.connect(logs.gap)


if __name__ == "__main__":
    parser = common.make_parser("logger_bot", behaviour.LOGGER_DESCRIPTION,
                                behaviour.logger_examples("logger_bot.py"))
    sys.exit(common.main(behaviour.add_logger_flags(parser), setup))
