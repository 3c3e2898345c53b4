"""
What both front-ends do the same way, whatever their XMPP library.

The core (:mod:`muc_guard.core`) decides; a front-end turns its library's
stanzas and stream signals into events and runs the core's commands. Much
of running them has nothing to do with the library: timers are
``loop.call_at`` handles, a room's I/O is one task at a time, a ``join()``
call waits on a future the core resolves, the store is written through the
same writer. That plumbing is here, once:

* :class:`.runner.BaseRunner`: the loop between core and commands, tasks,
  timers, waiters, the store's marks; each front-end's ``CommandRunner``
  adds the I/O (join, self-ping, archive) and its signals;
* :class:`.driver.BaseDriver`: the public operations (``join``,
  ``set_nick``, ``rooms``, ``open_store``, ``close``) as requests to the
  core; each front-end's ``GuardDriver`` adds the stanzas in, the stream
  events, and what only its library can do (the nick change, the leave).

Nothing here imports aioxmpp or slixmpp.
"""
