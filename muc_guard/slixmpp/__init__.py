"""
muc_guard for slixmpp: the same guard as a slixmpp plugin, on the same core.

::

    import slixmpp
    import muc_guard.slixmpp

    xmpp = slixmpp.ClientXMPP("bot@example.org", password)
    xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp,
                         pconfig={"store": "bot.db", "ping_idle": 300.0})
    guard = xmpp.plugin["muc_guard"]
    xmpp.add_event_handler("muc_guard_message", on_message)
    ...
    await guard.join("room@conference.example.org", "bot")

Design (issue #14)
==================

The split is the aioxmpp front-end's (:mod:`muc_guard.aioxmpp`)::

    stanzas ──► facts.py ──► muc_guard.core ──► runner.py ──► slixmpp
    events  ──► driver.py ──┘

and everything that *decides* is :class:`muc_guard.core.guard.GuardCore`,
unchanged; the store (:mod:`muc_guard.store`, :mod:`muc_guard.closer`) is
shared, and a file written by one front-end opens in the other (rooms are
stored as their bare JID text; each front-end reads them back as its own
room key: ``Store.open(path, parse_room=...)``).

**Room keys.** The core's rooms are keyed by the normalised bare JID as a
*str* (:func:`.facts.room_key`), not by :class:`slixmpp.JID`, which is
mutable and hashes by its full text. An inbound stanza finds its room by the
raw ``from`` attribute split at ``/``: one str hash, no JID parsed, on every
stanza; only a miss whose text is not already lower-case ASCII is parsed
(:func:`.facts.canonical_bare`). Users get fresh ``slixmpp.JID`` objects in
events and :meth:`rooms`.

**Facts in** (:mod:`.facts`, :mod:`.driver`). One ``'in'`` filter
(``xmpp.add_filter('in', ...)``) sees every stanza before any handler,
``xep_0045``'s included, the way aioxmpp's inbound filters do; it reads the
stanza's XML directly (no stanza plugin objects, nothing that raises on
hostile input):

* a groupchat message → :meth:`GuardCore.traffic` and :meth:`GuardCore.offer`
  (stanza-id and ``<delay/>`` by the room only), then the
  ``muc_guard_message`` event (built only if someone listens); a subject →
  :class:`SubjectSeen`; a message error from the room → :class:`ErrorFromRoom`;
* a presence → :class:`RoomPresence` when it may concern us, otherwise only
  traffic; its commands run right after slixmpp's handlers saw it (a
  handler of ours registered after ``xep_0045``'s), so ``xep_0045`` has
  processed it and fired ``muc::<room>::*`` first, in the same loop turn; a
  rejoin then goes out at once when the room's clock is known; the same hostile-input mending as
  :mod:`muc_guard.aioxmpp.inbound` (110 on a nick that is not ours, 303 without
  a nick) is done while extracting the facts;
* the presence that answers our join or nick change resolves its wait.

Stream events: ``session_start`` → StreamUp (a fresh session: rooms are
rejoined, after a probe), ``session_resumed`` (XEP-0198) → StreamResumed
(rooms kept), ``session_end`` → StreamDown, ``disconnected`` while up →
StreamSuspended if slixmpp may resume the session (it then sends no
``session_end``), else StreamDown; a ``session_start`` after a suspension
that never ended is StreamDown + StreamUp. See :mod:`.driver`.

**Commands out** (:mod:`.runner`). Timers are ``loop.call_at``. A join is
``xep_0045.make_join_stanza`` (history ``since`` our position, or
``maxchars=0`` when the archive will be read), entered into ``xep_0045``'s
``rooms``/``our_nicks`` tables as ``join_muc_wait`` does, and answered by
the presences the driver reads, with our own ``join_timeout``: we do not
await ``join_muc_wait``, which misses error presences that do not echo the
``<x/>``, takes an unavailable self-presence for success, waits for the
subject (up to twice its timeout) and keeps the room in its tables after
any failure. A self-ping is a raw ping IQ (``xep_0199``'s stanza) to our
occupant JID, read by the core's XEP-0410 reader, not slixmpp's ``xep_0410``
loop (whose defects are listed in the project notes). Signals are
``xmpp.event("muc_guard_*", {...})``.

**What differs from aioxmpp, and where it is absorbed**

* slixmpp survives a raising handler (it logs it, or answers the stanza with
  an error); aioxmpp disconnects such a listener for good. Nothing of ours
  raises into either; no ``inbound.py`` sanitising is needed for slixmpp's
  sake, only for the core's facts (done in :mod:`.facts`).
* slixmpp's ``disconnected`` cancels every ``schedule()``, IQ timeouts
  included: an IQ sent just before a loss waits for ever. Every IQ here has
  an ``asyncio`` timeout of its own, and its leftover handler is removed.
* ``xep_0045`` never forgets a room (kick, ban, stream loss, failed join):
  :class:`~muc_guard.core.commands.Detach` removes it from its tables.
* No Room objects: :attr:`RoomInfo.room` is None; ``join()`` returns the nick.
* Stream management: slixmpp has no "suspended" event; ``end_session_on_
  disconnect`` (False while XEP-0198 may resume) tells a suspension from an end.
* slixmpp does not reconnect after a lost connection; aioxmpp does.
  :mod:`.connection` does (pconfig ``reconnect``, ``reconnect_min``,
  ``reconnect_max``): jittered exponential backoff, once a session was
  established, never after the user's ``disconnect()``, nothing scheduled
  after shutdown.
* A user's ``disconnect()`` and a lost connection look the same to a plugin
  (both end in ``disconnected``, the reason is None or "End of stream"
  either way, and ``reconnect()``, the SASL and TLS code and the keepalive
  call ``disconnect()`` themselves). The plugin wraps this client's
  ``disconnect``: a call from outside the slixmpp package is the user's and
  shuts the guard down (its future completes once the store is closed); a
  lost connection only pauses it. :meth:`shutdown` and disabling the plugin
  close it too. Should the store be left open, :mod:`muc_guard.closer`
  closes it at exit.
* ``stable_resource``: slixmpp binds ``requested_jid``'s resource, so each
  session's bound resource is asked for again on a reconnect (aioxmpp keeps
  its bound JID). A store opened before ``connect()`` asks for the stored
  one; opened during a bound session it cannot: a warning, and that
  session's resource is stored and asked for from the next connection.

**Archives** (:mod:`.mam`): a plain-XML XEP-0313 reader with the rules of
:mod:`muc_guard.aioxmpp.mam` (not ``xep_0313.iterate``: no per-page timeout,
no "complete", no fallback from an id to a time). Its results are read in
the driver's filter but not swallowed: dropping a stanza before
``xep_0198``'s filter would break the count of handled stanzas.

**Clocks** (:mod:`.clock`): each MUC service's offset by XEP-0202, as in
:mod:`muc_guard.aioxmpp.clock`.

**Status and tests** (issue #14). tests/unit/test_slixmpp.py (a
never-connected client fed literal stanzas) and test_slixmpp_connection.py
(reconnecting, the user's ``disconnect()``, raising handlers of every
``muc_guard_*`` event, a ``main()`` that ends without shutdown,
``stable_resource``); the integration scenarios of
tests/integration/test_guard.py, test_continuity.py, test_ejabberd.py,
test_tls.py, test_examples.py, test_demo.py, test_exit.py and the fault
suite's crash loops run on both front-ends (Prosody and ejabberd: signalled
drops, give-ups, silent drops, 210, 409, restarts from the store, a server
killed, XEP-0198 resumption, continuity from history and from archives,
verified TLS); tests/integration/test_slixmpp.py has what is slixmpp's own
(its room tables, the plugin reconnecting after a server restart, the user's
``disconnect()``); test_install.py installs ``muc_guard[slixmpp]`` with
plain pip on every Python. The ``muc-guard`` command runs without aioxmpp
(tests/unit/test_cli.py).

Known limits: after the user's ``disconnect()`` the guard stays shut down: a
later ``connect()`` of the same client is not guarded (a warning says so at
its session start); to reconnect on purpose, ``xmpp.reconnect()`` only
pauses the guard. A third-party library that calls ``disconnect()`` on the
client counts as the user.
"""

from slixmpp.plugins.base import register_plugin

from .plugin import CONNECTION, SETTINGS, MUCGuardPlugin

__all__ = ["CONNECTION", "MUCGuardPlugin", "SETTINGS", "muc_guard"]

#: ``xmpp.register_plugin("muc_guard", module=muc_guard.slixmpp)`` looks for
#: an attribute named like the plugin; registering at import also lets
#: ``xmpp.register_plugin("muc_guard")`` find it once this module is imported.
muc_guard = MUCGuardPlugin
register_plugin(MUCGuardPlugin)
