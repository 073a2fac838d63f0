"""The shared virtual world of a simulated rig: a clock, the tubing between mixer and detector, and
which pump carries which stream.

The pump emulators report every change of their effective flow here; the simulated spectrometer
asks what composition sits at the detector *now*, which is what left the mixer one dead volume ago.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog

from drivers.base import Clock, MonotonicClock

log = structlog.get_logger("simulators.world")

# Real time, for pty emulators serving other programs and for real rigs: the drivers' own clock.
WallClock = MonotonicClock


PACE_ENV = "SDL_SIM_PACE"


def _pace_from_env() -> float:
    text = os.environ.get(PACE_ENV, "").strip()
    if not text:
        return 0.0
    try:
        pace = float(text)
    except ValueError:
        raise ValueError(
            f"{PACE_ENV}={text!r} is not a number: give wall seconds per virtual second, e.g. 0.01"
        ) from None
    if not 0.0 <= pace <= 10.0:
        raise ValueError(f"{PACE_ENV}={text!r} is outside 0-10 wall seconds per virtual second")
    return pace


class VirtualClock:
    """Dry-run time: sleeping advances the clock at once and costs no wall time.

    ``pace`` (wall seconds per virtual second, default ``$SDL_SIM_PACE`` or 0) makes each sleep also
    take that fraction of wall time, so a person or a browser test can watch a dry run progress;
    the virtual times, and so every number the run produces, are the same at any pace.

    :meth:`every` is what a background thread is in real time (a pump driver's keep-alive): its
    callback runs at each multiple of its interval that a sleep on this clock passes, in the
    sleeping thread, with the clock standing at that moment."""

    def __init__(self, start: float = 0.0, pace: float | None = None) -> None:
        self._t = float(start)
        self._lock = threading.Lock()
        self.pace = _pace_from_env() if pace is None else float(pace)
        self._timers: list[_Timer] = []
        self._in_timer = threading.local()

    def now(self) -> float:
        with self._lock:
            return self._t

    def every(self, interval_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` every ``interval_s`` virtual seconds from now; returns the cancel function."""
        if not interval_s > 0:
            raise ValueError(f"timer interval {interval_s!r} s must be > 0")
        with self._lock:
            timer = _Timer(self._t + float(interval_s), float(interval_s), callback)
            self._timers.append(timer)

        def cancel() -> None:
            with self._lock:
                if timer in self._timers:
                    self._timers.remove(timer)

        return cancel

    def sleep(self, seconds: float) -> None:
        if not seconds > 0:
            return
        with self._lock:
            start = self._t
            end = start + float(seconds)
        moved_to = start
        while not getattr(self._in_timer, "on", False):  # a timer's own sleeps fire no timers
            with self._lock:
                due = [t for t in self._timers if t.next <= end]
                if not due:
                    break
                timer = min(due, key=lambda t: t.next)
                self._t = max(self._t, timer.next)
                timer.next += timer.interval
                at = self._t
            self._pace(at - moved_to)
            moved_to = at
            self._in_timer.on = True
            try:
                timer.callback()
            except Exception as exc:  # noqa: BLE001 - a failing keep-alive must not break the sleeper
                log.warning("virtual clock timer failed", callback=getattr(timer.callback, "__qualname__", "?"),
                            error=repr(exc), at_s=at)
            finally:
                self._in_timer.on = False
        with self._lock:
            # exactly start + seconds when nobody else moved the clock meanwhile (as before timers)
            self._t = end if self._t == moved_to else self._t + (end - moved_to)
        self._pace(end - moved_to)

    def _pace(self, seconds: float) -> None:
        if self.pace > 0 and seconds > 0:
            time.sleep(seconds * self.pace)


@dataclass
class _Timer:
    next: float
    interval: float
    callback: Callable[[], None]


@dataclass(frozen=True)
class InputMap:
    """How a chemistry input is read off the flows: a stream's % of the aqueous flow, or the total."""

    kind: str  # "percent" or "total"
    stream: str | None = None


@dataclass
class World:
    clock: Clock = field(default_factory=VirtualClock)
    dead_volume_ul: float = 60.0
    inputs: Mapping[str, InputMap] = field(default_factory=dict)
    chemistry: object | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    _pump_streams: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    _rates: dict[str, float] = field(default_factory=dict)
    _history: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def attach_pump(self, bus: str, address: int, stream: str, phase: str = "aqueous") -> None:
        """Say that the pump at ``address`` on ``bus`` carries ``stream`` (aqueous or oil carrier)."""
        with self._lock:
            self._pump_streams[(bus, int(address))] = (stream, phase)

    def pump_flow_changed(self, bus: str, address: int, rate_ul_min: float) -> None:
        """Called by a pump emulator whenever its effective flow changes (run, stop, new rate, stall)."""
        with self._lock:
            key = (bus, int(address))
            if key not in self._pump_streams:
                return
            stream, phase = self._pump_streams[key]
            if phase != "aqueous":
                return
            self._rates[stream] = max(0.0, float(rate_ul_min))
            now = self.clock.now()
            snapshot = dict(self._rates)
            if self._history and self._history[-1][0] == now:
                self._history[-1] = (now, snapshot)
            else:
                self._history.append((now, snapshot))

    def seed_replicate(self, seed: np.random.SeedSequence | int) -> None:
        """Seed the noise of the next droplet (per campaign, round, condition, replicate)."""
        self.rng = np.random.default_rng(seed)

    def detector_flows(self) -> dict[str, float]:
        """Per-stream rates (uL/min) of the liquid now at the detector: what left the mixer one
        dead volume of flow ago. Stopped flow leaves the last composition standing in the cell."""
        with self._lock:
            if not self._history:
                return {}
            now = self.clock.now()
            remaining = self.dead_volume_ul
            end = now
            for start, rates in reversed(self._history):
                total = sum(rates.values())
                span = max(0.0, end - start)
                swept = total * span / 60.0
                if total > 0 and swept >= remaining:
                    return dict(rates)
                remaining -= swept
                end = start
            return {}

    def detector_inputs(self) -> dict[str, float] | None:
        """The chemistry inputs of the liquid at the detector, or None when only carrier is there."""
        flows = self.detector_flows()
        total = sum(flows.values())
        if total <= 0:
            return None
        values: dict[str, float] = {}
        for name, spec in self.inputs.items():
            if spec.kind == "total":
                values[name] = total
            else:
                values[name] = 100.0 * flows.get(spec.stream or "", 0.0) / total
        if not any(v > 0 for k, v in values.items() if self.inputs[k].kind == "percent"):
            return None
        return values


_worlds: dict[str, World] = {}
_worlds_lock = threading.Lock()


def get_world(name: str = "default") -> World:
    """The process-wide world of that name, created (virtual clock, no chemistry) on first use."""
    with _worlds_lock:
        if name not in _worlds:
            _worlds[name] = World()
        return _worlds[name]


def set_world(name: str, world: World) -> World:
    with _worlds_lock:
        _worlds[name] = world
        return world


def drop_world(name: str) -> None:
    with _worlds_lock:
        _worlds.pop(name, None)
