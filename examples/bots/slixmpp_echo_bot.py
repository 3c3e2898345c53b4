#!/usr/bin/env python3
"""echo_bot.py on slixmpp: says back what it is told in its rooms.

"bot: hello" -> "hello". The guard is the muc_guard plugin; the flags and the
behaviour are echo_bot.py's (see common.py and behaviour.py).
"""

import sys

import behaviour
import common
import muc_guard


def setup(bot: common.Bot) -> None:
    xmpp, guard = bot.client, bot.guard

    @common.listener
    def on_message(data):
        # Once per message, across rejoins; replayed history is old news,
        # and our own message is an echo.
        if data["own"] or data["recovered"]:
            return
        info = guard.room_info(data["room"])
        if info is None or info.state is not muc_guard.State.JOINED:
            return
        text = behaviour.echo_reply(data["message"]["body"], (info.nick, info.requested_nick))
        if text:
            xmpp.send_message(mto=data["room"], mbody=text, mtype="groupchat")

    xmpp.add_event_handler("muc_guard_message", on_message)


if __name__ == "__main__":
    parser = common.make_parser("slixmpp_echo_bot", behaviour.ECHO_DESCRIPTION,
                                behaviour.echo_examples("slixmpp_echo_bot.py"))
    sys.exit(common.main(parser, setup, frontend="slixmpp"))
