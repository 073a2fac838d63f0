"""The console's :class:`~orchestrator.console.source.CampaignSource` over the campaign store.

Everything is read from :mod:`orchestrator.store`, which running campaigns write from their own
processes; control requests are written back to it (``Store.request_control``), and the campaign
honours them at its next checkpoint. An e-stop also latches the rig's e-stop in the store, which the
campaign checks without waiting for a checkpoint.

Every change to a campaign journals an event, so a view computed at journal position N stays true
until the journal moves: views are cached by position and many open pages cost one query each
(``latest_event_id``) until something happens.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
import yaml

from orchestrator import state as states
from orchestrator.console.events import (
    CONTROL,
    ESTOP,
    FAULT,
    FINISHED,
    INFO,
    PAUSED,
    PROGRESS,
    ConsoleEvent,
)
from orchestrator.console.scheduler import CampaignHealth
from orchestrator.console.source import (
    ENDED,
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
from orchestrator.spectra import interpolate_target, wavelength_grid
from orchestrator.state import InvalidTransition
from orchestrator.store import CampaignRow, ConditionRow, EventRow, RoundRow, Store, open_store
from orchestrator.store import UnknownCampaign as StoreUnknownCampaign

log = structlog.get_logger("orchestrator.console.store_source")

T = TypeVar("T")

MAX_PLOT_POINTS = 211  # a droplet spectrum on the page: every 2 nm of the paper's 1 nm grid is plenty
CACHE_MAX_AGE_S = 2.0  # a safety net: a view older than this is recomputed even if the journal stood still

# event kind -> category; status kinds are the states themselves (set_status journals the status)
_CATEGORIES: dict[str, str] = {
    states.PAUSED: PAUSED,
    states.FAULTED: FAULT,
    states.ORPHANED: FAULT,
    states.ESTOPPED: ESTOP,
    "estop": ESTOP,
    states.FINISHED: FINISHED,
    states.ABORTED: FINISHED,
    "control_requested": CONTROL,
    "control_handled": CONTROL,
    "estop_cleared": CONTROL,
    "replicate_acquired": PROGRESS,
    "condition_started": PROGRESS,
    "condition_done": PROGRESS,
    "condition_failed": FAULT,
    "batch_planned": PROGRESS,
    "round_done": PROGRESS,
}


@dataclass(frozen=True)
class _Plan:
    """What the console needs from a campaign's protocol and rig, read once (they never change)."""

    name: str
    variables: dict[str, tuple[tuple[float, float] | None, str]]  # name -> (hard limits, unit)
    batch_size: int | None
    replicates: int | None
    max_rounds: int | None
    max_conditions: int | None
    grid: tuple[float, float, float]
    target: tuple[np.ndarray, np.ndarray] | None  # (wavelength_nm, absorbance) as given
    rig_name: str
    rig_ports: dict[str, str]


class StoreSource:
    """A campaign source over a store URL (or an open :class:`Store`)."""

    def __init__(
        self, store: Store | str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        self._clock = clock
        self._lock = threading.Lock()
        self._plans: dict[str, _Plan] = {}
        self._cache: dict[tuple[Any, ...], tuple[int, float, Any]] = {}

    # ---- caching by journal position -------------------------------------------------------------

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        position = self.store.latest_event_id()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == position and now - hit[1] < CACHE_MAX_AGE_S:
            return hit[2]
        value = compute()
        with self._lock:
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[key] = (position, now, value)
        return value

    def _row(self, campaign_id: str) -> CampaignRow:
        try:
            return self.store.campaign(campaign_id)
        except StoreUnknownCampaign:
            raise UnknownCampaign(campaign_id) from None

    def _plan(self, row: CampaignRow) -> _Plan:
        plan = self._plans.get(row.id)
        if plan is None:
            plan = _read_plan(row)
            with self._lock:
                self._plans[row.id] = plan
        return plan

    # ---- campaigns -------------------------------------------------------------------------------

    def list_campaigns(self) -> list[CampaignSummary]:
        return self._cached(("list",), self._list)

    def _list(self) -> list[CampaignSummary]:
        out = []
        for row in self.store.campaigns():
            plan = self._plan(row)
            progress = self._progress(row, plan) if row.status not in ENDED else _ended_progress(row)
            out.append(
                CampaignSummary(
                    id=row.id,
                    name=row.name,
                    state=row.status,
                    reason=self._reason(row),
                    updated_at=row.updated_at,
                    progress=progress,
                )
            )
        return out

    def campaign(self, campaign_id: str) -> CampaignDetail:
        return self._cached(("campaign", campaign_id), lambda: self._detail(campaign_id))

    def _detail(self, campaign_id: str) -> CampaignDetail:
        row = self._row(campaign_id)
        plan = self._plan(row)
        conditions = self.store.conditions(campaign_id)
        best = None
        for c in conditions:
            if c.median_loss is not None and (best is None or c.median_loss < best.loss):
                best = Best(float(c.median_loss), c.round, c.index, dict(c.inputs))
        current = next((c for c in reversed(conditions) if c.status == "measuring"), None)
        return CampaignDetail(
            id=row.id,
            name=row.name,
            state=row.status,
            reason=self._reason(row),
            updated_at=row.updated_at,
            progress=self._progress(row, plan, conditions),
            started_at=row.created_at,
            best=best,
            current_inputs=dict(current.inputs) if current is not None else {},
            variables=list(plan.variables),
        )

    @staticmethod
    def _reason(row: CampaignRow) -> str:
        return row.description

    def _progress(
        self, row: CampaignRow, plan: _Plan, conditions: Sequence[ConditionRow] | None = None
    ) -> Progress:
        conditions = self.store.conditions(row.id) if conditions is None else conditions
        rounds = self.store.rounds(row.id)
        if not rounds:
            return Progress(
                rounds_max=plan.max_rounds, conditions=plan.batch_size, replicates=plan.replicates
            )
        last = rounds[-1]
        in_round = [c for c in conditions if c.round == last.index]
        current = next((c for c in in_round if c.status == "measuring"), None)
        replicate = 0
        if current is not None:
            replicate = sum(
                1
                for r in self.store.replicates(row.id, current.round, current.index)
                if r.attempt == current.attempt
            )
        else:
            done_here = [c for c in in_round if c.status in ("done", "failed")]
            current = done_here[-1] if done_here else None
            replicate = plan.replicates or 0 if current is not None else 0
        done = sum(1 for c in conditions if c.status in ("done", "failed"))
        planned = (plan.max_conditions or 0) or ((plan.max_rounds or 0) * (plan.batch_size or 0))
        measured = done * (plan.replicates or 1) + (
            replicate if current is not None and current.status == "measuring" else 0
        )
        fraction = min(1.0, measured / (planned * (plan.replicates or 1))) if planned else 0.0
        position = {c.index: i for i, c in enumerate(in_round)}
        return Progress(
            round=_ordinal(rounds, last.index),
            rounds_max=plan.max_rounds,
            condition=position[current.index] + 1 if current is not None else None,
            conditions=len(in_round) or plan.batch_size,
            replicate=replicate or None,
            replicates=plan.replicates,
            fraction=fraction,
        )

    # ---- events ----------------------------------------------------------------------------------

    def events(self, campaign_id: str | None, after_id: int, limit: int) -> Sequence[ConsoleEvent]:
        if campaign_id is not None:
            self._row(campaign_id)
        return [self._event(e) for e in self.store.events(campaign_id, after_id=after_id, limit=limit)]

    def recent_events(self, campaign_id: str, limit: int) -> Sequence[ConsoleEvent]:
        self._row(campaign_id)
        latest = self.store.latest_event_id()
        # read backwards in pages until enough of this campaign's events are found
        found: list[EventRow] = []
        step = max(limit * 4, 500)
        low = latest
        while low > 0 and len(found) < limit:
            low = max(0, low - step)
            found = self.store.events(campaign_id, after_id=low, limit=latest - low)
        return [self._event(e) for e in found[-limit:]]

    def latest_event_id(self) -> int:
        return self.store.latest_event_id()

    def _event(self, e: EventRow) -> ConsoleEvent:
        name = ""
        if e.campaign_id is not None:
            name = self._names().get(e.campaign_id, "")
        data = dict(e.data or {})
        return ConsoleEvent(
            id=e.id,
            campaign_id=e.campaign_id or "",
            campaign_name=name,
            at=e.at,
            kind=e.kind,
            category=_CATEGORIES.get(e.kind, INFO),
            text=event_text(e.kind, e.reason, e.who, e.at, data),
            who=None if e.who in (None, "", "system") else e.who,
            data=data,
        )

    def _names(self) -> dict[str, str]:
        return self._cached(("names",), lambda: {row.id: row.name for row in self.store.campaigns()})

    # ---- plots -----------------------------------------------------------------------------------

    def spectra(self, campaign_id: str, limit: int) -> SpectraView:
        return self._cached(("spectra", campaign_id, limit), lambda: self._spectra(campaign_id, limit))

    def _spectra(self, campaign_id: str, limit: int) -> SpectraView:
        row = self._row(campaign_id)
        plan = self._plan(row)
        grid = wavelength_grid(*plan.grid)
        stride = max(1, math.ceil(len(grid) / MAX_PLOT_POINTS))
        target: list[float] = []
        if plan.target is not None:
            target = _floats(interpolate_target(plan.target[0], plan.target[1], grid)[::stride])
        droplets: list[Droplet] = []
        # the condition measured last (or being measured): its latest droplets
        measured = [c for c in self.store.conditions(campaign_id) if c.status != "planned"]
        rounds = [r.index for r in self.store.rounds(campaign_id)]
        for c in reversed(measured):
            reps = [r for r in self.store.replicates(campaign_id, c.round, c.index) if r.attempt == c.attempt]
            if not reps:
                continue
            droplets = [
                Droplet(
                    round=_ordinal_of(rounds, r.round),
                    condition=_condition_ordinal(measured, c),
                    replicate=r.index + 1,
                    absorbance=_floats(np.asarray(r.absorbance, dtype=float)[::stride]),
                    loss=None if r.loss is None or not math.isfinite(r.loss) else float(r.loss),
                    accepted=bool(r.accepted),
                )
                for r in reps[-limit:]
            ]
            break
        return SpectraView(_floats(grid[::stride]), target, droplets)

    def losses(self, campaign_id: str) -> LossesView:
        return self._cached(("losses", campaign_id), lambda: self._losses(campaign_id))

    def _losses(self, campaign_id: str) -> LossesView:
        self._row(campaign_id)
        conditions = self.store.conditions(campaign_id)
        out: list[RoundLosses] = []
        best_so_far: list[dict[str, float]] = []
        best = math.inf
        for k, r in enumerate(self.store.rounds(campaign_id), start=1):
            mine = [c for c in conditions if c.round == r.index]
            out.append(
                RoundLosses(
                    index=k,
                    strategy=r.strategy,
                    conditions=[
                        ConditionLoss(
                            index=i,
                            median_loss=None if c.median_loss is None else float(c.median_loss),
                            accepted=int(c.accepted or 0),
                            inputs=dict(c.inputs),
                        )
                        for i, c in enumerate(mine, start=1)
                    ],
                )
            )
            scored = [float(c.median_loss) for c in mine if c.median_loss is not None]
            if scored:
                best = min(best, *scored)
            if math.isfinite(best):
                best_so_far.append({"round": k, "loss": best})
        return LossesView(out, best_so_far)

    def bounds(self, campaign_id: str) -> BoundsView:
        return self._cached(("bounds", campaign_id), lambda: self._bounds(campaign_id))

    def _bounds(self, campaign_id: str) -> BoundsView:
        row = self._row(campaign_id)
        plan = self._plan(row)
        variables = [VariableLimits(n, limits, unit) for n, (limits, unit) in plan.variables.items()]
        history: list[BoundsStep] = []
        previous: dict[str, tuple[float, float]] | None = None
        for k, r in enumerate(self.store.rounds(campaign_id), start=1):
            now = {n: (float(lo), float(hi)) for n, (lo, hi) in dict(r.bounds).items()}
            widened = (
                []
                if previous is None
                else [n for n, b in now.items() if n in previous and _wider(b, previous[n])]
            )
            history.append(BoundsStep(k, now, widened))
            previous = now
        return BoundsView(variables, history)

    # ---- control ---------------------------------------------------------------------------------

    def request_control(self, campaign_id: str, action: str, who: str, why: str) -> ControlReceipt:
        row = self._row(campaign_id)
        if row.status in ENDED:
            raise ControlRefused(f"campaign #{campaign_id} is {row.status}: it cannot {action} any more")
        if action == "estop":
            # the latch stops the rig at once (the runner checks it between and during steps); the
            # request records, for this campaign, who pressed it and why
            self.store.latch_estop(who=who, reason=why, rig=row.rig_name)
        elif action == "estop-clear":
            self.store.clear_estop(who=who, reason=why, rig=row.rig_name)
            latch = self.store.estop_latched(row.rig_name)
            if latch is not None:  # an every-rig latch still holds this rig
                raise ControlRefused(
                    f"an e-stop on every rig ({latch.who}: {latch.reason}) still holds rig {row.rig_name!r}: "
                    "clear it with `sdl estop --clear --reason TEXT` once every rig is safe"
                )
        try:
            request_id = self.store.request_control(campaign_id, action, who=who, reason=why)
        except InvalidTransition as exc:  # it ended between the check above and the request
            raise ControlRefused(str(exc)) from None
        log.info("control request stored", campaign=campaign_id, action=action, by=who, request=request_id)
        return ControlReceipt(campaign_id, action, who, why, datetime.now(UTC), request_id)

    # ---- health ----------------------------------------------------------------------------------

    def health(self, campaign_id: str) -> CampaignHealth | None:
        try:
            row = self.store.campaign(campaign_id)
        except StoreUnknownCampaign:
            return None
        plan = self._plan(row)
        # progress is a journal event; a heartbeat only says the process lives, not that it measures
        last = row.updated_at
        recent = self.recent_events(campaign_id, 1)
        if recent and recent[-1].at > last:
            last = recent[-1].at
        age = (datetime.now(UTC) - last).total_seconds()
        return CampaignHealth(
            active=row.status == states.RUNNING,
            seconds_since_last_event=max(0.0, age),
            rig_ports=plan.rig_ports,
        )


# ---- helpers -------------------------------------------------------------------------------------


def _ordinal(rounds: Sequence[RoundRow], index: int) -> int:
    return _ordinal_of([r.index for r in rounds], index)


def _ordinal_of(indices: Sequence[int], index: int) -> int:
    """Round and condition numbers as people count them (1, 2, ...), whatever the store's indices."""
    try:
        return list(indices).index(index) + 1
    except ValueError:
        return index + 1


def _condition_ordinal(conditions: Sequence[ConditionRow], c: ConditionRow) -> int:
    return _ordinal_of([x.index for x in conditions if x.round == c.round], c.index)


def _ended_progress(row: CampaignRow) -> Progress:
    return Progress(fraction=1.0 if row.status == states.FINISHED else 0.0)


def _wider(now: tuple[float, float], before: tuple[float, float]) -> bool:
    return now[0] < before[0] or now[1] > before[1]


def _floats(values: np.ndarray) -> list[float | None]:
    return [
        float(round(v, 5)) if math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()
    ]


def _read_plan(row: CampaignRow) -> _Plan:
    """The display facts of a campaign from its stored protocol and rig YAML (read leniently: the
    campaign already validated them, and the console must show even a campaign it cannot fully read)."""
    protocol = _yaml(row.protocol_yaml) or {}
    rig = _yaml(row.rig_yaml) or {}
    options = dict(row.options or {})
    variables: dict[str, tuple[tuple[float, float] | None, str]] = {}
    for name, spec in dict(protocol.get("variables") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {}
        limits = spec.get("hard_limits")
        unit = "%" if spec.get("kind") == "percent" else "uL/min" if spec.get("kind") == "total" else ""
        variables[str(name)] = ((float(limits[0]), float(limits[1])) if limits else None, unit)
    grid = dict(protocol.get("grid") or {})
    stop = dict(protocol.get("stop") or {})
    reps = dict(protocol.get("replicates") or {})
    ports = {str(p.get("name")): str(p.get("port")) for p in rig.get("pumps") or [] if isinstance(p, Mapping)}
    spectrometer = rig.get("spectrometer")
    if isinstance(spectrometer, Mapping) and spectrometer.get("port"):
        ports["spectrometer"] = str(spectrometer["port"])
    return _Plan(
        name=str(protocol.get("name") or row.name),
        variables=variables,
        batch_size=_int(protocol.get("batch_size", 15)),
        replicates=_int(reps.get("n", 20)),
        max_rounds=_int(options.get("max_rounds") or stop.get("max_rounds")),
        max_conditions=_int(stop.get("max_conditions")),
        grid=(
            float(grid.get("start_nm", 380.0)),
            float(grid.get("stop_nm", 800.0)),
            float(grid.get("step_nm", 1.0)),
        ),
        target=_target(protocol, options, row.protocol_path),
        rig_name=row.rig_name,
        rig_ports=ports,
    )


def _target(
    protocol: Mapping[str, Any], options: Mapping[str, Any], protocol_path: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The target spectrum: the CSV text the campaign stored, else the protocol's file if still there."""
    text = None
    for key in ("target_csv", "target_csv_text", "target"):
        value = options.get(key)
        if isinstance(value, str) and "," in value:
            text = value
            break
    if text is None:
        file = dict(protocol.get("target") or {}).get("file")
        if file and protocol_path:
            path = Path(protocol_path).parent / str(file)
            if path.is_file():
                text = path.read_text()
    if text is None:
        return None
    try:
        rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        data = np.genfromtxt(io.StringIO("\n".join(rows)), delimiter=",", dtype=float)
        data = data[np.all(np.isfinite(data[:, :2]), axis=1)][:, :2]
        data = data[np.argsort(data[:, 0])]
        return data[:, 0], data[:, 1]
    except (ValueError, IndexError):
        log.warning("unreadable target spectrum", protocol=protocol_path)
        return None


def _yaml(text: str) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def event_text(kind: str, reason: str, who: str | None, at: datetime, data: Mapping[str, Any]) -> str:
    """One journal event as a line a person can act on."""
    where = _where(data)
    if kind in states.STATES:
        return states.describe(kind, reason, who or "system", at)
    if kind == "replicate_acquired":
        loss = data.get("loss")
        score = f"loss {loss:.3f}" if isinstance(loss, int | float) and math.isfinite(loss) else "no loss"
        verdict = (
            "" if data.get("accepted", True) else f", rejected: {data.get('reject_reason') or 'screened out'}"
        )
        return f"{where}: {score}{verdict}"
    if kind == "control_requested":
        action = data.get("action", "control")
        return f"{action} requested" + (f": {reason}" if reason else "")
    if kind == "batch_planned":
        planned = data.get("conditions")
        n = len(planned) if isinstance(planned, list) else planned
        strategy = data.get("strategy")
        text = f"{where or 'next round'} planned"
        if isinstance(n, int):
            text += f": {n} condition{'' if n == 1 else 's'}"
        return text + (f" ({strategy})" if strategy else "")
    if kind in ("condition_done", "condition_failed"):
        loss = data.get("median_loss")
        text = f"{where}: " + ("failed" if kind == "condition_failed" else "done")
        if isinstance(loss, int | float) and math.isfinite(loss):
            text += f", median loss {loss:.3f} of {data.get('accepted', 0)} accepted droplets"
        return text + (f": {reason}" if reason else "")
    text = kind.replace("_", " ")
    if where:
        text = f"{where}: {text}"
    return text + (f": {reason}" if reason else "")


def _where(data: Mapping[str, Any]) -> str:
    parts = []
    for key, word in (("round", "round"), ("condition", "condition"), ("replicate", "replicate")):
        value = data.get(key)
        if isinstance(value, int):
            parts.append(f"{word} {value + 1}")
    return " ".join(parts)
