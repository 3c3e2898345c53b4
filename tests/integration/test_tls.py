"""Connecting the way production does: TLS required, the certificate verified.

The server is a real Prosody that requires STARTTLS, with a certificate from a
throw-away CA (``test_ca``, muc_guard.testing.certs). The client trusts that CA
the way a user would (``SSL_CERT_FILE``, or an SSL context that loads it) and
never switches verification off. aioxmpp 0.13.3's own check crashes on every
such connection on current Python and pyOpenSSL; muc_guard.tls repairs it.

The quick start runs on both front-ends; the refused-certificate tests are
aioxmpp's (they check muc_guard.tls, its repair of aioxmpp's check: slixmpp
verifies with the ssl module alone). The guard's scenarios over verified TLS
(``over_both`` in test_guard.py) run on both front-ends.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import aioxmpp
import aioxmpp.connector
import pytest
from guardkit import CHECKOUT, Bot, eventually, occupant_nicks_of, over_verified_tls
from prosody import ProsodyServer, connected, stop_client

import muc_guard
from muc_guard.testing.certs import TestCA

pytestmark = pytest.mark.integration


@over_verified_tls
async def test_readme_quick_start_connects_joins_and_rejoins(prosody, account, room_jid,
                                                             monkeypatch):
    """README's quick start, unchanged: plain make_security_layer(password),
    the private CA trusted through SSL_CERT_FILE; join, a 110+333 kick, rejoin."""
    monkeypatch.setenv("SSL_CERT_FILE", str(prosody.tls.ca_file))
    jid, password = account("quick")
    client = aioxmpp.PresenceManagedClient(
        jid, aioxmpp.make_security_layer(password),
        override_peer=[(prosody.host, prosody.port, aioxmpp.connector.STARTTLSConnector())])
    guard = client.summon(muc_guard.MUCGuard)
    rejoined: asyncio.Queue = asyncio.Queue()
    guard.on_rejoined.connect(lambda room, r: rejoined.put_nowait(r))
    try:
        await connected(client)
        assert client.established
        room = await guard.join(room_jid, "bot")
        assert room.muc_joined
        await prosody.kick_with_codes(room_jid, "bot", [333])
        again = await asyncio.wait_for(rejoined.get(), 10)
        assert again is not room and again.muc_joined
        assert await eventually(lambda: occupant_nicks_of(prosody, room_jid, jid))
        assert guard.room_info(room_jid).drops == 1
    finally:
        await guard.shutdown()
        await stop_client(client)


def _refused_certificate(kind: str, trusted: TestCA, tmp_path):
    if kind == "another-name":
        return trusted.issue("example.org", "*.example.org")
    if kind == "untrusted-ca":
        return TestCA(tmp_path / "untrusted-ca").issue(ProsodyServer.domain)
    assert kind == "expired"
    return trusted.issue(ProsodyServer.domain, expired=True)


@pytest.mark.parametrize("kind, says", [
    ("another-name", "the server's certificate is for example.org, *.example.org, not for 'localhost'"),
    ("untrusted-ca", "is not signed by a CA this client trusts"),
    ("expired", "has expired"),
])
async def test_a_refused_certificate_is_one_clear_error(kind, says, prosody_factory, account,
                                                        make_client, test_ca, tmp_path, caplog):
    server = prosody_factory(tls=_refused_certificate(kind, test_ca, tmp_path))
    jid, password = account("refusing", server=server)
    client = make_client(jid, password, server=server, ca_file=test_ca.ca_file)
    guard = client.summon(muc_guard.MUCGuard)
    caplog.set_level(logging.INFO)

    with pytest.raises(muc_guard.CertificateVerificationError) as refused:
        await connected(client)
    assert says in str(refused.value)
    assert isinstance(refused.value, aioxmpp.errors.TLSFailure)
    await asyncio.sleep(0.2)
    gc.collect()            # "Future exception was never retrieved" would show now
    await asyncio.sleep(0)

    assert not client.running                       # final: no retry loop
    attempts = [r for r in caplog.records if "connection failed" in r.getMessage()]
    assert len(attempts) == 1, [r.getMessage() for r in attempts]
    assert says in attempts[0].getMessage()
    # No secondary reports: nothing through asyncio's exception handler (the
    # handshake traceback, InvalidStateError, a never-retrieved future).
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert not any("InvalidStateError" in (r.exc_text or "") + r.getMessage()
                   for r in caplog.records)
    assert await server.c2s_sessions(jid) == []    # the password was never sent
    await guard.shutdown()


async def test_expired_then_renewed_certificate(prosody_factory, account, make_client,
                                                test_ca, tmp_path):
    """After the operator renews the certificate, a new client gets in."""
    server = prosody_factory(tls=test_ca.issue(ProsodyServer.domain, expired=True))
    jid, password = account("renew", server=server)
    with pytest.raises(muc_guard.CertificateVerificationError, match="has expired"):
        await connected(make_client(jid, password, server=server))
    server.tls = test_ca.issue(ProsodyServer.domain, valid_days=90)
    await server.restart()
    bot = await Bot(make_client, jid, password, server=server).start()
    assert bot.client.established
    await bot.stop()



def readme_python_after(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    text = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    rest = text[text.index(heading + "\n"):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```\n", start)]


@over_verified_tls
async def test_readme_slixmpp_quick_start_connects_joins_and_rejoins(
        prosody, account, room_jid, monkeypatch, tmp_path, capsys):
    """README's slixmpp quick start, run as printed but for the names (the
    test account and room, this server's address instead of DNS) and its
    hour of sleep (a 110+333 kick and the rejoin); the private CA trusted
    through SSL_CERT_FILE, certificate verification on."""
    monkeypatch.setenv("SSL_CERT_FILE", str(prosody.tls.ca_file))
    jid, password = account("quickslix")
    monkeypatch.setenv("BOT_PASSWORD", password)
    monkeypatch.chdir(tmp_path)
    code = readme_python_after("### Quick start on slixmpp")
    assert code.count("xmpp.connect()") == 1 and "await asyncio.sleep(3600)" in code
    code = (code.replace('"bot@example.org"', repr(str(jid)))
            .replace('"room@conference.example.org"', repr(str(room_jid)))
            .replace("xmpp.connect()", f"xmpp.connect({prosody.host!r}, {prosody.port})")
            .replace("await asyncio.sleep(3600)", "await meanwhile(xmpp, guard)")
            .replace("asyncio.run(main())", ""))
    checked: list[str] = []

    async def meanwhile(xmpp, guard) -> None:
        assert await occupant_nicks_of(prosody, room_jid, jid) == ["bot"]
        assert xmpp.is_connected() and xmpp.socket.version().startswith("TLS")
        # a peer certificate with its fields is only there when it was verified
        assert xmpp.socket.getpeercert()["subject"]
        rejoined = asyncio.Event()
        xmpp.add_event_handler("muc_guard_rejoined", lambda _: rejoined.set())
        await prosody.kick_with_codes(room_jid, "bot", [333])
        await asyncio.wait_for(rejoined.wait(), 10)
        assert await eventually(lambda: occupant_nicks_of(prosody, room_jid, jid))
        assert guard.room_info(str(room_jid)).drops == 1
        checked.append("rejoined")

    namespace = {"meanwhile": meanwhile}
    exec(compile(code, "README.md (slixmpp quick start)", "exec"), namespace)
    await asyncio.wait_for(namespace["main"](), 30)
    assert checked == ["rejoined"]
    out = capsys.readouterr().out
    assert f"dropped {room_jid} Cause.SERVER_ERROR" in out and f"back in {room_jid} as bot" in out
    assert (tmp_path / "bot.db").exists()
