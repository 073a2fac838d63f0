"""VirtualClock's pace: a dry run that a person (or the console's browser test) can watch."""

from __future__ import annotations

import time

import pytest

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
