"""Backoff bounds, with the jitter source pinned to its extremes."""

import random

import pytest

from muc_guard import Cause
from muc_guard.core.backoff import RESTART_SPREAD, Backoff


class Extreme(random.Random):
    """Always draws the low (or high) end of a range."""

    def __init__(self, high: bool) -> None:
        super().__init__()
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_delays_double_from_min_and_stop_at_the_cap():
    low, high = Backoff(1.0, 60.0, Extreme(False)), Backoff(1.0, 60.0, Extreme(True))
    assert [low.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert [high.delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]


@pytest.mark.parametrize("seed", range(50))
def test_delays_stay_within_min_and_max(seed):
    backoff = Backoff(1.0, 60.0, random.Random(seed))
    for failures in range(1, 40):
        assert 1.0 <= backoff.delay(failures) <= 60.0


def test_at_most_four_attempts_in_the_first_ten_seconds_even_unluckily():
    backoff = Backoff(1.0, 60.0, Extreme(False))   # the shortest possible delays
    t, attempts, failures = 0.0, 0, 0
    while t <= 10.0:
        attempts += 1
        failures += 1
        t += backoff.delay(failures)
    assert attempts == 4


def test_first_attempt_at_once_except_after_332():
    backoff = Backoff(rng=random.Random(1))
    for cause in (Cause.SERVER_ERROR, Cause.REMOTE_LOST, Cause.UNEXPLAINED,
                  Cause.PING, Cause.STREAM_LOST, None):
        assert backoff.first_delay(cause) == 0.0
    delays = [backoff.first_delay(Cause.SERVICE_SHUTDOWN) for _ in range(200)]
    assert all(RESTART_SPREAD[0] <= d <= RESTART_SPREAD[1] for d in delays)
    assert max(delays) - min(delays) > 5       # really spread, not one value


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        Backoff(0, 60)
    with pytest.raises(ValueError):
        Backoff(10, 5)


def test_a_drop_soon_after_a_rejoin_waits_like_a_failed_attempt():
    low, high = Backoff(1.0, 60.0, Extreme(False)), Backoff(1.0, 60.0, Extreme(True))
    assert low.first_delay(Cause.SERVER_ERROR, flaps=0) == 0.0
    assert [low.first_delay(Cause.SERVER_ERROR, flaps=n) for n in (1, 2, 3)] == [1, 2, 4]
    assert [high.first_delay(Cause.SERVER_ERROR, flaps=n) for n in (1, 2, 3)] == [2, 4, 8]
    # after 332 the longer of the restart spread and the backoff
    assert low.first_delay(Cause.SERVICE_SHUTDOWN, flaps=1) == RESTART_SPREAD[0]
    assert high.first_delay(Cause.SERVICE_SHUTDOWN, flaps=6) == 60


def test_a_flapping_room_gets_at_most_four_attempts_in_ten_seconds():
    """Removed right after every join: one immediate rejoin, then the flap
    count escalates like failures (shortest draws, instant joins)."""
    backoff = Backoff(1.0, 60.0, Extreme(False))
    t, attempts, flaps = 0.0, 1, 0            # the immediate rejoin after the first drop
    while True:
        flaps += 1
        t += backoff.first_delay(Cause.SERVER_ERROR, flaps)
        if t > 10.0:
            break
        attempts += 1
    assert attempts == 4
