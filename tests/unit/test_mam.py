"""muc_guard.aioxmpp.mam without a server: XSOs against literal XML, and fetch() against
a scripted archive whose results go through a real aioxmpp filter chain."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import aioxmpp
import aioxmpp.disco
import aioxmpp.errors
import aioxmpp.stream
import aioxmpp.xml
import pytest

from muc_guard.aioxmpp import mam
from stanzas import parse

ROOM = aioxmpp.JID.fromstr("room@conference.localhost")
ME = "bot@localhost/r"

NS = {
    "mam": mam.MAM_NS,
    "x": "jabber:x:data",
    "rsm": "http://jabber.org/protocol/rsm",
}


# --- literal XML -------------------------------------------------------------------------------


def result_xml(queryid: str, archive_id: str | None, *, body: str = "hi",
               frm: str = str(ROOM), nick_from: str | None = None,
               stamp: str | None = "2024-05-06T07:08:09Z", forwarded: bool = True,
               inner: bool = True) -> str:
    """One archive result message as a MUC archive sends it."""
    sender = nick_from if nick_from is not None else f"{ROOM}/alice"
    id_attr = f" id='{archive_id}'" if archive_id is not None else ""
    delay = f"<delay xmlns='urn:xmpp:delay' stamp='{stamp}'/>" if stamp is not None else ""
    message = (f"<message xmlns='jabber:client' from='{sender}' type='groupchat' id='o-{archive_id}'>"
               f"<body>{body}</body></message>") if inner else ""
    content = (f"<forwarded xmlns='urn:xmpp:forward:0'>{delay}{message}</forwarded>"
               if forwarded else "")
    return (f"<message from='{frm}' to='{ME}'>"
            f"<result xmlns='urn:xmpp:mam:2' queryid='{queryid}'{id_attr}>{content}</result>"
            "</message>")


def fin_xml(*, complete: bool | None, first: str | None = None, last: str | None = None,
            count: int | None = None, id_: str = "q1") -> str:
    attr = "" if complete is None else f" complete='{'true' if complete else 'false'}'"
    rsm = "".join([
        f"<first>{first}</first>" if first else "",
        f"<last>{last}</last>" if last else "",
        f"<count>{count}</count>" if count is not None else "",
    ])
    return (f"<iq type='result' id='{id_}' from='{ROOM}' to='{ME}'>"
            f"<fin xmlns='urn:xmpp:mam:2'{attr}><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>"
            "</fin></iq>")


def serialize(xso: Any) -> ET.Element:
    return ET.fromstring(aioxmpp.xml.serialize_single_xso(xso))


def form_fields(query_el: ET.Element) -> dict[str, tuple[str | None, list[str]]]:
    form = query_el.find("x:x", NS)
    assert form is not None and form.get("type") == "submit"
    return {f.get("var"): (f.get("type"), [v.text for v in f.findall("x:value", NS)])
            for f in form.findall("x:field", NS)}


class TestParsing:
    def test_result_message(self):
        msg = parse(result_xml("q1", "A-1", body="hello"))
        result = msg.xep0313_result
        assert (result.queryid, result.id_) == ("q1", "A-1")
        assert result.forwarded.delay.stamp == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
        inner = result.forwarded.stanza
        assert isinstance(inner, aioxmpp.Message)
        assert inner.from_ == ROOM.replace(resource="alice")
        assert inner.type_ == aioxmpp.MessageType.GROUPCHAT
        assert inner.body.any() == "hello"

    def test_plain_message_has_no_result(self):
        msg = parse(f"<message from='{ROOM}/alice' type='groupchat'><body>x</body></message>")
        assert msg.xep0313_result is None

    @pytest.mark.parametrize("kwargs", [
        {"forwarded": False}, {"stamp": None, "inner": True}, {"inner": False}, {"archive_id": None},
    ])
    def test_incomplete_results_still_parse(self, kwargs):
        archive_id = kwargs.pop("archive_id", "A-1")
        result = parse(result_xml("q1", archive_id, **kwargs)).xep0313_result
        assert result is not None and result.queryid == "q1"

    def test_fin(self):
        fin = parse(fin_xml(complete=True, first="A", last="B", count=3)).payload
        assert isinstance(fin, mam.Fin)
        assert fin.complete is True and fin.stable is True
        assert (fin.rsm.first.value, fin.rsm.last.value, fin.rsm.count) == ("A", "B", 3)

    def test_fin_without_complete_is_incomplete(self):
        # Prosody leaves the attribute out on a page with more to come.
        fin = parse(fin_xml(complete=None, first="A", last="B")).payload
        assert fin.complete is False
        assert parse(fin_xml(complete=False, last="B")).payload.complete is False

    def test_empty_fin(self):
        fin = parse(fin_xml(complete=True)).payload
        assert fin.complete is True and fin.rsm.first is None and fin.rsm.last is None


class TestQuery:
    def test_after_id_and_max(self):
        el = serialize(mam.build_query(queryid="q7", after_id="A-100", max_=20))
        assert el.tag == f"{{{mam.MAM_NS}}}query" and el.get("queryid") == "q7"
        assert el.find("x:x", NS) is None
        assert el.find("rsm:set/rsm:after", NS).text == "A-100"
        assert el.find("rsm:set/rsm:max", NS).text == "20"
        assert el.find("rsm:set/rsm:before", NS) is None

    def test_since_becomes_start_field(self):
        since = datetime(2024, 5, 6, 9, 8, 9, 999_999, tzinfo=timezone(timedelta(hours=2)))
        el = serialize(mam.build_query(queryid="q", since=since, max_=50))
        fields = form_fields(el)
        assert fields["FORM_TYPE"] == ("hidden", [mam.MAM_NS])
        # UTC, rounded down to the second (Prosody stores whole seconds)
        assert fields["start"][1] == ["2024-05-06T07:08:09Z"]
        assert set(fields) == {"FORM_TYPE", "start"}
        assert el.find("rsm:set/rsm:after", NS) is None

    def test_bare_query(self):
        el = serialize(mam.build_query(queryid="q"))
        assert list(el) == [] and el.get("queryid") == "q"

    def test_round_trip_through_the_parser(self):
        since = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        iq = aioxmpp.IQ(to=ROOM, type_=aioxmpp.IQType.SET,
                        payload=mam.build_query(queryid="q9", after_id="A-5", since=since, max_=10))
        iq.id_ = "iq1"
        wire = aioxmpp.xml.serialize_single_xso(iq)
        back = parse(wire.replace("<iq ", f"<iq from='{ME}' ", 1))
        query = back.payload
        assert isinstance(query, mam.Query)
        assert query.queryid == "q9"
        assert query.rsm.after.value == "A-5" and query.rsm.max_ == 10
        assert query.form.get_form_type() == mam.MAM_NS
        start = [f for f in query.form.fields if f.var == "start"][0]
        assert start.values == ["2024-01-02T03:04:05Z"]

    def test_naive_since_is_refused(self):
        with pytest.raises(ValueError):
            mam.format_stamp(datetime(2024, 1, 1))


# --- fetch() against a scripted archive -------------------------------------------------------


class FakeStream:
    def __init__(self) -> None:
        self.app_inbound_message_filter = aioxmpp.stream.AppFilter()


class FakeClient:
    """Just enough of aioxmpp.Client: ``stream.app_inbound_message_filter``
    and ``send``.  `answer(iq)` returns (messages as XML, reply) where the
    reply is an IQ XML string or an exception to raise; the messages go
    through the filter chain first, as the stream would deliver them, and
    what comes out is kept in `delivered`."""

    def __init__(self, answer: Callable[[aioxmpp.IQ], tuple[list[str], Any]]) -> None:
        self.stream = FakeStream()
        self.answer = answer
        self.sent: list[aioxmpp.IQ] = []
        self.delivered: list[aioxmpp.Message] = []
        self.unparseable: list[str] = []

    def inject(self, xml: str) -> None:
        try:
            msg = parse(xml)
        except aioxmpp.stanza.StanzaError:
            # aioxmpp's stream drops a stanza it cannot parse (debug log only)
            self.unparseable.append(xml)
            return
        out = self.stream.app_inbound_message_filter.filter(msg)
        if out is not None:
            self.delivered.append(out)

    async def send(self, iq: aioxmpp.IQ, *, timeout: float | None = None) -> Any:
        self.sent.append(iq)
        messages, reply = self.answer(iq)
        for xml in messages:
            self.inject(xml)
        await asyncio.sleep(0)
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return parse(reply).payload
        return reply


class Archive:
    """A MUC archive like Prosody's: ascending ids, a page cap, RSM after,
    ``item-not-found`` for an unknown id, 'complete' omitted when there is more."""

    def __init__(self, n: int, *, cap: int = 50, start: datetime | None = None) -> None:
        start = start or datetime(2024, 5, 6, 7, 0, 0, tzinfo=timezone.utc)
        self.items = [(f"id-{i:04d}", f"body {i}", start + timedelta(seconds=i)) for i in range(1, n + 1)]
        self.cap = cap
        self.ignore_max = False
        #: Prosody 13.0: an unknown after-id gets an empty, complete page
        self.unknown_after_is_empty = False
        #: Prosody 13.0: a start later than every message returns the newest one
        self.start_past_end_returns_newest = False
        self.queries: list[mam.Query] = []

    def __call__(self, iq: aioxmpp.IQ) -> tuple[list[str], Any]:
        query = iq.payload
        self.queries.append(query)
        items = self.items
        if query.form is not None:
            start = [f.values[0] for f in query.form.fields if f.var == "start"]
            if start:
                since = datetime.strptime(start[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                later = [it for it in items if it[2] >= since]
                if not later and items and self.start_past_end_returns_newest:
                    later = items[-1:]
                items = later
        after = query.rsm.after.value if query.rsm is not None and query.rsm.after else None
        want = query.rsm.max_ if query.rsm is not None and query.rsm.max_ is not None else 20
        if query.rsm is not None and query.rsm.before is not None and not query.rsm.before.value:
            items = items[-want:]              # the last page
        if after is not None:
            ids = [it[0] for it in items]
            if after not in ids and self.unknown_after_is_empty:
                items = []
            elif after not in ids:
                return [], aioxmpp.errors.XMPPModifyError(aioxmpp.ErrorCondition.ITEM_NOT_FOUND)
            else:
                items = items[ids.index(after) + 1:]
        page = items if self.ignore_max else items[:min(want, self.cap)]
        complete = len(page) == len(items)
        messages = [result_xml(query.queryid, i, body=b, stamp=s.strftime("%Y-%m-%dT%H:%M:%SZ"))
                    for i, b, s in page]
        return messages, fin_xml(complete=True if complete else None,
                                 first=page[0][0] if page else None,
                                 last=page[-1][0] if page else None, count=len(self.items))


def chain_size(client: FakeClient) -> int:
    return len(client.stream.app_inbound_message_filter._filter_order)


class TestFetch:
    async def test_single_page(self):
        archive = Archive(3)
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM)
        assert complete is True
        assert [m.archive_id for m in got] == ["id-0001", "id-0002", "id-0003"]
        assert [m.message.body.any() for m in got] == ["body 1", "body 2", "body 3"]
        assert got[0].timestamp == datetime(2024, 5, 6, 7, 0, 1, tzinfo=timezone.utc)
        assert client.delivered == []          # every result swallowed
        assert chain_size(client) == 0         # filter gone
        iq = client.sent[0]
        assert iq.to == ROOM and iq.type_ == aioxmpp.IQType.SET

    async def test_full_room_jid_is_reduced_to_bare(self):
        client = FakeClient(Archive(1))
        got, _ = await mam.fetch(client, str(ROOM.replace(resource="nick")))
        assert client.sent[0].to == ROOM and len(got) == 1

    async def test_paging_follows_rsm_last(self):
        archive = Archive(250, cap=50)
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM, page_size=100)
        assert complete is True and len(got) == 250
        assert [m.archive_id for m in got] == [i for i, _, _ in archive.items]
        afters = [q.rsm.after.value if q.rsm.after else None for q in archive.queries]
        assert afters == [None, "id-0050", "id-0100", "id-0150", "id-0200"]
        assert len({q.queryid for q in archive.queries}) == 5   # one queryid per page

    async def test_after_id(self):
        archive = Archive(250)
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM, after_id="id-0100", page_size=20)
        assert complete is True
        assert [m.archive_id for m in got] == [f"id-{i:04d}" for i in range(101, 251)]
        assert len(archive.queries) == 8 and archive.queries[0].form is None

    async def test_after_id_wins_over_since(self):
        archive = Archive(10)
        client = FakeClient(archive)
        since = datetime(2030, 1, 1, tzinfo=timezone.utc)
        got, _ = await mam.fetch(client, ROOM, after_id="id-0005", since=since)
        assert archive.queries[0].form is None and len(got) == 5

    async def test_since(self):
        archive = Archive(10)
        client = FakeClient(archive)
        since = datetime(2024, 5, 6, 7, 0, 8, 500_000, tzinfo=timezone.utc)
        got, complete = await mam.fetch(client, ROOM, since=since)
        # rounded down: the message of 07:00:08 is included
        assert [m.archive_id for m in got] == ["id-0008", "id-0009", "id-0010"] and complete

    async def test_limit(self):
        archive = Archive(250)
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM, page_size=20, limit=45)
        assert complete is False and len(got) == 45
        assert [q.rsm.max_ for q in archive.queries] == [20, 20, 5]

    async def test_limit_exactly_at_the_end_is_complete(self):
        client = FakeClient(Archive(40))
        got, complete = await mam.fetch(client, ROOM, page_size=20, limit=40)
        assert complete is True and len(got) == 40

    async def test_server_ignoring_max_is_cut_to_limit(self):
        archive = Archive(30)
        archive.ignore_max = True
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM, limit=10)
        assert complete is False and [m.archive_id for m in got][-1] == "id-0010" and len(got) == 10

    async def test_unknown_after_id_is_a_gap(self):
        client = FakeClient(Archive(5))
        with pytest.raises(mam.ArchiveGapError) as info:
            await mam.fetch(client, ROOM, after_id="gone")
        assert info.value.after_id == "gone" and info.value.messages == []
        assert info.value.room == ROOM
        assert chain_size(client) == 0

    async def test_unknown_after_id_answered_with_an_empty_page_is_a_gap(self):
        """Prosody 13.0: no item-not-found, an empty complete page. Not proof:
        the id is not the archive's newest message, so it is a gap."""
        archive = Archive(5)
        archive.unknown_after_is_empty = True
        client = FakeClient(archive)
        with pytest.raises(mam.ArchiveGapError) as info:
            await mam.fetch(client, ROOM, after_id="gone")
        assert info.value.after_id == "gone" and info.value.messages == []
        probe = archive.queries[1]
        assert probe.rsm.before is not None and probe.rsm.max_ == 1 and probe.form is None
        assert client.delivered == [] and chain_size(client) == 0
        archive.items = []                     # an empty archive holds no id either
        with pytest.raises(mam.ArchiveGapError):
            await mam.fetch(client, ROOM, after_id="gone")

    async def test_empty_page_after_the_newest_id_is_complete(self):
        archive = Archive(5)
        archive.unknown_after_is_empty = True
        client = FakeClient(archive)
        assert await mam.fetch(client, ROOM, after_id="id-0005") == ([], True)
        assert len(archive.queries) == 2 and client.delivered == []
        got, complete = await mam.fetch(client, ROOM, after_id="id-0003")
        assert [m.archive_id for m in got] == ["id-0004", "id-0005"] and complete
        assert len(archive.queries) == 3       # a page with results needs no check

    async def test_results_older_than_since_are_dropped(self):
        archive = Archive(5)
        archive.start_past_end_returns_newest = True
        client = FakeClient(archive)
        got, complete = await mam.fetch(client, ROOM, since=datetime(2030, 1, 1, tzinfo=timezone.utc))
        assert (got, complete) == ([], True)

    async def test_gap_between_pages_keeps_what_came(self):
        archive = Archive(60, cap=50)
        first = archive.__call__

        def forget_after_first_page(iq):
            if archive.queries:
                archive.items = archive.items[55:]   # expired meanwhile
            return first(iq)

        client = FakeClient(forget_after_first_page)
        with pytest.raises(mam.ArchiveGapError) as info:
            await mam.fetch(client, ROOM)
        assert info.value.after_id == "id-0050" and len(info.value.messages) == 50

    async def test_other_errors(self):
        client = FakeClient(lambda iq: ([], aioxmpp.errors.XMPPAuthError(aioxmpp.ErrorCondition.FORBIDDEN)))
        with pytest.raises(mam.ArchiveQueryError) as info:
            await mam.fetch(client, ROOM)
        assert info.value.condition == "forbidden"
        # item-not-found without an id of ours: the room is gone, not a gap
        gone = aioxmpp.errors.XMPPCancelError(aioxmpp.ErrorCondition.ITEM_NOT_FOUND)
        client = FakeClient(lambda iq: ([], gone))
        with pytest.raises(mam.ArchiveQueryError) as info:
            await mam.fetch(client, ROOM, since=datetime.now(timezone.utc))
        assert not isinstance(info.value, mam.ArchiveGapError)
        assert info.value.condition == "item-not-found"

    async def test_reply_without_fin(self):
        client = FakeClient(lambda iq: ([], None))
        with pytest.raises(mam.ArchiveQueryError) as info:
            await mam.fetch(client, ROOM)
        assert info.value.condition == "malformed-reply"

    async def test_timeout(self):
        client = FakeClient(lambda iq: ([result_xml(iq.payload.queryid, "id-1")], TimeoutError()))
        with pytest.raises(mam.ArchiveTimeoutError) as info:
            await mam.fetch(client, ROOM, timeout=0.1)
        assert isinstance(info.value, TimeoutError)
        assert [m.archive_id for m in info.value.messages] == ["id-1"]
        assert chain_size(client) == 0

    async def test_incomplete_page_without_progress_stops(self):
        client = FakeClient(lambda iq: ([], fin_xml(complete=None, last="x")))
        got, complete = await mam.fetch(client, ROOM)
        assert (got, complete) == ([], False) and len(client.sent) == 1

    async def test_incomplete_page_repeating_cursor_stops(self):
        def same_page(iq):
            return [result_xml(iq.payload.queryid, "id-1")], fin_xml(complete=None, last="id-1")
        client = FakeClient(same_page)
        got, complete = await mam.fetch(client, ROOM)
        # second page repeats id-1: nothing new, stop
        assert [m.archive_id for m in got] == ["id-1"] and complete is False
        assert len(client.sent) == 2

    async def test_empty_archive(self):
        client = FakeClient(Archive(0))
        assert await mam.fetch(client, ROOM) == ([], True)

    async def test_bad_arguments(self):
        client = FakeClient(Archive(1))
        with pytest.raises(ValueError):
            await mam.fetch(client, ROOM, page_size=0)
        with pytest.raises(ValueError):
            await mam.fetch(client, ROOM, limit=0)
        with pytest.raises(ValueError):
            await mam.fetch(client, ROOM, since=datetime(2024, 1, 1))
        assert client.sent == [] and chain_size(client) == 0


class TestFilter:
    """What the filter takes and what it leaves alone, in a live page."""

    async def test_only_our_results_are_taken(self):
        others: list[str] = []

        def answer(iq):
            qid = iq.payload.queryid
            others[:] = [
                # live groupchat from the room: not ours
                f"<message from='{ROOM}/alice' to='{ME}' type='groupchat'><body>live</body></message>",
                # another query's result (e.g. a concurrent fetch)
                result_xml("someone-else", "id-x"),
                # our queryid but not from the room: a spoof
                result_xml(qid, "id-y", frm="mallory@localhost/x"),
                result_xml(qid, "id-z", frm=f"{ROOM}/alice"),
                # a chat message that has nothing to do with it
                f"<message from='friend@localhost/p' to='{ME}' type='chat'><body>hey</body></message>",
            ]
            return ([result_xml(qid, "id-1"), others[0], others[1], result_xml(qid, "id-2"),
                     *others[2:]], fin_xml(complete=True, first="id-1", last="id-2"))

        client = FakeClient(answer)
        got, complete = await mam.fetch(client, ROOM)
        assert [m.archive_id for m in got] == ["id-1", "id-2"] and complete
        assert len(client.delivered) == len(others) == 5
        bodies = [m.body.any() if m.body else None for m in client.delivered]
        assert bodies == ["live", None, None, None, "hey"]
        ids = [m.xep0313_result.id_ if m.xep0313_result else None for m in client.delivered]
        assert ids == [None, "id-x", "id-y", "id-z", None]

    async def test_malformed_results_are_skipped_and_swallowed(self, caplog):
        def answer(iq):
            qid = iq.payload.queryid
            return ([
                result_xml(qid, "id-1"),
                result_xml(qid, None),                                   # no id
                result_xml(qid, "id-2", forwarded=False),                # no <forwarded/>
                result_xml(qid, "id-3", stamp=None),                     # no <delay/>
                result_xml(qid, "id-4", inner=False),                    # no <message/>
                result_xml(qid, "id-5", nick_from="other@conference.localhost/eve"),  # not this room
                result_xml(qid, "id-1", body="again"),                   # repeated id
                result_xml(qid, "id-6", stamp="not a date"),             # aioxmpp drops it itself
                result_xml(qid, "id-7"),
            ], fin_xml(complete=True, first="id-1", last="id-7"))

        client = FakeClient(answer)
        with caplog.at_level("DEBUG", logger="muc_guard.mam"):
            got, complete = await mam.fetch(client, ROOM)
        assert [m.archive_id for m in got] == ["id-1", "id-7"] and complete
        assert got[0].message.body.any() == "hi"
        assert client.delivered == []
        assert len(client.unparseable) == 1     # the bad stamp never reached a filter
        assert "skipped" in caplog.text

    async def test_stamp_with_offset_becomes_utc(self):
        def answer(iq):
            return ([result_xml(iq.payload.queryid, "id-1", stamp="2024-05-06T09:08:09+02:00")],
                    fin_xml(complete=True, last="id-1"))
        got, _ = await mam.fetch(FakeClient(answer), ROOM)
        assert got[0].timestamp == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
        assert got[0].timestamp.utcoffset() == timedelta(0)

    async def test_runs_before_application_filters(self):
        seen: list[aioxmpp.Message] = []

        def app_filter(stanza):
            seen.append(stanza)
            return stanza

        def answer(iq):
            return ([result_xml(iq.payload.queryid, "id-1"),
                     f"<message from='{ROOM}/a' type='groupchat'><body>live</body></message>"],
                    fin_xml(complete=True, last="id-1"))

        client = FakeClient(answer)
        client.stream.app_inbound_message_filter.register(app_filter, 0)
        got, _ = await mam.fetch(client, ROOM)
        assert len(got) == 1
        assert [m.body.any() for m in seen] == ["live"]

    def test_filter_never_raises(self):
        collector = mam._Collector(ROOM)
        collector.new_page()

        class Weird:
            @property
            def xep0313_result(self):
                raise RuntimeError("boom")

        weird = Weird()
        assert collector.filter(weird) is weird

    def test_idle_filter_takes_nothing(self):
        collector = mam._Collector(ROOM)
        msg = parse(result_xml("q", "id-1"))
        assert collector.filter(msg) is msg


# --- room_has_archive -------------------------------------------------------------------------


class TestRoomHasArchive:
    @staticmethod
    def client(reply: Any) -> FakeClient:
        return FakeClient(lambda iq: ([], reply))

    async def test_feature_present(self):
        info = aioxmpp.disco.xso.InfoQuery(features=["http://jabber.org/protocol/muc", mam.MAM_NS])
        client = self.client(info)
        assert await mam.room_has_archive(client, ROOM.replace(resource="x")) is True
        iq = client.sent[0]
        assert iq.to == ROOM and iq.type_ == aioxmpp.IQType.GET
        assert isinstance(iq.payload, aioxmpp.disco.xso.InfoQuery)

    async def test_feature_absent(self):
        info = aioxmpp.disco.xso.InfoQuery(features=["http://jabber.org/protocol/muc", "urn:xmpp:mam:1"])
        assert await mam.room_has_archive(self.client(info), ROOM) is False

    @pytest.mark.parametrize("exc", [
        aioxmpp.errors.XMPPCancelError(aioxmpp.ErrorCondition.ITEM_NOT_FOUND),
        TimeoutError(),
        ConnectionError("stream gone"),
    ])
    async def test_errors_mean_no(self, exc):
        assert await mam.room_has_archive(self.client(exc), str(ROOM)) is False
