"""Fault injection, set per device in the rig file.

A fault starts ``at_s`` seconds after the device was built (on the world's clock) and lasts
``duration_s`` (None: until the operator clears it, as a stall does). One-shot faults (stall, reset)
fire once; the others hold for their duration.

A serial line fails in one of two ways, and a pump emulator tells them apart because they decide
whether the host can still stop the pump (``path``, for ``no_reply`` and ``garbage``):

* ``both`` (default): the pump hears nothing usable either - a cut or unplugged cable at the pump, a
  hung controller, noise or a baud mismatch that garbles both directions. Commands are not carried out.
* ``reply``: only the pump's way back is broken - its transmit wire or line driver, noise on the
  return line. The pump hears and obeys every command; the host gets no reply, or an unreadable one.

``disconnect`` is the host's adapter unplugged: the port itself fails and nothing goes either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PUMP_FAULTS = ("no_reply", "garbage", "stall", "reset", "disconnect")
SPECTROMETER_FAULTS = ("no_reply", "disconnect", "saturated", "dark_lamp")
FAULT_PATHS = ("both", "reply")
ONE_WAY_FAULTS = ("no_reply", "garbage")  # the faults that take a path


@dataclass
class Fault:
    kind: str
    at_s: float = 0.0
    duration_s: float | None = None
    fired: bool = False
    path: str = "both"

    def __post_init__(self) -> None:
        if self.path not in FAULT_PATHS:
            raise ValueError(f"fault path {self.path!r} is not one of {', '.join(FAULT_PATHS)}")
        if self.path != "both" and self.kind not in ONE_WAY_FAULTS:
            raise ValueError(f"a {self.kind} fault has no path; only {', '.join(ONE_WAY_FAULTS)} take one")

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

    def holds(self, kind: str, elapsed_s: float, path: str | None = None) -> bool:
        """A lasting fault of that kind (and of that path, if given) is in force now."""
        return any(
            f.kind == kind and (path is None or f.path == path) and f.active(elapsed_s) for f in self.faults
        )

    def deaf(self, elapsed_s: float) -> bool:
        """The device hears no usable command now (a both-ways line fault is in force)."""
        return any(self.holds(kind, elapsed_s, "both") for kind in ONE_WAY_FAULTS)

    def fire(self, kind: str, elapsed_s: float) -> bool:
        """A one-shot fault of that kind is due now; it is consumed."""
        for f in self.faults:
            if f.kind == kind and not f.fired and elapsed_s >= f.at_s:
                f.fired = True
                return True
        return False
