"""Fault injection, set per device in the rig file.

A fault starts ``at_s`` seconds after the device was built (on the world's clock) and lasts
``duration_s`` (None: until the operator clears it, as a stall does). One-shot faults (stall, reset)
fire once; the others hold for their duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PUMP_FAULTS = ("no_reply", "garbage", "stall", "reset", "disconnect")
SPECTROMETER_FAULTS = ("no_reply", "disconnect", "saturated", "dark_lamp")


@dataclass
class Fault:
    kind: str
    at_s: float = 0.0
    duration_s: float | None = None
    fired: bool = False

    def active(self, elapsed_s: float) -> bool:
        if elapsed_s < self.at_s:
            return False
        return self.duration_s is None or elapsed_s < self.at_s + self.duration_s


@dataclass
class FaultSchedule:
    """The faults of one device; ``elapsed_s`` is measured from the device's creation."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def holds(self, kind: str, elapsed_s: float) -> bool:
        """A lasting fault of that kind is in force now."""
        return any(f.kind == kind and f.active(elapsed_s) for f in self.faults)

    def fire(self, kind: str, elapsed_s: float) -> bool:
        """A one-shot fault of that kind is due now; it is consumed."""
        for f in self.faults:
            if f.kind == kind and not f.fired and elapsed_s >= f.at_s:
                f.fired = True
                return True
        return False
