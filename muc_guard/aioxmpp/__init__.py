"""
muc_guard's aioxmpp front-end: facts in, commands run.

    stanzas ──► facts.py ──► core (muc_guard.core) ──► runner.py ──► aioxmpp
    signals ──► driver.py ──┘

:mod:`.facts` reduces stanzas and errors to what the core reads,
:mod:`.driver` turns aioxmpp's stream signals, filters and the user's calls
into events, and :mod:`.runner` runs the core's commands (joins, pings,
timers, store writes, the ``on_*`` signals). The public classes built on it
are :class:`muc_guard.MUCGuard` and :class:`muc_guard.GuardMixin`.
"""
