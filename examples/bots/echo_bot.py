#!/usr/bin/env python3
"""The smallest useful guarded bot: says back what it is told in its rooms.

"bot: hello" -> "hello". It stays in its rooms across kicks by the server,
restarts of the MUC service and of itself; see common.py for the flags.
(slixmpp_echo_bot.py is the same bot on slixmpp.)
"""

import sys

import aioxmpp

import behaviour
import common


def setup(bot: common.Bot) -> None:
    guard = bot.guard

    @common.listener
    def on_message(room_jid, message, *, recovered, own):
        # on_message fires once per message, whichever Room it came through;
        # history replayed after a drop is old news, and our own is an echo.
        if own or recovered:
            return
        info = guard.room_info(room_jid)
        if info is None or info.room is None:      # not joined right now
            return
        text = behaviour.echo_reply(message.body.any(), (info.nick, info.requested_nick))
        if text:
            reply = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
            reply.body[None] = text
            info.room.send_message(reply)   # the Room of this join

    guard.on_message.connect(on_message)


if __name__ == "__main__":
    parser = common.make_parser("echo_bot", behaviour.ECHO_DESCRIPTION,
                                behaviour.echo_examples("echo_bot.py"))
    sys.exit(common.main(parser, setup))
