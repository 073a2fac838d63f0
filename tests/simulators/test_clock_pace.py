"""VirtualClock's pace: a dry run that a person (or the console's browser test) can watch."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from simulators.world import PACE_ENV, VirtualClock


def test_default_costs_no_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PACE_ENV, raising=False)
    clock = VirtualClock()
    started = time.monotonic()
    clock.sleep(3600)
    assert clock.now() == 3600 and time.monotonic() - started < 0.5


def test_pace_spends_that_fraction_of_wall_time_and_keeps_virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PACE_ENV, "0.002")
    clock = VirtualClock()
    assert clock.pace == 0.002
    started = time.monotonic()
    clock.sleep(10)  # 20 ms of wall time
    assert time.monotonic() - started >= 0.02
    assert clock.now() == 10
    assert VirtualClock(pace=0).pace == 0  # an explicit pace wins over the environment


@pytest.mark.parametrize("value, match", [("fast", "not a number"), ("-1", "outside"), ("100", "outside")])
def test_bad_pace_is_refused(monkeypatch: pytest.MonkeyPatch, value: str, match: str) -> None:
    monkeypatch.setenv(PACE_ENV, value)
    with pytest.raises(ValueError, match=match):
        VirtualClock()


def test_timers_run_at_their_virtual_moments_inside_a_sleep() -> None:
    """every(): what a background thread is in real time, on virtual time (a pump's keep-alive)."""
    clock = VirtualClock(pace=0)
    seen: list[float] = []
    cancel = clock.every(1.5, lambda: seen.append(clock.now()))
    clock.sleep(5.0)
    assert seen == [1.5, 3.0, 4.5] and clock.now() == 5.0
    clock.sleep(1.0)
    assert seen[-1] == 6.0
    cancel()
    clock.sleep(60.0)
    assert len(seen) == 4 and clock.now() == 66.0


def test_a_timer_that_sleeps_or_fails_does_not_disturb_the_sleeper() -> None:
    clock = VirtualClock(pace=0)
    calls: list[float] = []

    def nap() -> None:
        calls.append(clock.now())
        clock.sleep(0.25)  # moves the clock, fires no timers from inside one
        raise RuntimeError("a keep-alive that failed")

    clock.every(1.0, nap)
    with capture_logs() as logs:
        clock.sleep(3.0)  # the failures stay inside the timer, and are logged
    assert calls == [1.0, 2.0, 3.0]  # no nested firing at 1.25 + ...: each on its own tick
    assert clock.now() >= 3.0
    failed = [e for e in logs if e["event"] == "virtual clock timer failed"]
    assert len(failed) == 3 and "a keep-alive that failed" in failed[0]["error"]
    assert failed[0]["callback"].endswith("nap")
