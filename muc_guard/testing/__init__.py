"""
Tools for testing code that uses muc_guard against a real server.

:mod:`muc_guard.testing.prosody` runs a private Prosody (Debian packages
``prosody`` and ``prosody-modules``) on 127.0.0.1 with a generated config in a
directory of your choice, and injects faults through Prosody itself: kicks
with chosen status codes, silent removals, nick rewrites, vanished rooms,
refused joins, server kills and restarts. muc_guard's own test suite, demo
and benchmarks use it; your bot's tests can too. Nothing here is imported by
the library itself.

Its parts: ``process`` (owning a server's child process: spawn, readiness
wait, stop by PID, log tails; shared by both servers), ``prosody`` (the
Prosody server and the aioxmpp clients pinned to a test server),
``prosody_admin`` (Prosody's admin socket, spoken from Python),
``prosody_faults`` (the faults and room inspection through it), ``ejabberd``
(the second server) and ``certs`` (a throw-away CA).
"""
