"""Small simulated campaigns with faults injected at random moments, and what became of each.

A fault plan names a device of deploy/rigs/simulated.yaml (one of its five pumps or the spectrometer),
a fault the simulators can inject there (simulators/faults.py: no_reply, garbage, stall, reset,
disconnect on pumps; no_reply, disconnect, saturated, dark_lamp on the spectrometer), when it starts
(virtual seconds after the rig was built), how long it lasts (None: until cleared, one-shot for
stall and reset) and, for a pump's no_reply or garbage, which way the line fails (``both``: the pump
hears nothing either; ``reply``: it still obeys, only its replies are lost or garbled).

The campaign runs in this process. Whenever the runner holds (faulted, paused, e-stopped) and waits,
the operator's side runs instead of a wall-clock sleep: the pumps are looked at in the emulated
firmware itself (so a pump that no longer answers is still seen running), 30 virtual seconds pass
(a temporary fault may clear; a New Era pump's watchdog stops it within its time out), the pumps are
looked at again, and the campaign is resumed; after ``max_resumes`` holds it is aborted.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.campaign import run_campaign, start_campaign
from orchestrator.rig import load_rig
from orchestrator.store import Store
from simulators.faults import FAULT_PATHS, ONE_WAY_FAULTS, PUMP_FAULTS, SPECTROMETER_FAULTS
from simulators.serialsim import get_bus, parse_sim_url
from simulators.world import get_world

from . import campaigns as cz

HOLDS = ("faulted", "paused", "estopped")
WAIT_WHILE_HELD_S = 30.0  # virtual seconds that pass each time the held runner waits


@dataclass(frozen=True)
class FaultPlan:
    device: str  # a pump name, or "spectrometer"
    kind: str
    at_s: float
    duration_s: float | None
    path: str | None = None  # a pump's no_reply/garbage: "both" (default) or "reply"

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "at_s": round(self.at_s, 3)}
        if self.duration_s is not None:
            out["duration_s"] = round(self.duration_s, 3)
        if self.path is not None:
            out["path"] = self.path
        return out


def random_plans(rng: random.Random, horizon_s: float, pumps: list[str], most: int = 2) -> list[FaultPlan]:
    """One to ``most`` faults somewhere in the first ``horizon_s`` virtual seconds of a campaign."""
    plans = []
    kinds = [("pump", k) for k in PUMP_FAULTS] + [("spectrometer", k) for k in SPECTROMETER_FAULTS]
    for _ in range(rng.randint(1, most)):
        what, kind = rng.choice(kinds)  # every kind equally often, then a pump at random
        device = rng.choice(pumps) if what == "pump" else "spectrometer"
        duration = None if kind in ("stall", "reset") or rng.random() < 0.3 else rng.uniform(0.5, 60.0)
        path = rng.choice(FAULT_PATHS) if what == "pump" and kind in ONE_WAY_FAULTS else None
        plans.append(FaultPlan(device, kind, rng.uniform(0.0, horizon_s), duration, path))
    return plans


@dataclass
class Hold:
    status: str
    reason: str
    running: list[str]  # pumps running in the firmware when the hold began
    still_running: list[str] = field(default_factory=list)  # ...and WAIT_WHILE_HELD_S into it


@dataclass
class FaultRun:
    plans: list[FaultPlan]
    status: str = ""
    reason: str = ""
    holds: list[Hold] = field(default_factory=list)
    running_after: list[str] = field(default_factory=list)
    error: str = ""  # an exception out of the runner (a traceback)

    @property
    def clean(self) -> bool:
        """Finished, or held with a reason each time and then ended (aborted) by the operator."""
        if self.error or self.status not in ("finished", "aborted"):
            return False
        return all(h.reason.strip() for h in self.holds) and (self.status == "finished" or bool(self.holds))

    @property
    def pumps_left_running(self) -> bool:
        """A pump still pumping WAIT_WHILE_HELD_S into a hold, or after the end. (One running when the
        hold began may be stopped by its watchdog within its time out: see ``Hold.running``.)"""
        return bool(self.running_after) or any(h.still_running for h in self.holds)


class PumpWatch:
    """The firmware of a rig's emulated pumps, read directly (not over the wire)."""

    def __init__(self, rig_path: Path) -> None:
        cfg = load_rig(rig_path)
        self.pumps = [(p.name, *parse_sim_url(p.port)[:2], p.address) for p in cfg.pumps]
        self.world_name = (cfg.simulation.world if cfg.simulation else None) or cfg.name

    def running(self) -> list[str]:
        out = []
        for name, protocol, bus, address in self.pumps:
            snap = get_bus(protocol, bus).snapshot(address)
            if getattr(snap, "running", False) or getattr(snap, "state", "S") in ("I", "W", "X"):
                out.append(name)
        return out


def run_with_faults(
    store: Store, protocol: Path, plans: list[FaultPlan], seed: int, *, max_resumes: int = 2
) -> FaultRun:
    pumps = [p.name for p in load_rig(cz.RIG).pumps]
    by_device: dict[str, list[dict[str, Any]]] = {}
    for plan in plans:
        by_device.setdefault(plan.device, []).append(plan.entry())
    folder = Path(tempfile.mkdtemp(prefix="sdl-faults-"))
    rig_path = cz.faulty_rig(
        folder, {d: f for d, f in by_device.items() if d in pumps}, by_device.get("spectrometer", [])
    )
    run = FaultRun(plans)
    watch = PumpWatch(rig_path)
    campaign_id = start_campaign(store, protocol, rig_path, seed=seed)

    def sleep(_s: float) -> None:
        row = store.campaign(campaign_id)
        if row.status not in HOLDS:
            return
        hold: Hold | None = None
        if not run.holds or run.holds[-1].status != row.status or len(run.holds) <= max_resumes:
            hold = Hold(row.status, row.reason, watch.running())
            run.holds.append(hold)
        get_world(watch.world_name).clock.sleep(WAIT_WHILE_HELD_S)
        if hold is not None:
            hold.still_running = watch.running()
        action = "resume" if len(run.holds) <= max_resumes else "abort"
        if not any(c.action == action for c in store.pending_controls(campaign_id)):
            store.request_control(campaign_id, action, who="bench", reason=f"{action} after {row.status}")

    try:
        run_campaign(store, campaign_id, owner="bench", poll_s=0.0, wall=lambda: 0.0, sleep=sleep)
    except Exception as exc:  # noqa: BLE001 - what escapes the runner is what this harness counts
        run.error = f"{type(exc).__name__}: {exc}"
    row = store.campaign(campaign_id)
    run.status, run.reason = row.status, row.reason
    run.running_after = watch.running()
    return run
