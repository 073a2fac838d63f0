"""Shared driver helpers."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from drivers import base


def test_an_unverified_driver_warns_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_unverified_warned", set())
    with capture_logs() as logs:
        base.warn_unverified_once("drivers.newera", "sim://newera/bench")  # an emulated line: nothing to doubt
        for _ in range(3):
            base.warn_unverified_once("drivers.harvard", "/dev/ttyUSB0")
        base.warn_unverified_once("drivers.sila")
    assert [e["event"] for e in logs] == [
        "drivers.harvard has been checked against the manual and its emulator, not on hardware",
        "drivers.sila has been checked against the manual and its emulator, not on hardware",
    ]
    assert all(e["log_level"] == "warning" for e in logs)
