"""A throw-away certificate authority for test servers, so tests connect as production does.

Motivation
==========

A test suite that connects without certificate verification cannot see a
broken verifier: muc_guard once shipped with aioxmpp's name check crashing on
every TLS connection, and no test noticed. Tests should verify certificates
the way a bot in production does, against a CA the client trusts.

Solution
========

:class:`TestCA` wraps ``trustme`` (a maintained library made for exactly
this) and writes PEM files into a directory of the test's own:
``ca.pem`` for clients to trust (``SSL_CERT_FILE``, or
:func:`muc_guard.tls.context_factory`), and a certificate and key per
:meth:`TestCA.issue` for a server (``ProsodyServer(tls=...)``). It can also
issue the certificates a client must refuse: another name, an expired one,
and (from a second ``TestCA``) one from a CA the client does not trust.
"""

from __future__ import annotations

import datetime
import itertools
import pathlib
from dataclasses import dataclass

__all__ = ["ServerCertificate", "TestCA"]


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files for a TLS server: its chain, its key, and the CA that issued it."""

    cert_file: pathlib.Path
    key_file: pathlib.Path
    #: the issuing CA's certificate: what a client must trust
    ca_file: pathlib.Path


class TestCA:
    """A private CA (``trustme``) whose files live in `directory`."""

    __test__ = False   # not a pytest test class

    def __init__(self, directory: pathlib.Path | str) -> None:
        import trustme  # a test dependency only: muc_guard[test]

        self.directory = pathlib.Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name="muc_guard test CA")
        self.ca_file = self.directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._serial = itertools.count(1)

    def issue(self, *names: str, valid_days: float | None = None,
              expired: bool = False) -> ServerCertificate:
        """A server certificate naming `names` (DNS names, ``*.`` wildcards, IP
        addresses). ``expired=True`` makes one that ended yesterday."""
        now = datetime.datetime.now(datetime.UTC)
        not_before = not_after = None
        if expired:
            not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        elif valid_days is not None:
            not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=valid_days)
        leaf = self._ca.issue_cert(*names, not_before=not_before, not_after=not_after)
        n = next(self._serial)
        cert_file = self.directory / f"server-{n}.crt"
        key_file = self.directory / f"server-{n}.key"
        # The chain (leaf first), as servers should send it.
        cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        return ServerCertificate(cert_file=cert_file, key_file=key_file, ca_file=self.ca_file)
