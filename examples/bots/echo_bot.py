#!/usr/bin/env python3
"""The smallest useful guarded bot: says back what it is told in its rooms.

"bot: hello" -> "hello". It stays in its rooms across kicks by the server,
restarts of the MUC service and of itself; see common.py for the flags.
"""

import sys

import aioxmpp

import common

DESCRIPTION = """\
Answers in its rooms when addressed by its nick: "bot: hello" -> "hello"."""

EXAMPLES = """\
  MUC_GUARD_PASSWORD=secret python examples/bots/echo_bot.py \\
      --jid echo@example.org --room lounge@conference.example.org
  MUC_GUARD_PASSWORD=secret python examples/bots/echo_bot.py --jid echo@corp.example \\
      --room ops@muc.corp.example --ca-file /etc/corp/ca.pem
  MUC_GUARD_PASSWORD=secret python examples/bots/echo_bot.py --jid echo@localhost \\
      --room test@conference.localhost/echo --server 127.0.0.1:5222 --insecure-plaintext
"""


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
        body = message.body.any()
        for name in {info.nick, info.requested_nick}:
            for separator in (":", ","):
                if body.startswith(name + separator):
                    text = body[len(name) + 1:].strip()
                    if text:
                        reply = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
                        reply.body[None] = text
                        info.room.send_message(reply)   # the Room of this join
                    return

    guard.on_message.connect(on_message)


if __name__ == "__main__":
    parser = common.make_parser("echo_bot", DESCRIPTION, EXAMPLES)
    sys.exit(common.main(parser, setup))
