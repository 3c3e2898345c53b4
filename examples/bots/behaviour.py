"""
What the example bots do, apart from the XMPP library they are written for.

The echo and logger bots exist twice: ``echo_bot.py`` and ``logger_bot.py``
on aioxmpp, ``slixmpp_echo_bot.py`` and ``slixmpp_logger_bot.py`` on slixmpp.
Each pair behaves the same and takes the same flags, because what they
decide lives here: whom the echo bot answers and with what, and how the
logger bot names its files, formats its lines and reacts when it cannot
write one. The scripts only read the message from their library's objects.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any, TextIO

import common

logger = logging.getLogger("muc_guard.examples.logger")

ECHO_DESCRIPTION = """\
Answers in its rooms when addressed by its nick: "bot: hello" -> "hello"."""

LOGGER_DESCRIPTION = """\
Appends every message of its rooms to LOG_DIR/<room>.log, one line per message:
ISO-timestamp<TAB>nick<TAB>body (newlines escaped as \\n). Messages said while
the bot was out (dropped by the server, or stopped) are recovered from the
room's history when it comes back: no gaps and no duplicates."""


def echo_examples(script: str) -> str:
    return f"""\
  MUC_GUARD_PASSWORD=secret python examples/bots/{script} \\
      --jid echo@example.org --room lounge@conference.example.org
  MUC_GUARD_PASSWORD=secret python examples/bots/{script} --jid echo@corp.example \\
      --room ops@muc.corp.example --ca-file /etc/corp/ca.pem
  MUC_GUARD_PASSWORD=secret python examples/bots/{script} --jid echo@localhost \\
      --room test@conference.localhost/echo --server 127.0.0.1:5222 --insecure-plaintext
"""


def logger_examples(script: str) -> str:
    return f"""\
  MUC_GUARD_PASSWORD=secret python examples/bots/{script} \\
      --jid logger@example.org --room lounge@conference.example.org --log-dir /var/log/muc
  MUC_GUARD_PASSWORD=secret python examples/bots/{script} --jid logger@localhost \\
      --room a@conference.localhost --room b@conference.localhost/scribe \\
      --server 127.0.0.1:5222 --insecure-plaintext
"""


# --- the echo bot ----------------------------------------------------------------------


def echo_reply(body: str, nicks: Iterable[str | None]) -> str | None:
    """The text to say back when `body` addresses one of our `nicks`
    ("bot: hi", "bot, hi"), else None."""
    for name in set(nicks):
        if name is None:
            continue
        for separator in (":", ","):
            if body.startswith(name + separator):
                return body[len(name) + 1:].strip() or None
    return None


# --- the logger bot ----------------------------------------------------------------------


def add_logger_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--log-dir", default="logs", metavar="DIR",
                        help="where the per-room log files go, created if missing "
                             "(default: %(default)s)")
    return parser


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"})


def escape(text: str) -> str:
    return text.translate(_ESCAPES)


def log_path(log_dir: pathlib.Path, room: Any) -> pathlib.Path:
    """``room@service.log``; anything unusual in a file name is %-quoted."""
    return log_dir / (urllib.parse.quote(str(room), safe="@.-_+") + ".log")


def gap_line(room: Any, since: float, until: float, reason: str) -> str:
    """``--- gap in ROOM from ISO to ISO (reason) ---``: messages lost for good."""
    def iso(when: float) -> str:
        return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(
            timespec="seconds")
    return (f"--- gap in {escape(str(room))} from {iso(since)} to {iso(until)} "
            f"({escape(reason)}) ---\n")


def format_line(stamp: float | None, nick: str | None, body: str) -> str:
    """One line: the room's own time for a replayed message (its <delay/>;
    any other is the sender's claim), else the time of receipt."""
    when = datetime.datetime.fromtimestamp(stamp or time.time(), datetime.timezone.utc)
    return f"{when.isoformat(timespec='milliseconds')}\t{escape(nick or '')}\t{escape(body)}\n"


class RoomLogs:
    """One append-only file per room, opened on its first message."""

    def __init__(self, bot: common.Bot) -> None:
        self.bot = bot
        self.log_dir = pathlib.Path(bot.args.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, TextIO] = {}

    def write(self, room: Any, stamp: float | None, nick: str | None, body: str) -> None:
        """Append the message and flush it to the OS before returning: the
        guard records it as delivered once the handler returns."""
        self.write_line(room, format_line(stamp, nick, body))

    def write_line(self, room: Any, line: str) -> None:
        try:
            out = self.files.get(str(room))
            if out is None:
                out = self.bot.exit_stack.enter_context(
                    open(log_path(self.log_dir, room), "a", encoding="utf-8", newline="\n"))
                self.files[str(room)] = out
            out.write(line)
            out.flush()
        except Exception:
            # Stop hard, before the guard writes the message down as
            # delivered: after a restart it comes back from the room's
            # history instead of leaving a gap.
            logger.critical("cannot log a message of %s; stopping at once", room,
                            exc_info=True)
            os._exit(common.EXIT_FAILED)

    def gap(self, room: Any, since: float, until: float, reason: Any) -> None:
        """Mark in the room's log that messages said from `since` to `until`
        are missing (the guard's on_gap / muc_guard_gap): a line no message
        line can be, as it has no tab."""
        reason_text = getattr(reason, "value", reason)
        self.write_line(room, gap_line(room, since, until, str(reason_text)))
