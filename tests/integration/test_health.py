"""health() and the structured log lines during a real fault on Prosody, for
both front-ends (the ``frontend`` fixture): a 333 kick with the rejoins
refused for longer than ``health_grace``."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from guardkit import eventually, over_verified_tls, room_key
from muc_guard import Cause, State

pytestmark = pytest.mark.integration


@over_verified_tls
async def test_health_turns_unhealthy_past_the_grace_and_back_and_logs_each_event_once(
        prosody, make_bot, account, room_jid, caplog):
    caplog.set_level(logging.INFO, logger="muc_guard")
    await prosody.create_room(room_jid)
    jid, pw = account("bot")
    bot = make_bot(jid, pw)
    bot.settings.set_backoff(0.3, 0.6)
    bot.settings.health_grace = 1.0
    await bot.start()
    await bot.join(room_jid, "bot")
    health = bot.guard.health()
    assert health.healthy and health.stream_up and health.account == str(jid.bare())
    [room] = health.rooms
    assert room_key(room.jid) == room_key(room_jid) and room.state is State.JOINED
    assert room.last_confirmed is not None and abs(room.last_confirmed - time.time()) < 5

    await prosody.refuse_joins(room_jid, "remote-server-timeout", "wait")
    await prosody.kick_with_codes(room_jid, "bot", [333], "bounce")
    await bot.wait_event("dropped", room_jid)
    [room] = bot.guard.health().rooms
    assert room.state is State.REJOINING and room.last_cause is Cause.SERVER_ERROR
    assert room.drops == 1 and room.outage_since is not None

    async def unhealthy() -> bool:
        return not bot.guard.health().healthy
    assert await eventually(unhealthy, timeout=5)
    health = bot.guard.health()
    [room] = health.rooms
    assert not room.healthy and room.outage_seconds >= 1.0 and room.attempts >= 2
    assert len(health.problems) == 1 and "rejoining for" in health.problems[0]
    assert health.to_dict()["healthy"] is False

    await prosody.clear_refusals(room_jid)
    await bot.wait_event("rejoined", room_jid, timeout=10)
    health = bot.guard.health()
    assert health.healthy and health.rooms[0].outage_since is None
    counters = health.counters
    assert counters.drops == {Cause.SERVER_ERROR: 1} and counters.rejoins == 1
    assert counters.outage_count == 1 and counters.outage_sum >= 1.0
    assert counters.join_attempts >= 3

    await asyncio.sleep(0.2)
    lines = [r for r in caplog.records if r.name == "muc_guard.events"]
    assert [r.muc_event for r in lines] == ["dropped", "rejoined"]   # type: ignore[attr-defined]
    dropped, rejoined = lines
    assert (dropped.muc_room, dropped.muc_cause, dropped.muc_status) == (  # type: ignore[attr-defined]
        room_key(room_jid), "server-error", "bounce")
    assert dropped.muc_account == str(jid.bare())   # type: ignore[attr-defined]
    assert rejoined.muc_outage_seconds >= 1.0       # type: ignore[attr-defined]
    assert rejoined.muc_attempts == counters.join_attempts - 1   # type: ignore[attr-defined]
    # one line per event: no other muc_guard logger repeats the drop or the rejoin
    others = [r.getMessage() for r in caplog.records
              if r.name != "muc_guard.events" and r.name.startswith("muc_guard")]
    assert not [m for m in others if "dropped (" in m or "rejoined as" in m], others
    await bot.stop()
