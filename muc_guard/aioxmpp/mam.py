"""
XEP-0313 (Message Archive Management) 1.x: reading a room's archive.

Motivation
==========

muc_guard notices that a bot dropped out of a room and rejoins it, but what
was said in between is gone: the history a MUC replays on join is short (20
messages on Prosody), undated relative to what we saw, and indistinguishable
from messages we already had. A room with a XEP-0313 archive can give us the
exact gap: every archived message carries the room's XEP-0359 stanza-id, which
is also stamped on the live messages we did receive, so "everything after the
last id we saw" is a precise question.

aioxmpp 0.13 has no MAM client, only the parts: Data Forms, RSM, forwarding,
delay and stanza-ids. The results of a query also do not come back in the IQ
reply: they arrive as separate ``<message>`` stanzas before the final
``<fin/>``, so whoever asks has to pick them out of the message stream without
disturbing anything else that flows through it.

Solution
========

The module declares the three XSOs of ``urn:xmpp:mam:2`` (:class:`Query`,
:class:`Result`, :class:`Fin`) and two coroutines:

- :func:`room_has_archive` asks the room (disco#info) whether it archives.
- :func:`fetch` queries the room's archive for the messages after a known
  stanza-id (RSM ``<after/>``) or, lacking one, since a point in time (form
  field ``start``). It pages with RSM until the archive says it is complete
  or `limit` messages are collected. For the duration, a synchronous filter on
  ``client.stream.app_inbound_message_filter`` swallows exactly our own
  results (our query id, sent by the room's bare JID) and passes every other
  stanza through untouched. It runs before filters at the default order 0 (the
  guard's own), so archived messages are never mistaken for live room traffic.

The results are untrusted input: a result without ``<forwarded/>``,
``<delay/>`` or ``<message/>``, a forwarded message that is not from the room,
or a repeated archive id is skipped with a debug log; the filter never raises.
An archive that does not know the id we ask to continue after answers
``item-not-found`` (Prosody 0.12, as XEP-0313 requires) or an empty, complete
page (Prosody 13.0): :func:`fetch` never takes an empty first page as proof,
but checks that the id is the archive's newest message; either way it raises
:class:`ArchiveGapError` so the caller can retry with a timestamp instead.
Results older than a ``start`` bound are dropped (Prosody 13.0 returns its
newest message for a ``start`` later than every message).

Prosody 0.12 (mod_muc_mam) notes: archive timestamps are whole seconds (so
``since`` is rounded down and may return a few messages from the same second
before it), a page holds at most 50 results whatever ``max`` we ask for
(``max_archive_query_results``), and a non-occupant may read the archive of
any room that is not members-only (and does not ban them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import aioxmpp
import aioxmpp.disco
import aioxmpp.errors
import aioxmpp.forms
import aioxmpp.misc
import aioxmpp.rsm.xso
import aioxmpp.xso as xso

__all__ = [
    "MAM_NS",
    "Query",
    "Result",
    "Fin",
    "ArchivedMessage",
    "ArchiveError",
    "ArchiveGapError",
    "ArchiveQueryError",
    "ArchiveTimeoutError",
    "room_has_archive",
    "archive_advertised",
    "fetch",
    "build_query",
    "format_stamp",
]

logger = logging.getLogger("muc_guard.mam")

MAM_NS = "urn:xmpp:mam:2"

#: Order of our message filter in ``app_inbound_message_filter``: before the
#: default 0 that applications (and muc_guard's engine) use, so that our
#: results never reach them as "traffic from the room".
FILTER_ORDER = -100


# --- XSOs ---------------------------------------------------------------------------


@aioxmpp.IQ.as_payload_class
class Query(xso.XSO):
    """``<query xmlns='urn:xmpp:mam:2'/>``: an archive query (IQ set)."""

    TAG = (MAM_NS, "query")

    queryid = xso.Attr("queryid", default=None)
    node = xso.Attr("node", default=None)
    form = xso.Child([aioxmpp.forms.Data])
    rsm = xso.Child([aioxmpp.rsm.xso.ResultSetMetadata])
    flip_page = xso.ChildFlag((MAM_NS, "flip-page"))

    def __init__(self, *, queryid: str | None = None,
                 form: aioxmpp.forms.Data | None = None,
                 rsm: aioxmpp.rsm.xso.ResultSetMetadata | None = None) -> None:
        super().__init__()
        self.queryid = queryid
        self.form = form
        self.rsm = rsm


class Result(xso.XSO):
    """``<result xmlns='urn:xmpp:mam:2' queryid=... id=...>``: one archived
    stanza, forwarded to us in a ``<message>``.  Every attribute is optional
    here so that a malformed result still parses and can be judged (and
    skipped) by us instead of failing the whole stanza."""

    TAG = (MAM_NS, "result")

    queryid = xso.Attr("queryid", default=None)
    id_ = xso.Attr("id", default=None)
    forwarded = xso.Child([aioxmpp.misc.Forwarded])

    def __init__(self, *, queryid: str | None = None, id_: str | None = None,
                 forwarded: aioxmpp.misc.Forwarded | None = None) -> None:
        super().__init__()
        self.queryid = queryid
        self.id_ = id_
        self.forwarded = forwarded


@aioxmpp.IQ.as_payload_class
class Fin(xso.XSO):
    """``<fin xmlns='urn:xmpp:mam:2' complete=... stable=...>``: the IQ
    result ending one page, with the RSM ``<first/>``/``<last/>`` ids."""

    TAG = (MAM_NS, "fin")

    complete = xso.Attr("complete", type_=xso.Bool(), default=False)
    stable = xso.Attr("stable", type_=xso.Bool(), default=True)
    rsm = xso.Child([aioxmpp.rsm.xso.ResultSetMetadata])


aioxmpp.Message.xep0313_result = xso.Child([Result])


# --- results and errors ----------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedMessage:
    """One message from a room's archive."""

    #: the ``<result id>``: the room's XEP-0359 stanza-id of the message
    archive_id: str
    #: when the room archived it (forwarded ``<delay stamp>``), aware UTC
    timestamp: datetime
    #: the original groupchat message (from = room/nick)
    message: aioxmpp.Message


class ArchiveError(Exception):
    """An archive query failed.  `messages` holds what earlier pages of the
    same :func:`fetch` delivered (archive order), so nothing is lost."""

    def __init__(self, message: str, *, room: aioxmpp.JID,
                 messages: list[ArchivedMessage] | None = None) -> None:
        super().__init__(message)
        self.room = room
        self.messages: list[ArchivedMessage] = list(messages or [])


class ArchiveGapError(ArchiveError):
    """The archive does not know the id we asked to continue after
    (``item-not-found``): it expired, or it never was in this archive.  Fall
    back to a time-based query."""

    def __init__(self, message: str, *, room: aioxmpp.JID, after_id: str,
                 messages: list[ArchivedMessage] | None = None) -> None:
        super().__init__(message, room=room, messages=messages)
        self.after_id = after_id


class ArchiveQueryError(ArchiveError):
    """The room refused the query (e.g. ``forbidden``) or answered garbage."""

    def __init__(self, message: str, *, room: aioxmpp.JID, condition: str,
                 messages: list[ArchivedMessage] | None = None) -> None:
        super().__init__(message, room=room, messages=messages)
        #: the defined condition, e.g. "forbidden"; "malformed-reply" when the
        #: reply could not be parsed
        self.condition = condition


class ArchiveTimeoutError(ArchiveError, TimeoutError):
    """A page was not answered in time."""


# --- helpers ---------------------------------------------------------------------------


def _condition(exc: aioxmpp.errors.XMPPError) -> str:
    try:
        return str(exc.condition.value[1])
    except (AttributeError, IndexError, TypeError):
        return "undefined-condition"


def format_stamp(when: datetime) -> str:
    """XEP-0082 DateTime for a MAM ``start`` field, in UTC and rounded *down*
    to the second: archives like Prosody's store whole seconds, so a
    fractional bound would exclude messages archived in that same second."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when!r}: pass an aware one (e.g. UTC)")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware_utc(when: datetime) -> datetime:
    # aioxmpp parses a stamp without zone into a naive datetime: XEP-0082
    # stamps are UTC, so say so.
    if when.tzinfo is None or when.utcoffset() is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def build_query(*, queryid: str, after_id: str | None = None,
                since: datetime | None = None, max_: int | None = None,
                last_page: bool = False) -> Query:
    """The ``<query/>`` for one page: `after_id` as RSM ``<after/>``, `since`
    as the form field ``start`` (with FORM_TYPE), `max_` as RSM ``<max/>``,
    `last_page` as an empty RSM ``<before/>`` (the newest messages)."""
    form = None
    if since is not None:
        form = aioxmpp.forms.Data(aioxmpp.forms.DataType.SUBMIT)
        form.fields.append(aioxmpp.forms.Field(
            var="FORM_TYPE", type_=aioxmpp.forms.FieldType.HIDDEN, values=[MAM_NS]))
        form.fields.append(aioxmpp.forms.Field(var="start", values=[format_stamp(since)]))
    rsm = None
    if after_id is not None or max_ is not None or last_page:
        rsm = aioxmpp.rsm.xso.ResultSetMetadata()
        rsm.max_ = max_
        if after_id is not None:
            rsm.after = aioxmpp.rsm.xso.After(after_id)
        if last_page:
            rsm.before = aioxmpp.rsm.xso.Before("")
    return Query(queryid=queryid, form=form, rsm=rsm)


class _Collector:
    """The message filter of one :func:`fetch`: takes our results out of the
    stream, checks them, keeps the good ones in arrival (= archive) order."""

    def __init__(self, room: aioxmpp.JID, not_before: datetime | None = None) -> None:
        self.room = room
        #: results archived before this are dropped (a ``start`` bound the
        #: server did not honour: Prosody 13.0 returns its newest message for
        #: a ``start`` later than every message)
        self.not_before = not_before
        self.queryid: str | None = None
        self.messages: list[ArchivedMessage] = []
        self.seen: set[str] = set()
        #: results of the current page taken out of the stream (good or bad)
        self.page_results = 0
        self.page_new = 0

    def new_page(self) -> str:
        self.queryid = secrets.token_hex(8)
        self.page_results = 0
        self.page_new = 0
        return self.queryid

    def filter(self, stanza: aioxmpp.Message) -> aioxmpp.Message | None:
        """Sync stanza filter: returns `stanza` unless it is one of our results."""
        try:
            result = stanza.xep0313_result
            if (result is None or self.queryid is None
                    or result.queryid != self.queryid or stanza.from_ != self.room):
                return stanza
        except Exception:  # never break the client's message stream
            logger.debug("%s: cannot inspect %r; passed on", self.room, stanza, exc_info=True)
            return stanza
        self.page_results += 1
        try:
            self._take(result)
        except Exception:
            logger.debug("%s: bad archive result in %r; skipped", self.room, stanza, exc_info=True)
        return None

    def _take(self, result: Result) -> None:
        archive_id = result.id_
        forwarded = result.forwarded
        if not archive_id:
            logger.debug("%s: archive result without id; skipped", self.room)
            return
        if forwarded is None or forwarded.delay is None or forwarded.stanza is None:
            logger.debug("%s: archive result %s lacks forwarded/delay/message; skipped",
                         self.room, archive_id)
            return
        message = forwarded.stanza
        if not isinstance(message, aioxmpp.Message):
            logger.debug("%s: archive result %s forwards a %s; skipped",
                         self.room, archive_id, type(message).__name__)
            return
        sender = message.from_
        if sender is None or sender.bare() != self.room:
            logger.debug("%s: archive result %s forwards a message from %s; skipped",
                         self.room, archive_id, sender)
            return
        stamp = forwarded.delay.stamp
        if not isinstance(stamp, datetime):
            logger.debug("%s: archive result %s has no usable stamp; skipped",
                         self.room, archive_id)
            return
        if archive_id in self.seen:
            logger.debug("%s: archive result %s repeated; skipped", self.room, archive_id)
            return
        if self.not_before is not None and _aware_utc(stamp) < self.not_before:
            logger.debug("%s: archive result %s is older than the query's start; skipped",
                         self.room, archive_id)
            return
        self.seen.add(archive_id)
        self.page_new += 1
        self.messages.append(ArchivedMessage(archive_id, _aware_utc(stamp), message))


# --- the API ---------------------------------------------------------------------------


async def room_has_archive(client: aioxmpp.Client, room_jid: aioxmpp.JID | str, *,
                           timeout: float = 10.0) -> bool:
    """True if the room advertises ``urn:xmpp:mam:2`` in its disco#info.

    A fresh disco#info IQ, not aioxmpp's DiscoClient cache: whether a room
    archives is room configuration and may change.  Any failure (error reply,
    timeout, stream gone) means "no archive we can use": False.
    """
    return bool(await archive_advertised(client, room_jid, timeout=timeout))


async def archive_advertised(client: aioxmpp.Client, room_jid: aioxmpp.JID | str, *,
                             timeout: float = 10.0) -> bool | None:
    """Like :func:`room_has_archive`, but None when the room did not answer
    (an error, a timeout, no stream): unknown, worth asking again."""
    room = aioxmpp.JID.fromstr(room_jid) if isinstance(room_jid, str) else room_jid
    room = room.bare()
    iq = aioxmpp.IQ(to=room, type_=aioxmpp.IQType.GET, payload=aioxmpp.disco.xso.InfoQuery())
    try:
        info = await client.send(iq, timeout=timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # XMPPError, TimeoutError, ConnectionError, ErroneousStanza
        logger.debug("%s: disco#info failed (%r): archive unknown", room, exc)
        return None
    features = getattr(info, "features", None) or ()
    found = MAM_NS in features
    logger.debug("%s: archive %s", room, "advertised" if found else "not advertised")
    return found


@contextlib.contextmanager
def _collecting(client: aioxmpp.Client, collector: _Collector) -> Iterator[_Collector]:
    """`collector` filters the client's inbound messages for the duration."""
    chain = client.stream.app_inbound_message_filter
    token = chain.register(collector.filter, FILTER_ORDER)
    try:
        yield collector
    finally:
        collector.queryid = None
        chain.unregister(token)


async def _send_page(client: aioxmpp.Client, room: aioxmpp.JID, query: Query, *,
                     page: int, cursor: str | None, timeout: float,
                     messages: list[ArchivedMessage]) -> Fin:
    """Send one query and return its ``<fin/>``; failures become ArchiveErrors
    carrying `messages` (what earlier pages delivered)."""
    iq = aioxmpp.IQ(to=room, type_=aioxmpp.IQType.SET, payload=query)
    try:
        fin = await client.send(iq, timeout=timeout)
    except TimeoutError as exc:
        raise ArchiveTimeoutError(
            f"{room}: archive page {page} not answered within {timeout:g} s",
            room=room, messages=messages) from exc
    except aioxmpp.errors.XMPPError as exc:
        condition = _condition(exc)
        if condition == "item-not-found" and cursor is not None:
            raise ArchiveGapError(
                f"{room}: archive does not know id {cursor!r}",
                room=room, after_id=cursor, messages=messages) from exc
        raise ArchiveQueryError(f"{room}: archive query refused: {condition}",
                                room=room, condition=condition, messages=messages) from exc
    except aioxmpp.errors.ErroneousStanza as exc:
        raise ArchiveQueryError(f"{room}: malformed reply to archive query",
                                room=room, condition="malformed-reply",
                                messages=messages) from exc
    if not isinstance(fin, Fin):
        raise ArchiveQueryError(f"{room}: archive query answered without <fin/>",
                                room=room, condition="malformed-reply", messages=messages)
    return fin


async def _holds_newest(client: aioxmpp.Client, room: aioxmpp.JID, archive_id: str, *,
                        timeout: float) -> bool:
    """Whether `archive_id` is the newest message in the room's archive.

    An empty, complete page after an id proves nothing by itself: Prosody
    0.12 answers an id it does not hold with item-not-found (as XEP-0313
    requires), Prosody 13.0 with an empty, complete page. Only when the id
    is the archive's newest message is "nothing after it" true.  (A message
    archived meanwhile also makes this False: the time-based fallback then
    reads a little more than needed, and duplicates fall out by id.)"""
    collector = _Collector(room)
    with _collecting(client, collector):
        query = build_query(queryid=collector.new_page(), max_=1, last_page=True)
        try:
            await _send_page(client, room, query, page=1, cursor=None, timeout=timeout,
                             messages=[])
        except ArchiveQueryError as exc:
            if exc.condition != "item-not-found":
                raise
            # Prosody 13 answers a query with <before/> on an empty archive so.
    newest = collector.messages[-1].archive_id if collector.messages else None
    logger.debug("%s: newest archived id %s (we asked after %s)", room, newest, archive_id)
    return newest == archive_id


async def fetch(
    client: aioxmpp.Client,
    room_jid: aioxmpp.JID | str,
    *,
    after_id: str | None = None,
    since: datetime | None = None,
    page_size: int = 100,
    limit: int = 1000,
    timeout: float = 30.0,
) -> tuple[list[ArchivedMessage], bool]:
    """Read a room's archive: ``(messages in archive order, complete)``.

    With `after_id`, the messages after that archive id (`since` is then
    ignored); else, with `since` (aware datetime), those archived at or after
    it (rounded down to the second); with neither, the archive from its start.
    Pages of `page_size` (the server may cap it) until the archive reports
    completion; stops after `limit` messages with ``complete=False`` (continue
    with ``after_id=messages[-1].archive_id``).  `timeout` bounds each page.

    Raises :class:`ArchiveGapError` if the archive does not know `after_id`
    (or, between pages, the id it gave us): answered item-not-found, or an
    empty page while `after_id` is not the archive's newest message (one more
    query, ``<before/>`` with max 1, to tell); :class:`ArchiveTimeoutError`,
    :class:`ArchiveQueryError` for any other error reply; all carry the
    messages collected before the failure.  A lost stream raises
    ConnectionError (or aioxmpp's DestructionRequested) as from ``client.send``.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if since is not None and after_id is None:
        format_stamp(since)  # validate before anything is sent
    room = aioxmpp.JID.fromstr(room_jid) if isinstance(room_jid, str) else room_jid
    room = room.bare()
    use_since = since if after_id is None else None

    not_before = None
    if use_since is not None:
        not_before = _aware_utc(use_since).replace(microsecond=0)
    collector = _Collector(room, not_before)
    started = time.monotonic()
    pages = 0
    complete = False
    cursor = after_id
    with _collecting(client, collector):
        while True:
            want = min(page_size, limit - len(collector.messages))
            queryid = collector.new_page()
            query = build_query(queryid=queryid, after_id=cursor, since=use_since, max_=want)
            pages += 1
            fin = await _send_page(client, room, query, page=pages, cursor=cursor,
                                   timeout=timeout, messages=collector.messages)
            last = fin.rsm.last.value if fin.rsm is not None and fin.rsm.last is not None else None
            logger.debug("%s: archive page %d: %d results (%d new), complete=%s, last=%s",
                         room, pages, collector.page_results, collector.page_new,
                         fin.complete, last)
            if (pages == 1 and after_id is not None and fin.complete
                    and collector.page_results == 0
                    and not await _holds_newest(client, room, after_id, timeout=timeout)):
                logger.info("%s: archive answered an empty page after %s, which it no "
                            "longer holds: a gap", room, after_id)
                raise ArchiveGapError(
                    f"{room}: archive answered an empty page after id {after_id!r}, "
                    f"but its newest message is another one: it does not hold that id",
                    room=room, after_id=after_id)
            if len(collector.messages) > limit:  # the server ignored <max/>
                del collector.messages[limit:]
                complete = False
                break
            if fin.complete:
                complete = True
                break
            if len(collector.messages) >= limit:
                complete = False
                break
            if collector.page_new == 0 or not last or last == cursor:
                # An incomplete page that brought nothing new (or no way on):
                # asking again would loop.
                logger.warning("%s: archive page %d made no progress; stopping incomplete",
                               room, pages)
                complete = False
                break
            cursor = last
    logger.info("%s: %d archived messages in %d page(s), %.0f ms, complete=%s",
                room, len(collector.messages), pages,
                (time.monotonic() - started) * 1000, complete)
    return list(collector.messages), complete
