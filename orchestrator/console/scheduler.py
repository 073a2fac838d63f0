"""Scheduled work, kept by APScheduler in the store's database (table ``console_schedules``), so a
restarted server still knows it:

- start a campaign (``sdl run``, or resume one) at a given time, in its own process;
- ask a running campaign to take its dark spectrum again at an interval (a control request the
  engine honours at its next replicate boundary);
- watch a campaign's devices and progress, and pause it with a reason when a device stops answering.

Job functions are module-level and take only plain arguments: the job store pickles a reference to
them, not the objects of this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.config_errors import ConfigError
from orchestrator.console.db import engine_for
from orchestrator.store import DB_ENV

log = structlog.get_logger("orchestrator.console.scheduler")

JOB_TABLE = "console_schedules"
START_GRACE_S = 15 * 60  # a start missed by more than this (server down) is dropped, not run late
MIN_INTERVAL_MIN = 0.1
SCHEDULE_FAILED = "schedule_failed"  # the journal's kind for a scheduled start that never ran


class ScheduleError(ValueError):
    """A schedule that cannot be added; the message says what to change."""


@dataclass(frozen=True)
class ScheduleInfo:
    id: str
    kind: str
    description: str
    next_run_at: datetime | None
    created_by: str
    campaign_id: str | None


# ---- what the jobs need from the rest of the console (set by the app; tests replace them) --------


@dataclass
class JobContext:
    """The services a job uses. One per process: jobs run in this process's scheduler threads."""

    request_control: Callable[[str, str, str, str, str], object]  # (store_url, campaign, action, who, why)
    campaign_health: Callable[[str, str], CampaignHealth | None]  # (store_url, campaign) -> health or None
    workdir: Path = Path.cwd()
    log_dir: Path | None = None
    python: str = sys.executable


@dataclass(frozen=True)
class CampaignHealth:
    """What the watcher needs to know about one campaign."""

    active: bool  # running (not paused, finished or stopped)
    seconds_since_last_event: float
    rig_ports: dict[str, str]  # device name -> port (pyserial URL or device path)


_context: JobContext | None = None


def set_job_context(context: JobContext) -> None:
    global _context
    _context = context


def _ctx() -> JobContext:
    if _context is None:
        raise RuntimeError("the scheduler's job context is not set: create the console app first")
    return _context


# ---- the jobs ------------------------------------------------------------------------------------


def start_campaign_job(
    store_url: str, protocol: str | None, rig: str | None, resume_campaign_id: str | None, by: str
) -> int:
    """Start ``sdl run`` (or ``sdl resume``) in its own process group; the campaign outlives the server."""
    ctx = _ctx()
    if resume_campaign_id:
        argv = ["resume", resume_campaign_id]
    else:
        assert protocol is not None and rig is not None
        argv = ["run", protocol, "--rig", rig]
    # the store in the environment, not on the command line: `ps` shows a PostgreSQL password to anyone
    cmd = [ctx.python, "-m", "orchestrator.cli.main", *argv]
    log_dir = ctx.log_dir or ctx.workdir
    log_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    log_file = log_dir / f"sdl-scheduled-{started:%Y%m%dT%H%M%S.%fZ}.log"  # one per start
    out = open(log_file, "ab")  # noqa: SIM115 - the child owns it
    try:
        child = subprocess.Popen(
            cmd,
            env={**os.environ, DB_ENV: store_url},
            cwd=ctx.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        out.close()
    log.info("scheduled campaign started", pid=child.pid, command=argv[0], by=by)
    what = f"resume of {resume_campaign_id}" if resume_campaign_id else f"start of {protocol} on {rig}"
    threading.Thread(
        target=_watch_start,
        args=(child, store_url, started, log_file, what, resume_campaign_id, by),
        name=f"sdl-scheduled-{child.pid}",
        daemon=True,
    ).start()
    return child.pid


def _watch_start(
    child: subprocess.Popen[bytes],
    store_url: str,
    started: datetime,
    log_file: Path,
    what: str,
    campaign_id: str | None,
    by: str,
) -> None:
    """Wait for a scheduled ``sdl run``/``sdl resume``; if it ended without ever running the campaign
    (rig busy at 2 a.m., a file gone, an e-stop latched), journal why: the console shows it and the
    notifier sends it. A campaign that ran journals its own end (faulted, aborted) and is left alone."""
    code = child.wait()
    if code == 0:
        return
    from orchestrator.campaign import process_owner
    from orchestrator.store import StoreError, open_store

    try:
        with open_store(store_url) as store:
            if store.claimed_since(process_owner(pid=child.pid), started):
                return
            store.journal(
                campaign_id,
                SCHEDULE_FAILED,
                who=f"scheduler ({by})",
                reason=f"scheduled {what} did not run (exit {code}): {log_tail(log_file)} (log: {log_file})",
                data={"exit_code": code, "log": str(log_file)},
            )
    except (StoreError, OSError, SQLAlchemyError) as exc:
        log.error("scheduled start failed, and so did journaling it", what=what, exit_code=code, error=str(exc))
        return
    log.warning("scheduled start did not run", what=what, exit_code=code, log=str(log_file))


def log_tail(path: Path, lines: int = 3, chars: int = 400) -> str:
    """The last non-empty lines of a log, joined: what a failed command said last."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"its log cannot be read ({exc.strerror})"
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    said = " / ".join(last) or "it printed nothing"
    return said if len(said) <= chars else "..." + said[-chars:]


def recalibrate_job(store_url: str, campaign_id: str, every_minutes: float, by: str) -> bool:
    ctx = _ctx()
    health = ctx.campaign_health(store_url, campaign_id)
    if health is None or not health.active:
        return False
    ctx.request_control(
        store_url, campaign_id, "recalibrate", f"scheduler ({by})", f"scheduled every {every_minutes:g} min"
    )
    return True


def health_job(store_url: str, campaign_id: str, stale_after_s: float, by: str) -> str | None:
    """Pause the campaign when a device is gone or the campaign has journaled nothing for too long.
    Returns the problem found (None: healthy or not running)."""
    ctx = _ctx()
    health = ctx.campaign_health(store_url, campaign_id)
    if health is None or not health.active:
        return None
    problem = None
    for name, port in sorted(health.rig_ports.items()):
        trouble = probe_port(port)
        if trouble:
            problem = f"device {name} stopped answering: {trouble}"
            break
    if problem is None and health.seconds_since_last_event > stale_after_s:
        problem = (
            f"no progress for {health.seconds_since_last_event:.0f} s (limit {stale_after_s:.0f} s): "
            "a device may be hanging; check the campaign's log and the instruments"
        )
    if problem is not None:
        log.warning("health check pausing campaign", campaign=campaign_id, problem=problem)
        ctx.request_control(store_url, campaign_id, "pause", f"scheduler ({by})", f"health check: {problem}")
    return problem


def probe_port(port: str, timeout_s: float = 2.0) -> str | None:
    """Can another process tell the device is there? A local serial device must still exist (a USB
    adapter that is pulled or loses power disappears); a network serial server must accept a
    connection. A ``sim://`` device lives inside the campaign's process: nothing to probe from here."""
    if port.startswith("sim://"):
        return None
    scheme = urlsplit(port).scheme
    if scheme in ("socket", "rfc2217"):
        parts = urlsplit(port)
        try:
            with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=timeout_s):
                return None
        except OSError as exc:
            return f"{parts.hostname}:{parts.port} refuses connections ({exc.strerror or exc})"
    if "://" in port:
        return None  # other pyserial URL handlers (loop://, spy://) cannot be probed from outside
    if not os.path.exists(port):
        return f"{port} is gone (cable unplugged or adapter powered off?)"
    return None


# ---- the scheduler ---------------------------------------------------------------------------------


class _Scheduler(BackgroundScheduler):
    """APScheduler's background scheduler without its shutdown race (3.11): shutdown() stops the
    executors and job stores, then wakes the scheduler thread, which looks once more for due jobs -
    even on a paused scheduler - and submits them to the stopped executor ("cannot schedule new
    futures after shutdown"), then dies removing them (JobLookupError). A stopped scheduler looks
    for nothing."""

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        return super()._process_jobs()


class ConsoleScheduler:
    def __init__(
        self, store_url: str, file_roots: Sequence[str | Path] | None = None, *, engine: Engine | None = None
    ) -> None:
        self.store_url = store_url
        # folders a scheduled start may read protocol and rig files from (sdl serve --files, $SDL_FILES;
        # default: the working directory): the console is reachable by operators, its host's files not
        self.file_roots = [Path(r).expanduser().resolve() for r in (file_roots or default_file_roots())]
        self._scheduler = _Scheduler(
            # the console's engine settings (pool_pre_ping): after a database restart the first add or
            # run of a schedule must not fail on a connection the server closed
            jobstores={"default": SQLAlchemyJobStore(engine=engine or engine_for(store_url), tablename=JOB_TABLE)},
            timezone=UTC,
            # a missed interval run happens once when the server is back, not once per missed slot
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )

    def start(self, paused: bool = False) -> None:
        """``paused``: keep and accept schedules, run none (a second server, or tests)."""
        if not self._scheduler.running:  # the app's lifespan may run twice (tests serve one app twice)
            self._scheduler.start(paused=paused)

    def shutdown(self) -> None:
        """Stop: jobs already running finish in their threads; due ones stay in the store for the
        next start (a start job within its grace time, an interval job at its next slot)."""
        if self._scheduler.running:
            self._scheduler.pause()  # nothing is submitted from here on
            self._scheduler.shutdown(wait=False)

    def add_start(
        self,
        by: str,
        at: datetime | None,
        protocol: str | None = None,
        rig: str | None = None,
        resume_campaign_id: str | None = None,
    ) -> ScheduleInfo:
        at = at or datetime.now(UTC)
        if at.tzinfo is None:
            raise ScheduleError(
                "give the start time with its time zone (ISO 8601, e.g. 2026-01-05T02:00:00+01:00)"
            )
        if at < datetime.now(UTC) - timedelta(minutes=1):
            raise ScheduleError(f"{at.isoformat()} is in the past: give a future time")
        if resume_campaign_id:
            if protocol or rig:
                raise ScheduleError("give either a campaign to resume or a protocol and rig, not both")
            what = f"resume campaign #{resume_campaign_id}"
        else:
            if not protocol or not rig:
                raise ScheduleError("a new campaign needs both a protocol file and a rig file")
            _check_files(protocol, rig, self.file_roots)
            what = f"run {protocol} on {rig}"
        job = self._scheduler.add_job(
            start_campaign_job,
            DateTrigger(run_date=at),
            args=[self.store_url, protocol, rig, resume_campaign_id, by],
            name=f"start|{by}|{resume_campaign_id or ''}|{what}",
            misfire_grace_time=START_GRACE_S,
        )
        log.info("schedule added", kind="start", at=at.isoformat(), by=by)
        return _info(job)

    def add_recalibration(self, by: str, campaign_id: str, every_minutes: float) -> ScheduleInfo:
        _check_interval(every_minutes)
        job = self._scheduler.add_job(
            recalibrate_job,
            IntervalTrigger(minutes=every_minutes),
            args=[self.store_url, campaign_id, every_minutes, by],
            name=f"recalibrate|{by}|{campaign_id}|recalibrate #{campaign_id} every {every_minutes:g} min",
        )
        return _info(job)

    def add_health_watch(
        self, by: str, campaign_id: str, every_minutes: float, stale_after_s: float = 900.0
    ) -> ScheduleInfo:
        _check_interval(every_minutes)
        if stale_after_s <= 0:
            raise ScheduleError("stale_after_s must be positive")
        job = self._scheduler.add_job(
            health_job,
            IntervalTrigger(minutes=every_minutes),
            args=[self.store_url, campaign_id, stale_after_s, by],
            name=f"health|{by}|{campaign_id}|watch #{campaign_id} every {every_minutes:g} min "
            f"(pause after {stale_after_s:.0f} s without progress)",
        )
        return _info(job)

    def list(self) -> list[ScheduleInfo]:
        return sorted(
            (_info(j) for j in self._scheduler.get_jobs()),
            key=lambda s: s.next_run_at or datetime.max.replace(tzinfo=UTC),
        )

    def remove(self, schedule_id: str) -> ScheduleInfo:
        job = self._scheduler.get_job(schedule_id)
        if job is None:
            raise ScheduleError(f"no schedule {schedule_id!r}: list them with GET /api/schedules")
        info = _info(job)
        self._scheduler.remove_job(schedule_id)
        return info


def _check_interval(every_minutes: float) -> None:
    if not every_minutes >= MIN_INTERVAL_MIN:
        raise ScheduleError(f"the interval must be at least {MIN_INTERVAL_MIN} min, got {every_minutes}")


FILES_ENV = "SDL_FILES"  # folders (os.pathsep-separated) scheduled starts may read files from


def default_file_roots() -> list[Path]:
    """$SDL_FILES (folders separated by os.pathsep), else the working directory."""
    value = os.environ.get(FILES_ENV, "")
    return [Path(p) for p in value.split(os.pathsep) if p] or [Path.cwd()]


def _check_files(protocol: str, rig: str, roots: Sequence[Path]) -> None:
    """Refuse now a start that would fail at 2 a.m.: both files must load and fit each other. Only
    YAML files inside ``roots`` are opened at all: a schedule is an operator's request, and reading
    any path the server can (its own database: closing a file releases SQLite's locks on it) would
    let the request read or break files it has no business with."""
    from orchestrator.protocol import load_protocol
    from orchestrator.rig import check_protocol_against_rig, load_rig

    where = ", ".join(str(r) for r in roots)
    for path in (protocol, rig):
        resolved = Path(path).expanduser().resolve()
        if resolved.suffix.lower() not in (".yaml", ".yml"):
            raise ScheduleError(f"{path!r}: protocol and rig files are YAML files (.yaml or .yml)")
        if not any(resolved.is_relative_to(root) for root in roots):
            raise ScheduleError(
                f"{path!r} is outside the folders scheduled starts may read ({where}); put the file there, "
                f"or start the console with --files FOLDER (or ${FILES_ENV})"
            )
        if not resolved.is_file():
            raise ScheduleError(f"no file {path!r} in {where}")
    try:
        check_protocol_against_rig(load_protocol(protocol), load_rig(rig), source=f"{protocol} on {rig}")
    except ConfigError as exc:
        raise ScheduleError(str(exc)) from None


def _info(job: object) -> ScheduleInfo:
    kind, by, campaign, description = job.name.split("|", 3)  # type: ignore[attr-defined]
    return ScheduleInfo(
        id=job.id,  # type: ignore[attr-defined]
        kind=kind,
        description=description,
        next_run_at=getattr(job, "next_run_time", None),
        created_by=by,
        campaign_id=campaign or None,
    )
