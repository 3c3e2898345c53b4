"""
Certificate verification that works: repairs for aioxmpp 0.13 and aioopenssl 0.6.

Motivation
==========

A bot built the ordinary way, ``aioxmpp.make_security_layer(password)``, verifies
the server's certificate with :class:`aioxmpp.security_layer.PKIXCertificateVerifier`.
In aioxmpp 0.13.3, the last release there will be, its name check
(``check_x509_hostname``) calls pyOpenSSL's ``X509.get_extension``, which current
pyOpenSSL no longer has, and :func:`ssl.match_hostname`, which Python 3.12
removed. Every TLS connection therefore fails inside the handshake with an
``AttributeError``, whatever the certificate. And aioopenssl 0.6, which runs
the handshake, reports any handshake failure twice more: as an asyncio
"Fatal error on tls handshake" traceback, and as an ``InvalidStateError``
traceback because it fails the same future twice.

Solution
========

:func:`install` (run when :mod:`muc_guard` is imported, and again, as a no-op,
when a guard is summoned) replaces exactly three things, and nothing else:

* ``aioxmpp.security_layer.check_x509_hostname``: the name check, done by
  ``service-identity`` on the certificate's subjectAltName (RFC 6125 DNS-IDs,
  wildcards only as a whole left-most label; IP addresses as iPAddress
  entries). The common name is not used, as RFC 9525 requires.
* ``PKIXCertificateVerifier.verify_callback``: a refused certificate raises
  :class:`CertificateVerificationError` (an :class:`aioxmpp.errors.TLSFailure`)
  that says why: another name, an untrusted or unknown CA, expired, not yet
  valid. aioxmpp treats a ``TLSFailure`` as final, so the client fails once,
  with that error, instead of retrying and ending in an opaque
  ``certificate verify failed``.
* ``aioopenssl.STARTTLSTransport``'s handshake error path: the failure still
  goes to aioxmpp (which logs it and hands it to ``on_failure``), without the
  two extra tracebacks.

Each replacement is made once (calling :func:`install` again changes
nothing), only on the releases known to need it (aioxmpp 0.13, aioopenssl
0.6), and only where the attribute is still the library's own, so a fixed
release, or another patch, is left alone. The pinning verifiers
(``pin_store=``) keep their own logic and get the working name check.

Trust comes from the SSL context as before: the system's CAs, ``SSL_CERT_FILE``
/ ``SSL_CERT_DIR``, or :func:`context_factory` for a private CA.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any

import aioopenssl
import aioxmpp
import aioxmpp.errors
import aioxmpp.security_layer as aioxmpp_security
import OpenSSL.SSL
import service_identity
import service_identity.cryptography
import service_identity.hazmat

__all__ = ["CertificateVerificationError", "context_factory", "hostname_problem", "install",
           "installed"]

logger = logging.getLogger("muc_guard.tls")

#: Set on every function we install, so that install() recognises its own work.
_MARK = "_muc_guard_tls"

# OpenSSL's X509_V_ERR_* codes a server certificate commonly fails with.
_UNTRUSTED = "is not signed by a CA this client trusts"
_OPENSSL_REASONS = {
    2: _UNTRUSTED,           # UNABLE_TO_GET_ISSUER_CERT
    7: "has an invalid signature",
    9: "is not valid yet",
    10: "has expired",
    18: "is self-signed",    # DEPTH_ZERO_SELF_SIGNED_CERT
    19: _UNTRUSTED,          # SELF_SIGNED_CERT_IN_CHAIN
    20: _UNTRUSTED,          # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: _UNTRUSTED,          # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "has been revoked",
    24: "names an issuer that is not a CA",
    26: "is not meant for a server",   # INVALID_PURPOSE
}


class CertificateVerificationError(aioxmpp.errors.TLSFailure):
    """The server's certificate was refused; the message says why.

    An :class:`aioxmpp.errors.TLSFailure`, so aioxmpp gives up at once and
    passes it to ``on_failure`` (and ``client.connected()`` raises it)."""


def hostname_problem(certificate: Any, hostname: str) -> str | None:
    """Why `certificate` (pyOpenSSL or cryptography) does not name `hostname`, or None."""
    cert = certificate.to_cryptography() if hasattr(certificate, "to_cryptography") else certificate
    literal = hostname.strip("[]")
    try:
        ipaddress.ip_address(literal)
        is_address = True
    except ValueError:
        is_address = False
    try:
        if is_address:
            service_identity.cryptography.verify_certificate_ip_address(cert, literal)
        else:
            service_identity.cryptography.verify_certificate_hostname(cert, hostname)
    except service_identity.VerificationError:
        names = ", ".join(_names(cert)) or "none"
        return f"is for {names}, not for {hostname!r}"
    except service_identity.CertificateError as exc:
        return f"names no server ({exc})"
    return None


def _names(cert: Any) -> list[str]:
    """The DNS names and IP addresses a certificate presents, for messages."""
    names = []
    for found in service_identity.cryptography.extract_patterns(cert):
        if isinstance(found, service_identity.hazmat.DNSPattern):
            names.append(found.pattern.decode("ascii", "replace"))
        elif isinstance(found, service_identity.hazmat.IPAddressPattern):
            names.append(str(found.pattern))
    return names


def check_x509_hostname(x509: Any, hostname: str) -> bool:
    """aioxmpp's ``check_x509_hostname`` contract (True when the names match), done
    with service-identity instead of the removed ``ssl.match_hostname``."""
    return hostname_problem(x509, hostname) is None


def _describe(x509: Any, depth: int) -> str:
    """"the server's certificate (CN=...; issued by ...; valid until ...)": what
    an operator needs to find the certificate that was refused."""
    try:
        cert = x509.to_cryptography()
        subject = cert.subject.rfc4514_string() or "(no subject)"
        issuer = cert.issuer.rfc4514_string() or "(no issuer)"
        until = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    except Exception:   # a certificate cryptography cannot read: say less
        return "the server's certificate" if depth == 0 else f"certificate {depth} of its chain"
    which = "the server's certificate" if depth == 0 else f"the CA certificate at depth {depth}"
    return f"{which} ({subject}; issued by {issuer}; valid until {until})"


def _verify_callback(self: Any, conn: Any, x509: Any, errno: int, depth: int,
                     preverify_ok: int) -> bool:
    """PKIXCertificateVerifier.verify_callback: OpenSSL's chain check, then our name check.

    Raising here is how pyOpenSSL carries a reason out of the handshake."""
    hostname = self.transport.get_extra_info("server_hostname")
    if not preverify_ok:
        reason = _OPENSSL_REASONS.get(errno, f"was refused by OpenSSL (verify error {errno})")
        hint = ""
        if reason is _UNTRUSTED:
            hint = ("; trust its CA with SSL_CERT_FILE, or with "
                    "muc_guard.tls.context_factory(ca_file)")
        raise CertificateVerificationError(
            f"refused for {hostname}: {_describe(x509, depth)} {reason}{hint}")
    if depth == 0:
        problem = hostname_problem(x509, hostname) if hostname else "cannot be checked: no name"
        if problem is not None:
            raise CertificateVerificationError(
                f"refused for {hostname}: the server's certificate {problem}")
    return True


def context_factory(
        ca_file: str | os.PathLike[str] | None = None) -> Callable[[], OpenSSL.SSL.Context]:
    """An ``ssl_context_factory`` for :func:`aioxmpp.make_security_layer` that also
    trusts the CA certificates (PEM) in `ca_file`, e.g. a company's private CA::

        aioxmpp.make_security_layer(password,
                                    ssl_context_factory=muc_guard.tls.context_factory("ca.pem"))

    The system's CAs stay trusted too (the verifier adds them)."""
    if ca_file is None:
        return aioxmpp_security.default_ssl_context
    path = os.fspath(ca_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no CA file at {path!r}")

    def factory() -> OpenSSL.SSL.Context:
        ctx = aioxmpp_security.default_ssl_context()
        ctx.load_verify_locations(path)
        return ctx

    return factory


# --- aioopenssl 0.6: one report per failed handshake ---------------------------


def _quiet_handshake(original: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(original)
    def _tls_do_handshake(self: Any) -> None:
        try:
            original(self)
        except asyncio.InvalidStateError:
            # aioopenssl 0.6 fails the handshake future in _force_close and then
            # once more; the first carries the error to aioxmpp.
            if self._state is not aioopenssl._State.CLOSED:
                raise
    setattr(_tls_do_handshake, _MARK, True)
    return _tls_do_handshake


def _quiet_fatal_error(original: Callable[[Any, BaseException, str], None]
                       ) -> Callable[[Any, BaseException, str], None]:
    @functools.wraps(original)
    def _fatal_error(self: Any, exc: BaseException, msg: str) -> None:
        if (self._state is aioopenssl._State.TLS_HANDSHAKING
                and isinstance(exc, (OpenSSL.SSL.Error, aioxmpp.errors.TLSFailure))):
            # The failure reaches aioxmpp through the handshake future; it logs
            # it and tells the application. No traceback through the loop.
            logger.debug("TLS handshake failed: %s", exc)
            self._force_close(exc)
            return
        original(self, exc, msg)
    setattr(_fatal_error, _MARK, True)
    return _fatal_error


# --- installing ------------------------------------------------------------------------


def _ours(value: Any) -> bool:
    return getattr(value, _MARK, False)


def _replace(owner: Any, name: str, expected_module: str, make: Callable[[Any], Any]) -> bool:
    """Set owner.name to make(current) if it is still the library's own."""
    current = getattr(owner, name, None)
    if current is None or _ours(current):
        return False
    if getattr(current, "__module__", None) != expected_module:
        logger.info("not replacing %s.%s: it was already replaced by %s", owner.__name__,
                    name, getattr(current, "__module__", "?"))
        return False
    setattr(owner, name, make(current))
    return True


def _mark(fn: Callable[..., Any]) -> Callable[..., Any]:
    setattr(fn, _MARK, True)
    return fn


def install() -> None:
    """Make aioxmpp's default certificate verification work (idempotent)."""
    replaced = []
    if aioxmpp.version_info[:2] == (0, 13):
        if _replace(aioxmpp_security, "check_x509_hostname", "aioxmpp.security_layer",
                    lambda _: _mark(check_x509_hostname)):
            replaced.append("check_x509_hostname")
        if _replace(aioxmpp_security.PKIXCertificateVerifier, "verify_callback",
                    "aioxmpp.security_layer", lambda _: _mark(_verify_callback)):
            replaced.append("PKIXCertificateVerifier.verify_callback")
    if aioopenssl.version_info[:2] == (0, 6) and hasattr(aioopenssl, "_State"):
        transport = aioopenssl.STARTTLSTransport
        if _replace(transport, "_tls_do_handshake", "aioopenssl", _quiet_handshake):
            replaced.append("STARTTLSTransport._tls_do_handshake")
        if _replace(transport, "_fatal_error", "aioopenssl", _quiet_fatal_error):
            replaced.append("STARTTLSTransport._fatal_error")
    if replaced:
        logger.debug("certificate verification repaired: %s", ", ".join(replaced))


def installed() -> bool:
    """True when aioxmpp's verifier uses muc_guard's name check."""
    return _ours(aioxmpp_security.check_x509_hostname)

