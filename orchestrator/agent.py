"""The rig agent behind ``sdl agent --rig RIG``: one per rig host, many hosts on one database.

It loops: mark the campaigns of its rig whose process stopped heartbeating as ``orphaned`` (and,
unless told not to, resume them), claim the oldest campaign queued for its rig (the store locks the
row: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, one ``BEGIN IMMEDIATE`` writer on SQLite),
and run it with :func:`orchestrator.campaign.run_campaign`, which heartbeats while it runs.

A clean stop (SIGTERM, ``systemctl stop``) asks the running campaign to pause at its next replicate
boundary; once paused it is handed back to the queue (status ``queued``, no owner) for the next agent
of the rig. A second signal stops at once: the pumps are put in their safe state on the way out and
the campaign is queued again as it stands (the journal resumes it without losing or repeating a
replicate).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import yaml
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import state
from orchestrator.campaign import process_owner, run_campaign
from orchestrator.rig import RigConfig
from orchestrator.state import InvalidTransition
from orchestrator.store import (
    STALE_AFTER_S,
    CampaignClaimed,
    CampaignRow,
    Store,
    StoreError,
    database_error_text,
    owner_is_dead,
)

log = structlog.get_logger("orchestrator.agent")

IDLE_POLL_S = 5.0  # how often an idle agent looks for queued and orphaned campaigns
OUTAGE_RETRY_MAX_S = 30.0  # with the database unreachable, the agent tries again at most this far apart
HAND_BACK_REASON = "agent stopping: the campaign goes back to the queue"


class HandBack(BaseException):  # noqa: N818 - a signal to unwind, not an error
    """Raised inside a running campaign to leave it. A BaseException, like KeyboardInterrupt: the
    second signal raises it wherever the runner is, and no ``except Exception`` there may swallow it;
    the runner's ``finally`` blocks stop the pumps on the way out."""


@dataclass
class AgentStats:
    ran: list[tuple[str, str]] = field(default_factory=list)  # (campaign, final status)
    orphaned: list[str] = field(default_factory=list)
    handed_back: list[str] = field(default_factory=list)


class Agent:
    """Claims and runs the campaigns of one rig. ``run`` is :func:`run_campaign` (tests wrap it)."""

    def __init__(
        self,
        store: Store,
        rig_name: str,
        *,
        owner: str | None = None,
        resume_orphans: bool = True,
        stale_after_s: float = STALE_AFTER_S,
        idle_poll_s: float = IDLE_POLL_S,
        run: Callable[..., str] = run_campaign,
        progress: Callable[..., Any] | None = None,
        rig_config: Any = None,
        rig_source: str = "",
    ) -> None:
        self.store = store
        self.rig_name = rig_name
        # the rig file the agent was started with (a RigConfig), to warn when a campaign carries another
        self.rig_config = rig_config
        self.rig_source = rig_source
        self.owner = owner or process_owner("sdl-agent")
        self.resume_orphans = resume_orphans
        self.stale_after_s = stale_after_s
        self.idle_poll_s = idle_poll_s
        self._run = run
        self._progress = progress
        self.stats = AgentStats()
        self._interrupted: str | None = None  # the campaign a database outage took from under it
        self._stopping = threading.Event()
        self._hard_stop = False
        self._current: str | None = None
        self._pause_request: int | None = None
        self._lock = threading.Lock()

    # -- stopping ----------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Stop after handing the current campaign back (asks it to pause at its next checkpoint)."""
        self._stopping.set()
        with self._lock:
            current = self._current
            ask = current is not None and self._pause_request is None
            if ask:
                self._pause_request = -1  # asked (the id follows): ask once
        if ask and current is not None:
            try:
                request_id = self.store.request_control(
                    current, "pause", who=self.owner, reason=HAND_BACK_REASON
                )
            except StoreError as exc:
                log.warning("could not ask the campaign to pause", campaign=current, error=str(exc))
            else:
                with self._lock:
                    left = self._current != current
                    self._pause_request = request_id
                if left:  # the campaign was handed back meanwhile: the next agent must not pause it
                    self.store.mark_control_handled(request_id, "withdrawn: the agent stopped first")
        log.info("agent stopping", agent=self.owner, campaign=current)

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT: the first hands the campaign back at its next checkpoint, a second one
        leaves at once (pumps safe, campaign queued again). Returns what puts the old handlers back."""

        def handle(signum: int, _frame: object) -> None:
            if self._stopping.is_set() and self._current is not None and not self._hard_stop:
                self._hard_stop = True
                raise HandBack(f"signal {signal.Signals(signum).name} again: leaving at once")
            # the store is written from another thread: this one may be inside a transaction
            self._stopping.set()
            threading.Thread(target=self.request_stop, name="agent-stop", daemon=True).start()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _sleep(self, seconds: float) -> None:
        """The runner waits here while a campaign is held (paused, faulted, e-stopped): the pumps
        are safe, so a stopping agent leaves from here."""
        if self._stopping.is_set():
            raise HandBack(HAND_BACK_REASON)
        self._stopping.wait(seconds)
        if self._stopping.is_set():
            raise HandBack(HAND_BACK_REASON)

    # -- the loop ----------------------------------------------------------------------------------

    def serve(self, *, exit_when_idle: bool = False) -> AgentStats:
        """Run campaigns until stopped (or, with ``exit_when_idle``, until nothing of its rig is queued or
        orphaned: a queue behind a campaign another process drives on the rig is waited for)."""
        log.info("agent started", agent=self.owner, rig=self.rig_name)
        started = False
        outage: _Outage | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if not started:
                        self.store.journal(None, "agent_started", who=self.owner, data={"rig": self.rig_name})
                        started = True
                    self.store.agent_seen(self.owner, self.rig_name)  # idle or not: seen (sdl status, console)
                    if outage is not None:  # it answers again (said now, not after the next campaign)
                        outage.over()
                        outage = None
                    ran = self._resume_interrupted() or self.step()
                    idle = ran is None and not (exit_when_idle and not self.work_waiting())
                    if ran is None and not idle:
                        break
                except SQLAlchemyError as exc:  # the database went away (restart, network): wait for it
                    outage = outage or _Outage(self.owner)
                    self._stopping.wait(outage.failed(exc))
                    continue
                if idle:
                    self._stopping.wait(self.idle_poll_s)
        finally:
            try:
                self.store.agent_stopped(self.owner)
                self.store.journal(None, "agent_stopped", who=self.owner, data={"rig": self.rig_name})
            except SQLAlchemyError as exc:
                log.warning("could not record the agent's stop: the database is unreachable", error=database_error_text(exc))
            log.info("agent stopped", agent=self.owner, rig=self.rig_name)
        return self.stats

    def _resume_interrupted(self) -> str | None:
        """The campaign a database outage interrupted, taken up again first (the agent still holds it):
        its id, or None when there is none (or someone else took it meanwhile)."""
        campaign_id, self._interrupted = self._interrupted, None
        if campaign_id is None:
            return None
        row = self.store.campaign(campaign_id)
        if row.ended or row.status not in (*state.ACTIVE, state.ORPHANED) or not self._take(campaign_id):
            return None
        log.info("resuming the campaign the database outage interrupted", campaign=campaign_id)
        self._drive(campaign_id)
        return campaign_id

    def step(self) -> str | None:
        """One look for work: orphans first, then the queue. The campaign it ran, or None if idle."""
        self.mark_orphans()
        if self.resume_orphans:
            for campaign_id in self.orphans():
                if self._stopping.is_set():
                    return None
                if self._take(campaign_id):
                    self._drive(campaign_id)
                    return campaign_id
        if self._stopping.is_set():
            return None
        campaign_id = self.store.claim_next(self.rig_name, self.owner, stale_after_s=self.stale_after_s)
        if campaign_id is None:
            return None
        self._drive(campaign_id)
        return campaign_id

    def work_waiting(self) -> list[str]:
        """Campaigns of this rig still to run although this look found nothing it could take: queued
        behind a campaign another process drives on the rig, or (when it resumes orphans) orphaned.
        ``--exit-when-idle`` waits for these instead of leaving them to nobody."""
        return [
            row.id
            for row in self.store.campaigns()
            if row.status == state.QUEUED and row.queued_for_rig == self.rig_name
        ] + (self.orphans() if self.resume_orphans else [])

    def orphans(self) -> list[str]:
        """Orphaned campaigns of this rig that nobody drives, oldest first."""
        now = self.store.now()
        return [
            row.id
            for row in sorted(self.store.campaigns(), key=lambda r: (r.created_at, r.id))
            if row.rig_name == self.rig_name
            and row.status == state.ORPHANED
            and not row.is_live(now, self.stale_after_s)
        ]

    def mark_orphans(self) -> list[str]:
        """Campaigns of this rig that should be driven (running, pausing, aborting) but nobody
        heartbeats: claim each (so two agents never both do it) and mark it ``orphaned``; one whose
        process died while aborting is ended as ``aborted``. Returns the orphaned ids, oldest first."""
        now = self.store.now()
        found: list[str] = []
        for row in sorted(self.store.campaigns(), key=lambda r: (r.created_at, r.id)):
            if row.rig_name != self.rig_name or row.status not in state.ACTIVE:
                continue
            if row.is_live(now, self.stale_after_s):
                continue
            if not self._take(row.id):
                continue
            reason = _orphan_reason(row)
            try:
                if row.status == state.ABORTING:
                    self.store.set_status(
                        row.id, state.ABORTED, reason=f"{reason}; abort completed", who=self.owner
                    )
                    self.store.release(row.id, self.owner)
                    continue
                self.store.set_status(row.id, state.ORPHANED, reason=reason, who=self.owner)
            except InvalidTransition as exc:  # changed under us (an operator acted): leave it be
                log.info("orphan changed meanwhile", campaign=row.id, error=str(exc))
                self.store.release(row.id, self.owner)
                continue
            log.warning("campaign orphaned", campaign=row.id, reason=reason)
            self.stats.orphaned.append(row.id)
            found.append(row.id)
            self.store.release(row.id, self.owner)  # step() takes it again to resume it
        return found

    def _take(self, campaign_id: str) -> bool:
        try:
            self.store.claim(campaign_id, self.owner, stale_after_s=self.stale_after_s)
        except (CampaignClaimed, StoreError) as exc:
            log.info("not taken", campaign=campaign_id, reason=str(exc))
            return False
        return True

    def _drive(self, campaign_id: str) -> None:
        with self._lock:
            self._current = campaign_id
            self._pause_request = None
            stopping = self._stopping.is_set()
        bound = structlog.get_logger("orchestrator.agent").bind(campaign=campaign_id, agent=self.owner)
        if stopping:  # stopped between the claim and now: give it straight back
            with self._lock:
                self._current = None
            self._hand_back(campaign_id)
            self.store.release(campaign_id, self.owner)
            return
        bound.info("campaign claimed")
        self.store.agent_seen(self.owner, self.rig_name, campaign_id)  # its heartbeat now says we live
        self._warn_rig_drift(campaign_id)
        try:
            final = self._run(
                self.store, campaign_id, owner=self.owner, progress=self._progress, sleep=self._sleep
            )
            self.stats.ran.append((campaign_id, final))
            bound.info("campaign left", status=final)
        except HandBack as exc:
            bound.info("handing back", reason=str(exc))
            with self._lock:
                self._current = None  # a pause asked from now on is withdrawn at once
            self._hand_back(campaign_id)
        except SQLAlchemyError:
            # the database, not the campaign, failed (the runner has made the pumps safe on its way out):
            # the agent keeps it and takes it up again once the database answers
            bound.warning("database lost while running the campaign; it is resumed when the database is back")
            self._interrupted = campaign_id
            raise
        except Exception as exc:  # noqa: BLE001 - one campaign's failure must not stop the rig's agent
            bound.exception("campaign failed in the agent")
            self._take_off_queue(campaign_id, exc)
        finally:
            with self._lock:
                self._current = None
            if self._interrupted != campaign_id:  # kept through an outage: released only when run again
                self.store.release(campaign_id, self.owner)

    def _warn_rig_drift(self, campaign_id: str) -> None:
        """A campaign runs with the rig file it was queued with (the store defines it). When the
        agent's own file says otherwise (a port or syringe changed since), journal where, so the
        engineer who edited the file sees that the queued campaign did not follow."""
        if self.rig_config is None:
            return
        try:
            stored = RigConfig.model_validate(yaml.safe_load(self.store.campaign(campaign_id).rig_yaml) or {})
            differ = _differences(*(c.model_dump(exclude_defaults=True, exclude={"description"})
                                    for c in (stored, self.rig_config)))
        except Exception as exc:  # noqa: BLE001 - a warning must never stop the campaign
            log.warning("could not compare rig files", campaign=campaign_id, error=str(exc))
            return
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            self.store.journal(
                campaign_id, "rig_file_differs", who=self.owner,
                reason=(f"runs with the rig file it was queued with; the agent's {self.rig_source} differs in "
                        f"{shown}: to use the new file, abort it and queue it again"),
                data={"fields": differ},
            )

    def _take_off_queue(self, campaign_id: str, exc: Exception) -> None:
        """A campaign the runner could not run: faulted (or, never started, back to created) with the
        error, so the agent does not claim it again and again; people fix it and resume it."""
        reason = f"fault: the agent could not run it ({type(exc).__name__}: {exc}); fix it, then `sdl resume {campaign_id}`"
        try:
            current = self.store.campaign(campaign_id).status
            target = next((s for s in (state.FAULTED, state.CREATED) if s in state.allowed(current)), None)
            if target is not None:
                self.store.set_status(campaign_id, target, reason=reason, who=self.owner)
            else:
                self.store.journal(campaign_id, "agent_error", who=self.owner, reason=reason)
        except Exception as inner:  # noqa: BLE001 - the store itself may be what failed
            log.error("could not record the failure", campaign=campaign_id, error=str(inner))

    def _hand_back(self, campaign_id: str) -> None:
        """Queue the campaign again if it stopped for our stop; a campaign held for another reason
        (an operator's pause, a fault, an e-stop) keeps that status for people to see and act on."""
        row = self.store.campaign(campaign_id)
        for control in self.store.pending_controls(campaign_id):
            if control.who == self.owner and control.reason == HAND_BACK_REASON:
                # never took effect: the next agent must not pause
                self.store.mark_control_handled(control.id, "withdrawn: the agent stopped first")
        ours = row.status == state.PAUSED and row.status_by == self.owner
        if ours or row.status in (state.CREATED, state.QUEUED, state.RUNNING, state.ORPHANED):
            if row.status != state.QUEUED:
                self.store.set_status(campaign_id, state.QUEUED, reason=HAND_BACK_REASON, who=self.owner)
            self.stats.handed_back.append(campaign_id)
            log.info("campaign handed back", campaign=campaign_id, was=row.status)
        else:
            log.info("campaign left held", campaign=campaign_id, status=row.status)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two parsed rig files differ, as field paths (``pumps[1].port``, ``dead_volume_ul``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "the whole file"]


class _Outage:
    """The database is unreachable: say so once (not a traceback every poll), retry at growing
    intervals up to OUTAGE_RETRY_MAX_S, and say when it answers again."""

    def __init__(self, owner: str) -> None:
        self.owner, self.tries = owner, 0

    def failed(self, exc: BaseException) -> float:
        """One more failed try; the seconds to wait before the next."""
        self.tries += 1
        wait = min(OUTAGE_RETRY_MAX_S, 2.0 ** min(self.tries, 5))
        if self.tries == 1:
            log.warning("database unreachable: the agent waits for it and tries again (pumps are safe)",
                        agent=self.owner, error=database_error_text(exc))
        return wait

    def over(self) -> None:
        log.info("database reachable again", agent=self.owner, tries=self.tries)


def _orphan_reason(row: CampaignRow) -> str:
    if row.owner is None or row.heartbeat_at is None:
        return "no process drives it (its process ended without handing it back)"
    if owner_is_dead(row.owner):
        return f"{row.owner} is no longer running on this host (last heartbeat {row.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
    return f"{row.owner} stopped heartbeating at {row.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
