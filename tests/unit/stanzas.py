"""Literal XML stanzas, parsed by aioxmpp exactly as if they came off the wire."""

from __future__ import annotations

import aioxmpp
import aioxmpp.xml
import aioxmpp.xso

_STREAM_HEADER = ("<stream:stream xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' "
                  "from='localhost' id='unit' version='1.0'>")


def parse(xml: str) -> aioxmpp.stanza.StanzaBase:
    """Parse one stanza written in jabber:client into its aioxmpp object."""
    result: list[aioxmpp.stanza.StanzaBase] = []
    parser = aioxmpp.xml.XMPPXMLProcessor()
    parser.stanza_parser = aioxmpp.xso.XSOParser()
    for cls in (aioxmpp.Presence, aioxmpp.Message, aioxmpp.IQ):
        parser.stanza_parser.add_class(cls, result.append)
    sax = aioxmpp.xml.make_parser()
    sax.setContentHandler(parser)
    sax.feed(_STREAM_HEADER + xml)
    if len(result) != 1:
        raise ValueError(f"expected one stanza in {xml!r}, got {len(result)}")
    return result[0]


def self_unavailable(room: str, nick: str, *codes: int, destroy: bool = False,
                     reason: str = "", to: str = "bot@localhost/r") -> str:
    statuses = "".join(f"<status code='{code}'/>" for code in codes)
    destroy_el = ("<destroy><reason>closed</reason></destroy>" if destroy else "")
    text = f"<status>{reason}</status>" if reason else ""
    return (f"<presence from='{room}/{nick}' to='{to}' type='unavailable'>{text}"
            "<x xmlns='http://jabber.org/protocol/muc#user'>"
            f"<item affiliation='none' role='none'/>{destroy_el}{statuses}</x></presence>")


def self_available(room: str, nick: str, *codes: int, to: str = "bot@localhost/r") -> str:
    statuses = "".join(f"<status code='{code}'/>" for code in (110, *codes))
    return (f"<presence from='{room}/{nick}' to='{to}'>"
            "<x xmlns='http://jabber.org/protocol/muc#user'>"
            f"<item affiliation='member' role='participant'/>{statuses}</x></presence>")


def iq_error(condition: str, *, frm: str = "room@conference.localhost/bot",
             type_: str = "cancel", id_: str = "ping1") -> str:
    return (f"<iq type='error' id='{id_}' from='{frm}' to='bot@localhost/r'>"
            f"<error type='{type_}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></iq>")
