"""What the console reads from and asks of the campaign store, as one small interface.

The routes, the live stream, the notifier and the scheduler see campaigns only through
:class:`CampaignSource`; :mod:`orchestrator.console.store_source` implements it over
:mod:`orchestrator.store`. Everything returned is plain data, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from orchestrator.console.events import ConsoleEvent
from orchestrator.console.scheduler import CampaignHealth
from orchestrator.console.users import Role

# states as the console shows them
RUNNING, PAUSING, PAUSED, ESTOPPED, FAULTED, ABORTING, ABORTED, FINISHED, CREATED = (
    "running",
    "pausing",
    "paused",
    "estopped",
    "faulted",
    "aborting",
    "aborted",
    "finished",
    "created",
)
ENDED = frozenset({ABORTED, FINISHED})
# waiting for a process: for a rig agent (queued), or after its process vanished (orphaned)
QUEUED, ORPHANED = "queued", "orphaned"

# action -> (the role it needs, the states it makes sense in)
ACTIONS: dict[str, tuple[Role, frozenset[str]]] = {
    # a queued or orphaned campaign has no process: a pause or an abort applies at once
    "pause": (Role.OPERATOR, frozenset({RUNNING, CREATED, QUEUED, ORPHANED})),
    "resume": (Role.OPERATOR, frozenset({PAUSED, PAUSING, FAULTED})),
    "abort": (Role.OPERATOR, frozenset({RUNNING, PAUSING, PAUSED, FAULTED, ESTOPPED, CREATED, QUEUED, ORPHANED})),
    # an e-stop is never refused for the state it finds: pressing it twice must be harmless
    "estop": (Role.OPERATOR,
              frozenset({RUNNING, PAUSING, PAUSED, FAULTED, ABORTING, CREATED, ESTOPPED, QUEUED, ORPHANED})),
    "estop-clear": (Role.ADMIN, frozenset({ESTOPPED})),
    "recalibrate": (Role.OPERATOR, frozenset({RUNNING, PAUSED})),
}
REASON_REQUIRED = frozenset({"pause", "abort", "estop-clear"})


# what only a process running the campaign can do: not offered while none does (`sdl resume` first)
NEEDS_PROCESS = frozenset({"resume", "recalibrate"})


def allowed_actions(
    state: str, role: Role, *, driven: bool = True, lab_latch: bool = False, rig_agent: bool = False
) -> list[str]:
    return [
        a for a, (needs, states) in ACTIONS.items()
        if role.allows(needs) and state in states
        and (driven or a not in NEEDS_PROCESS or (a == "resume" and rig_agent))  # the agent takes it up
        and not (lab_latch and a == "estop-clear")  # the console's clear would be refused (409)
    ]


class UnknownCampaign(LookupError):
    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"no campaign {campaign_id!r} in this store: see GET /api/campaigns")


class ControlRefused(ValueError):
    """A control request that makes no sense in the campaign's state (resume a finished campaign)."""


@dataclass(frozen=True)
class Progress:
    round: int | None = None
    rounds_max: int | None = None
    condition: int | None = None
    conditions: int | None = None
    replicate: int | None = None
    replicates: int | None = None
    fraction: float = 0.0  # of the campaign's planned measurements


@dataclass(frozen=True)
class Best:
    loss: float
    round: int
    condition: int
    inputs: dict[str, float]


@dataclass(frozen=True)
class CampaignSummary:
    id: str
    name: str
    state: str
    reason: str  # the state in words: "paused by alice at 02:14: bubble in line"
    updated_at: datetime | None
    progress: Progress
    rig: str = ""  # the rig it runs on (several rigs may share one store)


@dataclass(frozen=True)
class CampaignDetail(CampaignSummary):
    started_at: datetime | None = None
    best: Best | None = None
    current_inputs: dict[str, float] = field(default_factory=dict)
    variables: list[str] = field(default_factory=list)
    driven: bool = True  # a live process runs it (False: queued, orphaned, or its process is gone)
    lab_latch: bool = False  # an e-stop on every rig holds it: only `sdl estop --clear` releases that
    rig_agent: bool = False  # a live agent serves its rig: a resume with no process queues it for that agent


@dataclass(frozen=True)
class Droplet:
    round: int
    condition: int
    replicate: int
    absorbance: list[float | None]
    loss: float | None
    accepted: bool


@dataclass(frozen=True)
class SpectraView:
    wavelengths_nm: list[float]
    target: list[float]
    droplets: list[Droplet]


@dataclass(frozen=True)
class ConditionLoss:
    index: int
    median_loss: float | None
    accepted: int
    inputs: dict[str, float]
    status: str = "done"  # planned, measuring, done, failed: a null loss is failed or not measured yet


@dataclass(frozen=True)
class RoundLosses:
    index: int
    strategy: str
    conditions: list[ConditionLoss]


@dataclass(frozen=True)
class LossesView:
    rounds: list[RoundLosses]
    best_so_far: list[dict[str, float]]  # [{round, loss}], the running minimum after each round


@dataclass(frozen=True)
class VariableLimits:
    name: str
    hard_limits: tuple[float, float] | None
    unit: str = ""


@dataclass(frozen=True)
class BoundsStep:
    round: int
    bounds: dict[str, tuple[float, float]]
    widened: list[str]


@dataclass(frozen=True)
class BoundsView:
    variables: list[VariableLimits]
    history: list[BoundsStep]


@dataclass(frozen=True)
class ControlReceipt:
    campaign_id: str
    action: str
    who: str
    reason: str
    at: datetime
    request_id: int | str | None = None


class CampaignSource(Protocol):
    def list_campaigns(self) -> list[CampaignSummary]: ...

    def campaign(self, campaign_id: str) -> CampaignDetail: ...

    def events(
        self, campaign_id: str | None, after_id: int, limit: int, detail: bool = True
    ) -> Sequence[ConsoleEvent]: ...

    def recent_events(self, campaign_id: str, limit: int, detail: bool = True) -> Sequence[ConsoleEvent]: ...

    def failed_schedules(self, limit: int) -> Sequence[ConsoleEvent]: ...

    def latest_event_id(self) -> int: ...

    def spectra(self, campaign_id: str, limit: int) -> SpectraView: ...

    def losses(self, campaign_id: str) -> LossesView: ...

    def bounds(self, campaign_id: str) -> BoundsView: ...

    def request_control(self, campaign_id: str, action: str, who: str, why: str) -> ControlReceipt: ...

    def health(self, campaign_id: str) -> CampaignHealth | None: ...
