#!/usr/bin/env python3
"""
logger_bot.py on slixmpp: every message of its rooms, one line each, one
file per room, with no gaps and no duplicates across drops and restarts.

The ``muc_guard_message`` event fires for every groupchat message exactly
once and carries what was missed while the bot was out; ``muc_guard_gap``
writes the gap marker line; the lines, files and limits are logger_bot.py's
(see behaviour.py).
"""

from __future__ import annotations

import sys

import behaviour
import common
from muc_guard.slixmpp.facts import room_stamp_of


def setup(bot: common.Bot) -> None:
    logs = behaviour.RoomLogs(bot)

    def on_message(data):
        room, message = data["room"], data["message"]
        logs.write(room, room_stamp_of(message.xml, str(room)), message["from"].resource,
                   message["body"])

    bot.client.add_event_handler("muc_guard_message", on_message)
    bot.client.add_event_handler("muc_guard_gap", lambda data: logs.gap(
        data["room"], data["since"], data["until"], data["reason"]))


if __name__ == "__main__":
    parser = common.make_parser("slixmpp_logger_bot", behaviour.LOGGER_DESCRIPTION,
                                behaviour.logger_examples("slixmpp_logger_bot.py"))
    sys.exit(common.main(behaviour.add_logger_flags(parser), setup, frontend="slixmpp"))
