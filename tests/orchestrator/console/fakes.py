"""An in-memory campaign source for the console's route tests: two campaigns with plausible data,
and control requests that take effect at once (the real engine honours them at a checkpoint)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from orchestrator.console.events import CONTROL, DETAIL_KINDS, ESTOP, INFO, PAUSED, PROGRESS, ConsoleEvent
from orchestrator.console.scheduler import CampaignHealth
from orchestrator.console.source import (
    Best,
    BoundsStep,
    BoundsView,
    CampaignDetail,
    CampaignSummary,
    ConditionLoss,
    ControlReceipt,
    ControlRefused,
    Droplet,
    LossesView,
    Progress,
    RoundLosses,
    SpectraView,
    UnknownCampaign,
    VariableLimits,
)

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
VARS = ["Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total"]
WL = [380.0 + i for i in range(0, 421, 5)]


def _peak(center: float, width: float, height: float) -> list[float | None]:
    return [round(height * math.exp(-(((w - center) / width) ** 2)) + 0.02, 4) for w in WL]


class FakeSource:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[ConsoleEvent] = []
        self.requests: list[tuple[str, str, str, str]] = []
        self.campaigns: dict[str, CampaignDetail] = {
            "1": CampaignDetail(
                id="1",
                name="ag_nanoprism",
                state="running",
                reason="running: round 3, condition 7 of 15, replicate 12 of 20",
                updated_at=T0,
                progress=Progress(3, 9, 7, 15, 12, 20, 0.26),
                started_at=T0,
                best=Best(0.21, 2, 4, {v: 10.0 for v in VARS}),
                current_inputs={v: 12.0 for v in VARS},
                variables=VARS,
            ),
            "2": CampaignDetail(
                id="2",
                name="ag_nanoprism",
                state="finished",
                reason="finished: loss 0.14 below the 0.15 threshold in round 5",
                updated_at=T0,
                progress=Progress(5, 9, 15, 15, 20, 20, 1.0),
                variables=VARS,
            ),
        }
        for i in range(5):
            self.add_event(
                "1", "replicate_measured", PROGRESS, f"round 3 condition 7 replicate {8 + i}: loss 0.3"
            )

    def add_event(
        self, campaign_id: str, kind: str, category: str, text: str, who: str | None = None
    ) -> ConsoleEvent:
        with self._lock:
            event = ConsoleEvent(
                id=len(self._events) + 1,
                campaign_id=campaign_id,
                campaign_name=self.campaigns[campaign_id].name,
                at=T0 + timedelta(seconds=len(self._events)),
                kind=kind,
                category=category,
                text=text,
                who=who,
            )
            self._events.append(event)
            return event

    def _get(self, campaign_id: str) -> CampaignDetail:
        if campaign_id not in self.campaigns:
            raise UnknownCampaign(campaign_id)
        return self.campaigns[campaign_id]

    def list_campaigns(self) -> list[CampaignSummary]:
        return [
            CampaignSummary(c.id, c.name, c.state, c.reason, c.updated_at, c.progress, c.rig)
            for c in self.campaigns.values()
        ]

    def campaign(self, campaign_id: str) -> CampaignDetail:
        return self._get(campaign_id)

    def events(
        self, campaign_id: str | None, after_id: int, limit: int, detail: bool = True
    ) -> Sequence[ConsoleEvent]:
        if campaign_id is not None:
            self._get(campaign_id)
        with self._lock:
            found = [
                e
                for e in self._events
                if e.id > after_id and campaign_id in (None, e.campaign_id) and (detail or e.kind not in DETAIL_KINDS)
            ]
        return found[:limit]

    def recent_events(self, campaign_id: str, limit: int, detail: bool = True) -> Sequence[ConsoleEvent]:
        self._get(campaign_id)
        with self._lock:
            return [
                e for e in self._events if e.campaign_id == campaign_id and (detail or e.kind not in DETAIL_KINDS)
            ][-limit:]

    def failed_schedules(self, limit: int) -> Sequence[ConsoleEvent]:
        with self._lock:
            return [e for e in self._events if e.kind == "schedule_failed"][-limit:]

    def latest_event_id(self) -> int:
        with self._lock:
            return len(self._events)

    def spectra(self, campaign_id: str, limit: int) -> SpectraView:
        self._get(campaign_id)
        droplets = [
            Droplet(3, 7, r, _peak(600 + 4 * r, 60, 0.8 + 0.02 * r), 0.3 - 0.01 * r, r != 3)
            for r in range(1, 6)
        ]
        return SpectraView(WL, _peak(642, 55, 1.0), droplets[-limit:])

    def losses(self, campaign_id: str) -> LossesView:
        self._get(campaign_id)
        rounds = [
            RoundLosses(
                k,
                "lhs" if k == 1 else "bo",
                [ConditionLoss(c, 0.6 / k + 0.02 * c, 18, {}) for c in range(1, 8)],
            )
            for k in (1, 2, 3)
        ]
        best, so_far = math.inf, []
        for r in rounds:
            best = min(best, *(c.median_loss for c in r.conditions if c.median_loss is not None))
            so_far.append({"round": r.index, "loss": best})
        return LossesView(rounds, so_far)

    def bounds(self, campaign_id: str) -> BoundsView:
        self._get(campaign_id)
        limits = [VariableLimits(v, (0.5, 80.0), "%") for v in VARS[:4]] + [
            VariableLimits("Q_total", (50, 2000), "uL/min")
        ]
        steps = [
            BoundsStep(1, {**{v: (4.0, 20.0) for v in VARS[:4]}, "Q_total": (200.0, 1000.0)}, []),
            BoundsStep(2, {**{v: (4.0, 20.0) for v in VARS[:4]}, "Q_total": (200.0, 1000.0)}, []),
            BoundsStep(
                3,
                {**{v: (4.0, 20.0) for v in VARS[:4]}, "Q_seed": (1.0, 20.0), "Q_total": (200.0, 1000.0)},
                ["Q_seed"],
            ),
        ]
        return BoundsView(limits, steps)

    def request_control(self, campaign_id: str, action: str, who: str, why: str) -> ControlReceipt:
        c = self._get(campaign_id)
        if c.state == "finished":
            raise ControlRefused(f"campaign #{campaign_id} is finished")
        self.requests.append((campaign_id, action, who, why))
        self.add_event(campaign_id, "control_requested", CONTROL, f"{action} requested: {why}", who)
        at = "01:14"
        new_state = {
            "pause": ("paused", f"paused by {who} at {at}: {why}", PAUSED),
            "resume": ("running", "running", INFO),
            "abort": ("aborted", f"aborted by {who} at {at}: {why}", INFO),
            "estop": ("estopped", f"e-stopped by {who} at {at}: {why}", ESTOP),
            "estop-clear": ("paused", f"e-stop cleared by {who} at {at}: {why}", INFO),
        }.get(action)
        if new_state is not None:
            state, reason, category = new_state
            self.campaigns[campaign_id] = replace(c, state=state, reason=reason)
            self.add_event(campaign_id, f"campaign_{state}", category, reason, who)
        return ControlReceipt(campaign_id, action, who, why, T0, len(self.requests))

    def health(self, campaign_id: str) -> CampaignHealth | None:
        c = self.campaigns.get(campaign_id)
        if c is None:
            return None
        return CampaignHealth(active=c.state == "running", seconds_since_last_event=5.0, rig_ports={})
