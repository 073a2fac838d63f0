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
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
import yaml
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import state as states
from orchestrator.console.events import (
    ABORTED,
    CONTROL,
    DETAIL_KINDS,
    ESTOP,
    FAULT,
    FINISHED,
    INFO,
    PAUSED,
    PROGRESS,
    WARNING,
    ConsoleEvent,
)
from orchestrator.console.scheduler import SCHEDULE_FAILED, CampaignHealth
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
from orchestrator.store import (
    CampaignProgress,
    CampaignRow,
    ConditionBrief,
    EventRow,
    Store,
    database_error_text,
    open_store,
)
from orchestrator.store import UnknownCampaign as StoreUnknownCampaign

log = structlog.get_logger("orchestrator.console.store_source")

T = TypeVar("T")

MAX_PLOT_POINTS = 211  # a droplet spectrum on the page: every 2 nm of the paper's 1 nm grid is plenty
POSITION_FRESH_S = 0.1  # many pages refreshing at once share one look at the journal's position
CACHE_MAX_AGE_S = 2.0
REFRESH_EVERY_S = 0.2  # the background refresher's period: how stale a page's view can be
HOT_FOR_S = 5.0  # a view nobody asked for this long is no longer renewed in the background
MAX_CACHED_VIEWS = 512  # a safety net: a view older than this is recomputed even if the journal stood still

# event kind -> category; status kinds are the states themselves (set_status journals the status)
_CATEGORIES: dict[str, str] = {
    states.PAUSED: PAUSED,
    states.FAULTED: FAULT,
    states.ORPHANED: FAULT,
    states.ESTOPPED: ESTOP,
    "estop": ESTOP,
    states.FINISHED: FINISHED,
    states.ABORTED: ABORTED,
    "control_requested": CONTROL,
    "control_handled": CONTROL,
    "estop_cleared": CONTROL,
    "replicate_acquired": PROGRESS,
    "condition_started": PROGRESS,
    "condition_done": PROGRESS,
    # a failed condition is the chemistry's answer, not a fault to wake anyone for: fifty in a failure
    # region overnight were fifty webhooks (a round of them holds the campaign, and that is notified)
    "condition_failed": WARNING,
    "calibration_warning": WARNING,  # a dark taken as zeros: the absorbance carries the baseline
    "batch_planned": PROGRESS,
    "round_done": PROGRESS,
    SCHEDULE_FAILED: FAULT,
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
    stride: int  # plot every stride-th wavelength of the protocol's grid
    plot_grid: list[float | None]
    plot_target: list[float | None]  # the target on plot_grid; empty if it cannot be read
    rig_name: str
    rig_ports: dict[str, str]


class StoreSource:
    """A campaign source over a store URL (or an open :class:`Store`)."""

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        fresh_s: float = POSITION_FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``fresh_s``: how long a read of the journal's position is trusted; within it, cached views
        are served without touching the database (0: ask every time)."""
        self.store = store if isinstance(store, Store) else open_store(store)
        self._fresh_s = fresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._plans: dict[str, _Plan] = {}
        # key -> (journal position, when computed, view); key = (method name, *args)
        self._cache: dict[tuple[Any, ...], tuple[int, float, Any]] = {}
        self._flights: dict[tuple[Any, ...], threading.Lock] = {}
        self._makers: dict[tuple[Any, ...], Callable[[], Any]] = {}
        self._asked: dict[tuple[Any, ...], float] = {}  # key -> when a reader last asked for it
        self._position = (-1, -math.inf)  # (latest event id, when it was read)
        self._building = threading.local()  # .position: the journal position a view is built at
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- caching by journal position -------------------------------------------------------------

    def _journal_position(self) -> int:
        position, read_at = self._position
        now = self._clock()
        if now - read_at < self._trust_s():
            return position
        position = self.store.latest_event_id()
        self._position = (position, now)
        return position

    def _trust_s(self) -> float:
        """How old a read of the journal's position may be: ``fresh_s``, or a little more than the
        refresher's period while it runs (it reads the position and renews the views itself)."""
        return max(self._fresh_s, REFRESH_EVERY_S * 3) if self._refresher is not None else self._fresh_s

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        self._asked[key] = self._clock()
        self._makers[key] = compute
        # a view built from another (the snapshot) is built at the position its caller builds at
        position = getattr(self._building, "position", None)
        if position is None:
            position = self._journal_position()
        hit = self._hit(key, position)
        if hit is not None:
            return hit[0]
        return self._compute(key, position, compute)

    def _compute(self, key: tuple[Any, ...], position: int, compute: Callable[[], T]) -> T:
        # one computation per view and position: readers asking at the same moment wait for it
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:
            hit = self._hit(key, position)
            if hit is not None:
                return hit[0]
            outer = getattr(self._building, "position", None)
            self._building.position = position
            try:
                value = compute()
            finally:
                self._building.position = outer
            with self._lock:
                if len(self._cache) > MAX_CACHED_VIEWS:
                    self._cache.clear()
                    self._makers.clear()
                    self._asked.clear()
                self._cache[key] = (position, self._clock(), value)
            return value

    def peek(self, method: str, *args: Any) -> Any | None:
        """The view ``method(*args)`` would return, if it is cached and the journal's position is
        known to be current: answered without the database, so the event loop can answer it itself.
        None: call the method (in a worker thread)."""
        key = (method, *args)
        position, read_at = self._position
        now = self._clock()
        if now - read_at >= self._trust_s():
            return None
        hit = self._hit(key, position)
        if hit is None:
            return None
        self._asked[key] = now
        return hit[0]

    def _hit(self, key: tuple[Any, ...], position: int) -> tuple[Any] | None:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] >= position and self._clock() - hit[1] < CACHE_MAX_AGE_S:
            return (hit[2],)
        return None

    def refresh(self) -> None:
        """Read the journal's position and renew the views readers asked for lately, before telling
        readers the new position: pages then find their views ready instead of waiting for them."""
        position = self.store.latest_event_id()
        now = self._clock()
        with self._lock:
            hot = [
                (key, self._makers[key], self._cache.get(key))
                for key, asked in self._asked.items()
                if now - asked < HOT_FOR_S and key in self._makers
            ]
        for key, make, cached in hot:
            if cached is not None and cached[0] >= position and now - cached[1] < CACHE_MAX_AGE_S / 2:
                continue
            try:
                self._compute(key, position, make)
            except UnknownCampaign:
                pass
        self._position = (position, now)

    def start(self) -> None:
        """Renew views in a background thread every REFRESH_EVERY_S (the console app starts it)."""
        if self._refresher is not None:
            return
        self._stop.clear()

        def loop() -> None:
            failing: Exception | None = None
            while not self._stop.wait(REFRESH_EVERY_S):
                try:
                    self.refresh()
                    failing = None
                except SQLAlchemyError as exc:  # a restarting database: said once, tried again next time
                    if failing is None:
                        log.warning("view refresh failed: the database is unreachable", error=database_error_text(exc))
                    failing = exc
                except Exception:  # noqa: BLE001 - anything else is a bug: its traceback, every time
                    log.exception("view refresh failed")

        self._refresher = threading.Thread(target=loop, name="console-view-refresh", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        if self._refresher is not None:
            self._stop.set()
            self._refresher.join(timeout=5)
            self._refresher = None

    def _row(self, campaign_id: str) -> CampaignRow:
        with _known(campaign_id):
            return self.store.campaign(campaign_id)

    def _plan(self, row: CampaignRow) -> _Plan:
        plan = self._plans.get(row.id)
        if plan is None:
            plan = _read_plan(row)
            with self._lock:
                self._plans[row.id] = plan
        return plan

    # ---- campaigns -------------------------------------------------------------------------------

    def list_campaigns(self) -> list[CampaignSummary]:
        return self._cached(("list_campaigns",), self._list)

    def _list(self) -> list[CampaignSummary]:
        out = []
        for row in self.store.campaigns():
            progress = (
                _progress(self._plan(row), self._snapshot(row.id))
                if row.status not in ENDED
                else _ended_progress(row)
            )
            out.append(
                CampaignSummary(
                    id=row.id,
                    name=row.name,
                    state=row.status,
                    reason=self._reason(row),
                    updated_at=row.updated_at,
                    progress=progress,
                    rig=row.rig_name,
                )
            )
        return out

    def _reason(self, row: Any) -> str:
        """The state in words; a queued campaign that no live agent will pick up, or a running one whose
        process died, says so (:meth:`orchestrator.store.Store.waiting_note`)."""
        note = self.store.waiting_note(row)
        return f"{row.description} ({note})" if note else row.description

    def campaign(self, campaign_id: str) -> CampaignDetail:
        return self._cached(("campaign", campaign_id), lambda: self._detail(campaign_id))

    def _detail(self, campaign_id: str) -> CampaignDetail:
        snap = self._snapshot(campaign_id)
        row, plan = snap.campaign, self._plan(snap.campaign)
        best = None
        for c in snap.conditions:
            if c.median_loss is not None and (best is None or c.median_loss < best.loss):
                best = Best(c.median_loss, _ordinal_of(snap.round_indices, c.round), c.index + 1, c.inputs)
        current = snap.measuring
        return CampaignDetail(
            id=row.id,
            name=row.name,
            state=row.status,
            reason=self._reason(row),
            updated_at=row.updated_at,
            progress=_progress(plan, snap),
            rig=row.rig_name,
            started_at=row.created_at,
            best=best,
            current_inputs=dict(current.inputs) if current is not None else {},
            variables=list(plan.variables),
            driven=row.is_live(self.store.now()),
            lab_latch=row.status == states.ESTOPPED and self.store.estop_latched(None) is not None,
            rig_agent=self.store.has_live_agent(row.rig_name),
        )

    def _snapshot(self, campaign_id: str) -> CampaignProgress:
        """Everything the progress, losses and bounds views need (one read transaction, cached)."""
        return self._cached(("snapshot", campaign_id), lambda: self._read_snapshot(campaign_id))

    def _read_snapshot(self, campaign_id: str) -> CampaignProgress:
        with _known(campaign_id):
            return self.store.progress(campaign_id)

    # ---- events ----------------------------------------------------------------------------------

    def events(
        self, campaign_id: str | None, after_id: int, limit: int, detail: bool = True
    ) -> Sequence[ConsoleEvent]:
        if campaign_id is not None:
            self._row(campaign_id)
        exclude = () if detail else DETAIL_KINDS
        return self._console_events(self.store.events(campaign_id, after_id=after_id, limit=limit, exclude=exclude))

    def recent_events(self, campaign_id: str, limit: int, detail: bool = True) -> Sequence[ConsoleEvent]:
        return self._cached(
            ("recent_events", campaign_id, limit, detail), lambda: self._recent(campaign_id, limit, detail)
        )

    def _recent(self, campaign_id: str, limit: int, detail: bool) -> Sequence[ConsoleEvent]:
        """The campaign's newest ``limit`` events, oldest first (one indexed query, newest first)."""
        self._row(campaign_id)
        exclude = () if detail else DETAIL_KINDS
        return self._console_events(self.store.recent_events(campaign_id, limit, exclude=exclude))

    def failed_schedules(self, limit: int) -> Sequence[ConsoleEvent]:
        """The newest scheduled starts that never ran, oldest first."""
        return self._console_events(self.store.recent_events(None, limit, kind=SCHEDULE_FAILED))

    def latest_event_id(self) -> int:
        return self.store.latest_event_id()

    def _console_events(self, rows: Sequence[EventRow]) -> list[ConsoleEvent]:
        names = self._names() if rows else {}
        return [self._event(e, names) for e in rows]

    @staticmethod
    def _event(e: EventRow, names: Mapping[str, str]) -> ConsoleEvent:
        data = dict(e.data or {})
        return ConsoleEvent(
            id=e.id,
            campaign_id=e.campaign_id or "",
            campaign_name=names.get(e.campaign_id or "", ""),
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
        droplets: list[Droplet] = []
        # the condition measured last (or being measured): its latest droplets
        snap = self._snapshot(campaign_id)
        plan = self._plan(snap.campaign)
        measured = [c for c in snap.conditions if c.status != "planned"]
        rounds = snap.round_indices
        for c in reversed(measured):
            reps = self.store.latest_droplets(campaign_id, c.round, c.index, c.attempt, limit)
            if not reps:
                continue
            droplets = [
                Droplet(
                    round=_ordinal_of(rounds, c.round),
                    condition=_condition_ordinal(measured, c),
                    replicate=r.index + 1,
                    absorbance=_floats(r.absorbance[:: plan.stride]),
                    loss=None if r.loss is None or not math.isfinite(r.loss) else float(r.loss),
                    accepted=r.accepted,
                )
                for r in reps
            ]
            break
        return SpectraView(plan.plot_grid, plan.plot_target, droplets)

    def losses(self, campaign_id: str) -> LossesView:
        return self._cached(("losses", campaign_id), lambda: self._losses(campaign_id))

    def _losses(self, campaign_id: str) -> LossesView:
        snap = self._snapshot(campaign_id)
        out: list[RoundLosses] = []
        best_so_far: list[dict[str, float]] = []
        best = math.inf
        for k, r in enumerate(snap.rounds, start=1):
            mine = [c for c in snap.conditions if c.round == r.index]
            out.append(
                RoundLosses(
                    index=k,
                    strategy=r.strategy,
                    conditions=[
                        ConditionLoss(
                            index=i, median_loss=c.median_loss, accepted=c.accepted, inputs=c.inputs, status=c.status
                        )
                        for i, c in enumerate(mine, start=1)
                    ],
                )
            )
            scored = [c.median_loss for c in mine if c.median_loss is not None]
            if scored:
                best = min(best, *scored)
            if math.isfinite(best):
                best_so_far.append({"round": k, "loss": best})
        return LossesView(out, best_so_far)

    def bounds(self, campaign_id: str) -> BoundsView:
        return self._cached(("bounds", campaign_id), lambda: self._bounds(campaign_id))

    def _bounds(self, campaign_id: str) -> BoundsView:
        snap = self._snapshot(campaign_id)
        plan = self._plan(snap.campaign)
        variables = [VariableLimits(n, limits, unit) for n, (limits, unit) in plan.variables.items()]
        history: list[BoundsStep] = []
        previous: dict[str, tuple[float, float]] | None = None
        for k, r in enumerate(snap.rounds, start=1):
            widened = (
                []
                if previous is None
                else [n for n, b in r.bounds.items() if n in previous and _wider(b, previous[n])]
            )
            history.append(BoundsStep(k, r.bounds, widened))
            previous = r.bounds
        return BoundsView(variables, history)

    # ---- control ---------------------------------------------------------------------------------

    def request_control(self, campaign_id: str, action: str, who: str, why: str) -> ControlReceipt:
        try:
            return self._request_control(campaign_id, action, who, why)
        finally:
            # what this server just wrote is read back at once, not after the refresher's next look:
            # the operator who pressed E-STOP sees it, and a Clear e-stop right after is judged on it
            self._position = (-1, -math.inf)

    def _request_control(self, campaign_id: str, action: str, who: str, why: str) -> ControlReceipt:
        row = self._row(campaign_id)
        if row.status in ENDED:
            raise ControlRefused(f"campaign #{campaign_id} is {row.status}: it cannot {action} any more")
        if action == "estop":
            # the latch stops the rig at once (the runner checks it between and during steps); the
            # request records, for this campaign, who pressed it and why
            self.store.latch_estop(who=who, reason=why, rig=row.rig_name)
        elif action == "estop-clear":
            every = self.store.estop_latched(None)
            if every is not None:  # refused before anything changes: an every-rig latch still holds this rig
                raise ControlRefused(
                    f"an e-stop on every rig ({every.who}: {every.reason}) still holds rig {row.rig_name!r}: "
                    "clear it with `sdl estop --clear --reason TEXT` once every rig is safe"
                )
            self.store.clear_estop(who=who, reason=why, rig=row.rig_name)
        if action in states.CONTROL_ACTIONS and self.store.live_owner(campaign_id) is None:
            return self._without_process(row, action, who, why)
        try:
            request_id = self.store.request_control(campaign_id, action, who=who, reason=why)
        except InvalidTransition as exc:  # it ended between the check above and the request
            raise ControlRefused(str(exc)) from None
        log.info("control request stored", campaign=campaign_id, action=action, by=who, request=request_id)
        return ControlReceipt(campaign_id, action, who, why, datetime.now(UTC), request_id)

    def _without_process(self, row: CampaignRow, action: str, who: str, why: str) -> ControlReceipt:
        """No process drives the campaign (queued, or its process is gone): a pause or an abort
        takes effect at once, as with ``sdl pause``/``sdl abort``; a resume needs a process."""
        if action == "resume":
            if self.store.has_live_agent(row.rig_name):  # the rig's agent runs it, on the rig's PC
                try:
                    self.store.set_status(row.id, states.QUEUED, reason=f"resume: {why}", who=who,
                                          data={"applied_by": "console", "no_live_process": True})
                except InvalidTransition as exc:
                    raise ControlRefused(str(exc)) from None
                log.info("resume queued for the rig's agent", campaign=row.id, by=who)
                return ControlReceipt(row.id, action, who, why, datetime.now(UTC), None)
            raise ControlRefused(
                f"no process runs campaign {row.id}, and no agent serves rig {row.rig_name}: continue it with "
                f"`sdl resume {row.id}` on the lab PC (or a scheduled start that resumes it), or start "
                f"`sdl agent --rig {row.rig_name}` and resume it here"
            )
        if action == "recalibrate":  # the process that runs it takes the dark spectrum: there is none
            raise ControlRefused(
                f"no process runs campaign {row.id}, so none would take the dark spectrum: resume it with "
                f"`sdl resume {row.id}` first (a resumed campaign calibrates as it starts)"
            )
        # an e-stop with nobody running the campaign: the rig is latched (above) and the campaign shows it,
        # with the admin's Clear e-stop, instead of a request nobody will ever read
        final = {"pause": states.PAUSED, "abort": states.ABORTED, "estop": states.ESTOPPED,
                 "estop-clear": states.PAUSED}[action]
        if action == "estop-clear":  # as the runner says it once the latch is gone, with what held it before
            why = f"e-stop cleared: {why}{self._held_before_estop(row.id)}; resume when ready"
        elif action == "estop" and row.status in (states.FAULTED, states.PAUSED):  # the fault must stay in sight
            why = f"{why}; before the e-stop: {row.description}"
        try:
            self.store.set_status(
                row.id, final, reason=why, who=who, data={"applied_by": "console", "no_live_process": True}
            )
        except InvalidTransition as exc:
            raise ControlRefused(str(exc)) from None
        # requests sent to a process that is gone (killed before it acted on them) end here too
        self.store.close_pending_controls(
            row.id,
            f"{final} directly: no process was running the campaign",
            action=None if final == states.ABORTED else action,
        )
        log.info("control applied directly", campaign=row.id, action=action, by=who)
        return ControlReceipt(row.id, action, who, why, datetime.now(UTC), None)

    def _held_before_estop(self, campaign_id: str) -> str:
        """"; before the e-stop: faulted: ..." when a fault or a pause held the campaign as the e-stop came
        (read from the journal: the state change before the latest e-stop); '' otherwise."""
        changes = [e for e in self.store.recent_events(campaign_id, 200) if e.kind in states.STATES]
        for earlier, later in reversed(list(itertools.pairwise(changes))):  # the latest e-stop first
            if later.kind == states.ESTOPPED and earlier.kind != states.ESTOPPED:
                if earlier.kind in (states.FAULTED, states.PAUSED):
                    return f"; before the e-stop: {earlier.kind}: {earlier.reason}"
                return ""
        return ""

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


@contextmanager
def _known(campaign_id: str) -> Iterator[None]:
    """The store's UnknownCampaign as the console's."""
    try:
        yield
    except StoreUnknownCampaign:
        raise UnknownCampaign(campaign_id) from None


def _progress(plan: _Plan, snap: CampaignProgress) -> Progress:
    if not snap.rounds:
        return Progress(rounds_max=plan.max_rounds, conditions=plan.batch_size, replicates=plan.replicates)
    last = snap.rounds[-1]
    in_round = [c for c in snap.conditions if c.round == last.index]
    current = snap.measuring if snap.measuring is not None and snap.measuring.round == last.index else None
    replicate = snap.replicates if current is not None else 0
    if current is None:  # between conditions: the last one finished
        finished = [c for c in in_round if c.status in ("done", "failed")]
        current = finished[-1] if finished else None
        replicate = (plan.replicates or 0) if current is not None else 0
    done = sum(1 for c in snap.conditions if c.status in ("done", "failed"))
    per_condition = plan.replicates or 1
    # the tighter budget: conditions, or rounds x batch (either may be unset)
    budgets = [b for b in (plan.max_conditions, (plan.max_rounds or 0) * (plan.batch_size or 0)) if b]
    planned = min(budgets, default=0)
    measuring_now = snap.replicates if snap.measuring is not None else 0
    fraction = (
        min(1.0, (done * per_condition + measuring_now) / (planned * per_condition)) if planned else 0.0
    )
    if snap.campaign.status == states.FINISHED:  # a stop rule may end it before the budget is spent
        fraction = 1.0
    position = {c.index: i for i, c in enumerate(in_round)}
    return Progress(
        round=_ordinal_of(snap.round_indices, last.index),
        rounds_max=plan.max_rounds,
        condition=position[current.index] + 1 if current is not None else None,
        conditions=len(in_round) or plan.batch_size,
        replicate=replicate or None,
        replicates=plan.replicates,
        fraction=fraction,
    )


def _ordinal_of(indices: Sequence[int], index: int) -> int:
    """Round and condition numbers as people count them (1, 2, ...), whatever the store's indices."""
    try:
        return list(indices).index(index) + 1
    except ValueError:
        return index + 1


def _condition_ordinal(conditions: Sequence[ConditionBrief], c: ConditionBrief) -> int:
    return _ordinal_of([x.index for x in conditions if x.round == c.round], c.index)


def _ended_progress(row: CampaignRow) -> Progress:
    return Progress(fraction=1.0 if row.status == states.FINISHED else 0.0)


def _wider(now: tuple[float, float], before: tuple[float, float]) -> bool:
    return now[0] < before[0] or now[1] > before[1]


def _floats(values: np.ndarray) -> list[float | None]:
    """JSON-ready numbers (5 decimals are far below the noise); NaN and infinities become None."""
    a = np.round(np.asarray(values, dtype=float), 5)
    finite = np.isfinite(a)
    if finite.all():
        return a.tolist()
    return [v if ok else None for v, ok in zip(a.tolist(), finite.tolist(), strict=True)]


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
    grid_spec = dict(protocol.get("grid") or {})
    grid = wavelength_grid(
        float(grid_spec.get("start_nm", 380.0)),
        float(grid_spec.get("stop_nm", 800.0)),
        float(grid_spec.get("step_nm", 1.0)),
    )
    stride = max(1, math.ceil(len(grid) / MAX_PLOT_POINTS))
    target = _target(protocol, options, row.protocol_path)
    plot_target = [] if target is None else _floats(interpolate_target(target[0], target[1], grid)[::stride])
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
        # `sdl run --max-rounds` only tightens the protocol's limit (CampaignSpec.rounds_limit)
        max_rounds=min((r for r in (_int(options.get("max_rounds")), _int(stop.get("max_rounds"))) if r), default=None),
        max_conditions=_int(stop.get("max_conditions")),
        stride=stride,
        plot_grid=_floats(grid[::stride]),
        plot_target=plot_target,
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
    if kind == SCHEDULE_FAILED:  # the reason says it all: what was scheduled, the exit code, the log
        return reason
    if kind == "replicate_acquired":
        loss = data.get("loss")
        score = f"loss {loss:.3f}" if isinstance(loss, int | float) and math.isfinite(loss) else "no loss"
        verdict = (
            "" if data.get("accepted", True) else f", rejected: {data.get('reject_reason') or 'screened out'}"
        )
        return f"{where}: {score}{verdict}"
    if kind == "outliers_judged":  # the attempt's droplets judged against each other once all were in
        rejected = data.get("rejected") or []
        one = len(rejected) == 1
        said = (f"{len(rejected)} droplet{'' if one else 's'} rejected as {'an outlier' if one else 'outliers'} "
                f"(replicate{'' if one else 's'} {', '.join(str(i + 1) for i in rejected)})"
                if rejected else "no droplet rejected as an outlier")
        return f"{where}: {said}" + (f": {reason}" if reason else "")
    if kind == "round_done":
        return f"{where} done"
    if kind == "reagent_used" and isinstance(data.get("ul"), int | float):
        return f"{where}: {data['ul']:.0f} uL of reagents used"
    if kind == "rates_set" and isinstance(data.get("rates_ul_min"), Mapping):
        rates = ", ".join(
            f"{k} {v:.1f}" for k, v in data["rates_ul_min"].items() if isinstance(v, int | float)
        )
        return f"pump rates set (uL/min): {rates}"
    if kind in ("claimed", "released"):
        return f"{'taken' if kind == 'claimed' else 'released'} by {data.get('owner') or who}"
    if kind in ("estop", "estop_cleared"):
        rig = data.get("rig")
        scope = f"rig {rig}" if rig else "every rig"
        verb = "e-stop latched on" if kind == "estop" else "e-stop cleared on"
        return f"{verb} {scope}" + (f": {reason}" if reason else "")
    if kind == "control_requested":
        action = data.get("action", "control")
        return f"{action} requested" + (f": {reason}" if reason else "")
    if kind == "control_handled":  # what came of a request: a second pause is "refused: already paused"
        by = f" by {data['by']}" if data.get("by") else ""
        return f"{data.get('action', 'control')}{by}: {data.get('outcome', 'handled')}"
    if kind == "batch_planned":
        planned = data.get("conditions")
        n = len(planned) if isinstance(planned, list) else planned
        strategy = data.get("strategy")
        text = f"{where or 'next round'} planned"
        if isinstance(n, int):
            text += f": {n} condition{'' if n == 1 else 's'}"
        return text + (f" ({strategy})" if strategy else "") + (f"; fell back: {reason}" if reason else "")
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
