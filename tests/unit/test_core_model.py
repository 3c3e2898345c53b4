"""Model-based test of the sans-IO core (issue #13).

A Hypothesis ``RuleBasedStateMachine`` drives one :class:`GuardCore` with a
simulated front-end and a simulated clock, through random sequences of
every kind of event: the user's requests, stream changes, facts from the
rooms, results of the commands the front-end holds, timers, and the two
hot-path calls (:meth:`GuardCore.traffic`, :meth:`GuardCore.offer`), plus
:meth:`GuardCore.set_ping_idle` and the settings a user may change at any
time (``max_concurrent_joins``, ``use_archive``, ``probe_before_rejoin``).

The simulated front-end does with each command exactly what
:mod:`muc_guard.aioxmpp.runner` does:

* ``ArmTimer`` replaces an armed timer of that (record, kind); the PACE
  timer (room None) is one global timer. Timers fire in time order (ties in
  arming order, like ``loop.call_at``) as ``TimerFired(rec.jid, kind)``.
* ``SendJoin``, a probe ``SendSelfPing``, ``QueryArchiveSupport`` with an
  attempt and ``ReadArchive`` are the room's one task (``io.task``):
  starting one cancels the one before; ``CancelJoin`` cancels it, and a
  cancelled task's result never comes.
* An idle ``SendSelfPing`` is ``io.ping_task`` (a new one does not cancel
  an older one); ``Detach`` cancels it, so its result never comes.
* ``QueryArchiveSupport`` without an attempt, and ``SendNick`` (answered
  with ``NickSent``), are tasks nobody cancels: their results always come.
* ``leave()`` feeds ``LeaveRequested`` and then stops everything of the
  record (``runner.stop``); ``join()`` adds a waiter when the room is not
  joined after its ``JoinRequested``, ``ResolveWaiters`` wakes them all.

Results are answered in random order, each with a random outcome (every
join failure kind and error class, every self-ping reply, every archive
ending), whenever the model chooses: a result may also come after the
stream went down and up again, as slow I/O does.

Checked after every event (see :meth:`CoreModel._check` and the per-command
checks in :meth:`CoreModel._run`):

* ``violations(core) == []``;
* the front-end's timers are the core's (``rec.timers``), no timer of a
  forgotten record stays armed, the PACE timer is armed while pings queue;
* at most one join in flight per room (a room task started while another
  is outstanding), and the task in flight is the one the room's phase
  waits for; at most one idle self-ping in flight per room, and it is the
  one ``rec.ping`` names;
* the join gate: its count is the rooms that hold a slot, every room in
  SLOT is queued in it once, and a queue means the gate is really full
  (so a slot will free up: no deadlock);
* a wanted room that is not joined has, from the command side, a task in
  flight, an armed JOIN timer or a place in the gate queue while the
  stream is up (STREAM phase while it is down); a joined room has an armed
  PING timer, a ping in flight or a place in the pace queue;
* drops: a ``Dropped`` creates an obligation that exactly one ``Rejoined``
  or ``GaveUp`` ends; a second ``Dropped`` while it is open is a defect.
  What counts: ``Dropped`` and ``GaveUp`` in one batch (the room's will)
  end it at once; the stream-lost path announces ``Dropped`` only once its
  probe says we are out (a probe that finds us still in announces nothing,
  and no ``Rejoined`` may follow); ``LeaveRequested`` ends it (the user
  forgot the room). A ``Rejoined`` without an open obligation is allowed
  only for a room restored by ``StoreLoaded`` (its first join after a
  restart). While the obligation is open the room is REJOINING;
* no ``SendJoin`` for a room given up or left (or not the tracked record),
  nor any join step (join, probe, archive question or read) while the
  stream is down (while it is suspended, XEP-0198 queues them);
* a joined room was joined by a join sent on the stream it is up on now
  (a success reported after the stream was lost must not count), and
  holds the nick the room gave (or, untold, the nick that join asked for);
* no idle ``SendSelfPing`` while the stream is down or a nick change is
  pending, nor for a room that is not joined; a pending nick change has its
  NICK timer armed in the front-end;
* waiters exist only for tracked rooms that are JOINING or REJOINING
  (``ResolveWaiters`` with ``joined`` only for a joined room);
* backoff (from :mod:`muc_guard.core.backoff`): after the k-th failed join
  attempt in a row (JoinFailed of the current attempt), the next
  ``SendJoin`` of that room comes no sooner than ``ceiling(k) / 2``
  seconds later, because the core draws the delay from
  ``[ceiling(failures)/2, ceiling(failures)]`` with ``failures >= k`` (a
  sequence may start above 0 after flaps, never below). Not bounded: the
  attempt after a CONNECTION failure while the stream is down (the core
  waits for the stream and tries at once, without counting it), and the
  first attempt after re-wanting a given-up room. A drop that is not a
  stream loss and comes within ``backoff.maximum`` of the rejoin that ended
  the previous such drop is a flap; after the n-th flap in a row the next
  attempt waits ``ceiling(n) / 2``; after 332 at least ``RESTART_SPREAD[0]``;
* the live messages the core holds behind an archive read are exactly
  those the front-end offered while it was read;
* messages: no stanza-id delivered twice to one record while the first
  delivery is among its last ``WINDOW_MIN`` deliveries (the window the
  stream guarantees); a new stanza-id offered while no archive is read is
  delivered; archived messages come before the live ones that waited for
  the read, those in arrival order, and every one of them that was new is
  delivered then; ``recovered`` is false exactly for an archived message
  that had also arrived live.

After the last step the core is closed (``teardown``): every join() caller
is woken and no room timer stays armed.

One rule, :meth:`CoreModel.step`, draws an action by weight among those
possible at that moment (answers to outstanding commands most often, the
stream mostly up), so that examples reach joined rooms, drops, rejoins,
archive reads and the pace queue rather than spending their steps on
actions that do nothing; each handled event is noted, so a failure prints
the shrunk sequence as events and commands.

Budget: CI runs a fixed (``derandomize=True``, reproducible) set of
:data:`EXAMPLES` examples of up to :data:`STEPS` steps, at least 10,000
rule steps in all (asserted at the end; about 17,000 steps and 11,000 core
events, ~7 s here). ``MUC_GUARD_LONG_MODEL=1`` runs 25 times as many
examples from random seeds (about 430,000 steps, ~3 min); a failure prints
the shrunk sequence and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import math
import os
import random
from collections.abc import Hashable, Iterator

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

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
    Gap,
    GaveUp,
    Persist,
    QueryArchiveSupport,
    ReadArchive,
    Rejoined,
    ResolveWaiters,
    SendJoin,
    SendNick,
    SendSelfPing,
)
from muc_guard.core.continuity import WINDOW_MIN, Position
from muc_guard.core.events import (
    ArchivedMessage,
    ArchiveRead,
    ArchiveSupport,
    ErrorFromRoom,
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
    SubjectSeen,
    TimerFired,
    TimerKind,
)
from muc_guard.core.guard import LIVE, NOT_NEW, REPLAYED
from muc_guard.core.policy import (
    PERMANENT_JOIN_ERRORS,
    TRANSIENT_JOIN_ERRORS,
    Cause,
    Decision,
    decide,
)
from muc_guard.core.record import Phase, RoomRecord, State
from muc_guard.core.settings import Settings

LONG = os.environ.get("MUC_GUARD_LONG_MODEL") == "1"
#: CI: EXAMPLES × STEPS ≥ 10,000 steps; the long run 25 times as many examples.
EXAMPLES = 200 * (25 if LONG else 1)
STEPS = 100
MIN_STEPS = 10_000

#: Wall clock (UNIX time) = core clock + WALL; the servers' clocks are the wall clock.
WALL = 1_700_000_000.0
SERVICE, SERVICE2 = "conf.example", "chat.example"
ROOMS = (f"r1@{SERVICE}", f"r2@{SERVICE}", f"r3@{SERVICE}", f"s1@{SERVICE2}")
NICKS = ("bot", "bot2", "robot")
OTHER = "alice"
CODES = (110, 303, 307, 301, 321, 322, 332, 333, 330, 201, 210, 999)
#: A small pool per room: every id can come back (as live, history or archive).
STANZA_IDS = tuple(f"id{i}" for i in range(10))
PING_ERRORS = ("item-not-found", "remote-server-not-found", "remote-server-timeout",
               "not-acceptable", "service-unavailable", "feature-not-implemented",
               "not-allowed", "bad-request", "internal-server-error")
JOIN_ERRORS = tuple(sorted(PERMANENT_JOIN_ERRORS | TRANSIENT_JOIN_ERRORS)) + (
    "conflict", "undefined-condition", "policy-violation", "unknown-thing")
ERROR_TYPES = (None, "wait", "cancel", "modify", "auth")
#: Every kind of failure; errors more often (they are the ones with rules).
FAILURES = (JoinFailure.ERROR,) * 4 + tuple(JoinFailure)
EPS = 1e-9
#: Room timers (PACE is the global one).
ROOM_TIMERS = tuple(kind for kind in TimerKind if kind is not TimerKind.PACE)

#: Events handed to the core (and traffic/offer calls) by the CI test (checked
#: against MIN_STEPS), and the rule steps that made them.
STEP_COUNT = [0]
ACTION_COUNT = [0]


def service_of(room: str) -> str:
    return room.split("@", 1)[1]


@dataclasses.dataclass(eq=False)
class Msg:
    """A front-end message object (handed back in Deliver)."""

    seq: int
    sid: str | None
    nick: str
    body: str
    archived: bool = False

    def __repr__(self) -> str:
        return f"Msg#{self.seq}({self.sid}{', archived' if self.archived else ''})"


class ModelDefect(AssertionError):
    pass


def show(item: object) -> str:
    """A command or event, short: records by their room, defaults left out."""
    if isinstance(item, list):
        return "[" + ", ".join(show(x) for x in item) + "]"
    if not dataclasses.is_dataclass(item) or isinstance(item, (type, RoomRecord)):
        return item.jid if isinstance(item, RoomRecord) else repr(item)
    parts = []
    for field in dataclasses.fields(item):
        value = getattr(item, field.name)
        if field.name in ("rec", "room"):
            parts.append(str(value.jid if isinstance(value, RoomRecord) else value))
        elif field.default is not dataclasses.MISSING and value == field.default:
            continue
        elif isinstance(value, RoomRecord):
            parts.append(f"{field.name}={value.jid}")
        elif isinstance(value, enum.Enum):
            parts.append(f"{field.name}={value.name}")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            parts.append(f"{field.name}=({', '.join(show(v) for v in value)})")
        else:
            parts.append(f"{field.name}={value!r}")
    return f"{type(item).__name__}({', '.join(parts)})"


def is_room_task(c: object) -> bool:
    """Commands the runner runs as the room's one task (io.task)."""
    t = type(c)
    return (t is SendJoin or t is ReadArchive
            or (t is SendSelfPing and c.probe)                      # type: ignore[attr-defined]
            or (t is QueryArchiveSupport and c.attempt != 0))       # type: ignore[attr-defined]


class CoreModel(RuleBasedStateMachine):
    """A GuardCore, and the front-end and clock around it."""

    def __init__(self) -> None:
        super().__init__()
        self.core: GuardCore | None = None
        self.now = 0.0
        self.seq = itertools.count()
        self.msg_seq = itertools.count(1)
        self.stream = "down"          # down / up / suspended
        #: streams so far (a resumed stream is the same one); the stream each join went out on
        self.epoch = 0
        self.join_epoch: dict[int, int] = {}
        self.joined_epoch: dict[RoomRecord, int] = {}
        #: the nick each join asked for
        self.join_nick: dict[int, str] = {}
        self.resource: str | None = None
        self.loaded = False
        #: (rec, kind) -> (at, arming order); the PACE timer apart
        self.timers: dict[tuple[RoomRecord, TimerKind], tuple[float, int]] = {}
        self.pace: tuple[float, int] | None = None
        #: the room's task (io.task): SendJoin, probe, archive question or read
        self.room_task: dict[RoomRecord, object] = {}
        #: idle self-pings whose result will come, and io.ping_task
        self.pings: dict[RoomRecord, list[SendSelfPing]] = {}
        self.ping_task: dict[RoomRecord, SendSelfPing] = {}
        #: results nobody cancels: ("archive", rec, command) / ("nick", rec, SendNick)
        self.free: list[tuple[str, RoomRecord, object]] = []
        #: io.room is set (joined through the front-end, not detached)
        self.io_room: set[RoomRecord] = set()
        self.waiters: dict[RoomRecord, int] = {}
        #: delivered messages per record, in order; ids ever accepted per record
        self.delivered: dict[RoomRecord, list[Msg]] = {}
        self.seen_ids: dict[RoomRecord, set[str]] = {}
        #: live messages waiting behind an archive read (the model's own copy)
        self.buffered: dict[RoomRecord, list[Msg]] = {}
        #: an open Dropped obligation; rooms whose first Rejoined needs no Dropped
        self.owed: set[RoomRecord] = set()
        #: the signals seen, by kind: the core's stats must count exactly these
        self.signalled: dict[str, int] = {}
        self.restored: set[RoomRecord] = set()
        #: backoff bookkeeping: failures in a row, the earliest next SendJoin
        self.failures: dict[RoomRecord, int] = {}
        self.floor: dict[RoomRecord, tuple[float, str]] = {}
        #: flap bookkeeping: a non-stream drop awaiting its rejoin, that rejoin's time, flaps
        self.flap_pending: set[RoomRecord] = set()
        self.rejoined_at: dict[RoomRecord, float] = {}
        self.flaps: dict[RoomRecord, int] = {}
        self.problems: list[str] = []
        self.failed = False
        self.steps = 0

    # --- set-up -------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**32 - 1), use_archive=st.sampled_from([True, True, False]),
                probe=st.sampled_from([True, True, False]), gate=st.sampled_from([1, 2, 2, 8]),
                resource=st.sampled_from([None, "res1", "res1"]))
    def start(self, seed: int, use_archive: bool, probe: bool, gate: int,
              resource: str | None) -> None:
        s = Settings(rng=random.Random(seed))
        s.ping_idle = 10.0
        s.ping_timeout = 2.0
        s.join_timeout = 5.0
        s.probe_timeout = 1.0
        s.permanent_error_limit = 3
        s.set_backoff(1.0, 8.0)
        s.max_concurrent_joins = gate
        s.nick_conflict_retries = 1
        s.max_fallback_nicks = 2
        s.nick_reclaim_interval = 6.0
        s.min_ping_rate = 2.0          # 0.5 s between idle pings: the pace queue fills
        s.use_archive = use_archive
        s.archive_limit = 6
        s.probe_before_rejoin = probe
        s.sibling_check_delay = 0.25
        # two rooms share a service: a sample of one of them exercises the
        # sampled check and its escalation; 0 asks them all
        s.sibling_sample = seed % 2
        self.core = GuardCore(s)
        # The driver sets the stored resource before the first stream.
        self.core.occupant_resource = resource
        note(f"settings: seed={seed} sibling_sample={seed % 2} use_archive={use_archive} probe={probe} gate={gate} "
             f"stored resource={resource}")

    # --- plumbing -------------------------------------------------------------------

    @property
    def wall(self) -> float:
        return WALL + self.now

    def rec(self, room: Hashable) -> RoomRecord | None:
        assert self.core is not None
        return self.core.rooms.get(room)

    def tracked(self, rec: RoomRecord) -> bool:
        assert self.core is not None
        return self.core.rooms.get(rec.jid) is rec

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def feed(self, event: object, check: bool = True) -> list[object]:
        assert self.core is not None
        self.steps += 1
        before = self._before(event)
        commands = self.core.handle(event, self.now, self.wall)   # type: ignore[arg-type]
        note(f"t={self.now:.3f} {show(event)}\n    -> {show(commands)}")
        self._after_event(event, before, commands)
        self._run(commands, event)
        if check:
            self._check(event)
        return commands

    def _fail_if_problems(self, context: object) -> None:
        if self.problems:
            self.failed = True
            text = "\n  ".join(self.problems)
            raise ModelDefect(f"after {context!r} at t={self.now:.3f}:\n  {text}")

    # --- what the front-end does with commands --------------------------------------

    def _start_room_task(self, c: object) -> None:
        rec = c.rec   # type: ignore[attr-defined]
        old = self.room_task.get(rec)
        if old is not None:
            self.problem(f"{rec.jid}: {type(c).__name__} while {show(old)} is still in flight "
                         "(two joins in flight)")
        self.room_task[rec] = c

    def _run(self, commands: list[object], event: object) -> None:
        core = self.core
        assert core is not None
        batch_dropped: set[RoomRecord] = set()
        for i, c in enumerate(commands):
            t = type(c)
            rec: RoomRecord | None = getattr(c, "rec", None)
            if t in (Dropped, Rejoined, GaveUp, Gap, SendJoin):
                self._signal(t.__name__)
            if t is ArmTimer:
                if rec is None:
                    self.pace = (c.at, next(self.seq))
                else:   # (a time in the past fires at once, as loop.call_at does)
                    self.timers[(rec, c.kind)] = (c.at, next(self.seq))
            elif t is CancelTimer:
                if rec is None:
                    self.pace = None
                else:
                    self.timers.pop((rec, c.kind), None)
            elif is_room_task(c):
                assert rec is not None
                self._start_room_task(c)
                if self.stream == "down" and t is not SendJoin:
                    self.problem(f"{rec.jid}: {show(c)} while the stream is down")
                if t is SendJoin:
                    self.buffered.pop(rec, None)   # the core starts a new buffer too
                    self.join_epoch[c.attempt] = self.epoch
                    self.join_nick[c.attempt] = c.nick
                    self._check_send_join(c, commands[i + 1:])
            elif t is SendSelfPing:
                assert rec is not None
                if self.pings.get(rec):
                    self.problem(f"{rec.jid}: a second self-ping while {show(self.pings[rec])} "
                                 "is in flight")
                if not core.stream_up:
                    self.problem(f"{rec.jid}: self-ping while the stream is down")
                if rec.nick_change_pending:
                    self.problem(f"{rec.jid}: self-ping while the nick change to "
                                 f"{rec.pending_nick!r} is pending")
                if not self.tracked(rec) or rec.state is not State.JOINED:
                    self.problem(f"{rec.jid}: self-ping for a room not joined ({rec.state})")
                self.pings.setdefault(rec, []).append(c)
                self.ping_task[rec] = c
            elif t is QueryArchiveSupport:     # attempt 0: nobody cancels it
                self.free.append(("archive", c.rec, c))
            elif t is SendNick:
                self.free.append(("nick", c.rec, c))
            elif t is CancelJoin:
                self.room_task.pop(c.rec, None)
            elif t is Detach:
                ping = self.ping_task.pop(c.rec, None)
                if ping is not None:
                    self.pings[c.rec].remove(ping)
                self.io_room.discard(c.rec)
            elif t is Persist or t is Forget:
                pass
            elif t is Dropped:
                if c.rec in self.owed:
                    self.problem(f"{c.rec.jid}: a second Dropped ({c.cause.name}) before "
                                 "a Rejoined or GaveUp answered the first")
                self.owed.add(c.rec)
                batch_dropped.add(c.rec)
                self._flap_on_drop(c)
            elif t is Rejoined:
                if c.rec not in self.owed and c.rec not in self.restored:
                    self.problem(f"{c.rec.jid}: Rejoined without a Dropped to answer")
                self.owed.discard(c.rec)
                self.restored.discard(c.rec)
                if c.rec.state is not State.JOINED:
                    self.problem(f"{c.rec.jid}: Rejoined, but it is {c.rec.state}")
            elif t is GaveUp:
                self.owed.discard(c.rec)
                self.restored.discard(c.rec)
                if c.rec.state is not State.GAVE_UP:
                    self.problem(f"{c.rec.jid}: GaveUp, but it is {c.rec.state}")
                if c.cause is not Cause.JOIN_ERROR and c.rec not in batch_dropped:
                    self.problem(f"{c.rec.jid}: GaveUp({c.cause.name}) without its Dropped")
            elif t is ResolveWaiters:
                self.waiters.pop(c.rec, None)
                if c.joined and c.rec.state is not State.JOINED:
                    self.problem(f"{c.rec.jid}: waiters woken as joined, but it is "
                                 f"{c.rec.state}")
            elif t is Deliver:
                self._delivered(c.rec, c.message, f"Deliver(recovered={c.recovered})")
                self._signal("delivered")
                if c.recovered:
                    self._signal("recovered")
            elif t is Gap:
                if not self.tracked(c.rec) or not c.rec.wanted:
                    self.problem(f"{c.rec.jid}: a gap for a room not wanted")
                if not c.since <= c.until:
                    self.problem(f"{c.rec.jid}: a gap from {c.since} back to {c.until}")
            else:   # pragma: no cover
                self.problem(f"unknown command {show(c)}")

    def _check_send_join(self, c: SendJoin, rest: list[object]) -> None:
        rec = c.rec
        cancelled = any(type(o) is CancelJoin and o.rec is rec for o in rest)
        if not cancelled:
            if not self.tracked(rec):
                self.problem(f"{rec.jid}: SendJoin for a room left (or a forgotten record)")
            elif rec.state is State.GAVE_UP:
                self.problem(f"{rec.jid}: SendJoin for a room given up")
            elif rec.state is State.JOINED:
                self.problem(f"{rec.jid}: SendJoin for a joined room")
        if self.stream == "down":   # (while suspended, a join waits in the XEP-0198 queue)
            self.problem(f"{rec.jid}: SendJoin while the stream is down")
        floor = self.floor.pop(rec, None)
        if floor is not None and self.now < floor[0] - EPS:
            self.problem(f"{rec.jid}: SendJoin at t={self.now:.3f}, but the backoff allows "
                         f"none before t={floor[0]:.3f} ({floor[1]})")

    def _flap_on_drop(self, c: Dropped) -> None:
        """The flap rule of backoff.py: a drop soon after the rejoin that
        ended the previous drop waits like a failed attempt."""
        rec, cause = c.rec, c.cause
        backoff = self.core.settings.backoff   # type: ignore[union-attr]
        if cause is Cause.STREAM_LOST or decide(cause) is Decision.GIVE_UP:
            return
        at = self.rejoined_at.pop(rec, None)
        flaps = self.flaps.get(rec, 0) + 1 if at is not None and self.now - at < backoff.maximum \
            else 0
        self.flaps[rec] = flaps
        self.flap_pending.add(rec)
        self.failures[rec] = 0
        floor = 0.0
        why = ""
        if flaps:
            floor, why = backoff.ceiling(flaps) / 2, f"flap {flaps} in a row"
        if cause is Cause.SERVICE_SHUTDOWN and RESTART_SPREAD[0] > floor:
            floor, why = RESTART_SPREAD[0], "332: restart spread"
        if floor:
            self.floor[rec] = (self.now + floor, why)
        else:
            self.floor.pop(rec, None)

    def _delivered(self, rec: RoomRecord, message: object, how: str) -> None:
        assert isinstance(message, Msg)
        got = self.delivered.setdefault(rec, [])
        if message.sid is not None:
            for back, earlier in enumerate(reversed(got)):
                if back >= WINDOW_MIN:
                    break
                if earlier.sid == message.sid:
                    self.problem(f"{rec.jid}: stanza-id {message.sid} delivered twice "
                                 f"({earlier!r}, then {message!r} by {how}), {back} "
                                 "deliveries apart")
                    break
            self.seen_ids.setdefault(rec, set()).add(message.sid)
        got.append(message)

    # --- bookkeeping around events ----------------------------------------------------

    def _before(self, event: object) -> dict[str, object]:
        """What the model must know from before the core handles `event`."""
        room = getattr(event, "room", None)
        rec = self.rec(room) if room is not None else None
        info: dict[str, object] = {"rec": rec}
        if rec is not None:
            info["state"] = rec.state
            info["phase"] = rec.phase
            info["attempt"] = rec.attempt
            info["stream_up"] = self.core.stream_up   # type: ignore[union-attr]
            info["buffer"] = list(self.buffered.get(rec, ()))
        return info

    def _after_event(self, event: object, before: dict[str, object],
                     commands: list[object]) -> None:
        rec = before["rec"]
        t = type(event)
        if t is JoinFailed and rec is not None and before["phase"] is Phase.JOIN \
                and before["attempt"] == event.attempt:
            assert isinstance(rec, RoomRecord)
            if event.failure is JoinFailure.CONNECTION and not before["stream_up"]:
                self.floor.pop(rec, None)       # waits for the stream, then at once
            elif self.tracked(rec) and rec.state is not State.GAVE_UP:
                k = self.failures.get(rec, 0) + 1
                self.failures[rec] = k
                backoff = self.core.settings.backoff   # type: ignore[union-attr]
                self.floor[rec] = (self.now + backoff.ceiling(k) / 2,
                                   f"{k} failed attempt(s) in a row")
        elif t is JoinSucceeded and rec is not None and before["phase"] is Phase.JOIN \
                and before["attempt"] == event.attempt:
            assert isinstance(rec, RoomRecord)
            self.failures[rec] = 0
            self.floor.pop(rec, None)
            self.io_room.add(rec)
            self.joined_epoch[rec] = self.join_epoch[event.attempt]
            sent = self.join_nick[event.attempt]
            if rec.state is State.JOINED and rec.nick != (event.nick or sent):
                self.problem(f"{rec.jid}: joined as {event.nick or sent!r} (asked for "
                             f"{sent!r}), but the core thinks our nick is {rec.nick!r}")
            if rec in self.flap_pending:
                self.flap_pending.discard(rec)
                self.rejoined_at[rec] = self.now
        elif t is JoinRequested and rec is not None and before["state"] is State.GAVE_UP:
            assert isinstance(rec, RoomRecord)
            self.failures[rec] = 0
            self.floor.pop(rec, None)
        elif t is ArchiveRead and rec is not None and before["phase"] is Phase.RECOVER \
                and before["attempt"] == event.attempt:
            assert isinstance(rec, RoomRecord)
            self._check_archive_batch(rec, event, before["buffer"], commands)  # type: ignore[arg-type]

    def _check_archive_batch(self, rec: RoomRecord, event: ArchiveRead,
                             buffer: list[Msg], commands: list[object]) -> None:
        """Archived messages first (in the archive's order), then the live
        ones that waited, in arrival order, each new one delivered."""
        delivered = [c for c in commands if type(c) is Deliver and c.rec is rec]
        archived = [c.message for c in delivered if c.message.archived]
        live = [c.message for c in delivered if not c.message.archived]
        order = [item.message for item in event.found]
        if archived != [m for m in order if m in archived]:
            self.problem(f"{rec.jid}: archived messages out of the archive's order: {archived}")
        kinds = [c.message.archived for c in delivered]
        if True in kinds[kinds.index(False):] if False in kinds else False:
            self.problem(f"{rec.jid}: a live message delivered before archived ones: "
                         f"{[c.message for c in delivered]}")
        if live != [m for m in buffer if m in live] or len(set(live)) != len(live):
            self.problem(f"{rec.jid}: waiting live messages out of arrival order: {live} "
                         f"(arrived {buffer})")
        buffered_ids = {m.sid for m in buffer}
        for c in delivered:
            m = c.message
            if m.archived and c.recovered == (m.sid in buffered_ids):
                self.problem(f"{rec.jid}: {m!r} delivered with recovered={c.recovered}, but "
                             f"it {'did' if m.sid in buffered_ids else 'did not'} arrive live")
            if not m.archived and c.recovered:
                self.problem(f"{rec.jid}: live {m!r} delivered as recovered")
        if self.tracked(rec) and rec.phase is Phase.RECOVER or event.lost_stream:
            # Read on later (the live ones keep waiting), or the rejoin after
            # the reconnect reads again (the live ones come back from there).
            if live:
                self.problem(f"{rec.jid}: live messages delivered before the archive "
                             f"was read to the end: {live}")
            if event.lost_stream:
                self.buffered.pop(rec, None)
            return
        # Read to the end: every waiting message that is new is delivered now.
        seen = set(self.seen_ids.get(rec, ())) | {item.archive_id for item in event.found}
        for m in buffer:
            if (m.sid is None or m.sid not in seen) and m not in live:
                self.problem(f"{rec.jid}: live {m!r} waited for the archive and was "
                             "never delivered")
            if m.sid is not None:
                seen.add(m.sid)
        self.buffered.pop(rec, None)

    # --- the checks after every event ---------------------------------------------------

    def _signal(self, kind: str) -> None:
        self.signalled[kind] = self.signalled.get(kind, 0) + 1

    def _check_stats(self) -> None:
        """The counters count exactly what the core signalled."""
        assert self.core is not None
        stats, seen = self.core.stats, self.signalled.get
        counted = {"Dropped": sum(stats.drops.values()), "Rejoined": stats.rejoins,
                   "GaveUp": sum(stats.give_ups.values()), "Gap": sum(stats.gaps.values()),
                   "SendJoin": stats.join_attempts, "delivered": stats.delivered,
                   "recovered": stats.recovered}
        for kind, n in counted.items():
            if n != seen(kind, 0):
                self.problem(f"stats count {n} {kind}, the core signalled {seen(kind, 0)}")
        if stats.outage_count > stats.rejoins:
            self.problem(f"{stats.outage_count} outages observed, {stats.rejoins} rejoins")

    def _check(self, context: object) -> None:
        core = self.core
        assert core is not None
        for line in violations(core):
            self.problem(f"violations(): {line}")
        self._check_stats()
        up = core.stream_up and not core.closed
        # Timers: the front-end's are the core's.
        for (rec, kind) in self.timers:
            if not self.tracked(rec):
                self.problem(f"{rec.jid}: {kind.name} timer armed for a record the core "
                             "no longer tracks")
            elif not core.armed(rec, kind):
                self.problem(f"{rec.jid}: {kind.name} timer armed, the core thinks not")
        for rec in core.rooms.values():
            for kind in ROOM_TIMERS:
                if core.armed(rec, kind) and (rec, kind) not in self.timers:
                    self.problem(f"{rec.jid}: the core thinks {kind.name} is armed; it is not")
        if core.pings.pace_armed != (self.pace is not None):
            self.problem(f"PACE timer: core says armed={core.pings.pace_armed}, front-end "
                         f"{self.pace}")
        if core.pings.queue and self.pace is None and not core.closed:
            self.problem("idle pings queue, but no PACE timer is armed")
        # Tasks in flight match the phases.
        for rec, c in self.room_task.items():
            if not self.tracked(rec):
                self.problem(f"{rec.jid}: {show(c)} in flight for a record the core forgot")
                continue
            want = {SendJoin: Phase.JOIN, ReadArchive: Phase.RECOVER,
                    SendSelfPing: Phase.PROBE, QueryArchiveSupport: Phase.ARCHIVE}[type(c)]
            if rec.phase is not want or rec.attempt != c.attempt:   # type: ignore[attr-defined]
                self.problem(f"{rec.jid}: {show(c)} in flight, but the room is "
                             f"{rec.phase.name} with attempt {rec.attempt} (a stray task)")
        for rec, pings in self.pings.items():
            if len(pings) > 1:
                self.problem(f"{rec.jid}: {len(pings)} self-pings in flight")
            for ping in pings:
                if ping.attempt != rec.ping:
                    self.problem(f"{rec.jid}: {show(ping)} in flight, the core awaits ping "
                                 f"{rec.ping}")
        gate = core.settings.gate
        holding = [rec for rec in core.rooms.values() if rec.holds_slot]
        if not core.closed and gate.in_flight != len(holding):
            self.problem(f"gate: {gate.in_flight} in flight, but {len(holding)} room(s) "
                         "hold a slot")
        waiting = list(gate._waiting)
        for rec in core.rooms.values():
            room_task = self.room_task.get(rec)
            if rec.holds_slot and type(room_task) not in (SendJoin, QueryArchiveSupport):
                self.problem(f"{rec.jid}: holds a join slot with no join in flight")
            if rec.phase is Phase.SLOT and waiting.count(rec.jid) != 1:
                self.problem(f"{rec.jid}: in SLOT, queued {waiting.count(rec.jid)} time(s)")
            if rec.phase in (Phase.PROBE, Phase.ARCHIVE, Phase.JOIN) and room_task is None:
                self.problem(f"{rec.jid}: {rec.phase.name}, but nothing is in flight")
            if rec.phase is Phase.RECOVER and room_task is None and not core.armed(
                    rec, TimerKind.ARCHIVE_RETRY):
                self.problem(f"{rec.jid}: RECOVER, no archive read in flight or due")
            stream = rec.stream
            waiting_live = [item[0] for item in (stream.buffer or ())] if stream else []
            if stream is not None and stream.recovering:
                if waiting_live != self.buffered.get(rec, []):
                    self.problem(f"{rec.jid}: the core holds {waiting_live} behind the "
                                 f"archive read, the front-end offered "
                                 f"{self.buffered.get(rec, [])}")
            else:
                # No read under way: nothing waits (flushed, or left to the next join).
                if waiting_live:
                    self.problem(f"{rec.jid}: {waiting_live} wait, but no archive is read")
                self.buffered.pop(rec, None)
            if rec.ping and not self.pings.get(rec):
                self.problem(f"{rec.jid}: the core awaits ping {rec.ping}, none in flight")
            if rec.nick_change_pending and (rec, TimerKind.NICK) not in self.timers:
                self.problem(f"{rec.jid}: a nick change pending without its NICK timer")
            if self.waiters.get(rec) and rec.state not in (State.JOINING, State.REJOINING):
                self.problem(f"{rec.jid}: join() callers still wait, but it is {rec.state}")
            if rec in self.owed and rec.state is not State.REJOINING:
                self.problem(f"{rec.jid}: Dropped announced, neither Rejoined nor GaveUp, "
                             f"and it is {rec.state}")
            if core.closed:
                continue
            if rec.wanted and rec.state is not State.JOINED:
                pending = (room_task is not None or (rec, TimerKind.JOIN) in self.timers
                           or rec.phase is Phase.SLOT)
                if up and not pending:
                    self.problem(f"{rec.jid}: wanted, not joined, and nothing will join it "
                                 f"(phase {rec.phase.name})")
                if not up and not pending and rec.phase is not Phase.STREAM:
                    self.problem(f"{rec.jid}: wanted, not joined, not waiting for the "
                                 f"stream (phase {rec.phase.name})")
            if rec.state is State.JOINED and up and self.joined_epoch.get(rec) != self.epoch:
                self.problem(f"{rec.jid}: joined, but by a join sent on a stream since lost "
                             f"(stream {self.joined_epoch.get(rec)}, now {self.epoch})")
            if rec.state is State.JOINED and up:
                pinging = ((rec, TimerKind.PING) in self.timers or self.pings.get(rec)
                           or (rec.queued_ping and self.pace is not None))
                if not pinging:
                    self.problem(f"{rec.jid}: joined, and nothing will self-ping it")
        if waiting and gate._open and gate.in_flight < gate.limit:
            self.problem(f"gate: rooms wait ({waiting}) though the gate has room")
        for rec in list(self.waiters):
            if self.waiters[rec] and not self.tracked(rec):
                self.problem(f"{rec.jid}: join() callers wait for a forgotten record")
        for rec in self.owed:
            if not self.tracked(rec):
                self.problem(f"{rec.jid}: Dropped still open for a forgotten record")
        self._fail_if_problems(context)

    # --- requests -----------------------------------------------------------------------

    def do_join(self, data: st.DataObject) -> None:
        assert self.core is not None
        untracked_or_given_up = [room for room in ROOMS if self.rec(room) is None
                                 or self.rec(room).state is State.GAVE_UP]  # type: ignore[union-attr]
        room = data.draw(st.sampled_from(untracked_or_given_up + list(ROOMS)), label="room")
        nick = data.draw(st.sampled_from(NICKS), label="nick")
        password = data.draw(st.sampled_from([None, None, "secret"]), label="password")
        event = JoinRequested(room, service_of(room), nick, password)
        before = self._before(event)
        commands = self.core.handle(event, self.now, self.wall)
        self.steps += 1
        note(f"t={self.now:.3f} {show(event)}\n    -> {show(commands)}")
        rec = self.core.rooms[room]
        if rec.state is not State.JOINED:      # driver.join(): waits before running
            self.waiters[rec] = self.waiters.get(rec, 0) + 1
        self._after_event(event, before, commands)
        self._run(commands, event)
        self._check(event)

    def do_leave(self, data: st.DataObject) -> None:
        assert self.core is not None
        room = data.draw(st.sampled_from(sorted(self.core.rooms) + [ROOMS[0]]), label="room")
        rec = self.rec(room)
        commands = self.feed(LeaveRequested(room), check=False)
        if rec is None:
            self._check("leave")
            return
        if not any(type(c) is ResolveWaiters and c.rec is rec for c in commands):
            self.problem(f"{room}: left without waking its join() callers")
        # driver.leave(): runner.stop(rec) after the request; the obligation ends.
        for key in [key for key in self.timers if key[0] is rec]:
            del self.timers[key]
        self.room_task.pop(rec, None)
        ping = self.ping_task.pop(rec, None)
        if ping is not None:
            self.pings[rec].remove(ping)
        self.io_room.discard(rec)
        self.owed.discard(rec)
        self.waiters.pop(rec, None)
        self.buffered.pop(rec, None)
        self._check("leave, then runner.stop")

    def do_set_nick(self, data: st.DataObject) -> None:
        assert self.core is not None
        room = data.draw(st.sampled_from(sorted(self.core.rooms)), label="room")
        nick = data.draw(st.sampled_from(NICKS + ("bot_",)), label="nick")
        self.feed(NickRequested(room, nick))

    def do_set_ping_idle(self, data: st.DataObject) -> None:
        """``MUCGuard.ping_idle = value``: not an event, a call of its own."""
        assert self.core is not None
        value = data.draw(st.sampled_from([4.0, 10.0, 25.0]), label="ping_idle")
        self.steps += 1
        commands = self.core.set_ping_idle(value, self.now)
        note(f"t={self.now:.3f} set_ping_idle({value})\n    -> {show(commands)}")
        self._run(commands, "set_ping_idle")
        self._check("set_ping_idle")

    def do_change_settings(self, data: st.DataObject) -> None:
        """The user changes a setting the front-end exposes (no event: the
        core reads them when it decides)."""
        assert self.core is not None
        s = self.core.settings
        what = data.draw(st.sampled_from(["max_concurrent_joins", "use_archive",
                                          "probe_before_rejoin"]), label="setting")
        if what == "max_concurrent_joins":
            s.max_concurrent_joins = data.draw(st.sampled_from([1, 2, 8]), label="value")
        else:
            setattr(s, what, not getattr(s, what))
        note(f"t={self.now:.3f} settings.{what} = {getattr(s, what)}")
        self.steps += 1
        self._check(f"settings.{what}")

    def do_store_loaded(self, data: st.DataObject) -> None:
        self.loaded = True
        crashed = data.draw(st.booleans(), label="crashed")
        rows = []
        for room in data.draw(st.lists(st.sampled_from(ROOMS), max_size=4, unique=True),
                              label="stored rooms"):
            nick = data.draw(st.sampled_from(NICKS), label="nick")
            joined = data.draw(st.sampled_from([None, self.wall - 50]), label="last_joined")
            dropped = data.draw(st.sampled_from([None, self.wall - 100, self.wall - 20]),
                                label="last_dropped")
            position = data.draw(st.sampled_from(
                [Position(), Position("id3", self.wall - 60), Position(None, self.wall - 60)]),
                label="position")
            rows.append(RoomRecord(
                jid=room, requested_nick=nick,
                nick=data.draw(st.sampled_from([nick, nick + "_"]), label="given nick"),
                state=data.draw(st.sampled_from([State.JOINING, State.JOINING, State.GAVE_UP]),
                                label="state"),
                drops=1, last_joined=joined, last_dropped=dropped, position=position,
                has_archive=data.draw(st.sampled_from([None, True, False]), label="archive"),
                service=service_of(room)))
        self.feed(StoreLoaded(tuple(rows), crashed))
        assert self.core is not None
        for row in rows:
            rec = self.core.rooms[row.jid]
            if rec.announce_rejoin:
                self.restored.add(rec)
            if rec.position.last_id is not None and (rec.stream is None
                                                     or rec.stream.delivered == 0):
                # The stream it gets will remember the stored position's id.
                self.seen_ids.setdefault(rec, set()).add(rec.position.last_id)

    # --- the stream ---------------------------------------------------------------------

    def do_stream_up(self, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(["res1", "res1", "res2"]), label="resource")
        self.stream, self.resource = "up", resource
        self.feed(StreamUp(resource))

    def do_stream_down(self, data: st.DataObject) -> None:
        self.stream = "down"
        self.epoch += 1
        self.feed(StreamDown(self.resource, "model"))

    def do_stream_suspended(self, data: st.DataObject) -> None:
        self.stream = "suspended"
        self.feed(StreamSuspended())

    def do_stream_resumed(self, data: st.DataObject) -> None:
        self.stream = "up"
        self.feed(StreamResumed())

    # --- facts from the rooms -----------------------------------------------------------

    def do_presence(self, data: st.DataObject) -> None:
        assert self.core is not None
        room = data.draw(st.sampled_from(sorted(self.core.rooms)), label="room")
        rec = self.core.rooms[room]
        nicks = [rec.nick, OTHER, rec.requested_nick, "bot_"]
        if rec.pending_nick:
            nicks += [rec.pending_nick] * 2
        nick = data.draw(st.sampled_from(nicks), label="nick")
        kind = data.draw(st.sampled_from([PresenceKind.AVAILABLE, PresenceKind.UNAVAILABLE,
                                          PresenceKind.UNAVAILABLE, PresenceKind.ERROR]),
                         label="kind")
        codes: frozenset[int] = frozenset()
        destroyed, new_nick = False, None
        if kind is PresenceKind.UNAVAILABLE:
            codes = frozenset(data.draw(st.lists(st.sampled_from(CODES), max_size=3),
                                        label="codes"))
            if data.draw(st.booleans(), label="with 110"):
                codes |= {110}
            destroyed = data.draw(st.sampled_from([False] * 7 + [True]), label="destroyed")
            if 303 in codes:
                new_nick = data.draw(st.sampled_from([None, rec.pending_nick or "robot",
                                                      "robot"]), label="new_nick")
        elif kind is PresenceKind.AVAILABLE:
            codes = frozenset(data.draw(st.sampled_from([(), (110,), (110, 210), (110, 201)]),
                                        label="codes"))
        self.feed(RoomPresence(room, nick, kind, codes, destroyed, new_nick))

    def do_self_removed(self, data: st.DataObject) -> None:
        """The removals that matter, more often: an unavailable self-presence."""
        assert self.core is not None
        joined = sorted(room for room, rec in self.core.rooms.items()
                        if rec.state is State.JOINED) or sorted(self.core.rooms)
        room = data.draw(st.sampled_from(joined), label="room")
        rec = self.core.rooms[room]
        codes = data.draw(st.sampled_from([(110, 333), (110, 333), (110, 332), (110,),
                                           (110, 330), (110, 303), (110, 303), (110, 307),
                                           (110, 301, 333)]), label="codes")
        new_nick = "robot" if 303 in codes else None
        self.feed(RoomPresence(room, rec.nick, PresenceKind.UNAVAILABLE, frozenset(codes),
                               False, new_nick))

    def do_room_fact(self, data: st.DataObject) -> None:
        assert self.core is not None
        what = data.draw(st.sampled_from(["error", "subject", "traffic"]), label="fact")
        room = data.draw(st.sampled_from(sorted(self.core.rooms)), label="room")
        if what == "error":
            self.feed(ErrorFromRoom(room))
        elif what == "subject":
            self.feed(SubjectSeen(room))
        else:
            rec = self.core.rooms[room]
            note(f"t={self.now:.3f} traffic({room})")
            self.core.traffic(rec, self.now)
            self.steps += 1
            self._check("traffic")

    def do_message(self, data: st.DataObject) -> None:
        """A groupchat message: driver._message_filter (traffic, then offer).
        Rooms reading their archive get more: their messages wait."""
        assert self.core is not None
        recovering = [room for room, rec in sorted(self.core.rooms.items())
                      if rec.stream is not None and rec.stream.recovering]
        room = data.draw(st.sampled_from(sorted(self.core.rooms) + recovering * 3),
                         label="room")
        rec = self.core.rooms[room]
        sid = data.draw(st.sampled_from(STANZA_IDS + (None,)), label="stanza-id")
        body = data.draw(st.sampled_from(["hi", "hi", "news"]), label="body")
        nick = data.draw(st.sampled_from([OTHER, rec.nick]), label="nick")
        stream = rec.stream
        replaying = stream is not None and stream.replaying
        stamp = data.draw(st.sampled_from([None, self.wall - 30, self.wall - 1]),
                          label="room stamp") if replaying else None
        msg = Msg(next(self.msg_seq), sid, nick, body)
        recovering = stream is not None and stream.recovering
        self.core.traffic(rec, self.now)
        verdict = self.core.offer(rec, msg, sid, stamp, nick, body if sid is None else None,
                                  self.wall)
        self.steps += 1
        extra = self.core.take_output()   # a gap the replay showed, run before delivery
        note(f"t={self.now:.3f} offer({room}, {msg!r}, stamp={stamp}) -> {verdict}"
             f"{' + ' + show(extra) if extra else ''}")
        if any(type(c) is not Gap for c in extra) or (extra and verdict != REPLAYED):
            self.problem(f"{room}: offer -> {verdict} left {show(extra)}")
        self._run(extra, "offer")
        if verdict in (LIVE, REPLAYED):
            self._signal("delivered")
            if verdict == REPLAYED:
                self._signal("recovered")
        if verdict not in (NOT_NEW, LIVE, REPLAYED):
            self.problem(f"{room}: offer returned {verdict!r}")
        if recovering:
            if verdict != NOT_NEW:
                self.problem(f"{room}: {msg!r} delivered while the archive is read")
            self.buffered.setdefault(rec, []).append(msg)
        elif verdict == NOT_NEW:
            if sid is not None and sid not in self.seen_ids.get(rec, ()):
                self.problem(f"{room}: new stanza-id {sid} not delivered")
        else:
            self._delivered(rec, msg, f"offer -> {verdict}")
        self._check("offer")

    # --- results of commands ------------------------------------------------------------

    def _outstanding(self) -> list[tuple[str, RoomRecord, object]]:
        out: list[tuple[str, RoomRecord, object]] = [
            ("task", rec, c) for rec, c in self.room_task.items()]
        out += [("ping", rec, c) for rec, pings in self.pings.items() for c in pings]
        out += self.free
        return out

    def _take(self, item: tuple[str, RoomRecord, object]) -> None:
        """The runner lets go of a finished task before feeding its result."""
        where, rec, c = item
        if where == "task":
            del self.room_task[rec]
        elif where == "ping":
            self.pings[rec].remove(c)   # type: ignore[arg-type]
            if self.ping_task.get(rec) is c:
                del self.ping_task[rec]
        else:
            self.free.remove(item)

    def do_answer(self, data: st.DataObject) -> None:
        """The front-end reports a command's result: mostly a success
        (`ok`), else any outcome."""
        ok = data.draw(st.sampled_from([True, True, False]), label="ok")
        items = self._outstanding()
        item = items[data.draw(st.integers(0, len(items) - 1), label="outstanding")]
        note(f"the front-end answers {show(item[2])}")
        self._take(item)
        _, rec, c = item
        jid = rec.jid
        t = type(c)
        event: object
        if t is SendJoin:
            if ok:
                nick = data.draw(st.sampled_from([None, c.nick, c.nick, c.nick + "_x"]),
                                 label="nick")
                event = JoinSucceeded(jid, c.attempt, nick)
            else:
                failure = data.draw(st.sampled_from(FAILURES), label="failure")
                condition = error_type = None
                if failure is JoinFailure.ERROR:
                    condition = data.draw(st.sampled_from(JOIN_ERRORS + (None,)),
                                          label="condition")
                    error_type = data.draw(st.sampled_from(ERROR_TYPES), label="type")
                event = JoinFailed(jid, c.attempt, failure, condition, error_type)
            self.io_room.discard(rec)
        elif t is SendSelfPing:
            event = self._ping_reply(data, c, ok)
        elif t is QueryArchiveSupport:
            found = data.draw(st.sampled_from([True, False, None]), label="archive")
            event = ArchiveSupport(jid, found, c.attempt)
        elif t is ReadArchive:
            event = self._archive_read(data, c, ok)
        elif t is SendNick:
            sent_ok = ok and rec in self.io_room and self.tracked(rec)
            event = NickSent(jid, c.nick, sent_ok, c.explicit)
        else:   # pragma: no cover
            raise AssertionError(c)
        self.feed(event)

    def do_refuse(self, data: st.DataObject) -> None:
        """A room refuses a join outright (a permanent error, or our nick
        taken): the paths to fallback nicks and to giving up."""
        joins = [c for c in self.room_task.values() if type(c) is SendJoin]
        c = joins[data.draw(st.integers(0, len(joins) - 1), label="join")]
        self._take(("task", c.rec, c))
        self.io_room.discard(c.rec)
        condition = data.draw(st.sampled_from(["forbidden", "conflict", "conflict",
                                               "registration-required", "not-authorized"]),
                              label="condition")
        self.feed(JoinFailed(c.rec.jid, c.attempt, JoinFailure.ERROR, condition, "cancel"))

    def _ping_reply(self, data: st.DataObject, c: SendSelfPing, ok: bool) -> PingReplied:
        jid = c.rec.jid
        if ok:
            return PingReplied(jid, c.attempt)
        how = data.draw(st.sampled_from(["error", "error", "timeout", "aborted"]), label="reply")
        if how == "timeout":
            return PingReplied(jid, c.attempt, timed_out=True)
        if how == "aborted":
            return PingReplied(jid, c.attempt, aborted=True)
        condition = data.draw(st.sampled_from(PING_ERRORS + ("item-not-found",) * 3),
                              label="condition")
        return PingReplied(jid, c.attempt, condition)

    def _archive_read(self, data: st.DataObject, c: ReadArchive, ok: bool) -> ArchiveRead:
        rec = c.rec
        n = data.draw(st.integers(0, min(3, max(c.limit, 0))), label="found")
        found = []
        for i in range(n):
            sid = data.draw(st.sampled_from(STANZA_IDS), label="archive id")
            msg = Msg(next(self.msg_seq), sid, OTHER, "old", archived=True)
            found.append(ArchivedMessage(msg, sid, self.wall - 40 + i, sid, OTHER, "old"))
        how = "complete" if ok else data.draw(
            st.sampled_from(["complete", "partial", "retry", "lost", "error"]), label="end")
        return ArchiveRead(rec.jid, c.attempt, tuple(found), complete=how == "complete",
                           retry=how == "retry", lost_stream=how == "lost",
                           error="item-not-found" if how == "error" else None,
                           server_now=self.wall)

    # --- time -----------------------------------------------------------------------------

    def _due(self, until: float) -> tuple[float, int, RoomRecord | None, TimerKind] | None:
        best: tuple[float, int, RoomRecord | None, TimerKind] | None = None
        for (rec, kind), (at, seq) in self.timers.items():
            if at <= until + EPS and (best is None or (at, seq) < best[:2]):
                best = (at, seq, rec, kind)
        if self.pace is not None and self.pace[0] <= until + EPS and (
                best is None or self.pace < best[:2]):
            best = (self.pace[0], self.pace[1], None, TimerKind.PACE)
        return best

    def _fire(self, due: tuple[float, int, RoomRecord | None, TimerKind]) -> None:
        at, _, rec, kind = due
        self.now = max(self.now, at)
        if rec is None:
            self.pace = None
            self.feed(TimerFired(None, kind))
        else:
            del self.timers[(rec, kind)]
            self.feed(TimerFired(rec.jid, kind))

    def do_advance(self, data: st.DataObject) -> None:
        """Time passes; due timers fire in time order."""
        dt = data.draw(st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.5, 6.0, 15.0]), label="dt")
        until = self.now + dt
        for _ in range(200):
            due = self._due(until)
            if due is None:
                break
            self._fire(due)
        self.now = until

    def do_next_timer(self, data: st.DataObject) -> None:
        """Time passes to the next timer, which fires."""
        due = self._due(math.inf)
        assert due is not None
        self._fire(due)

    # --- the one rule: an action, drawn by weight among those possible now -------

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        assert self.core is not None
        rooms = bool(self.core.rooms)
        outstanding = bool(self.room_task or any(self.pings.values()) or self.free)
        weights = {
            "advance": 10,
            "next_timer": 10 if self.timers or self.pace is not None else 0,
            "answer": 30 if outstanding else 0,
            "refuse": 5 if any(type(c) is SendJoin for c in self.room_task.values()) else 0,
            "join": 6 if any(rec.state is State.GAVE_UP for rec in self.core.rooms.values())
            or len(self.core.rooms) < len(ROOMS) else 2,
            "leave": 2 if rooms else 0,
            "set_nick": 3 if rooms else 0,
            "store_loaded": 3 if not self.loaded else 0,
            "set_ping_idle": 1,
            "change_settings": 1,
            "stream_up": 12 if self.stream == "down" else 0,
            "stream_down": 2 if self.stream != "down" else 0,
            "stream_suspended": 1 if self.stream == "up" else 0,
            "stream_resumed": 6 if self.stream == "suspended" else 0,
            "presence": 6 if rooms else 0,
            "self_removed": 3 if rooms else 0,
            "room_fact": 4 if rooms else 0,
            "message": 8 if rooms else 0,
        }
        choices = [name for name, weight in weights.items() for _ in range(weight)]
        action = data.draw(st.sampled_from(choices), label="action")
        ACTION_COUNT[0] += 1
        getattr(self, f"do_{action}")(data)

    def teardown(self) -> None:
        STEP_COUNT[0] += self.steps
        if self.failed or self.core is None:
            return
        # close(): every waiter is woken, every room timer cancelled.
        commands = self.core.close(self.now)
        note(f"close -> {show(commands)}")
        self._run(commands, "close")
        for rec, n in self.waiters.items():
            if n and self.tracked(rec):
                self.problem(f"{rec.jid}: join() callers still wait after close")
        for (rec, kind) in self.timers:
            if self.tracked(rec):
                self.problem(f"{rec.jid}: {kind.name} timer still armed after close")
        self._fail_if_problems("close")


def model_settings() -> settings:
    return settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                    derandomize=not LONG, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


@pytest.fixture
def quiet_core() -> Iterator[None]:
    """The core logs every decision; thousands of examples need none of it."""
    logger = logging.getLogger("muc_guard.core")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


# A passing CI run takes seconds; a failing one spends minutes shrinking, which
# must not end in the default 60 s timeout of tests/conftest.py. No limit
# for the long run.
@pytest.mark.timeout(0 if LONG else 900)
def test_the_core_keeps_its_rules_under_random_events(quiet_core: None) -> None:
    STEP_COUNT[0] = ACTION_COUNT[0] = 0
    run_state_machine_as_test(CoreModel, settings=model_settings())
    assert ACTION_COUNT[0] >= MIN_STEPS, (
        f"only {ACTION_COUNT[0]} steps ran; raise EXAMPLES or STEPS")
    print(f"\n{STEP_COUNT[0]} core events from {ACTION_COUNT[0]} rule steps")
