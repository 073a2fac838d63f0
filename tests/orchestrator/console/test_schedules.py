"""Schedules: stored by APScheduler in the store's database, added and removed through the API, and
the jobs themselves (start, recalibrate, health) with their effects checked."""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.console import scheduler as sched
from orchestrator.console.scheduler import CampaignHealth, ConsoleScheduler, JobContext, probe_port

from .conftest import Console


def test_schedules_are_added_listed_kept_in_the_database_and_removed(console: Console) -> None:
    c, h = console.client(), console.bearer("operator")
    r = c.post(
        "/api/schedules", json={"kind": "recalibrate", "campaign_id": "1", "every_minutes": 30}, headers=h
    )
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["kind"] == "recalibrate" and rec["created_by"] == "otto" and rec["campaign_id"] == "1"
    at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    r = c.post("/api/schedules", json={"kind": "start", "resume_campaign_id": "1", "at": at}, headers=h)
    assert r.status_code == 201, r.text
    r = c.post("/api/schedules", json={"kind": "health", "campaign_id": "1", "every_minutes": 1}, headers=h)
    assert r.status_code == 201
    listed = c.get("/api/schedules", headers=console.bearer("observer")).json()["schedules"]
    assert {s["kind"] for s in listed} == {"recalibrate", "start", "health"}

    # another scheduler on the same database sees them: they survive a restart
    other = ConsoleScheduler(console.url)
    other.start(paused=True)
    try:
        assert {s.id for s in other.list()} == {s["id"] for s in listed}
    finally:
        other.shutdown()

    assert c.delete(f"/api/schedules/{rec['id']}", headers=h).status_code == 204
    assert c.delete(f"/api/schedules/{rec['id']}", headers=h).status_code == 404
    assert len(c.get("/api/schedules", headers=h).json()["schedules"]) == 2
    audit = [a["action"] for a in c.get("/api/audit", headers=console.bearer("admin")).json()]
    assert audit.count("schedule.add") == 3 and "schedule.remove" in audit


@pytest.mark.parametrize(
    "body, code, match",
    [
        ({"kind": "recalibrate", "campaign_id": "99", "every_minutes": 5}, 404, "no campaign"),
        ({"kind": "recalibrate", "campaign_id": "1"}, 400, "every_minutes"),
        ({"kind": "health", "campaign_id": "1", "every_minutes": 0.01}, 400, "at least"),
        ({"kind": "start", "protocol": "nope.yaml", "rig": "nope.yaml"}, 400, "no file"),
        ({"kind": "start", "protocol": "p.yaml"}, 400, "both a protocol file and a rig file"),
        ({"kind": "start", "resume_campaign_id": "1", "protocol": "p.yaml"}, 400, "not both"),
        ({"kind": "start", "resume_campaign_id": "1", "at": "2020-01-01T00:00:00+00:00"}, 400, "in the past"),
        ({"kind": "start", "resume_campaign_id": "1", "at": "2099-01-01T00:00:00"}, 400, "time zone"),
        ({"kind": "reboot"}, 422, ""),
    ],
)
def test_bad_schedules_are_refused_with_a_reason(console: Console, body: dict, code: int, match: str) -> None:
    r = console.client().post("/api/schedules", json=body, headers=console.bearer("operator"))
    assert r.status_code == code, r.text
    assert match in str(r.json()["detail"])
    assert (
        console.client().get("/api/schedules", headers=console.bearer("operator")).json()["schedules"] == []
    )


def test_a_scheduled_start_opens_only_yaml_files_in_the_allowed_folders(
    console: Console, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's schedule must not read the server's files (its error would echo them) nor open the
    store's own database (closing that file releases SQLite's locks: the console then lost its writes)."""
    c, h = console.client(), console.bearer("operator")
    at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    secret = tmp_path / "secret.yaml"
    secret.write_text("topsecret: x:0:0:hash\n")
    store_file = console.url.removeprefix("sqlite:///")
    for protocol, said in [
        ("/etc/passwd", "protocol and rig files are YAML files"),
        (store_file, "protocol and rig files are YAML files"),
        (str(secret), "is outside the folders scheduled starts may read"),
    ]:
        r = c.post("/api/schedules", json={"kind": "start", "protocol": protocol, "rig": protocol, "at": at}, headers=h)
        assert r.status_code == 400 and said in r.json()["detail"], r.text
        assert "topsecret" not in r.json()["detail"] and "0:0:" not in r.json()["detail"]  # nothing of the file echoed
    r = c.post("/api/schedules", json={"kind": "start", "resume_campaign_id": "no|such", "at": at}, headers=h)
    assert r.status_code == 404, r.text  # a campaign to resume must exist (a '|' broke the stored name)
    assert c.get("/api/schedules", headers=h).json()["schedules"] == []

    folder = tmp_path / "lab"
    folder.mkdir()
    roots = sched.ConsoleScheduler(console.url, [folder]).file_roots
    assert roots == [folder.resolve()]
    monkeypatch.setenv(sched.FILES_ENV, f"{folder}{os.pathsep}{tmp_path / 'more'}")
    assert sched.default_file_roots() == [folder, tmp_path / "more"]


class Recorder:
    def __init__(self, health: CampaignHealth | None) -> None:
        self.health = health
        self.requests: list[tuple[str, str, str, str]] = []

    def context(self, tmp_path: Path) -> JobContext:
        return JobContext(
            request_control=lambda _u, c, a, w, y: self.requests.append((c, a, w, y)),
            campaign_health=lambda _u, _c: self.health,
            workdir=tmp_path,
            log_dir=tmp_path / "logs",
            python="/bin/echo",  # a harmless stand-in for the interpreter: the job's command line is checked
        )


def test_recalibrate_job_asks_only_a_running_campaign(tmp_path: Path) -> None:
    rec = Recorder(CampaignHealth(True, 1.0, {}))
    sched.set_job_context(rec.context(tmp_path))
    assert sched.recalibrate_job("db", "1", 30, "otto") is True
    assert rec.requests == [("1", "recalibrate", "scheduler (otto)", "scheduled every 30 min")]
    rec.health = CampaignHealth(False, 1.0, {})
    assert sched.recalibrate_job("db", "1", 30, "otto") is False and len(rec.requests) == 1


def test_health_job_pauses_with_the_reason_in_words(tmp_path: Path) -> None:
    present = tmp_path / "ttyUSB0"
    present.touch()
    rec = Recorder(CampaignHealth(True, 10.0, {"Q_seed": str(present), "Q_PVA": "sim://newera/rig"}))
    sched.set_job_context(rec.context(tmp_path))
    assert sched.health_job("db", "1", 600, "otto") is None and rec.requests == []

    rec.health = CampaignHealth(True, 10.0, {"Q_seed": str(tmp_path / "ttyUSB9")})
    problem = sched.health_job("db", "1", 600, "otto")
    assert problem is not None and "device Q_seed stopped answering" in problem and "unplugged" in problem
    assert rec.requests[-1][:3] == ("1", "pause", "scheduler (otto)")
    assert rec.requests[-1][3].startswith("health check: device Q_seed")

    rec.health = CampaignHealth(True, 1200.0, {})
    assert "no progress for 1200 s" in (sched.health_job("db", "1", 600, "otto") or "")
    rec.health = CampaignHealth(False, 1e6, {"Q_seed": "/dev/none"})
    assert sched.health_job("db", "1", 600, "otto") is None  # a paused campaign is left alone


def test_probe_port_network_and_local() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert probe_port(f"socket://127.0.0.1:{port}") is None
    assert "refuses connections" in (probe_port(f"socket://127.0.0.1:{port}", timeout_s=0.5) or "")
    assert probe_port("loop://") is None
    assert probe_port("/dev/null") is None


def test_start_job_runs_sdl_in_its_own_process(tmp_path: Path) -> None:
    rec = Recorder(None)
    sched.set_job_context(rec.context(tmp_path))
    pid = sched.start_campaign_job("sqlite:///x.db", "p.yaml", "r.yaml", None, "otto")
    assert pid > 0
    logs = list((tmp_path / "logs").glob("sdl-scheduled-*.log"))
    assert len(logs) == 1
    deadline = time.monotonic() + 5
    while not logs[0].read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    # the store goes in $SDL_DB_URL: on the command line `ps` would show a PostgreSQL password to anyone
    assert logs[0].read_text().split() == ["-m", "orchestrator.cli.main", "run", "p.yaml", "--rig", "r.yaml"]


def test_shutdown_with_a_due_job_is_clean_and_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 13: a paused scheduler (a second server, the fuzzer's app) holding a due start job
    submitted it to its stopped executor at shutdown ("cannot schedule new futures after shutdown")
    and its thread died on JobLookupError. Shutdown is quiet now, and the job waits in the store."""
    import logging
    import threading

    died: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(f"{args.exc_type.__name__}: {args.exc_value}")
    try:
        with caplog.at_level(logging.WARNING, logger="apscheduler"):
            for i in range(3):
                url = f"sqlite:///{tmp_path / f's{i}.db'}"
                first = ConsoleScheduler(url)
                first.start(paused=True)
                due = first.add_start("otto", None, resume_campaign_id="1")  # at = now: due at once
                first.shutdown()
                again = ConsoleScheduler(url)
                again.start(paused=True)
                try:
                    assert [s.id for s in again.list()] == [due.id]
                finally:
                    again.shutdown()
    finally:
        threading.excepthook = previous
    assert died == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")] == []


def _stand_in(tmp_path: Path, name: str, body: str) -> str:
    """An executable that the start job runs in place of the interpreter (it ignores the arguments)."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def _watched(pid: int) -> None:
    """Wait for the thread that watches the scheduled process ``pid``."""
    import threading

    for thread in threading.enumerate():
        if thread.name == f"sdl-scheduled-{pid}":
            thread.join(timeout=30)
            assert not thread.is_alive()


def test_a_scheduled_start_gets_its_store_in_the_environment(tmp_path: Path) -> None:
    rec = Recorder(None)
    context = rec.context(tmp_path)
    context.python = _stand_in(tmp_path, "env", 'echo "store=$SDL_DB_URL"\n')
    sched.set_job_context(context)
    url = "postgresql+psycopg://sdl:secret@db/sdl"
    _watched(sched.start_campaign_job(url, "p.yaml", "r.yaml", None, "otto"))
    (log,) = (tmp_path / "logs").glob("sdl-scheduled-*.log")
    assert log.read_text().strip() == f"store={url}"


def test_a_scheduled_start_that_never_ran_is_journaled_and_shown(tmp_path: Path) -> None:
    """A start at 2 a.m. that met a busy rig used to leave its reason only in sdl-scheduled-*.log: nobody
    knew in the morning. Now the journal says what was scheduled, the exit code and what it printed; the
    console lists it with the schedules (and the notifier sends it: a fault)."""
    import sys

    from orchestrator.console.events import FAULT
    from orchestrator.console.store_source import StoreSource
    from orchestrator.store import open_store

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    store = open_store(url)
    rec = Recorder(None)
    context = rec.context(tmp_path)
    context.python = _stand_in(
        tmp_path, "busy", 'echo "campaign checks..."\necho "error: rig ag-rig-1 is busy with campaign 7" >&2\nexit 1\n'
    )
    sched.set_job_context(context)
    _watched(sched.start_campaign_job(url, "p.yaml", "r.yaml", None, "otto"))
    (failed,) = store.recent_events(None, 10, kind=sched.SCHEDULE_FAILED)
    assert failed.campaign_id is None and failed.who == "scheduler (otto)"
    assert failed.reason.startswith(
        "scheduled start of p.yaml on r.yaml did not run (exit 1): campaign checks... / error: rig ag-rig-1 is busy"
    ), failed.reason
    assert "sdl-scheduled-" in failed.reason and failed.data["exit_code"] == 1
    (shown,) = StoreSource(store).failed_schedules(10)
    assert shown.category == FAULT and shown.text == failed.reason

    # a process that took its campaign and then stopped (faulted, aborted) journals that itself
    claims = (
        f"exec {sys.executable} -c \"from orchestrator.store import open_store; "
        "from orchestrator.campaign import process_owner; "
        f"open_store('{url}').journal(None, 'claimed', who=process_owner()); raise SystemExit(1)\"\n"
    )
    context.python = _stand_in(tmp_path, "claims", claims)
    _watched(sched.start_campaign_job(url, "p.yaml", "r.yaml", None, "otto"))
    assert [e.kind for e in store.recent_events(None, 10)] == [sched.SCHEDULE_FAILED, "claimed"]

    # a resume that was refused is journaled on its campaign; a run that ended well is not journaled
    from orchestrator import state

    from .test_store_source import PROTOCOL, stored_campaign

    campaign_id = stored_campaign(store, PROTOCOL.read_text(), status=state.QUEUED, rig="sim")
    context.python = _stand_in(tmp_path, "refused", "echo 'error: rig sim is e-stopped' >&2\nexit 1\n")
    _watched(sched.start_campaign_job(url, None, None, campaign_id, "otto"))
    context.python = _stand_in(tmp_path, "fine", "exit 0\n")
    _watched(sched.start_campaign_job(url, "p.yaml", "r.yaml", None, "otto"))
    last = store.recent_events(None, 1)[0]
    assert last.kind == sched.SCHEDULE_FAILED and last.campaign_id == campaign_id
    assert last.reason.startswith(f"scheduled resume of {campaign_id} did not run (exit 1): error: rig sim is e-stopped")
    store.close()


def test_schedules_list_the_starts_that_did_not_run(console: Console) -> None:
    console.source.add_event("1", "schedule_failed", "fault", "scheduled resume of 1 did not run (exit 1): busy")
    got = console.client().get("/api/schedules", headers=console.bearer("observer")).json()
    assert [(e["kind"], e["category"], e["text"]) for e in got["failed"]] == [
        ("schedule_failed", "fault", "scheduled resume of 1 did not run (exit 1): busy")
    ]
