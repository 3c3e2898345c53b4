"""
The two sides a scenario can measure: muc_guard's aioxmpp front-end against
plain aioxmpp, and its slixmpp front-end against plain slixmpp.

A scenario measures with one piece of code and asks its side for the
clients, each already connected:

* ``guard()``: a client with muc_guard (store open, self-ping settings given);
* ``floor()``: a client with the library's own MUC support only, whose join of
  a fresh room is the floor a rejoin cannot beat;
* ``alone()``: what a user has without muc_guard, given the same self-ping
  interval: aioxmpp's ``MUCClient`` with ``autorejoin=True`` and its own
  self-ping tuned to it; slixmpp's ``xep_0410`` and a hand-written rejoin
  loop (:class:`bench.slix.RejoinLoop`).

Each returns a :class:`Member`: its probe, its events (``dropped`` and
``rejoined``, by bare room JID) and its calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioxmpp
import aioxmpp.ping

from .botproc import tune_aioxmpp_self_ping
from .common import Context, Events, Probe, ProbeRecords, SendTimes


@dataclasses.dataclass
class Member:
    """A measured client: its probe, its events, how it joins, leaves and
    posts, and (on demand) what it puts in its send queue."""

    probe: ProbeRecords
    events: Events
    join: Callable[[aioxmpp.JID, str], Awaitable[Any]]
    leave: Callable[[aioxmpp.JID], Awaitable[Any]]
    post: Callable[[aioxmpp.JID, str], None]
    send_times: Callable[[], SendTimes]
    #: the asyncio transport of its stream (for socket options)
    transport: Callable[[], Any]


@dataclasses.dataclass
class Floor:
    """A plain join of a fresh room, timed until our own self-presence."""

    timed_join: Callable[[aioxmpp.JID, str], Awaitable[float]]
    leave: Callable[[aioxmpp.JID], Awaitable[Any]]


# --- aioxmpp ------------------------------------------------------------------------


def _aioxmpp_send_times(client: aioxmpp.Client) -> SendTimes:
    """Wraps the stream's ``_enqueue``, which both ``Client.send`` and
    ``Client.enqueue`` use."""
    times = SendTimes()
    stream = client.stream
    original = stream._enqueue

    def enqueue(stanza: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if isinstance(stanza, aioxmpp.IQ):
            if isinstance(stanza.payload, aioxmpp.ping.Ping):
                times.pings.append(now)
        elif (isinstance(stanza, aioxmpp.Presence) and stanza.to is not None
              and stanza.xep0045_muc is not None
              and stanza.type_ == aioxmpp.PresenceType.AVAILABLE):
            times.joins.setdefault(stanza.to.bare(), []).append(now)
        return original(stanza, **kwargs)

    stream._enqueue = enqueue
    return times


def _aioxmpp_post(client: aioxmpp.Client) -> Callable[[aioxmpp.JID, str], None]:
    def post(room: aioxmpp.JID, body: str) -> None:
        msg = aioxmpp.Message(to=room, type_=aioxmpp.MessageType.GROUPCHAT)
        msg.body[None] = body
        client.enqueue(msg)
    return post


class Side:
    """What differs between the sides in names; the clients are methods of
    the subclasses."""

    #: the client library
    name = ""
    #: figure and target names of this side start with it
    label = ""
    #: in account and room names: each side has rooms of its own
    tag = ""
    #: the guard's event for a room it is back in
    rejoined = ""
    #: whether alone() rejoins after a 110+333 (aioxmpp forgets the room)
    alone_rejoins = False
    #: what alone() is called in figure names, and how it rejoins
    alone_name = alone_rejoin = ""
    #: the child bots of scenario 5 (bench.botproc modes)
    guard_mode = plain_mode = ""


class AioxmppSide(Side):
    name, label, tag, rejoined = "aioxmpp", "", "", "on_rejoined"
    alone_name, alone_rejoin = "aioxmpp", "its cycle"
    guard_mode, plain_mode = "guard", "plain"

    async def guard(self, ctx: Context, prefix: str, *, store: str,
                    ping_idle: float | None = None, ping_timeout: float | None = None
                    ) -> Member:
        client = ctx.client(await ctx.account(prefix), "bench")
        probe = Probe(client)
        guard = ctx.guard(client)
        if ping_idle is not None:
            guard.ping_idle = ping_idle
        if ping_timeout is not None:
            guard.ping_timeout = ping_timeout
        events = Events()
        guard.on_dropped.connect(events.listener("dropped"))
        guard.on_rejoined.connect(events.listener("rejoined"))
        await guard.open_store(store)
        await ctx.connect(client)
        return Member(probe, events, guard.join, guard.leave, _aioxmpp_post(client),
                      lambda: _aioxmpp_send_times(client),
                      lambda: client.stream._xmlstream._transport)

    async def floor(self, ctx: Context, prefix: str) -> Floor:
        client = ctx.client(await ctx.account(prefix), "floor")
        muc = client.summon(aioxmpp.MUCClient)
        rooms: dict[aioxmpp.JID, Any] = {}
        await ctx.connect(client)

        async def join(room_jid: aioxmpp.JID, nick: str) -> float:
            t0 = time.monotonic()
            room, fut = muc.join(room_jid, nick)
            await asyncio.wait_for(fut, 10)
            rooms[room_jid] = room
            return time.monotonic() - t0

        async def leave(room_jid: aioxmpp.JID) -> None:
            await asyncio.wait_for(rooms.pop(room_jid).leave(), 10)

        return Floor(join, leave)

    async def alone(self, ctx: Context, prefix: str, *, ping_idle: float | None = None,
                    ping_timeout: float = 30.0) -> Member:
        """MUCClient with autorejoin=True; with `ping_idle`, its self-ping
        tuned to the guard's intervals. ``dropped`` is its monitor's
        ``on_exited``, ``rejoined`` the ``on_enter`` of the room it cycles."""
        client = ctx.client(await ctx.account(prefix), "bench")
        probe = Probe(client)
        muc = client.summon(aioxmpp.MUCClient)
        events = Events()
        await ctx.connect(client)
        rooms: dict[aioxmpp.JID, Any] = {}

        async def join(room_jid: aioxmpp.JID, nick: str) -> None:
            room, fut = muc.join(room_jid, nick, autorejoin=True)
            if ping_idle is not None:
                tune_aioxmpp_self_ping(room, ping_idle, ping_timeout)
            monitor = room._monitor
            original = monitor.on_exited

            def exited() -> None:
                events.add("dropped", room_jid)
                original()

            monitor.on_exited = exited
            room.on_enter.connect(lambda *a, **kw: events.add("rejoined", room_jid))
            rooms[room_jid] = room
            await fut

        async def leave(room_jid: aioxmpp.JID) -> None:
            await asyncio.wait_for(rooms.pop(room_jid).leave(), 10)

        return Member(probe, events, join, leave, _aioxmpp_post(client),
                      lambda: _aioxmpp_send_times(client),
                      lambda: client.stream._xmlstream._transport)


# --- slixmpp ------------------------------------------------------------------------


class SlixmppSide(Side):
    name, label, tag, rejoined = "slixmpp", "slixmpp ", "x", "muc_guard_rejoined"
    alone_rejoins = True
    alone_name, alone_rejoin = "plain slixmpp", "hand-written loop"
    guard_mode, plain_mode = "slix-guard", "slix-plain"

    async def guard(self, ctx: Context, prefix: str, *, store: str,
                    ping_idle: float | None = None, ping_timeout: float | None = None
                    ) -> Member:
        from .slix import SlixClient, hook_send_times

        client = SlixClient(ctx, await ctx.account(prefix), "bench")
        pconfig = {key: value for key, value in
                   (("ping_idle", ping_idle), ("ping_timeout", ping_timeout))
                   if value is not None}
        guard = client.add_guard(**pconfig)
        events = Events()
        jid = client.probe.jid
        client.xmpp.add_event_handler("muc_guard_dropped",
                                      lambda d: events.add("dropped", jid(d["room"])))
        client.xmpp.add_event_handler("muc_guard_rejoined",
                                      lambda d: events.add("rejoined", jid(d["room"])))
        await guard.open_store(store)
        await client.connect()

        async def join(room: aioxmpp.JID, nick: str) -> None:
            await guard.join(str(room), nick)

        async def leave(room: aioxmpp.JID) -> None:
            await guard.leave(str(room))

        return Member(client.probe, events, join, leave, client.post,
                      lambda: hook_send_times(client.xmpp, SendTimes()),
                      lambda: client.xmpp.transport)

    async def floor(self, ctx: Context, prefix: str) -> Floor:
        """``join_muc_wait``, timed until slixmpp has taken our own
        self-presence in (``xep_0045`` fires ``muc::<room>::self-presence``):
        the moment a slixmpp application can know it is in, as aioxmpp's
        floor ends when ``MUCClient.join()``'s future resolves.
        (``join_muc_wait`` returns a moment later, once the subject came.)"""
        import slixmpp

        from .slix import SlixClient

        client = SlixClient(ctx, await ctx.account(prefix), "floor")
        probe = client.probe
        nicks: dict[aioxmpp.JID, str] = {}
        await client.connect()

        async def join(room: aioxmpp.JID, nick: str) -> float:
            entered: list[float] = []
            event = f"muc::{room}::self-presence"

            def self_presence(_: Any) -> None:
                entered.append(time.monotonic())

            client.xmpp.add_event_handler(event, self_presence)
            try:
                t0 = time.monotonic()
                await client.muc.join_muc_wait(slixmpp.JID(str(room)), nick, maxchars=0,
                                               timeout=10)
            finally:
                client.xmpp.del_event_handler(event, self_presence)
            nicks[room] = nick
            return entered[0] - t0

        async def leave(room: aioxmpp.JID) -> None:
            t0 = time.monotonic()
            client.muc.leave_muc(slixmpp.JID(str(room)), nicks.pop(room))
            deadline = t0 + 10
            while probe.self_unavailable.get(room, 0.0) < t0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        return Floor(join, leave)

    async def alone(self, ctx: Context, prefix: str, *, ping_idle: float | None = None,
                    ping_timeout: float = 30.0) -> Member:
        from .slix import RejoinLoop, SlixClient, hook_send_times

        client = SlixClient(ctx, await ctx.account(prefix), "bench")
        events = Events()
        loop = RejoinLoop(client, events, ping_idle, ping_timeout)
        await client.connect()

        async def leave(room: aioxmpp.JID) -> None:
            nick = loop.wanted.pop(str(room))
            client.muc.leave_muc(str(room), nick)

        return Member(client.probe, events, loop.join, leave, client.post,
                      lambda: hook_send_times(client.xmpp, SendTimes()),
                      lambda: client.xmpp.transport)


def side(name: str) -> Side:
    return {"aioxmpp": AioxmppSide, "slixmpp": SlixmppSide}[name]()


def sides_of(ctx: Context) -> list[Side]:
    """The front-ends this run measures (``--frontend``), in run order."""
    return [side(name) for name in ctx.frontends]
