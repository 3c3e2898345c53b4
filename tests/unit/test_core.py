"""The sans-IO core, event by event: literal events in, the expected commands out.

No event loop and no front-end: :class:`Guard` below hands events to a
:class:`GuardCore` at the times the test says and returns its commands, so
each test reads as what happened and what the core asked for, in order.
The model-based test (test_core_model.py) checks the rules over random
sequences; these pin down single decisions, and the defects the model found.
"""

from __future__ import annotations

import random

import pytest

from muc_guard.core import GuardCore, violations
from muc_guard.core.backoff import RESTART_SPREAD
from muc_guard.core.commands import (
    ArmTimer,
    CancelJoin,
    CancelTimer,
    Deliver,
    Detach,
    Dropped,
    Forget,
    GaveUp,
    Persist,
    ReadArchive,
    Rejoined,
    ResolveWaiters,
    SendJoin,
    SendNick,
    SendSelfPing,
)
from muc_guard.core.events import (
    ArchivedMessage,
    ArchiveRead,
    ArchiveSupport,
    JoinFailed,
    JoinFailure,
    JoinRequested,
    JoinSucceeded,
    LeaveRequested,
    NickRequested,
    NickSent,
    PingReplied,
    PresenceKind,
    RoomPresence,
    StoreLoaded,
    StreamDown,
    StreamResumed,
    StreamSuspended,
    StreamUp,
    TimerFired,
    TimerKind,
)
from muc_guard.core.guard import LIVE, NOT_NEW
from muc_guard.core.policy import Cause
from muc_guard.core.record import Phase, RoomRecord, State
from muc_guard.core.settings import Settings

ROOM, ROOM2 = "room@conf.example", "other@conf.example"
SERVICE = "conf.example"
WALL = 1_700_000_000.0
PING, JOIN, NICK, PACE, SIBLINGS = (TimerKind.PING, TimerKind.JOIN, TimerKind.NICK,
                                    TimerKind.PACE, TimerKind.SIBLINGS)


class Guard:
    """A GuardCore and a clock; ``guard(event)`` returns its commands."""

    def __init__(self, **settings: object) -> None:
        s = Settings(rng=random.Random(13))
        s.ping_idle = 10.0
        s.ping_timeout = 2.0
        s.use_archive = False
        for name, value in settings.items():
            setattr(s, name, value)
        self.core = GuardCore(s)
        self.now = 0.0

    def __call__(self, event: object, at: float | None = None) -> list[object]:
        if at is not None:
            self.now = at
        commands = self.core.handle(event, self.now, WALL + self.now)  # type: ignore[arg-type]
        assert violations(self.core) == []
        return commands

    def rec(self, room: str = ROOM) -> RoomRecord:
        return self.core.rooms[room]

    def join_sent(self, room: str = ROOM, nick: str = "bot") -> SendJoin:
        """join() with the stream up: returns the SendJoin."""
        if not self.core.stream_up:
            self(StreamUp("res1"))
        commands = self(JoinRequested(room, SERVICE, nick))
        joins = [c for c in commands if type(c) is SendJoin]
        assert len(joins) == 1, commands
        return joins[0]

    def joined(self, room: str = ROOM, nick: str = "bot") -> RoomRecord:
        join = self.join_sent(room, nick)
        self(JoinSucceeded(room, join.attempt))
        assert self.rec(room).state is State.JOINED
        return self.rec(room)


def only(commands: list[object], kind: type) -> list[object]:
    return [c for c in commands if type(c) is kind]


def join_timers(commands: list[object]) -> list[ArmTimer]:
    return [c for c in commands if type(c) is ArmTimer and c.kind is JOIN]


def removal(*codes: int, nick: str = "bot", **kw: object) -> RoomPresence:
    return RoomPresence(ROOM, nick, PresenceKind.UNAVAILABLE, frozenset(codes), **kw)


# --- joining ----------------------------------------------------------------------


def test_a_join_request_waits_for_the_stream_and_joins_when_it_comes_up() -> None:
    guard = Guard()
    assert guard(JoinRequested(ROOM, SERVICE, "bot")) == [Persist(guard.rec(), now=True)]
    assert guard.rec().phase is Phase.STREAM
    rec = guard.rec()
    assert guard(StreamUp("res1")) == [
        SendJoin(rec, 1, "bot", None, False, None, None, False)]
    commands = guard(JoinSucceeded(ROOM, 1))
    assert commands == [Persist(rec), ResolveWaiters(rec, joined=True),
                        ArmTimer(rec, PING, 10.0)]
    assert (rec.state, rec.phase) == (State.JOINED, Phase.IDLE)


def test_a_stale_join_success_with_an_old_attempt_is_ignored() -> None:
    guard = Guard()
    join = guard.join_sent()
    commands = guard(JoinFailed(ROOM, join.attempt, JoinFailure.TIMEOUT))
    assert [type(c) for c in commands] == [ArmTimer]
    assert guard(JoinSucceeded(ROOM, join.attempt)) == []
    assert (guard.rec().state, guard.rec().phase) == (State.JOINING, Phase.TIMER)


def test_a_transient_join_error_retries_after_a_backoff_of_half_to_one_ceiling() -> None:
    guard = Guard()
    join = guard.join_sent()
    [arm] = guard(JoinFailed(ROOM, join.attempt, JoinFailure.ERROR, "service-unavailable",
                             "cancel"))
    assert (arm.kind, arm.rec) == (JOIN, guard.rec())
    assert 1.0 <= arm.at <= 2.0    # ceiling(1) = 2 * backoff_min: drawn from [1, 2]
    commands = guard(TimerFired(ROOM, JOIN), at=arm.at)
    assert [type(c) for c in commands] == [SendJoin]


def test_a_permanent_error_on_the_first_join_is_raised_and_the_room_forgotten() -> None:
    guard = Guard()
    join = guard.join_sent()
    rec = guard.rec()
    error = ValueError("forbidden")
    commands = guard(JoinFailed(ROOM, join.attempt, JoinFailure.ERROR, "forbidden", "auth",
                                error))
    assert commands == [ResolveWaiters(rec, error="refused", exception=error),
                        Detach(rec), Forget(rec)]
    assert ROOM not in guard.core.rooms


def test_the_join_gate_holds_joins_beyond_max_concurrent_joins_until_one_is_answered() -> None:
    guard = Guard(max_concurrent_joins=1)
    first = guard.join_sent(ROOM)
    assert guard(JoinRequested(ROOM2, SERVICE, "bot")) == [Persist(guard.rec(ROOM2), now=True)]
    assert guard.rec(ROOM2).phase is Phase.SLOT
    commands = guard(JoinSucceeded(ROOM, first.attempt))
    assert type(commands[0]) is SendJoin and commands[0].rec is guard.rec(ROOM2)


def test_a_409_on_a_rejoin_retries_our_nick_then_falls_back_and_reclaims_it_later() -> None:
    guard = Guard(nick_conflict_retries=1)
    guard.joined()
    [join] = only(guard(removal(110, 333)), SendJoin)
    [arm] = join_timers(guard(JoinFailed(ROOM, join.attempt, JoinFailure.ERROR, "conflict",
                                         "cancel")))
    [retry] = only(guard(TimerFired(ROOM, JOIN), at=arm.at), SendJoin)
    assert retry.nick == "bot"                     # our own ghost may hold it
    [arm] = join_timers(guard(JoinFailed(ROOM, retry.attempt, JoinFailure.ERROR, "conflict",
                                         "cancel")))
    [fallback] = only(guard(TimerFired(ROOM, JOIN), at=arm.at), SendJoin)
    assert fallback.nick == "bot_"
    commands = guard(JoinSucceeded(ROOM, fallback.attempt))
    assert ArmTimer(guard.rec(), TimerKind.RECLAIM, guard.now + 60.0) in commands
    commands = guard(TimerFired(ROOM, TimerKind.RECLAIM), at=guard.now + 60.0)
    assert SendNick(guard.rec(), "bot") in commands


@pytest.mark.parametrize("condition", ["forbidden", "not-authorized"])
def test_permanent_errors_on_a_rejoin_give_up_after_the_limit(condition: str) -> None:
    guard = Guard(permanent_error_limit=2)
    rec = guard.joined()
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    [arm] = join_timers(guard(JoinFailed(ROOM, join.attempt, JoinFailure.ERROR, condition,
                                         "auth")))
    guard(TimerFired(ROOM, SIBLINGS))              # the other rooms were checked
    [join] = only(guard(TimerFired(ROOM, JOIN), at=arm.at), SendJoin)
    commands = guard(JoinFailed(ROOM, join.attempt, JoinFailure.ERROR, condition, "auth"))
    assert commands == [Detach(rec), Persist(rec, now=True),
                        ResolveWaiters(rec, error="gave-up", cause=Cause.JOIN_ERROR),
                        GaveUp(rec, Cause.JOIN_ERROR)]
    assert rec.state is State.GAVE_UP


# --- removals ---------------------------------------------------------------------


def test_a_110_333_removal_detaches_drops_rejoins_at_once_and_checks_the_siblings() -> None:
    guard = Guard()
    rec = guard.joined()
    commands = guard(removal(110, 333), at=3.0)
    assert commands == [
        CancelTimer(rec, PING), Detach(rec), Persist(rec), Dropped(rec, Cause.SERVER_ERROR),
        SendJoin(rec, 2, "bot", None, False, None, WALL, True),
        ArmTimer(rec, SIBLINGS, 3.25)]
    commands = guard(JoinSucceeded(ROOM, 2))
    # the round goes out on the next turn, after on_rejoined
    assert commands[-2:] == [Rejoined(rec), ArmTimer(rec, SIBLINGS, 3.0)]


def test_a_307_kick_gives_up_and_sends_no_join() -> None:
    guard = Guard()
    rec = guard.joined()
    commands = guard(removal(110, 307))
    assert commands == [
        CancelTimer(rec, PING), Detach(rec), Persist(rec, now=True),
        ResolveWaiters(rec, error="gave-up", cause=Cause.KICKED),
        Dropped(rec, Cause.KICKED), GaveUp(rec, Cause.KICKED)]
    assert rec.state is State.GAVE_UP
    assert only(guard(StreamDown("res1")) + guard(StreamUp("res1")), SendJoin) == []


def test_307_with_333_is_a_technical_removal_as_xep_0045_says() -> None:
    guard = Guard()
    rec = guard.joined()
    commands = guard(removal(110, 307, 333))
    assert Dropped(rec, Cause.SERVER_ERROR) in commands and only(commands, SendJoin)


def test_a_332_shutdown_arms_the_join_timer_within_the_restart_spread() -> None:
    guard = Guard()
    rec = guard.joined()
    commands = guard(removal(110, 332), at=5.0)
    assert only(commands, SendJoin) == []
    assert Dropped(rec, Cause.SERVICE_SHUTDOWN) in commands
    [arm] = [c for c in commands if type(c) is ArmTimer and c.kind is JOIN]
    assert 5.0 + RESTART_SPREAD[0] <= arm.at <= 5.0 + RESTART_SPREAD[1]


def test_a_drop_soon_after_the_rejoin_that_ended_the_last_one_waits_like_a_failure() -> None:
    guard = Guard()
    guard.joined()
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    guard(JoinSucceeded(ROOM, join.attempt))
    commands = guard(removal(110, 333), at=2.0)      # a flapping room
    assert only(commands, SendJoin) == []
    [arm] = [c for c in commands if type(c) is ArmTimer and c.kind is JOIN]
    assert 2.0 + 1.0 <= arm.at <= 2.0 + 2.0


# --- self-pings -------------------------------------------------------------------


def test_an_idle_room_is_self_pinged_and_a_result_rearms_the_ping() -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard(TimerFired(ROOM, PING), at=10.0) == [SendSelfPing(rec, 2, "bot", 2.0)]
    assert guard(PingReplied(ROOM, 2), at=10.5) == [ArmTimer(rec, PING, 20.5)]


def test_item_not_found_twice_in_a_row_is_a_drop() -> None:
    guard = Guard()
    rec = guard.joined()
    guard(TimerFired(ROOM, PING), at=10.0)
    assert guard(PingReplied(ROOM, 2, "item-not-found")) == [ArmTimer(rec, PING, 20.0)]
    [ping] = guard(TimerFired(ROOM, PING), at=20.0)
    commands = guard(PingReplied(ROOM, ping.attempt, "item-not-found"))
    assert commands[:3] == [Detach(rec), Persist(rec), Dropped(rec, Cause.PING)]
    assert only(commands, SendJoin)


def test_traffic_between_two_item_not_found_breaks_the_pair() -> None:
    guard = Guard()
    rec = guard.joined()
    guard(TimerFired(ROOM, PING), at=10.0)
    guard(PingReplied(ROOM, 2, "item-not-found"))
    guard.core.traffic(rec, 15.0)
    [rearm] = guard(TimerFired(ROOM, PING), at=20.0)        # traffic came meanwhile
    assert rearm == ArmTimer(rec, PING, 25.0)
    [ping] = guard(TimerFired(ROOM, PING), at=25.0)
    assert guard(PingReplied(ROOM, ping.attempt, "item-not-found")) == [
        ArmTimer(rec, PING, 35.0)]
    assert rec.state is State.JOINED


# --- the service's other rooms ----------------------------------------------------


def _rooms(guard: Guard, n: int) -> list[str]:
    rooms = [ROOM] + [f"r{i}@{SERVICE}" for i in range(1, n)]
    for room in rooms:
        guard.joined(room)
    return rooms


def _checked(commands: list[object]) -> list[str]:
    """The rooms a sibling round asked (their PING timers armed for now)."""
    return [c.rec.jid for c in commands
            if type(c) is ArmTimer and c.kind is PING and c.rec.ping_forced]


def _drop_and_rejoin(guard: Guard, room: str, at: float) -> list[object]:
    """A 110+333 in `room`, its rejoin answered, the SIBLINGS timer fired:
    every command of the three."""
    commands = guard(RoomPresence(room, "bot", PresenceKind.UNAVAILABLE,
                                  frozenset({110, 333})), at=at)
    [join] = only(commands, SendJoin)
    commands += guard(JoinSucceeded(room, join.attempt), at=at + 0.002)
    return commands + guard(TimerFired(room, SIBLINGS))


def _ping(guard: Guard, rooms: list[str]) -> list[SendSelfPing]:
    """Fire the rooms' PING timers: their self-pings."""
    return [only(guard(TimerFired(room, PING)), SendSelfPing)[0] for room in rooms]


def _answer(guard: Guard, pings: list[SendSelfPing], condition: str | None = None
            ) -> list[object]:
    commands: list[object] = []
    for ping in pings:
        commands += guard(PingReplied(ping.rec.jid, ping.attempt, condition),
                          at=guard.now + 0.001)
    return commands


def test_a_drop_among_many_rooms_asks_a_sample_of_the_others_and_stops_if_all_answer() -> None:
    guard = Guard(sibling_sample=8)
    rooms = _rooms(guard, 21)
    sample = _checked(_drop_and_rejoin(guard, ROOM, at=3.0))
    assert len(sample) == len(set(sample)) == 8 and set(sample) <= set(rooms[1:])
    assert _checked(_answer(guard, _ping(guard, sample))) == []   # all joined: no more
    assert all(guard.rec(r).state is State.JOINED for r in rooms)


def test_a_sampled_room_found_gone_makes_the_round_ask_every_other_room() -> None:
    guard = Guard(sibling_sample=8)
    rooms = _rooms(guard, 21)
    sample = _checked(_drop_and_rejoin(guard, ROOM, at=3.0))
    pings = _ping(guard, sample)
    first = sample[0]
    commands = _answer(guard, pings[:1], "not-acceptable")     # XEP-0410: not joined
    assert Dropped(guard.rec(first), Cause.PING) in commands
    # at once, behind the room's own rejoin: every room not asked yet (the
    # sampled ones still out are not asked twice)
    [join] = only(commands, SendJoin)
    assert commands.index(join) < min(i for i, c in enumerate(commands)
                                      if type(c) is ArmTimer and c.kind is PING)
    assert sorted(_checked(commands)) == sorted(set(rooms) - {ROOM, *sample})
    guard(JoinSucceeded(first, join.attempt), at=guard.now + 0.002)
    assert _checked(guard(TimerFired(first, SIBLINGS))) == []
    assert _checked(_answer(guard, pings[1:])) == []


def test_a_second_removal_on_the_service_while_a_sample_was_asked_asks_every_room() -> None:
    guard = Guard(sibling_sample=8)
    rooms = _rooms(guard, 21)
    sample = _checked(_drop_and_rejoin(guard, ROOM, at=3.0))
    _answer(guard, _ping(guard, sample))
    other = next(r for r in rooms[1:] if r not in sample)
    everyone = _checked(_drop_and_rejoin(guard, other, at=3.5))
    assert sorted(everyone) == sorted(set(rooms) - {ROOM, other, *sample})
    # and a third drop in the window starts nothing more
    third = next(r for r in rooms[1:] if r not in sample and r != other)
    assert _checked(_drop_and_rejoin(guard, third, at=4.0)) == []


def test_a_service_with_few_rooms_or_sample_0_asks_them_all() -> None:
    for n, sample in ((9, 8), (21, 0)):
        guard = Guard(sibling_sample=sample)
        rooms = _rooms(guard, n)
        assert sorted(_checked(_drop_and_rejoin(guard, ROOM, at=3.0))) == sorted(rooms[1:])


# --- the stream -------------------------------------------------------------------


def test_a_lost_stream_probes_before_rejoining_and_a_room_that_kept_us_announces_nothing(
) -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard(StreamDown("res1")) == [CancelTimer(rec, PING), Detach(rec)]
    assert (rec.state, rec.phase) == (State.REJOINING, Phase.STREAM)
    [probe] = guard(StreamUp("res1"))
    assert probe == SendSelfPing(rec, 2, "bot", 5.0, probe=True)
    commands = guard(PingReplied(ROOM, 2))               # still an occupant
    assert [type(c) for c in commands] == [SendJoin]
    commands = guard(JoinSucceeded(ROOM, commands[0].attempt))
    assert only(commands, Rejoined) == [] and only(commands, Dropped) == []


def test_a_probe_that_finds_us_out_announces_the_drop_then_rejoins() -> None:
    guard = Guard()
    rec = guard.joined()
    guard(StreamDown("res1"))
    guard(StreamUp("res1"))
    commands = guard(PingReplied(ROOM, 2, "not-acceptable"))
    assert commands[:2] == [Persist(rec), Dropped(rec, Cause.STREAM_LOST)]
    assert type(commands[2]) is SendJoin
    assert guard(JoinSucceeded(ROOM, commands[2].attempt))[-1] == Rejoined(rec)


def test_a_new_resource_skips_the_probe_the_old_occupant_cannot_be_ours() -> None:
    guard = Guard()
    rec = guard.joined()
    guard(StreamDown("res1"))
    commands = guard(StreamUp("res2"))
    assert commands[:2] == [Persist(rec), Dropped(rec, Cause.STREAM_LOST)]
    assert [type(c) for c in commands[2:]] == [SendJoin]


# --- nicks ------------------------------------------------------------------------


def test_a_303_nick_change_holds_the_self_ping_until_the_room_confirms_the_new_nick() -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard(removal(110, 303, new_nick="robot"), at=1.0) == [ArmTimer(rec, NICK, 3.0)]
    assert guard(TimerFired(ROOM, PING), at=10.0) == [ArmTimer(rec, PING, 20.0)]  # no ping
    commands = guard(RoomPresence(ROOM, "robot", PresenceKind.AVAILABLE, frozenset({110})))
    assert commands == [CancelTimer(rec, NICK), Persist(rec)]
    assert (rec.nick, rec.pending_nick) == ("robot", None)


def test_a_nick_change_without_an_answer_ends_after_ping_timeout_with_a_check() -> None:
    guard = Guard()
    rec = guard.joined()
    commands = guard(NickRequested(ROOM, "robot"), at=1.0)
    assert commands == [ArmTimer(rec, NICK, 3.0), SendNick(rec, "robot", explicit=True)]
    assert guard(TimerFired(ROOM, NICK), at=3.0) == [ArmTimer(rec, PING, 3.0)]
    assert guard(TimerFired(ROOM, PING)) == [SendSelfPing(rec, 2, "bot", 2.0)]


# --- messages ---------------------------------------------------------------------


def test_offer_delivers_a_stanza_id_once() -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard.core.offer(rec, "m1", "id1", None, "alice", None, WALL + 1) == LIVE
    assert guard.core.offer(rec, "m1 again", "id1", None, "alice", None, WALL + 2) == NOT_NEW
    assert rec.position.last_id == "id1"


def test_archive_recovery_delivers_the_archive_then_the_live_messages_that_waited() -> None:
    guard = Guard(use_archive=True)
    rec = guard.joined()                          # asks whether the room has an archive
    guard(ArchiveSupport(ROOM, True))
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    assert join.archive
    commands = guard(JoinSucceeded(ROOM, join.attempt))
    [read] = only(commands, ReadArchive)
    assert guard.core.offer(rec, "live-1", "id2", None, "alice", None, WALL + 2) == NOT_NEW
    assert guard.core.offer(rec, "live-2", "id3", None, "alice", None, WALL + 3) == NOT_NEW
    found = (ArchivedMessage("arch-1", "id1", WALL + 1, "id1", "alice", "a"),
             ArchivedMessage("arch-2", "id2", WALL + 2, "id2", "alice", "b"))
    commands = guard(ArchiveRead(ROOM, read.attempt, found, complete=True,
                                 server_now=WALL + 4))
    assert only(commands, Deliver) == [
        Deliver(rec, "arch-1", recovered=True, own=False),
        Deliver(rec, "arch-2", recovered=False, own=False),   # it had reached us live
        Deliver(rec, "live-2", recovered=False, own=False)]
    assert (rec.phase, rec.position.last_id) == (Phase.IDLE, "id3")


# --- leaving ----------------------------------------------------------------------


def test_leave_cancels_the_rooms_timers_wakes_its_callers_and_forgets_it() -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard(LeaveRequested(ROOM)) == [CancelTimer(rec, PING),
                                           ResolveWaiters(rec, error="left"), Forget(rec)]
    assert guard.core.rooms == {}


# --- regressions: defects the model-based test found ------------------------------


def test_a_join_in_flight_when_the_stream_is_lost_is_cancelled_and_sent_again() -> None:
    """A success reported after the stream was lost (the result racing the
    stream's end) counted the room joined on a stream it was not in."""
    guard = Guard()
    join = guard.join_sent()
    rec = guard.rec()
    assert guard(StreamDown("res1")) == [CancelJoin(rec)]
    assert rec.phase is Phase.STREAM
    assert guard(JoinSucceeded(ROOM, join.attempt)) == []      # if it comes anyway
    assert rec.state is State.JOINING
    [again] = guard(StreamUp("res1"))
    assert type(again) is SendJoin and again.attempt != join.attempt


def test_a_lost_stream_empties_the_join_gate_and_sends_no_join() -> None:
    """A slot freed while the stream was down let the next room's join out."""
    guard = Guard(max_concurrent_joins=1)
    guard.join_sent(ROOM)
    guard(JoinRequested(ROOM2, SERVICE, "bot"))
    commands = guard(StreamDown("res1"))
    assert commands == [CancelJoin(guard.rec(ROOM))]
    assert (guard.rec(ROOM).phase, guard.rec(ROOM2).phase) == (Phase.STREAM, Phase.STREAM)
    assert guard.core.settings.gate.in_flight == 0
    assert [c.rec.jid for c in only(guard(StreamUp("res1")), SendJoin)] == [ROOM]


def test_a_slot_freed_while_the_stream_is_suspended_waits_for_the_resumption() -> None:
    guard = Guard(max_concurrent_joins=1)
    join = guard.join_sent(ROOM)
    guard(JoinRequested(ROOM2, SERVICE, "bot"))
    guard(StreamSuspended())
    commands = guard(JoinFailed(ROOM, join.attempt, JoinFailure.TIMEOUT))
    assert only(commands, SendJoin) == []
    assert guard.rec(ROOM2).phase is Phase.STREAM
    assert [c.rec.jid for c in only(guard(StreamResumed()), SendJoin)] == [ROOM2]


def test_an_aborted_self_ping_on_a_stream_up_again_rearms_the_ping() -> None:
    """The abort of a ping that outlived a suspension left the room joined
    with no self-ping pending: a silent drop would never be noticed."""
    guard = Guard()
    rec = guard.joined()
    [ping] = guard(TimerFired(ROOM, PING), at=10.0)
    guard(StreamSuspended())
    assert guard(StreamResumed()) == []           # the ping in flight covers the room
    assert guard(PingReplied(ROOM, ping.attempt, aborted=True), at=11.0) == [
        ArmTimer(rec, PING, 21.0)]


def test_an_aborted_self_ping_while_suspended_waits_for_the_resumption() -> None:
    guard = Guard()
    rec = guard.joined()
    [ping] = guard(TimerFired(ROOM, PING), at=10.0)
    guard(StreamSuspended())
    assert guard(PingReplied(ROOM, ping.attempt, aborted=True), at=11.0) == []
    assert guard(StreamResumed()) == [ArmTimer(rec, PING, 10.0)]


def test_a_queued_idle_ping_waits_while_a_nick_change_is_pending() -> None:
    """The pace queue sent a self-ping in the middle of a nick change."""
    guard = Guard(min_ping_rate=0.5)                 # a slot every 2 s
    first = guard.joined(ROOM)
    second = guard.joined(ROOM2)
    assert guard(TimerFired(ROOM, PING), at=10.0) == [SendSelfPing(first, 3, "bot", 2.0)]
    assert guard(TimerFired(ROOM2, PING)) == [ArmTimer(None, PACE, 12.0)]
    guard(NickRequested(ROOM2, "robot"))
    assert guard(TimerFired(None, PACE), at=12.0) == [ArmTimer(second, PING, 22.0)]


def stored(room: str = ROOM, **fields: object) -> RoomRecord:
    return RoomRecord(jid=room, requested_nick="bot", nick="bot", service=SERVICE,
                      last_joined=WALL - 100, **fields)   # type: ignore[arg-type]


def test_a_store_opened_during_a_rejoin_does_not_hide_the_announced_drop() -> None:
    """Merged into a room rejoining after a drop, a crashed store's probe
    found us "still in" and cancelled the Rejoined that drop was owed."""
    guard = Guard()
    rec = guard.joined()
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    [arm] = join_timers(guard(JoinFailed(ROOM, join.attempt, JoinFailure.TIMEOUT)))
    guard(StoreLoaded((stored(),), crashed=True))
    [join] = only(guard(TimerFired(ROOM, JOIN), at=arm.at), SendJoin)     # no probe
    assert Rejoined(rec) in guard(JoinSucceeded(ROOM, join.attempt))


def test_a_store_opened_after_a_lost_stream_keeps_the_probe_of_the_suspected_room() -> None:
    """A clean store cleared the probe of a room suspected after a lost
    stream: it rejoined announcing a Rejoined with no Dropped before it."""
    guard = Guard()
    rec = guard.joined()
    guard(StreamDown("res1"))
    guard(StoreLoaded((stored(),), crashed=False))
    [probe] = guard(StreamUp("res1"))
    assert probe == SendSelfPing(rec, probe.attempt, "bot", 5.0, probe=True)


def test_a_successful_join_settles_the_probe_a_crashed_store_asked_for() -> None:
    """A store merged while the join was out left `probe` set; the next
    drop then probed, and a "still in" reply cancelled its Rejoined."""
    guard = Guard()
    join = guard.join_sent()
    rec = guard.rec()
    guard(StoreLoaded((stored(),), crashed=True))
    assert guard(JoinSucceeded(ROOM, join.attempt))[-1] == Rejoined(rec)   # the restart
    commands = guard(removal(110, 333), at=1.0)
    assert only(commands, SendSelfPing) == [] and len(only(commands, SendJoin)) == 1


def test_a_join_answered_without_a_nick_holds_the_nick_that_attempt_asked_for() -> None:
    """join() with another nick while the join was out: the success (the
    front-end not knowing the nick) made the core believe the new nick, and
    every self-ping went to an occupant JID that was not ours."""
    guard = Guard()
    join = guard.join_sent(nick="bot")
    rec = guard.rec()
    assert guard(JoinRequested(ROOM, SERVICE, "robot")) == [Persist(rec, now=True)]
    guard(JoinSucceeded(ROOM, join.attempt))
    assert (rec.state, rec.nick, rec.requested_nick) == (State.JOINED, "bot", "robot")
    guard(NickSent(ROOM, "robot", ok=False))     # the change it then asks for fails
    assert guard(TimerFired(ROOM, PING), at=10.0) == [SendSelfPing(rec, 2, "bot", 2.0)]


def test_a_nick_asked_for_while_the_join_is_out_is_asked_of_the_room_once_joined() -> None:
    guard = Guard()
    join = guard.join_sent(nick="bot")
    rec = guard.rec()
    assert only(guard(NickRequested(ROOM, "robot")), SendNick) == []   # not joined yet
    commands = guard(JoinSucceeded(ROOM, join.attempt, "bot"))
    assert SendNick(rec, "robot") in commands
    assert (rec.nick, rec.requested_nick, rec.pending_nick) == ("bot", "robot", "robot")


def test_a_210_rewrite_of_our_nick_is_the_rooms_answer_not_a_request() -> None:
    guard = Guard()
    join = guard.join_sent(nick="bot")
    commands = guard(JoinSucceeded(ROOM, join.attempt, "Bot"))
    assert only(commands, SendNick) == []
    assert guard.rec().nick == "Bot"


def test_a_rewritten_nick_restored_from_the_store_is_kept_not_asked_back() -> None:
    guard = Guard()
    rec = RoomRecord(jid=ROOM, requested_nick="bot", nick="bot-given", service=SERVICE,
                     last_joined=WALL - 60)
    guard(StreamUp("res1"))
    [join] = only(guard(StoreLoaded((rec,), crashed=False)), SendJoin)
    assert join.nick == "bot-given"
    commands = guard(JoinSucceeded(ROOM, join.attempt, "bot-given"))
    assert only(commands, SendNick) == [] and rec.nick == "bot-given"
