"""muc_guard.tls: the name check, the reasons a certificate is refused, and install()."""

from __future__ import annotations

import datetime
import subprocess
import sys
import types

import aioxmpp
import aioxmpp.security_layer as aioxmpp_security
import OpenSSL.crypto
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import muc_guard
from muc_guard import tls
from muc_guard.testing.certs import TestCA


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pyopenssl_cert(ca: trustme.CA, *names: str) -> OpenSSL.crypto.X509:
    pem = ca.issue_cert(*names).cert_chain_pems[0].bytes()
    return OpenSSL.crypto.load_certificate(OpenSSL.crypto.FILETYPE_PEM, pem)


@pytest.mark.parametrize("names, hostname, ok", [
    (["localhost"], "localhost", True),
    (["example.org"], "localhost", False),
    (["xmpp.example.org", "example.org"], "example.org", True),
    (["EXAMPLE.org"], "example.ORG", True),              # DNS names ignore case
    (["*.example.org"], "chat.example.org", True),       # RFC 6125 §6.4.3
    (["*.example.org"], "example.org", False),           # not the domain itself
    (["*.example.org"], "a.chat.example.org", False),    # one label only
    (["127.0.0.1"], "127.0.0.1", True),                  # an iPAddress entry
    (["127.0.0.1"], "127.0.0.2", False),
    (["localhost"], "127.0.0.1", False),                 # a DNS-ID is no IP-ID
])
def test_name_check_follows_rfc_6125(ca, names, hostname, ok):
    cert = pyopenssl_cert(ca, *names)
    assert tls.check_x509_hostname(cert, hostname) is ok
    problem = tls.hostname_problem(cert, hostname)
    assert (problem is None) is ok
    if not ok:
        assert repr(hostname) in problem and names[0].lower() in problem.lower()


def test_a_certificate_with_only_a_common_name_names_no_server():
    """RFC 9525: the subject's CN is not an identity; without subjectAltName
    the certificate names nothing (ssl.match_hostname once fell back to CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert "names no server" in tls.hostname_problem(cert, "localhost")
    assert not tls.check_x509_hostname(OpenSSL.crypto.X509.from_cryptography(cert), "localhost")


class _Transport:
    def get_extra_info(self, name: str) -> str:
        assert name == "server_hostname"
        return "localhost"


VERIFIER = types.SimpleNamespace(transport=_Transport())


@pytest.mark.parametrize("errno, says", [
    (10, "has expired"),
    (9, "is not valid yet"),
    (20, "is not signed by a CA this client trusts"),
    (19, "is not signed by a CA this client trusts"),
    (18, "is self-signed"),
    (23, "has been revoked"),
    (99, "was refused by OpenSSL (verify error 99)"),
])
def test_openssl_refusals_say_why(ca, errno, says):
    cert = pyopenssl_cert(ca, "localhost")
    with pytest.raises(tls.CertificateVerificationError) as refused:
        tls._verify_callback(VERIFIER, None, cert, errno, 0, 0)
    message = str(refused.value)
    assert says in message and "refused for localhost" in message
    assert "valid until" in message and "issued by" in message
    assert ("SSL_CERT_FILE" in message) == ("trusts" in says)


def test_the_name_is_checked_on_the_server_certificate_only(ca):
    other = pyopenssl_cert(ca, "example.org")
    assert tls._verify_callback(VERIFIER, None, other, 0, 1, 1) is True     # a CA in the chain
    with pytest.raises(tls.CertificateVerificationError, match="is for example.org"):
        tls._verify_callback(VERIFIER, None, other, 0, 0, 1)
    assert tls._verify_callback(VERIFIER, None, pyopenssl_cert(ca, "localhost"), 0, 0, 1) is True


def test_refusals_are_final_tls_failures():
    """aioxmpp gives up at once on a TLSFailure instead of retrying."""
    assert issubclass(muc_guard.CertificateVerificationError, aioxmpp.errors.TLSFailure)


# --- install() ----------------------------------------------------------------------------


def test_importing_muc_guard_repairs_aioxmpp():
    code = ("import aioxmpp.security_layer as s, aioopenssl, muc_guard; "
            "assert s.check_x509_hostname is muc_guard.tls.check_x509_hostname; "
            "assert s.PKIXCertificateVerifier.verify_callback is muc_guard.tls._verify_callback; "
            "assert getattr(aioopenssl.STARTTLSTransport._tls_do_handshake, '_muc_guard_tls'); "
            "assert getattr(aioopenssl.STARTTLSTransport._fatal_error, '_muc_guard_tls'); "
            "assert muc_guard.tls.installed()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_install_is_idempotent():
    before = (aioxmpp_security.check_x509_hostname,
              aioxmpp_security.PKIXCertificateVerifier.verify_callback,
              tls.aioopenssl.STARTTLSTransport._tls_do_handshake,
              tls.aioopenssl.STARTTLSTransport._fatal_error)
    tls.install()
    tls.install()
    assert before == (aioxmpp_security.check_x509_hostname,
                      aioxmpp_security.PKIXCertificateVerifier.verify_callback,
                      tls.aioopenssl.STARTTLSTransport._tls_do_handshake,
                      tls.aioopenssl.STARTTLSTransport._fatal_error)


def _aioxmpps_own(name: str):
    def fake(*args):
        return "aioxmpp's own"
    fake.__module__ = "aioxmpp.security_layer"
    fake.__name__ = name
    return fake


def test_a_fixed_aioxmpp_is_left_alone(monkeypatch):
    own = _aioxmpps_own("check_x509_hostname")
    monkeypatch.setattr(aioxmpp_security, "check_x509_hostname", own)
    monkeypatch.setattr(aioxmpp, "version_info", (0, 14, 0))
    tls.install()
    assert aioxmpp_security.check_x509_hostname is own
    monkeypatch.setattr(aioxmpp, "version_info", (0, 13, 3))   # the broken release
    tls.install()
    assert aioxmpp_security.check_x509_hostname is tls.check_x509_hostname


def test_someone_elses_repair_is_left_alone(monkeypatch):
    def theirs(x509, hostname):
        return True
    monkeypatch.setattr(aioxmpp_security, "check_x509_hostname", theirs)
    tls.install()
    assert aioxmpp_security.check_x509_hostname is theirs


# --- trusting a private CA -------------------------------------------------------------------


def test_context_factory_trusts_a_ca_file(tmp_path):
    test_ca = TestCA(tmp_path)
    factory = tls.context_factory(test_ca.ca_file)
    assert isinstance(factory(), OpenSSL.SSL.Context)
    assert tls.context_factory(None) is aioxmpp_security.default_ssl_context
    with pytest.raises(FileNotFoundError, match="no CA file"):
        tls.context_factory(tmp_path / "missing.pem")


def test_test_ca_issues_the_certificates_it_promises(tmp_path):
    test_ca = TestCA(tmp_path)
    good = test_ca.issue("localhost", valid_days=2)
    expired = test_ca.issue("localhost", expired=True)
    now = datetime.datetime.now(datetime.UTC)
    def load(c):
        return x509.load_pem_x509_certificate(c.cert_file.read_bytes())

    assert now < load(good).not_valid_after_utc < now + datetime.timedelta(days=3)
    assert load(expired).not_valid_after_utc < now
    assert tls.hostname_problem(load(good), "localhost") is None
    assert good.ca_file == test_ca.ca_file and good.key_file.stat().st_mode & 0o077 == 0
