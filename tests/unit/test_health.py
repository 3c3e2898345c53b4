"""Issue #15 in the core: the counters, the health snapshot and the gap rules,
with literal events (the Guard helper of test_core.py: no event loop)."""

from __future__ import annotations

from test_core import ROOM, SERVICE, WALL, Guard, only, removal

from muc_guard.core.commands import Gap, ReadArchive, SendJoin, SendSelfPing
from muc_guard.core.events import (
    ArchivedMessage,
    ArchiveRead,
    ArchiveSupport,
    JoinFailed,
    JoinFailure,
    JoinRequested,
    JoinSucceeded,
    PingReplied,
    StreamDown,
    StreamUp,
    SubjectSeen,
    TimerFired,
    TimerKind,
)
from muc_guard.core.guard import LIVE, NOT_NEW, REPLAYED
from muc_guard.core.health import OUTAGE_BUCKETS, GapReason, PingVerdict
from muc_guard.core.policy import Cause
from muc_guard.core.record import RoomRecord, State

PING = TimerKind.PING


def health(guard: Guard, at: float | None = None):  # type: ignore[no-untyped-def]
    now = guard.now if at is None else at
    return guard.core.health("bot@example.org", now, WALL + now)


# --- counters ---------------------------------------------------------------------


def test_a_drop_and_its_rejoin_count_one_drop_one_rejoin_and_the_outage() -> None:
    guard = Guard()
    rec = guard.joined()
    stats = guard.core.stats
    assert (stats.join_attempts, stats.drops, stats.rejoins) == (1, {}, 0)
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    assert stats.drops == {Cause.SERVER_ERROR: 1}
    assert health(guard).rooms[0].attempts == 1          # the rejoin in flight
    guard(JoinSucceeded(ROOM, join.attempt), at=4.0)
    assert rec.state is State.JOINED
    counters = health(guard).counters
    assert (counters.rejoins, counters.join_attempts, counters.give_ups) == (1, 2, {})
    assert (counters.outage_count, counters.outage_sum) == (1, 3.0)
    # cumulative buckets: 3 s is above 1 s, within 5 s and every larger bound
    assert counters.outage_buckets == tuple(int(3.0 <= b) for b in OUTAGE_BUCKETS)
    assert counters.to_dict()["drops"] == {"server-error": 1}


def test_a_kick_counts_a_drop_and_a_give_up_and_no_rejoin() -> None:
    guard = Guard()
    guard.joined()
    guard(removal(110, 307), at=1.0)
    stats = guard.core.stats
    assert (stats.drops, stats.give_ups, stats.rejoins) == (
        {Cause.KICKED: 1}, {Cause.KICKED: 1}, 0)
    assert stats.outage_count == 0


def test_self_pings_are_counted_by_verdict_probes_included() -> None:
    guard = Guard()
    rec = guard.joined()
    at = 0.0
    for reply in (PingReplied(ROOM, 0), PingReplied(ROOM, 0, timed_out=True),
                  PingReplied(ROOM, 0, "item-not-found"),
                  PingReplied(ROOM, 0, "remote-server-timeout")):
        at += 10.0
        guard.core.traffic(rec, at - 10.0)
        [ping] = guard(TimerFired(ROOM, PING), at=at)
        assert type(ping) is SendSelfPing
        guard(PingReplied(ROOM, ping.attempt, reply.condition, timed_out=reply.timed_out))
    assert rec.state is State.JOINED
    assert guard.core.stats.pings == {PingVerdict.JOINED: 1, PingVerdict.TIMEOUT: 1,
                                      PingVerdict.INCONCLUSIVE: 2}
    # A lost stream: the probe before the rejoin counts too (not joined, here).
    guard(StreamDown("res1"), at=at + 1)
    [probe] = guard(StreamUp("res1"))
    assert probe.probe
    guard(PingReplied(ROOM, probe.attempt, "not-acceptable"))
    assert guard.core.stats.pings[PingVerdict.NOT_JOINED] == 1
    assert guard.core.stats.drops == {Cause.STREAM_LOST: 1}


def test_delivered_counts_every_message_and_recovered_those_from_the_archive() -> None:
    guard = Guard(use_archive=True)
    rec = guard.joined()
    guard(ArchiveSupport(ROOM, True))
    assert guard.core.offer(rec, "live", "id0", None, "alice", None, WALL + 0.5) == LIVE
    assert guard.core.offer(rec, "again", "id0", None, "alice", None, WALL + 0.6) == NOT_NEW
    [join] = only(guard(removal(110, 333), at=1.0), SendJoin)
    [read] = only(guard(JoinSucceeded(ROOM, join.attempt)), ReadArchive)
    assert guard.core.offer(rec, "live-2", "id2", None, "alice", None, WALL + 2) == NOT_NEW
    found = (ArchivedMessage("arch-1", "id1", WALL + 1, "id1", "alice", "a"),
             ArchivedMessage("arch-2", "id2", WALL + 2, "id2", "alice", "b"))
    guard(ArchiveRead(ROOM, read.attempt, found, complete=True, server_now=WALL + 3))
    stats = guard.core.stats
    # live, arch-1 (recovered), arch-2 (it had reached us live: not recovered)
    assert (stats.delivered, stats.recovered) == (3, 1)


# --- health() ---------------------------------------------------------------------


def test_a_room_out_for_less_than_the_grace_is_healthy_and_then_it_is_not() -> None:
    guard = Guard(health_grace=120.0)
    guard.joined()
    snapshot = health(guard)
    assert snapshot.healthy and snapshot.problems == () and snapshot.stream_up
    assert snapshot.rooms[0].last_confirmed == WALL + 0.0
    [join] = only(guard(removal(110, 333), at=10.0), SendJoin)
    guard(JoinFailed(ROOM, join.attempt, JoinFailure.TIMEOUT), at=40.0)
    room = health(guard, at=129.0).rooms[0]
    assert (room.state, room.outage_since, room.outage_seconds) == (
        State.REJOINING, WALL + 10.0, 119.0)
    assert room.healthy and room.last_cause is Cause.SERVER_ERROR and room.drops == 1
    assert health(guard, at=129.0).healthy
    late = health(guard, at=131.0)
    assert not late.healthy and not late.rooms[0].healthy
    assert late.problems == (f"{ROOM}: rejoining for 121 s (grace 120 s)",)
    # back in: healthy again, and the outage is over
    [join] = [c for c in guard(TimerFired(ROOM, TimerKind.JOIN), at=131.0)
              if type(c) is SendJoin]
    guard(JoinSucceeded(ROOM, join.attempt))
    back = health(guard)
    assert back.healthy and back.rooms[0].outage_since is None
    assert back.to_dict()["rooms"][0]["state"] == "joined"


def test_a_stream_down_longer_than_the_grace_is_unhealthy() -> None:
    guard = Guard(health_grace=60.0)
    guard.joined()
    guard(StreamDown("res1"), at=5.0)
    early = health(guard, at=64.0)
    assert early.healthy and early.stream_down_since == WALL + 5.0
    late = health(guard, at=66.0)
    assert not late.healthy
    assert late.problems[0] == "stream down for 61 s (grace 60 s)"
    assert late.rooms[0].outage_since == WALL + 5.0    # the stream loss while joined
    guard(StreamUp("res2"), at=70.0)
    assert health(guard).stream_up and health(guard).stream_down_since is None


def test_before_the_first_stream_the_guard_counts_as_down_since_its_first_request() -> None:
    guard = Guard(health_grace=30.0)
    guard(JoinRequested(ROOM, SERVICE, "bot"), at=2.0)
    assert health(guard, at=31.0).healthy
    assert not health(guard, at=33.0).healthy


def test_a_room_given_up_is_listed_but_does_not_make_the_bot_unhealthy() -> None:
    guard = Guard(health_grace=10.0)
    guard.joined()
    guard(removal(110, 307), at=1.0)
    snapshot = health(guard, at=500.0)
    assert snapshot.healthy and snapshot.problems == ()
    [room] = snapshot.rooms
    assert (room.state, room.wanted, room.healthy) == (State.GAVE_UP, False, False)
    assert room.last_cause is Cause.KICKED


# --- gaps: a room without archive (history) ----------------------------------------


def rejoined_with_history(guard: Guard) -> RoomRecord:
    """A room that delivered id1 at WALL+1, was dropped and is joined again,
    its history replay about to come."""
    rec = guard.joined()
    assert guard.core.offer(rec, "m1", "id1", None, "alice", None, WALL + 1) == LIVE
    [join] = only(guard(removal(110, 333), at=60.0), SendJoin)
    assert not join.archive and join.position_ts == WALL + 1
    guard(JoinSucceeded(ROOM, join.attempt), at=61.0)
    return rec


def offer_replayed(guard: Guard, rec: RoomRecord, sid: str | None, stamp: float,
                   body: str = "x") -> tuple[int, list[object]]:
    verdict = guard.core.offer(rec, sid or body, sid, stamp, "alice", body, WALL + 61)
    return verdict, guard.core.take_output()


def test_a_history_replay_that_starts_after_our_position_is_a_gap() -> None:
    guard = Guard()
    rec = rejoined_with_history(guard)
    verdict, out = offer_replayed(guard, rec, "id7", WALL + 30)
    assert verdict == REPLAYED
    assert out == [Gap(rec, WALL + 1, WALL + 30, GapReason.HISTORY_SHORT)]
    # only the first new replayed message tells
    assert offer_replayed(guard, rec, "id8", WALL + 31) == (REPLAYED, [])
    assert rec.gaps == 1 and guard.core.stats.gaps == {GapReason.HISTORY_SHORT: 1}
    assert health(guard).rooms[0].gaps == 1


def test_after_our_stream_was_lost_a_replay_that_starts_after_our_position_is_no_gap(
        ) -> None:
    """The server may have restarted: one that keeps history in memory only
    replays just what was said since (the demo's server crash)."""
    guard = Guard()
    rec = guard.joined()
    assert guard.core.offer(rec, "m1", "id1", None, "alice", None, WALL + 1) == LIVE
    guard(StreamDown("res1"), at=10.0)
    [probe] = guard(StreamUp("res1"), at=12.0)
    [join] = only(guard(PingReplied(ROOM, probe.attempt, "not-acceptable")), SendJoin)
    assert rec.last_cause is Cause.STREAM_LOST
    guard(JoinSucceeded(ROOM, join.attempt), at=13.0)
    assert offer_replayed(guard, rec, "id7", WALL + 12) == (REPLAYED, [])
    assert guard.core.stats.gaps == {} and rec.gaps == 0


def test_a_replay_that_repeats_our_last_message_first_is_no_gap() -> None:
    guard = Guard()
    rec = rejoined_with_history(guard)
    assert offer_replayed(guard, rec, "id1", WALL + 1) == (NOT_NEW, [])
    assert offer_replayed(guard, rec, "id7", WALL + 30) == (REPLAYED, [])
    assert guard.core.stats.gaps == {}


def test_a_replay_without_stanza_ids_that_repeats_our_last_message_is_no_gap() -> None:
    guard = Guard()
    rec = guard.joined()
    assert guard.core.offer(rec, "m1", None, None, "alice", "hello", WALL + 1) == LIVE
    [join] = only(guard(removal(110, 333), at=60.0), SendJoin)
    guard(JoinSucceeded(ROOM, join.attempt), at=61.0)
    assert offer_replayed(guard, rec, None, WALL + 1, "hello") == (NOT_NEW, [])
    assert offer_replayed(guard, rec, None, WALL + 30, "new") == (REPLAYED, [])
    assert guard.core.stats.gaps == {}


def test_no_history_gap_for_a_room_never_delivered_from_nor_after_the_replay_ended() -> None:
    guard = Guard()
    rec = guard.joined()                   # nothing delivered: no position
    [join] = only(guard(removal(110, 333), at=60.0), SendJoin)
    guard(JoinSucceeded(ROOM, join.attempt), at=61.0)
    assert offer_replayed(guard, rec, "id7", WALL + 30) == (REPLAYED, [])
    # a replay that the subject ended before anything new came
    guard2 = Guard()
    rec2 = rejoined_with_history(guard2)
    guard2(SubjectSeen(ROOM))
    verdict = guard2.core.offer(rec2, "m", "id9", None, "alice", None, WALL + 62)
    assert verdict == LIVE and guard2.core.take_output() == []
    assert guard.core.stats.gaps == guard2.core.stats.gaps == {}


# --- gaps: a room with an archive ---------------------------------------------------


def recovering(guard: Guard) -> tuple[RoomRecord, ReadArchive]:
    """Delivered id1 at WALL+1, dropped, rejoined: the archive read is out."""
    rec = guard.joined()
    guard(ArchiveSupport(ROOM, True))
    assert guard.core.offer(rec, "m1", "id1", None, "alice", None, WALL + 1) == LIVE
    [join] = only(guard(removal(110, 333), at=60.0), SendJoin)
    assert join.archive
    [read] = only(guard(JoinSucceeded(ROOM, join.attempt), at=61.0), ReadArchive)
    assert read.after_id == "id1"
    return rec, read


def archived(n: int, stamp: float) -> ArchivedMessage:
    return ArchivedMessage(f"arch-{n}", f"id{n}", stamp, f"id{n}", "alice", f"m{n}")


def test_an_archive_read_that_stops_at_archive_limit_with_more_left_is_a_gap() -> None:
    guard = Guard(use_archive=True, archive_limit=2)
    rec, read = recovering(guard)
    assert read.limit == 2
    assert guard.core.offer(rec, "live", "id50", None, "alice", None, WALL + 61.5) == NOT_NEW
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(2, WALL + 10),
                                                      archived(3, WALL + 20)),
                                 complete=False, server_now=WALL + 62))
    gaps = only(commands, Gap)
    # from the last message read to the first live one held back
    assert gaps == [Gap(rec, WALL + 20, WALL + 61.5, GapReason.ARCHIVE_LIMIT)]
    assert guard.core.stats.gaps == {GapReason.ARCHIVE_LIMIT: 1}


def test_an_archive_read_of_exactly_archive_limit_that_is_complete_is_no_gap() -> None:
    guard = Guard(use_archive=True, archive_limit=2)
    rec, read = recovering(guard)
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(2, WALL + 10),
                                                      archived(3, WALL + 20)),
                                 complete=True, server_now=WALL + 62))
    assert only(commands, Gap) == []


def test_an_incomplete_read_short_of_archive_limit_is_no_limit_gap() -> None:
    guard = Guard(use_archive=True, archive_limit=5)
    rec, read = recovering(guard)
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(2, WALL + 10),),
                                 complete=False, server_now=WALL + 62))
    assert only(commands, Gap) == []


def test_an_archive_that_forgot_our_position_is_a_gap_up_to_its_oldest_message() -> None:
    guard = Guard(use_archive=True)
    rec, read = recovering(guard)
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(5, WALL + 40),
                                                      archived(6, WALL + 50)),
                                 complete=True, expired=True, server_now=WALL + 62))
    gaps = only(commands, Gap)
    assert gaps == [Gap(rec, WALL + 1, WALL + 40, GapReason.ARCHIVE_EXPIRED)]
    # reported before the messages after it are delivered
    assert type(commands[0]) is Gap
    assert rec.position.last_id == "id6"


def test_an_archive_that_forgot_our_id_but_holds_our_time_is_no_gap() -> None:
    guard = Guard(use_archive=True)
    rec, read = recovering(guard)
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(0, WALL + 1),
                                                      archived(6, WALL + 50)),
                                 complete=True, expired=True, server_now=WALL + 62))
    assert only(commands, Gap) == []


def test_an_expired_archive_with_nothing_newer_is_a_gap_to_the_end_of_the_read() -> None:
    guard = Guard(use_archive=True)
    rec, read = recovering(guard)
    # an early end that a later read retries says nothing yet
    commands = guard(ArchiveRead(ROOM, read.attempt, (), retry=True, expired=True,
                                 error=None, server_now=WALL + 62))
    assert only(commands, Gap) == []
    [again] = only(guard(TimerFired(ROOM, TimerKind.ARCHIVE_RETRY), at=70.0), ReadArchive)
    commands = guard(ArchiveRead(ROOM, again.attempt, (), complete=True, expired=True,
                                 server_now=WALL + 70))
    assert only(commands, Gap) == [Gap(rec, WALL + 1, WALL + 70, GapReason.ARCHIVE_EXPIRED)]


def test_an_outage_the_archive_covers_is_no_gap() -> None:
    guard = Guard(use_archive=True)
    rec, read = recovering(guard)
    commands = guard(ArchiveRead(ROOM, read.attempt, (archived(2, WALL + 10),),
                                 complete=True, server_now=WALL + 62))
    assert only(commands, Gap) == [] and guard.core.stats.gaps == {}
    assert rec.gaps == 0
