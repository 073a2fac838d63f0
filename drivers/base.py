"""Typed device protocols: anything with these methods is a pump or a spectrometer.

Units are in the names. Drivers never know whether a simulator sits at the other end of the port.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

from drivers.errors import DeviceError


class PumpState(enum.Enum):
    """Pump states, after the New Era status characters (I W S P T U X)."""

    INFUSING = "I"
    WITHDRAWING = "W"
    STOPPED = "S"
    PAUSED = "P"
    TIMED_PAUSE = "T"
    USER_WAIT = "U"
    PURGING = "X"


@dataclass(frozen=True)
class PumpStatus:
    state: PumpState
    rate_ul_min: float
    dispensed_ul: float
    alarm: str | None = None

    @property
    def running(self) -> bool:
        return self.state in (PumpState.INFUSING, PumpState.WITHDRAWING, PumpState.PURGING)


@runtime_checkable
class SyringePump(Protocol):
    """A syringe pump that infuses at a set rate. Every method is idempotent."""

    name: str

    def connect(self) -> None: ...

    def close(self) -> None: ...

    @property
    def syringe_diameter_mm(self) -> float: ...

    def set_syringe_diameter_mm(self, diameter_mm: float) -> None: ...

    def set_rate_ul_min(self, rate_ul_min: float) -> None: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def dispensed_ul(self) -> float: ...

    def status(self) -> PumpStatus: ...

    def safe_state(self) -> None:
        """Stop the pump. Idempotent; never raises for a pump that is already stopped."""
        ...


@runtime_checkable
class Spectrometer(Protocol):
    """A UV-Vis spectrometer that returns raw detector counts."""

    name: str

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def wavelengths_nm(self) -> np.ndarray: ...

    @property
    def integration_time_us(self) -> int: ...

    def set_integration_time_us(self, integration_time_us: int) -> None: ...

    def acquire_counts(self) -> np.ndarray:
        """One spectrum of raw counts (dark- and nonlinearity-corrected where the device can)."""
        ...

    @property
    def saturation_counts(self) -> float: ...

    def set_lamp_enabled(self, enabled: bool) -> None:
        """Switch the light source (for dark spectra). Raises ``SpectrometerError`` if not supported."""
        ...

    def safe_state(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """The time a device lives on: the wall clock on a real rig, the world's virtual clock in a dry run.

    A driver that must do something on its own while the host waits (a pump's keep-alive) measures
    with this clock; a clock that also has ``every(interval_s, callback) -> cancel`` (the simulators'
    virtual clock) runs such work itself, at the virtual moments a background thread would have."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time (``time.monotonic``): the default clock of a driver."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class StopNotConfirmed(DeviceError):
    """safe_state() could not confirm that the pump stopped: its line failed. The stop command was
    still sent without waiting for a reply; whether the pump heard it nobody knows."""

    hint_default = (
        "The pump may still be pumping: stop it by hand (its STOP key, or switch it off), then check "
        "its cable, adapter and port before resuming"
    )


_unverified_warned: set[str] = set()


def warn_unverified_once(driver: str, port: str = "") -> None:
    """Log, once per process, that driver module ``driver`` (``drivers.newera``) has been checked
    against its manual and emulator but not yet on the instrument: a lab engineer reading the log of a
    first campaign on a rig should know which bytes nobody has seen a real pump answer. Not for an
    emulated line (``sim://``): no instrument is there to doubt."""
    if port.startswith("sim://"):
        return
    if driver not in _unverified_warned:
        _unverified_warned.add(driver)
        structlog.get_logger(driver).warning(
            f"{driver} has been checked against the manual and its emulator, not on hardware"
        )
