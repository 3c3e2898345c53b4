"""
Keep room passwords out of aioxmpp's wire log.

Motivation
==========

At DEBUG level aioxmpp logs every byte it sends ("SENT b'...'", from the
XML stream's logger). A join of a password-protected room sends the
password in clear inside ``<password/>``, so a bot run with ``--log-level
DEBUG`` writes its room passwords to its log. aioxmpp mutes that log during
SASL, but not for MUC joins.

Solution
========

:func:`protect` puts :class:`RedactPasswords` on the logger aioxmpp's XML
stream uses for a client (``<client logger>.XMLStream``). The filter
rewrites the logged bytes, replacing the content of every ``<password>``
element with ``***``. aioxmpp logs the bytes in chunks of about 4 KiB, so a
password may be cut between two records: an opening tag without its end
hides the rest of its record, and the next record's text up to the closing
tag is hidden too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["RedactPasswords", "protect"]

_WHOLE = re.compile(rb"(<(?:[\w.-]+:)?password\b[^>]*>)[^<]*(</(?:[\w.-]+:)?password>)")
_OPENED = re.compile(rb"(<(?:[\w.-]+:)?password\b[^>]*>)[^<]*\Z")
_CLOSED = re.compile(rb"\A[^<>]*(</(?:[\w.-]+:)?password>)")
_HIDDEN = rb"\1***\2"


class RedactPasswords(logging.Filter):
    """Hides ``<password>`` contents in aioxmpp's SENT/RECV debug records."""

    def __init__(self) -> None:
        super().__init__()
        self._cut = False     # the previous record ended inside a <password>

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], bytes):
            record.args = (self._redact(args[0]),)
        return True

    def _redact(self, data: bytes) -> bytes:
        if self._cut:
            data = _CLOSED.sub(rb"***\1", data)
        data = _WHOLE.sub(_HIDDEN, data)
        self._cut = bool(_OPENED.search(data))
        return _OPENED.sub(rb"\1***", data)


_FILTER = RedactPasswords()


def protect(client: Any) -> None:
    """Redact room passwords in the wire log of `client` (idempotent)."""
    logger = client.logger.getChild("XMLStream")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
