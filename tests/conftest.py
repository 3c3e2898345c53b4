"""Fixtures for muc_guard's tests: private Prosody servers and aioxmpp clients.

- ``prosody``: one server for the whole session (sync, session-scoped).
  Tests share it, so they use unique rooms (``room_jid``) and accounts
  (``account``). Plain TCP by default; a test marked ``@guardkit.over_verified_tls``
  (or ``over_both``) gets a shared server that requires TLS,
  whose certificate the clients verify against ``test_ca``, as in production.
- ``test_ca``: a throw-away CA for the session (muc_guard.testing.certs).
- ``private_prosody`` / ``prosody_factory``: servers of the test's own, for
  tests that kill, restart or reconfigure the server.
- ``make_client``: aioxmpp ``PresenceManagedClient`` factory pinned to a test
  server (no TLS, no DNS); every client is stopped at teardown.  Connect with
  ``await connected(client)`` (from muc_guard.testing.prosody, re-exported as tests/prosody.py).
- A per-test timeout (``@pytest.mark.timeout(seconds)``; default from the
  ``MUC_GUARD_TEST_TIMEOUT`` env var, else 60 s; 0 disables).  Async tests are
  cancelled at the await they are stuck in; sync tests get SIGALRM.
- ``ejabberd``: a private ejabberd for the session (muc_guard.testing.ejabberd),
  the second server; ``ejabberd_account`` registers accounts on it.
- A failing test's report gets the log tail of every server it used.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import re
import secrets
import signal
import threading
from typing import Any, AsyncIterator, Callable, Iterator

import aioxmpp
import aioxmpp.node
import pytest

from muc_guard.testing.certs import TestCA
from muc_guard.testing.ejabberd import EjabberdServer
from prosody import (
    PROSODY_ENV,
    ProsodyServer,
    make_client as _make_client,
    prosody_binary,
    prosody_version,
    stop_client,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
#: Servers whose log tail a failing test's report gets.
_SERVER_TYPES = (ProsodyServer, EjabberdServer)
_servers_key = pytest.StashKey[list]()


# --- no network beyond loopback ---------------------------------------------


async def _no_discovery(domain: str, loop: Any = None, logger: Any = None) -> list:
    """Stand-in for aioxmpp.node.discover_connectors: when override_peer
    fails, aioxmpp would otherwise try SRV/DNS and <domain>:5222."""
    log.debug("aioxmpp discovery for %r suppressed (tests stay on loopback)", domain)
    return []


@pytest.fixture(scope="session", autouse=True)
def _pin_aioxmpp_to_loopback() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aioxmpp.node, "discover_connectors", _no_discovery)
        yield


# --- servers ------------------------------------------------------------------


def _remember(request: pytest.FixtureRequest, server: Any) -> None:
    """Note that the running test uses `server` (for the failure report)."""
    if not isinstance(server, _SERVER_TYPES):
        return
    servers = request.node.stash.setdefault(_servers_key, [])
    if server not in servers:
        servers.append(server)


#: The shared server's transports: ``prosody`` takes one as an indirect
#: parameter (guardkit.over_verified_tls / over_both).
PLAIN, VERIFIED_TLS = "plain", "verified-tls"


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A private CA for the session; its ca.pem is what TLS test clients trust."""
    return TestCA(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def prosody(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """The shared server: started once, stopped at session end (one per
    transport: ``over_verified_tls`` selects the TLS one)."""
    transport = getattr(request, "param", PLAIN)
    tls = None
    if transport == VERIFIED_TLS:
        tls = request.getfixturevalue("test_ca").issue(ProsodyServer.domain)
    server = ProsodyServer(tmp_path_factory.mktemp(f"prosody-shared-{transport}"), tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def _shared_prosody(request: pytest.FixtureRequest, prosody: ProsodyServer) -> ProsodyServer:
    _remember(request, prosody)
    return prosody


@pytest.fixture
def prosody_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ProsodyServer]]:
    """``prosody_factory(**ProsodyServer kwargs)`` -> a started server of this
    test's own (e.g. ``smacks=True``); all are stopped at teardown."""
    servers: list[ProsodyServer] = []

    def factory(**kwargs: Any) -> ProsodyServer:
        server = ProsodyServer(tmp_path_factory.mktemp("prosody-private"), **kwargs)
        servers.append(server)
        _remember(request, server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def private_prosody(prosody_factory: Callable[..., ProsodyServer]) -> ProsodyServer:
    """A started server for this test alone: kill/restart it freely."""
    return prosody_factory()


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EjabberdServer]:
    """The shared ejabberd (Debian's package, run privately on 127.0.0.1 with
    mod_mam loaded): started once, stopped by PID at session end."""
    server = EjabberdServer(tmp_path_factory.mktemp("ejabberd-shared"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _default_server(request: pytest.FixtureRequest) -> ProsodyServer:
    # Looked up lazily so tests that only use private servers never start the
    # shared one.
    return request.getfixturevalue("_shared_prosody")


# --- names and accounts ---------------------------------------------------------

_counter = itertools.count(1)


def _slug(text: str, limit: int = 24) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def room_jid(request: pytest.FixtureRequest) -> aioxmpp.JID:
    """A fresh, unique bare room JID on the MUC domain (the room does not
    exist yet; same domain on every test server)."""
    node = f"{_slug(request.node.name)}-{next(_counter)}-{secrets.token_hex(3)}"
    return aioxmpp.JID(node, ProsodyServer.muc_domain, None)


def _account_factory(request: pytest.FixtureRequest,
                     default: Callable[[], Any]) -> Callable[..., tuple[aioxmpp.JID, str]]:
    def factory(prefix: str = "user", server: Any = None) -> tuple[aioxmpp.JID, str]:
        server = server or default()
        _remember(request, server)
        password = secrets.token_urlsafe(12)
        jid = server.register(f"{_slug(prefix, 12)}-{next(_counter)}-{secrets.token_hex(3)}", password)
        return jid, password

    return factory


@pytest.fixture
def account(request: pytest.FixtureRequest) -> Callable[..., tuple[aioxmpp.JID, str]]:
    """``account(prefix="user", server=None)`` -> (bare JID, password) of a
    freshly registered account (on the shared server unless given)."""
    return _account_factory(request, lambda: _default_server(request))


@pytest.fixture
def ejabberd_account(request: pytest.FixtureRequest,
                     ejabberd: EjabberdServer) -> Callable[..., tuple[aioxmpp.JID, str]]:
    """``ejabberd_account(prefix="user")`` -> (bare JID, password) of a fresh
    account on the shared ejabberd."""
    return _account_factory(request, lambda: ejabberd)


# --- clients ----------------------------------------------------------------------


@pytest.fixture
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., aioxmpp.PresenceManagedClient]]:
    """``make_client(jid, password, server=None)`` -> an unstarted
    PresenceManagedClient pinned to the server (127.0.0.1:port, plain TCP).
    Start it with ``await connected(client)``.  Call it inside the test (a
    running loop is required).  All clients are stopped at teardown."""
    clients: list[aioxmpp.PresenceManagedClient] = []

    def factory(
        jid: aioxmpp.JID | str, password: str, server: ProsodyServer | None = None, **kwargs: Any
    ) -> aioxmpp.PresenceManagedClient:
        server = server or _default_server(request)
        _remember(request, server)
        client = _make_client(server, jid, password, **kwargs)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        await asyncio.gather(*(stop_client(c) for c in clients), return_exceptions=True)


# --- per-test timeout -------------------------------------------------------------


class TestTimeout(Exception):
    """A test ran longer than its timeout."""

    __test__ = False  # not a test class


def _timeout_for(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(os.environ.get("MUC_GUARD_TEST_TIMEOUT", DEFAULT_TIMEOUT))


def pytest_report_header(config: pytest.Config) -> str:
    """Which Prosody every server fixture runs (``$MUC_GUARD_PROSODY`` or the
    one on PATH). A named one that is missing fails every server fixture."""
    try:
        binary = prosody_binary()
        return f"prosody: {prosody_version(binary)} ({binary})"
    except Exception as exc:
        return f"prosody: UNUSABLE ({PROSODY_ENV}={os.environ.get(PROSODY_ENV)!r}): {exc}"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line(
            "markers", "timeout(seconds): fail the test after this many seconds (0 = no limit)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    seconds = _timeout_for(item)
    if seconds <= 0 or item.config.pluginmanager.hasplugin("timeout"):
        return (yield)
    func = getattr(item, "obj", None)
    if inspect.iscoroutinefunction(func):
        # pytest-asyncio wraps item.obj in runtest(), i.e. after this point:
        # the limit is applied inside the test's own task.
        @functools.wraps(func)
        async def limited(*args: Any, **kwargs: Any) -> Any:
            limit = asyncio.timeout(seconds)
            try:
                async with limit:
                    return await func(*args, **kwargs)
            except TimeoutError as exc:
                if limit.expired():  # ours, not a TimeoutError of the test itself
                    raise TestTimeout(f"{item.nodeid} exceeded {seconds:g} s") from exc
                raise

        item.obj = limited
        try:
            return (yield)
        finally:
            item.obj = func
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return (yield)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TestTimeout(f"{item.nodeid} exceeded {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- failure reports ----------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    if report.failed:
        servers = list(item.stash.get(_servers_key, []))
        funcargs = getattr(item, "funcargs", {})
        servers += [v for v in funcargs.values() if isinstance(v, _SERVER_TYPES) and v not in servers]
        for server in servers:
            kind = type(server).__name__.removesuffix("Server").lower()
            report.sections.append((f"{kind} {server.host}:{server.port} ({server.root})", server.log_tail(40)))
    return report
