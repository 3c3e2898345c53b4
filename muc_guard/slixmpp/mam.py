"""
XEP-0313 (Message Archive Management): reading a room's archive with slixmpp.

The slixmpp twin of :mod:`muc_guard.aioxmpp.mam` and
:mod:`muc_guard.aioxmpp.recovery`, with the same rules (see there for why):
page with RSM after our last stanza-id, or from a time when the archive no
longer knows the id (``item-not-found``, or an empty complete page while the
id is not the archive's newest: Prosody 13); drop results older than a
``start`` the server did not honour; stop at `limit`; an error ends the read
early with what earlier pages brought, and the core retries unless the
archive refused (:data:`ARCHIVE_REFUSALS`).

slixmpp's ``xep_0313.iterate`` is not used: it has no per-page timeout
(slixmpp's IQ timeouts are cancelled by a disconnect), does not say whether
the archive was complete, and cannot fall back from an id to a time. The
query and its results are plain XML here. The results are taken from the
driver's ``'in'`` filter (:meth:`Reader.offer`) and are not swallowed: a
filter that drops stanzas before ``xep_0198``'s would break its count of
handled stanzas, and so stream management. They are not room traffic.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from typing import Any

from slixmpp import Message
from slixmpp.exceptions import IqError, IqTimeout

from .facts import bare_and_resource, canonical_bare, iq_error, parse_stamp

__all__ = ["MAM_NS", "ARCHIVE_REFUSALS", "Archived", "Read", "Reader", "read_archive"]

logger = logging.getLogger("muc_guard.mam")

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
FORWARD_NS = "urn:xmpp:forward:0"
DATA_NS = "jabber:x:data"
DELAY_NS = "urn:xmpp:delay"

_RESULT = f"{{{MAM_NS}}}result"
_FIN = f"{{{MAM_NS}}}fin"
_FORWARDED = f"{{{FORWARD_NS}}}forwarded"
_DELAY = f"{{{DELAY_NS}}}delay"

#: Error conditions with which an archive refuses to serve us the range (as
#: in muc_guard.aioxmpp.recovery): asking again will not help.
ARCHIVE_REFUSALS = frozenset({
    "forbidden", "not-allowed", "not-authorized", "registration-required",
    "feature-not-implemented", "service-unavailable", "bad-request",
})


@dataclasses.dataclass(frozen=True)
class Archived:
    archive_id: str
    timestamp: float        #: UNIX time of the archive's stamp
    message: Message        #: the archived message (a slixmpp stanza)


@dataclasses.dataclass
class Read:
    """What one read returned, in archive order, and how it ended."""

    found: list[Archived]
    complete: bool = False
    #: the error condition (or "timeout") that ended the read early
    error: str | None = None
    #: the archive no longer knew our last id: read by time instead
    expired: bool = False

    @property
    def retry(self) -> bool:
        return self.error is not None and self.error not in ARCHIVE_REFUSALS


class _Stop(Exception):
    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


class _Gap(Exception):
    pass


class Reader:
    """One read of one room's archive. The driver hands it every message
    that carries a MAM result while it runs (:meth:`offer`)."""

    def __init__(self, xmpp: Any, room: str, *, not_before: float | None = None) -> None:
        self.xmpp = xmpp
        self.room = room
        self.not_before = not_before
        self.queryid: str | None = None
        self.messages: list[Archived] = []
        self.seen: set[str] = set()
        self.page_results = 0
        self.page_new = 0

    def new_page(self) -> str:
        self.queryid = secrets.token_hex(8)
        self.page_results = self.page_new = 0
        return self.queryid

    def offer(self, xml: ET.Element) -> bool:
        """A message with a MAM ``<result/>``: True when it was one of ours."""
        result = xml.find(_RESULT)
        if result is None or self.queryid is None or result.get("queryid") != self.queryid:
            return False
        bare, resource = bare_and_resource(xml)
        if resource or (bare != self.room and canonical_bare(bare) != self.room):
            return False
        self.page_results += 1
        try:
            self._take(result)
        except Exception:
            logger.debug("%s: bad archive result; skipped", self.room, exc_info=True)
        return True

    def _take(self, result: ET.Element) -> None:
        archive_id = result.get("id")
        forwarded = result.find(_FORWARDED)
        if not archive_id or forwarded is None:
            return
        delay = forwarded.find(_DELAY)
        inner = forwarded.find(f"{{{self.xmpp.default_ns}}}message")
        stamp = parse_stamp(delay.get("stamp")) if delay is not None else None
        if inner is None or stamp is None:
            return
        bare, _ = bare_and_resource(inner)
        if bare != self.room and canonical_bare(bare) != self.room:
            logger.debug("%s: archive result %s forwards a message from %s; skipped",
                         self.room, archive_id, bare)
            return
        if archive_id in self.seen:
            return
        if self.not_before is not None and stamp < self.not_before:
            return
        self.seen.add(archive_id)
        self.page_new += 1
        self.messages.append(Archived(archive_id, stamp, Message(self.xmpp, inner)))


def _query(xmpp: Any, room: str, queryid: str, *, after_id: str | None = None,
           since: float | None = None, max_: int | None = None,
           last_page: bool = False) -> Any:
    iq = xmpp.make_iq_set(ito=room)
    query = ET.SubElement(iq.xml, f"{{{MAM_NS}}}query", {"queryid": queryid})
    if since is not None:
        form = ET.SubElement(query, f"{{{DATA_NS}}}x", {"type": "submit"})
        field = ET.SubElement(form, f"{{{DATA_NS}}}field", {"var": "FORM_TYPE",
                                                            "type": "hidden"})
        ET.SubElement(field, f"{{{DATA_NS}}}value").text = MAM_NS
        field = ET.SubElement(form, f"{{{DATA_NS}}}field", {"var": "start"})
        # whole seconds, rounded down: archives like Prosody's store seconds
        stamp = datetime.datetime.fromtimestamp(int(since), tz=datetime.timezone.utc)
        ET.SubElement(field, f"{{{DATA_NS}}}value").text = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if after_id is not None or max_ is not None or last_page:
        rsm = ET.SubElement(query, f"{{{RSM_NS}}}set")
        if max_ is not None:
            ET.SubElement(rsm, f"{{{RSM_NS}}}max").text = str(max_)
        if after_id is not None:
            ET.SubElement(rsm, f"{{{RSM_NS}}}after").text = after_id
        if last_page:
            ET.SubElement(rsm, f"{{{RSM_NS}}}before")
    return iq


async def _page(driver: Any, iq: Any, timeout: float,
                cursor: str | None) -> tuple[bool, str | None]:
    """Send one page's query: (complete, last id)."""
    try:
        reply = await driver.runner._iq(iq, timeout)
    except (TimeoutError, IqTimeout):
        raise _Stop("timeout") from None
    except IqError as exc:
        condition = iq_error(exc)[0]
        if condition == "item-not-found" and cursor is not None:
            raise _Gap() from None
        raise _Stop(condition) from None
    fin = reply.xml.find(_FIN)
    if fin is None:
        raise _Stop("malformed-reply")
    last = fin.findtext(f"{{{RSM_NS}}}set/{{{RSM_NS}}}last")
    return fin.get("complete") in ("true", "1"), last or None


async def _fetch(driver: Any, room: str, *, after_id: str | None, since: float | None,
                 page_size: int, limit: int, timeout: float) -> Read:
    reader = Reader(driver.xmpp, room,
                    not_before=float(int(since)) if since is not None and after_id is None
                    else None)
    driver.readers.add(reader)
    started, pages, cursor = time.monotonic(), 0, after_id
    use_since = since if after_id is None else None
    try:
        while True:
            want = min(page_size, limit - len(reader.messages))
            iq = _query(driver.xmpp, room, reader.new_page(), after_id=cursor,
                        since=use_since, max_=want)
            pages += 1
            try:
                complete, last = await _page(driver, iq, timeout, cursor)
            except _Stop as stop:
                logger.warning("%s: archive read ended early after %d message(s): %s",
                               room, len(reader.messages), stop.condition)
                return Read(list(reader.messages), error=stop.condition)
            if (pages == 1 and after_id is not None and complete
                    and reader.page_results == 0
                    and not await _holds_newest(driver, room, after_id, timeout)):
                raise _Gap()
            if len(reader.messages) > limit:
                del reader.messages[limit:]
                return Read(list(reader.messages))
            if complete:
                break
            if len(reader.messages) >= limit:
                return Read(list(reader.messages))
            if reader.page_new == 0 or not last or last == cursor:
                logger.warning("%s: archive page %d made no progress; stopping incomplete",
                               room, pages)
                return Read(list(reader.messages))
            cursor = last
    finally:
        reader.queryid = None
        driver.readers.discard(reader)
    logger.info("%s: %d archived messages in %d page(s), %.0f ms", room,
                len(reader.messages), pages, (time.monotonic() - started) * 1000)
    return Read(list(reader.messages), complete=True)


async def _holds_newest(driver: Any, room: str, archive_id: str, timeout: float) -> bool:
    """Whether `archive_id` is the archive's newest message (see aioxmpp.mam)."""
    reader = Reader(driver.xmpp, room)
    driver.readers.add(reader)
    try:
        iq = _query(driver.xmpp, room, reader.new_page(), max_=1, last_page=True)
        try:
            await _page(driver, iq, timeout, None)
        except _Stop as stop:
            if stop.condition != "item-not-found":
                raise
    finally:
        reader.queryid = None
        driver.readers.discard(reader)
    newest = reader.messages[-1].archive_id if reader.messages else None
    return newest == archive_id


async def read_archive(driver: Any, room: str, after_id: str | None, since: float | None, *,
                       page_size: int, limit: int, timeout: float) -> Read:
    """Read the archive after `after_id` (else from `since`, a UNIX time on
    the server's clock). Never raises but for cancellation."""
    try:
        try:
            return await _fetch(driver, room, after_id=after_id,
                                since=None if after_id else since,
                                page_size=page_size, limit=limit, timeout=timeout)
        except _Gap:
            logger.info("%s: the archive no longer holds %s; reading from the time", room,
                        after_id)
            read = await _fetch(driver, room, after_id=None, since=since,
                                page_size=page_size, limit=limit, timeout=timeout)
            read.expired = True
            return read
    except _Stop as stop:      # from _holds_newest
        return Read([], error=stop.condition)
