"""The campaign runner on the simulated rig: what it stores, pause/resume/abort/e-stop at checkpoints,
every status change it makes, device faults from the simulators' fault injection, stop rules.

The tiny protocol (2 rounds x 3 conditions x 3 replicates, Latin hypercube) keeps each run well
under a second; waits for an operator are the test's own ``sleep`` hook, never wall time."""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from campaign_support import (
    ROOT,
    SIM_RIG,
    TARGET,
    event_kinds,
    fingerprint,
    new_store,
    rig_with_faults,
    statuses,
    tiny_protocol,
)

from orchestrator import state
from orchestrator.campaign import run_campaign, start_campaign
from orchestrator.config_errors import ConfigError
from orchestrator.logging import campaign_logging
from orchestrator.store import Store
from orchestrator.summary import build_summary
from simulators.world import get_world

SEED = 11


def run(
    store: Store,
    cid: str,
    *,
    progress=None,
    sleep=None,
    wall=None,
    owner: str = "test",
    estop_poll_s: float = 0.005,
) -> str:
    kwargs: dict[str, Any] = {"poll_s": 0.0, "estop_poll_s": estop_poll_s}
    if sleep is not None:
        kwargs["sleep"] = sleep
    if wall is not None:
        kwargs["wall"] = wall
    log = Path(store.url.removeprefix("sqlite:///")).parent / "logs" / f"{cid}.log"
    with campaign_logging(log):
        return run_campaign(store, cid, owner=owner, progress=progress, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = new_store(tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted tiny campaign with SEED: what every interrupted run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    s = new_store(folder)
    cid = start_campaign(s, tiny_protocol(folder), SIM_RIG, seed=SEED)
    assert run(s, cid) == state.FINISHED
    out = {"fingerprint": fingerprint(s, cid), "kinds": event_kinds(s, cid), "statuses": statuses(s, cid)}
    s.close()
    return out


def start(store: Store, folder: Path, *, seed: int = SEED, rig: Path = SIM_RIG, **changes: Any) -> str:
    return start_campaign(store, tiny_protocol(folder, **changes), rig, seed=seed)


# -- an uninterrupted campaign ------------------------------------------------------------------------


def test_uninterrupted_campaign_stores_every_step(store: Store, tmp_path: Path, reference) -> None:
    cid = start(store, tmp_path)
    assert run(store, cid) == state.FINISHED
    row = store.campaign(cid)
    assert row.reason == "round budget spent: 2 of 2 rounds"
    assert row.owner is None  # released
    assert [r.index for r in store.rounds(cid)] == [0, 1]
    assert all(r.status == "done" for r in store.rounds(cid))
    conditions = store.conditions(cid)
    assert len(conditions) == 6 and all(c.status == "done" for c in conditions)
    for c in conditions:
        reps = store.replicates(cid, c.round, c.index)
        assert [r.index for r in reps] == [0, 1, 2]
        losses = [r.loss for r in reps if r.accepted]
        assert c.median_loss == pytest.approx(float(np.median(losses)))
        assert c.mad == pytest.approx(float(np.median(np.abs(np.array(losses) - np.median(losses)))))
        assert all(r.absorbance.shape == (421,) and r.raw["counts"].shape == (2048,) for r in reps)
        assert c.rates is not None and set(c.rates) == {"AgNO3", "PVA", "TSC", "seed", "water"}
    assert statuses(store, cid) == [("created", "running"), ("running", "finished")]
    assert fingerprint(store, cid) == reference["fingerprint"]  # same seed, same numbers


def test_a_different_seed_gives_different_conditions(store: Store, tmp_path: Path, reference) -> None:
    cid = start(store, tmp_path, seed=SEED + 1)
    assert run(store, cid) == state.FINISHED
    assert fingerprint(store, cid)["conditions"] != reference["fingerprint"]["conditions"]


def test_batch_is_persisted_before_the_first_pump_moves(reference) -> None:
    kinds = reference["kinds"]
    assert kinds.index("calibrated") < kinds.index("rates_set")
    first, second = "|".join(kinds).split("round_done")[:2]
    for part in (first, second):
        steps = part.split("|")
        assert steps.index("batch_planned") < steps.index("rates_set") < steps.index("replicate_acquired")
    assert kinds.count("replicate_acquired") == 18
    assert kinds.count("condition_done") == 6


def test_resume_of_a_finished_campaign_changes_nothing(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    assert run(store, cid) == state.FINISHED
    before = event_kinds(store, cid)
    assert run(store, cid) == state.FINISHED
    assert event_kinds(store, cid) == before


# -- pause / resume / abort at checkpoints -------------------------------------------------------------


class Operator:
    """Requests controls from the progress events and answers the runner's waits (its sleep hook)."""

    def __init__(self, store: Store, cid: str) -> None:
        self.store, self.cid = store, cid
        self.seen: list[tuple[str, dict]] = []
        self.waits = 0

    def request(self, action: str, reason: str = "test") -> None:
        self.store.request_control(self.cid, action, who="operator", reason=reason)

    def status(self) -> str:
        return self.store.campaign(self.cid).status


def test_pause_at_every_checkpoint_then_resume_equals_uninterrupted(
    store: Store, tmp_path: Path, reference
) -> None:
    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        # "condition" comes before a condition's first replicate, "replicate" after each one: between
        # them, every replicate boundary of the campaign is a checkpoint with a pause pending
        if event in ("condition", "replicate"):
            op.request("pause", "bubble in line")

    def sleep(_: float) -> None:
        op.waits += 1
        assert op.status() == state.PAUSED
        assert all(rate == 0.0 for rate in get_world("simulated")._rates.values())  # pumps safe
        op.request("resume", "cleared")

    assert run(store, cid, progress=progress, sleep=sleep) == state.FINISHED
    assert fingerprint(store, cid) == fingerprint_like(reference)
    changes = statuses(store, cid)
    pauses = changes.count(("running", "paused"))
    assert pauses == op.waits and pauses >= 18  # at least one pause before each replicate
    assert changes.count(("paused", "running")) == pauses
    assert not store.replicates(cid, include_set_aside=True) or all(
        not r.set_aside for r in store.replicates(cid, include_set_aside=True)
    )


def fingerprint_like(reference) -> dict:
    return reference["fingerprint"]


def test_a_pause_longer_than_the_limit_restarts_the_condition(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path, pause_restart_after_s=60)
    op = Operator(store, cid)
    clock = itertools.count(0.0, 100.0)  # every look at the wall clock: 100 s later

    def progress(event: str, **info: Any) -> None:
        if (
            event == "replicate"
            and (info["round"], info["condition"], info["index"]) == (0, 1, 1)
            and not op.waits
        ):
            op.waits += 1
            op.request("pause", "lunch")

    def sleep(_: float) -> None:
        op.request("resume", "back")

    assert run(store, cid, progress=progress, sleep=sleep, wall=lambda: next(clock)) == state.FINISHED
    every = store.replicates(cid, 0, 1, include_set_aside=True)
    aside = [r for r in every if r.set_aside]
    assert [(r.attempt, r.index) for r in aside] == [(0, 0), (0, 1)]
    assert "pause_restart_after_s 60" in aside[0].set_aside_reason
    kept = store.replicates(cid, 0, 1)
    assert [(r.attempt, r.index) for r in kept] == [(1, 0), (1, 1), (1, 2)]
    cond = store.conditions(cid, 0)[1]
    assert cond.status == "done" and cond.attempt == 1


def test_abort_stops_and_keeps_the_data(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and (info["round"], info["condition"], info["index"]) == (0, 1, 0):
            op.request("abort", "wrong stock solution")

    assert run(store, cid, progress=progress) == state.ABORTED
    row = store.campaign(cid)
    assert (
        row.status == state.ABORTED and row.reason == "wrong stock solution" and row.status_by == "operator"
    )
    assert len(store.replicates(cid)) == 4  # condition 0's three and condition 1's first
    assert all(rate == 0.0 for rate in get_world("simulated")._rates.values())
    assert statuses(store, cid) == [("created", "running"), ("running", "aborted")]
    assert run(store, cid) == state.ABORTED  # final


def test_a_pause_during_the_equilibration_wait_is_honoured_before_any_droplet(
    store: Store, tmp_path: Path, reference
) -> None:
    """The wait for a new flow can last a minute: a pause clicked during it stops the pumps then,
    not after the first replicate; on resume the flow is set and waited for again, data unchanged."""
    cid = start(store, tmp_path)
    op = Operator(store, cid)
    measured_when_paused: list[int] = []

    def click_pause() -> None:
        cancel()
        op.request("pause", "bubble in the line")

    def progress(event: str, **info: Any) -> None:
        nonlocal cancel
        if event == "condition_done" and (info["round"], info["index"]) == (0, 0):
            # the rig's world exists once the run has built the rig
            cancel = get_world("simulated").clock.every(3.0, click_pause)  # 3 s into condition 1's wait
        if event == "status" and info["status"] == state.PAUSED:
            measured_when_paused.append(len(store.replicates(cid, 0, 1)))

    def sleep(_: float) -> None:
        if op.status() == state.PAUSED:
            op.request("resume", "bubble cleared")

    cancel: Any = None
    assert run(store, cid, progress=progress, sleep=sleep) == state.FINISHED
    assert measured_when_paused == [0]
    assert fingerprint(store, cid) == reference["fingerprint"]


def test_abort_while_paused(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and info["index"] == 1 and op.status() == state.RUNNING:
            op.request("pause")

    def sleep(_: float) -> None:
        op.request("abort", "end of shift")

    assert run(store, cid, progress=progress, sleep=sleep) == state.ABORTED
    assert statuses(store, cid)[-2:] == [("running", "paused"), ("paused", "aborted")]
    totals = build_summary(store, cid)["totals"]
    assert totals["conditions"] == 3 and totals["conditions_measured"] == 0  # planned, never finished


def test_two_pauses_at_once_pause_once_and_resume_is_final(store: Store, tmp_path: Path) -> None:
    """Two operators tap Pause together: one pause, the other refused, and after the resume the
    campaign runs on. It used to act on the refused request after the hold and pause itself again."""
    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and (info["round"], info["condition"], info["index"]) == (0, 0, 1):
            op.request("pause", "bubble in line")
            op.request("pause", "refill seed syringe")

    def sleep(_: float) -> None:
        op.waits += 1
        op.request("resume", "cleared")

    assert run(store, cid, progress=progress, sleep=sleep) == state.FINISHED
    assert statuses(store, cid).count(("running", "paused")) == 1 and op.waits == 1
    outcomes = [e.data["outcome"] for e in store.events(cid, limit=1000) if e.kind == "control_handled"]
    assert outcomes[:3] == ["paused", "refused: already paused", "resumed"], outcomes


def test_recalibrate_and_a_resume_while_running_are_handled(store: Store, tmp_path: Path, reference) -> None:
    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and (info["round"], info["condition"], info["index"]) == (0, 0, 0):
            op.request("recalibrate")
            op.request("resume")

    assert run(store, cid, progress=progress) == state.FINISHED
    assert event_kinds(store, cid).count("calibrated") == 2
    outcomes = [e.data["outcome"] for e in store.events(cid, limit=1000) if e.kind == "control_handled"]
    assert "refused: not paused" in outcomes
    dark = [e for e in store.events(cid, limit=1000) if e.kind == "calibrated"]
    assert (
        dark[1].reason == "dark re-taken"
        and dark[1].data["reference_counts"] == dark[0].data["reference_counts"]
    )


# -- e-stop --------------------------------------------------------------------------------------------


def test_estop_stops_at_once_latches_and_resumes_after_clearing(
    store: Store, tmp_path: Path, reference
) -> None:
    cid = start(store, tmp_path)
    op = Operator(store, cid)
    seen_estopped: list[bool] = []

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and (info["round"], info["condition"], info["index"]) == (0, 2, 0):
            store.latch_estop(who="operator", reason="smoke", rig="simulated")
            op.request("estop", "smoke")  # as the console does: latch, then tell the campaign's process
        if event == "status" and info["status"] == state.ESTOPPED:
            seen_estopped.append(all(r == 0.0 for r in get_world("simulated")._rates.values()))

    def sleep(_: float) -> None:
        op.waits += 1
        status = op.status()
        if status == state.ESTOPPED and op.waits == 1:
            op.request("resume", "too early")  # refused: still latched
        elif status == state.ESTOPPED and op.waits == 2:
            assert len(store.active_estops()) == 1  # the process did not latch it a second time
        elif status == state.ESTOPPED:
            store.clear_estop(who="admin", reason="checked the lines", rig="simulated")
            op.request("estop", "smoke")  # a second press, stale by the time the process reads it
        elif status == state.PAUSED:
            op.request("resume", "go on")

    assert run(store, cid, progress=progress, sleep=sleep) == state.FINISHED
    assert seen_estopped == [True]
    changes = statuses(store, cid)
    assert ("running", "estopped") in changes and ("estopped", "paused") in changes
    cleared = next(e for e in store.events(cid, limit=1000) if e.kind == "paused")
    assert store.active_estops() == []  # the stale press did not latch the rig again after the clear
    assert (cleared.who, cleared.reason) == ("admin", "e-stop cleared: checked the lines; resume when ready")
    assert ("paused", "running") in changes
    outcomes = [e.data["outcome"] for e in store.events(cid, limit=1000) if e.kind == "control_handled"]
    assert "refused: the e-stop is still latched" in outcomes
    assert fingerprint(store, cid) == reference["fingerprint"]  # nothing taken during the stop counts


def test_a_latched_estop_holds_a_campaign_before_it_starts(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    store.latch_estop(who="operator", reason="maintenance", rig=None)
    op = Operator(store, cid)

    def sleep(_: float) -> None:
        assert store.rounds(cid) == [] and "rates_set" not in event_kinds(store, cid)
        if op.status() == state.ESTOPPED:
            store.clear_estop(who="admin", reason="done", rig=None)
        elif op.status() == state.PAUSED:
            op.request("resume")

    # a watcher that would look only after a minute: the runner itself refuses to start the pumps
    assert run(store, cid, sleep=sleep, estop_poll_s=60.0) == state.FINISHED
    assert statuses(store, cid)[:3] == [
        ("created", "estopped"),
        ("estopped", "paused"),
        ("paused", "running"),
    ]
    held = next(e for e in store.events(cid, limit=500) if e.kind == state.ESTOPPED)
    assert "e-stop latched on every rig at " in held.reason and held.reason.endswith(
        ": maintenance; when it is safe an admin clears it (`sdl estop --clear`), then resume")


def test_an_estopped_campaign_whose_latch_was_cleared_runs_on_resume(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    store.latch_estop(who="operator", reason="spill", rig="simulated")
    store.set_status(cid, state.ESTOPPED, reason="spill", who="operator")
    store.clear_estop(who="admin", reason="cleaned", rig="simulated")
    assert run(store, cid) == state.FINISHED
    assert statuses(store, cid)[1] == ("estopped", "running")


# -- every status a campaign can be resumed from ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "journal"),
    [
        ([state.QUEUED], None),
        ([state.RUNNING, state.PAUSED], None),
        ([state.RUNNING, state.FAULTED], None),
        ([state.RUNNING, state.ORPHANED], None),
        ([state.RUNNING, state.PAUSING], None),
        ([state.RUNNING], "resumed"),  # the process died while running (kill -9)
    ],
)
def test_resumes_from(store: Store, tmp_path: Path, path: list[str], journal: str | None) -> None:
    cid = start(store, tmp_path)
    for status in path:
        store.set_status(cid, status, reason="set by the test")
    assert run(store, cid) == state.FINISHED
    changes = statuses(store, cid)
    assert changes[-1] == ("running", "finished")
    if journal:
        assert journal in event_kinds(store, cid)
    else:
        assert changes[len(path)] == (path[-1], "running")


def test_a_campaign_left_aborting_ends_aborted(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path)
    store.set_status(cid, state.RUNNING)
    store.set_status(cid, state.ABORTING, reason="operator", who="alice")
    assert run(store, cid) == state.ABORTED
    assert store.replicates(cid) == []


# -- device faults from the simulators' fault injection ------------------------------------------------


def test_a_one_shot_stall_is_retried_and_the_campaign_goes_on(store: Store, tmp_path: Path) -> None:
    rig = rig_with_faults(tmp_path, pumps={"seed": [{"kind": "stall", "at_s": 30}]})
    cid = start(store, tmp_path, rig=rig)
    assert run(store, cid) == state.FINISHED
    errors = [e for e in store.events(cid, limit=1000) if e.kind == "device_error"]
    assert errors and errors[0].data["device"] == "seed" and "stall" in errors[0].reason.lower()
    assert state.FAULTED not in {to for _, to in statuses(store, cid)}
    assert all(c.status == "done" for c in store.conditions(cid))


def test_a_stall_after_the_last_check_of_a_condition_is_journaled_not_lost(store: Store, tmp_path: Path) -> None:
    """A pump that stalls between its last check and the next condition answers that condition's stop
    with A?S, which acknowledges the alarm on the pump: the driver kept it, but the next run() cleared it
    and the pump was started again without a word. (24.70 s: with seed 1 the first condition's droplets are
    taken at 24.69-24.71 s on this rig's clock, after its last pump check.)"""
    rig = rig_with_faults(tmp_path, pumps={"AgNO3": [{"kind": "stall", "at_s": 24.70}]})
    cid = start(store, tmp_path, seed=1, rig=rig)
    assert run(store, cid) == state.FINISHED
    errors = [e for e in store.events(cid, limit=1000) if e.kind == "device_error"]
    assert [(e.data["what"], e.data["device"]) for e in errors] == [("stopping the pumps", "AgNO3")]
    assert errors[0].reason.startswith("pump AgNO3 had stopped by itself (stall) since it was last checked")


def faulted_resumed_then_aborted(store: Store, cid: str) -> list[str]:
    """Run the campaign; resume it at its first fault, abort it at the second. The faults' reasons."""
    op = Operator(store, cid)
    reasons: list[str] = []

    def sleep(_: float) -> None:
        row = store.campaign(cid)
        reasons.append(row.reason)
        assert row.status == state.FAULTED
        op.request(
            "resume" if len(reasons) == 1 else "abort", "tried again" if len(reasons) == 1 else "give up"
        )

    assert run(store, cid, sleep=sleep) == state.ABORTED
    return reasons


def test_an_unplugged_pump_line_faults_the_campaign(store: Store, tmp_path: Path) -> None:
    rig = rig_with_faults(tmp_path, pumps={"AgNO3": [{"kind": "disconnect", "at_s": 20}]})
    cid = start(store, tmp_path, rig=rig)
    reasons = faulted_resumed_then_aborted(store, cid)
    assert len(reasons) == 2  # faulted, resumed, faulted again (the fault lasts), aborted
    # the unplugged adapter takes the whole New Era line; the reason names it and what to check
    assert reasons[0].startswith("fault: New Era line sim://newera/newera-line: cannot open port")
    assert "retried 3 times (setting pump rates)" in reasons[0] and "cable is plugged in" in reasons[0]
    assert ("faulted", "running") in statuses(store, cid)
    # the unplugged line's pumps cannot be told to stop: the reason says so
    assert "NOT STOPPED, stop by hand: pump AgNO3" in reasons[0] and "pump PVA" in reasons[0]
    assert len([e for e in store.events(cid, limit=1000) if e.kind == "device_error"]) >= 8


def test_a_pump_that_stays_silent_is_named_for_its_silence_after_a_resume_too(store: Store, tmp_path: Path) -> None:
    """Its reconnect failed, so the resumed run met a driver never reopened: the fault read "pump PVA: pump
    used before connect() ... Call connect() first", a programmer's message, in the console and webhook."""
    rig = rig_with_faults(tmp_path, pumps={"PVA": [{"kind": "no_reply", "at_s": 20}]})
    cid = start(store, tmp_path, rig=rig)
    reasons = faulted_resumed_then_aborted(store, cid)
    assert len(reasons) == 2
    for reason in reasons:
        assert reason.startswith("fault: pump PVA: no reply") or "pump PVA: no" in reason, reason
        assert "before connect" not in reason and "Call connect() first" not in reason, reason


def test_a_spectrometer_timeout_faults_then_resume_finishes(store: Store, tmp_path: Path, reference) -> None:
    rig = rig_with_faults(tmp_path, spectrometer=[{"kind": "no_reply", "at_s": 20, "duration_s": 30}])
    cid = start(store, tmp_path, rig=rig)
    op = Operator(store, cid)

    def sleep(_: float) -> None:
        if op.status() == state.FAULTED:
            op.request("resume", "replugged USB")

    assert run(store, cid, sleep=sleep) == state.FINISHED
    row_reasons = [e.reason for e in store.events(cid, limit=1000) if e.kind == state.FAULTED]
    assert (
        row_reasons
        and row_reasons[0].startswith("fault: spectrometer: ")
        and "retried 3 times" in row_reasons[0]
    )
    assert fingerprint(store, cid) == reference["fingerprint"]  # the fault cost time, not data


def test_droplets_left_by_a_process_that_stopped_long_ago_are_set_aside(store: Store, tmp_path: Path) -> None:
    """Ctrl-C at night, `sdl resume` in the morning: the condition's first droplets were hours older than
    the rest and went into one median; pause_restart_after_s was applied only to holds in one process."""
    import time

    cid = start(store, tmp_path, pause_restart_after_s=1)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and (info["round"], info["condition"], info["index"]) == (0, 1, 0):
            raise KeyboardInterrupt  # after the first droplet of the second condition

    with pytest.raises(KeyboardInterrupt):
        run(store, cid, progress=progress)
    time.sleep(1.3)
    assert run(store, cid) == state.FINISHED
    aside = [r for r in store.replicates(cid, include_set_aside=True) if r.set_aside]
    assert [(r.round, r.condition, r.attempt, r.index) for r in aside] == [(0, 1, 0, 0)]
    assert "before this process took the campaign over (> pause_restart_after_s 1 s)" in aside[0].set_aside_reason
    (second,) = [c for c in store.conditions(cid, 0) if c.index == 1]
    assert second.attempt == 1 and second.status == "done"


def database_down(
    store: Store, monkeypatch: pytest.MonkeyPatch, *, down: Callable[[int], bool], answer_lost: int | None = None
) -> None:
    """The database fails the runner's writes of droplets: the n-th ``add_replicate`` fails when ``down(n)``;
    the ``answer_lost``-th is committed and then fails, as a connection lost before its answer. The runner
    retries at once (DB_RETRY_S 0)."""
    from sqlalchemy.exc import OperationalError

    import orchestrator.campaign as campaign_module

    monkeypatch.setattr(campaign_module, "DB_RETRY_S", 0.0)
    real, calls = store.add_replicate, [0]

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if down(calls[0]):
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        real(*args, **kwargs)
        if calls[0] == answer_lost:
            raise OperationalError("COMMIT", {}, Exception("connection lost"))

    monkeypatch.setattr(store, "add_replicate", flaky)


def test_a_short_database_outage_loses_no_droplet(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference
) -> None:
    """A PostgreSQL restart while a droplet was being written: the run ended with the droplet lost. The
    runner now waits for the store (up to DB_PATIENCE_S) and writes it; a write whose answer was lost
    though it was committed is not written twice."""
    cid = start(store, tmp_path)
    database_down(store, monkeypatch, down=lambda n: n in (4, 5), answer_lost=9)  # two tries down, one answer lost
    assert run(store, cid) == state.FINISHED
    assert fingerprint(store, cid) == reference["fingerprint"]  # every droplet, once


def test_a_long_database_outage_stops_the_run_pumps_safe_not_faulted(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the patience the run stops, pumps safe, and leaves the campaign as it was for an agent or
    `sdl resume`. It used to be marked faulted ("engine error: OperationalError ... sqlalche.me/e/21"),
    waiting for the store twice more on the way (six minutes), and the agent then ran the queue first."""
    from sqlalchemy.exc import OperationalError

    import orchestrator.campaign as campaign_module

    monkeypatch.setattr(campaign_module, "DB_PATIENCE_S", 0.05)
    cid = start(store, tmp_path)
    database_down(store, monkeypatch, down=lambda n: n >= 4)
    with pytest.raises(OperationalError):
        run(store, cid)
    assert store.campaign(cid).status == state.RUNNING  # not faulted: an agent or `sdl resume` takes it up
    assert all(rate == 0.0 for rate in get_world("simulated")._rates.values())  # noqa: SLF001 - pumps safe
    assert len(store.replicates(cid)) == 3


def test_an_estop_on_a_faulted_campaign_keeps_the_fault_in_the_reason(store: Store, tmp_path: Path) -> None:
    """An e-stop pressed while a campaign was held by a fault, then cleared: the campaign read "paused:
    e-stop cleared: ...", and the fault (with any "NOT STOPPED, stop by hand") was gone from the state."""
    rig = rig_with_faults(tmp_path, spectrometer=[{"kind": "no_reply", "at_s": 20, "duration_s": 30}])
    cid = start(store, tmp_path, rig=rig)
    op = Operator(store, cid)

    def sleep(_: float) -> None:
        status = op.status()
        if status == state.FAULTED:
            store.latch_estop(who="carol", reason="smoke", rig="simulated")
        elif status == state.ESTOPPED:
            store.clear_estop(who="alice", reason="no smoke", rig="simulated")
        elif status == state.PAUSED:
            op.request("abort", "enough")

    assert run(store, cid, sleep=sleep) == state.ABORTED
    cleared = next(e for e in store.events(cid, limit=2000) if e.kind == "paused")
    assert cleared.reason.startswith("e-stop cleared: no smoke; before the e-stop: faulted: fault: spectrometer: ")
    assert cleared.reason.endswith("; resume when ready") and "retried 3 times" in cleared.reason


@pytest.mark.parametrize(
    ("pumps", "spectrometer"),
    [
        ({"AgNO3": [{"kind": "reset", "at_s": 40}]}, None),  # New Era power cycle: diameter lost
        (None, [{"kind": "disconnect", "at_s": 40, "duration_s": 0.5}]),  # USB re-plugged
    ],
    ids=["newera-power-reset", "spectrometer-replugged"],
)
def test_a_device_that_comes_back_is_opened_afresh_and_the_campaign_goes_on(
    store: Store, tmp_path: Path, pumps, spectrometer, reference
) -> None:
    rig = rig_with_faults(tmp_path, pumps=pumps, spectrometer=spectrometer)
    cid = start(store, tmp_path, rig=rig)
    assert run(store, cid) == state.FINISHED
    assert "device_error" in event_kinds(store, cid)
    assert state.FAULTED not in {to for _, to in statuses(store, cid)}
    assert fingerprint(store, cid) == reference["fingerprint"]


def test_a_rig_that_does_not_connect_leaves_the_campaign_resumable(store: Store, tmp_path: Path) -> None:
    rig = rig_with_faults(tmp_path, spectrometer=[{"kind": "disconnect", "at_s": 0, "duration_s": 5}])
    cid = start(store, tmp_path, rig=rig)
    assert run(store, cid) == state.PAUSED
    row = store.campaign(cid)
    assert row.reason.startswith("fault: the rig did not connect") and "spectrometer" in row.reason
    assert row.owner is None and store.rounds(cid) == []
    store.set_status(cid, state.RUNNING)
    store.set_status(cid, state.FAULTED, reason="still unplugged")
    assert run(store, cid) == state.FAULTED  # a campaign that ran before is faulted


def test_a_flooded_detector_rejects_replicates_remeasures_then_fails(store: Store, tmp_path: Path) -> None:
    rig = rig_with_faults(tmp_path, spectrometer=[{"kind": "saturated", "at_s": 1}])
    cid = start(store, tmp_path, rig=rig, stop={"max_rounds": 1})
    held: list[str] = []

    def operator(_: float) -> None:  # nothing measured in the whole round: held, saying why
        held.append(store.campaign(cid).reason)
        store.request_control(cid, "resume", who="operator", reason="detector checked")

    assert run(store, cid, sleep=operator) == state.FINISHED  # resumed: the round budget is spent
    assert held and held[0].startswith("every condition of round 1 failed (9 droplets: saturated x9)")
    conditions = store.conditions(cid)
    assert all(c.status == "failed" and c.median_loss is None and c.attempt == 1 for c in conditions)
    every = store.replicates(cid, include_set_aside=True)
    assert len(every) == 3 * 2 * 3  # 3 conditions x (1 + max_remeasure 1) attempts x 3 replicates
    assert all(not r.accepted and r.reject_reason.startswith("saturated:") for r in every)
    assert all(r.set_aside for r in every if r.attempt == 0)
    assert "too few accepted replicates" in every[0].set_aside_reason


def test_a_condition_rejected_the_same_way_twice_is_not_measured_a_third_time(
    store: Store, tmp_path: Path
) -> None:
    """A precipitate (here a flooded detector) rejects every droplet for the same reason on every
    pass: the protocol allows 3 more passes, but after two that agree a third would only repeat them
    and spend reagent."""
    rig = rig_with_faults(tmp_path, spectrometer=[{"kind": "saturated", "at_s": 1}])
    cid = start(store, tmp_path, rig=rig, stop={"max_rounds": 1}, replicates={"max_remeasure": 3})

    def operator(_: float) -> None:
        store.request_control(cid, "resume", who="operator", reason="detector checked")

    assert run(store, cid, sleep=operator) == state.FINISHED
    assert all(c.status == "failed" and c.attempt == 1 for c in store.conditions(cid))  # two passes, not four
    skipped = [e for e in store.events(cid, limit=1000) if e.kind == "remeasure_skipped"]
    assert len(skipped) == 3 and skipped[0].reason == "every droplet of two passes rejected as saturated: not measured again"


# -- stop rules and validation -------------------------------------------------------------------------


def test_loss_threshold_stops_after_the_round(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path, stop={"max_rounds": 5, "loss_threshold": 0.99})
    assert run(store, cid) == state.FINISHED
    assert len(store.rounds(cid)) == 1
    assert store.campaign(cid).reason.startswith("loss threshold reached")
    assert store.campaign(cid).reason.endswith("(round 1)")  # the first round, as people count


def test_condition_budget_trims_the_last_batch(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path, stop={"max_rounds": 5, "max_conditions": 4})
    assert run(store, cid) == state.FINISHED
    assert [len(store.conditions(cid, r.index)) for r in store.rounds(cid)] == [3, 1]
    assert store.campaign(cid).reason == "condition budget spent: 4 of 4 conditions"


def test_reagent_budget(store: Store, tmp_path: Path) -> None:
    cid = start(store, tmp_path, stop={"max_rounds": 5, "max_reagent_ml": 0.1})
    assert run(store, cid) == state.FINISHED
    assert len(store.rounds(cid)) == 1
    assert store.campaign(cid).reason.startswith("reagent budget spent")


def test_reagent_budget_cuts_the_last_round_instead_of_passing_it(store: Store, tmp_path: Path) -> None:
    """The budget is what was prepared: later rounds are cut to what is left, at the most a condition
    has taken, so the campaign ends within it (it used to stop only once a whole round had passed it).
    Counted as the summary's volume_ul: every stream, the solvent included."""
    first = start(store, tmp_path, stop={"max_rounds": 1})
    assert run(store, first) == state.FINISHED
    round_ul = build_summary(store, first)["totals"]["volume_ul"]
    per_condition = max(e.data["ul"] for e in store.events(first, limit=1000) if e.kind == "reagent_used")
    budget_ml = (sum(round_ul.values()) + 1.5 * per_condition) / 1000.0  # one round and a bit more
    cid = start(store, tmp_path, stop={"max_rounds": 5, "max_reagent_ml": budget_ml})
    assert run(store, cid) == state.FINISHED
    assert [len(store.conditions(cid, r.index)) for r in store.rounds(cid)] == [3, 1]
    used_ml = sum(build_summary(store, cid)["totals"]["volume_ul"].values()) / 1000.0
    assert used_ml <= budget_ml
    assert store.campaign(cid).reason.startswith(f"reagent budget spent: {used_ml:.2f} of {budget_ml:g} mL")


def test_max_rounds_option_tightens_the_protocol(store: Store, tmp_path: Path) -> None:
    cid = start_campaign(store, tiny_protocol(tmp_path), SIM_RIG, seed=SEED, options={"max_rounds": 1})
    assert run(store, cid) == state.FINISHED
    assert len(store.rounds(cid)) == 1


def test_optimizer_stop_note_ends_the_campaign(store: Store, tmp_path: Path) -> None:
    from orchestrator.optimize import registry
    from orchestrator.optimize.base import Suggestion

    class Stopper:
        name = "stopper"

        def suggest(self, history, space, n):
            if history.round_index == 0:
                return Suggestion(
                    batch=[{v.name: v.low for v in space.variables}], space=space, sources=["x"]
                )
            return Suggestion(batch=[], space=space, sources=[], notes={"stop": "model converged"})

    registry.register("test_stopper", lambda settings, widening, seed: Stopper(), replace=True)
    cid = start(store, tmp_path, optimizer={"strategy": "test_stopper"}, stop={"max_rounds": 5})
    assert run(store, cid) == state.FINISHED
    assert len(store.rounds(cid)) == 1
    assert store.campaign(cid).reason == "optimiser stop: model converged (before round 2)"
    # the report says the model stop rule ended it (it used to say "not met": no round carries the note)
    from orchestrator.report import load_report_data, render_html

    page = render_html(load_report_data(store, cid), {}, [], None)
    assert "<th>model stop rule</th><td>model converged (before round 2)</td>" in page


def test_the_optimiser_sees_every_past_rounds_bounds(store: Store, tmp_path: Path) -> None:
    """Widening grows its step from the bounds of the rounds before (History.bounds)."""
    from orchestrator.optimize import registry
    from orchestrator.optimize.base import Suggestion

    seen: list[list[dict]] = []

    class Widener:
        name = "widener"

        def suggest(self, history, space, n):
            seen.append([dict(b) for b in history.bounds])
            assert history.bounds == [] or history.bounds[-1] == space.bounds
            v = space.variables[0]
            wider = space.with_bounds({**space.bounds, v.name: (v.low, v.high + 1.0)})
            return Suggestion(batch=[{u.name: u.low for u in space.variables}], space=wider, sources=["w"])

    registry.register("test_widener", lambda settings, widening, seed: Widener(), replace=True)
    cid = start(store, tmp_path, optimizer={"strategy": "test_widener"}, stop={"max_rounds": 3})
    assert run(store, cid) == state.FINISHED
    name = store.rounds(cid)[0].bounds and next(iter(store.rounds(cid)[0].bounds))
    assert [len(b) for b in seen] == [0, 1, 2]
    assert [b[name][1] for b in seen[2]] == [r.bounds[name][1] for r in store.rounds(cid)[:2]]
    assert seen[2][1][name][1] == pytest.approx(seen[2][0][name][1] + 1.0)


def test_infeasible_suggestion_never_reaches_a_pump(store: Store, tmp_path: Path) -> None:
    from orchestrator.optimize import registry
    from orchestrator.optimize.base import Suggestion

    class Wild:
        name = "wild"

        def suggest(self, history, space, n):
            bad = {v.name: v.high for v in space.variables} | {"Q_AgNO3": 95.0}
            return Suggestion(batch=[bad], space=space, sources=["wild"])

    registry.register("test_wild", lambda settings, widening, seed: Wild(), replace=True)
    cid = start(store, tmp_path, optimizer={"strategy": "test_wild"}, stop={"max_rounds": 1})
    assert run(store, cid) == state.FINISHED
    (cond,) = store.conditions(cid)
    assert cond.status == "failed" and store.replicates(cid) == []
    kinds = event_kinds(store, cid)
    assert "condition_refused" in kinds and "rates_set" not in kinds


@pytest.mark.timeout(60)  # without the check the pump stalls, the campaign faults and waits for an operator
def test_a_condition_its_syringe_cannot_hold_never_reaches_a_pump(store: Store, tmp_path: Path) -> None:
    """A 450 uL water syringe holds a condition at the initial bounds (at most 305 uL of water), so the
    campaign starts; a condition at the hard limit of the total flow (2000 uL/min, 78 % water: about
    500 uL) would stall it part-way every time, however often someone refills: refused up front."""
    from orchestrator.optimize import registry
    from orchestrator.optimize.base import Suggestion

    class Thirsty:
        name = "thirsty"

        def suggest(self, history, space, n):
            low = {v.name: v.low for v in space.variables}
            return Suggestion(batch=[low | {"Q_total": 1000.0}, low | {"Q_total": 2000.0}], space=space,
                              sources=["thirsty"] * 2)

    registry.register("test_thirsty", lambda settings, widening, seed: Thirsty(), replace=True)
    data = yaml.safe_load(SIM_RIG.read_text())
    water = next(p for p in data["pumps"] if p["name"] == "water")
    water.update(syringe_diameter_mm=7.14, syringe_volume_ul=450)
    rig = tmp_path / "small_water.yaml"
    rig.write_text(yaml.safe_dump(data, sort_keys=False))
    cid = start(store, tmp_path, rig=rig, optimizer={"strategy": "test_thirsty"}, stop={"max_rounds": 1})
    assert run(store, cid) == state.FINISHED
    fits, thirsty = store.conditions(cid)
    assert fits.status == "done" and thirsty.status == "failed"
    assert store.replicates(cid, thirsty.round, thirsty.index) == [] and thirsty.rates is None
    (refused,) = [e for e in store.events(cid) if e.kind == "condition_refused"]
    assert "of water in one go" in refused.reason and "pump water's 450 uL syringe" in refused.reason
    # the morning's summary and report say why it failed
    from orchestrator.report import load_report_data

    summary = build_summary(store, cid)
    (why,) = [c["failed_reason"] for c in summary["rounds"][0]["conditions"] if c["failed"]]
    totals = summary["totals"]
    assert (totals["conditions_measured"], totals["conditions_failed"], totals["conditions_refused"]) == (1, 1, 1)
    assert why.startswith("refused before any pump ran") and "of water in one go" in why
    data = load_report_data(store, cid)
    assert data.failures == {(thirsty.round, thirsty.index): why}
    from orchestrator.report import render_html

    page = render_html(data, {}, [], None)
    assert "<th>conditions measured</th><td>1</td>" in page  # the refused one was never measured
    failed_table = page.split("<h2>Failed conditions</h2>")[1].split("</table>")[0]
    assert "<td>r1 c2</td>" in failed_table and "of water in one go" in failed_table
    # what was run, with units and the pump rates to repeat the best condition by hand
    facts = dict(data.facts)
    assert facts["target"].endswith("ag_nanoprism.csv") and facts["seed"] == SEED
    assert "380-800 nm in 1 nm steps; absorbance window 0.7-1.2" in facts["scored on"]
    assert facts["dry run"] == "simulated rig, chemistry simulators.chemistry:AgNanoprism"
    from dataclasses import replace as replaced

    from orchestrator.campaign import load_spec
    from orchestrator.report import _run_facts

    row = store.campaign(cid)
    bare = yaml.safe_load(SIM_RIG.read_text())
    del bare["simulation"]["chemistry"]  # a simulated rig without a model: its droplets are blank, not silver
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    bare_id = start(store, tmp_path, rig=tmp_path / "bare.yaml")
    assert dict(_run_facts(store, bare_id, store.campaign(bare_id), load_spec(store.campaign(bare_id), tmp_path)))[
        "dry run"] == "simulated rig, chemistry none (carrier only: every droplet is blank)"
    other = replaced(row, options={**row.options, "target_file": "/data/my_target.csv"})  # sdl run --target
    assert dict(_run_facts(store, cid, other, load_spec(row, tmp_path)))["target"] == (
        f"/data/my_target.csv (--target, in place of the protocol's {TARGET})")
    reps = store.replicates(cid)
    assert facts["droplets"].startswith(f"{len(reps)} measured: {sum(r.accepted for r in reps)} accepted")
    assert "<th>Q_AgNO3 (%)</th>" in page and "<th>Q_total (uL/min)</th>" in page
    best_table = page.split("<h2>Best conditions</h2>")[1].split("</table>")[0]
    assert f"AgNO3 {fits.rates['AgNO3']:.4g}, PVA {fits.rates['PVA']:.4g}" in best_table


def _tight_syringes(folder: Path, times: float) -> tuple[Path, Path]:
    """The tiny protocol (hard limits at its bounds, so small syringes deliver its rates) on the simulated
    rig with every syringe ``times`` the most one condition draws of its stream."""
    import math

    from orchestrator.protocol import load_protocol
    from orchestrator.rig import acquisition_s, load_rig

    base = yaml.safe_load((ROOT / "tests" / "orchestrator" / "fixtures" / "tiny_campaign.yaml").read_text())
    protocol = tiny_protocol(folder, stop={"max_rounds": 2},
                             variables={n: {"hard_limits": list(v["bounds"])} for n, v in base["variables"].items()})
    cfg = load_rig(SIM_RIG)
    need = load_protocol(protocol).largest_condition_ul(
        cfg.dead_volume_ul, acquisition_s(cfg.spectrometer.integration_time_us, cfg.spectrometer.scans_to_average))
    data = yaml.safe_load(SIM_RIG.read_text())
    for pump in data["pumps"]:
        ul = need[pump.get("stream", pump["name"])] * times
        pump.update(syringe_volume_ul=round(ul, 1), syringe_diameter_mm=round(2 * math.sqrt(ul / (math.pi * 10.5)), 3))
    rig = folder / "tight.yaml"
    rig.write_text(yaml.safe_dump(data, sort_keys=False))
    return protocol, rig


@pytest.mark.timeout(120)
def test_a_dry_run_refills_syringes_that_empty_one_after_another(store: Store, tmp_path: Path) -> None:
    """Each refill's equilibration drains the next small syringe: three stalls in a row faulted the
    rehearsal ("pump PVA: stalled, retried 3 times") although every one was refilled. Syringes that hold
    too little to ever get a droplet through fault with that said, not an endless round of refills."""
    protocol, rig = _tight_syringes(tmp_path, 1.75)
    cid = start_campaign(store, protocol, rig, seed=1)
    assert run(store, cid) == state.FINISHED
    assert sum(e.kind == "syringe_refilled" for e in store.events(cid, limit=100_000)) >= 5
    (tmp_path / "thin").mkdir()
    protocol, rig = _tight_syringes(tmp_path / "thin", 1.05)
    cid = start_campaign(store, protocol, rig, seed=1)
    faulted: list[str] = []

    def sleep(_: float) -> None:  # the foreground run holds for an operator: one who aborts it
        faulted.append(store.campaign(cid).reason)
        Operator(store, cid).request("abort", "seen")

    assert run(store, cid, sleep=sleep) == state.ABORTED
    assert "syringes ran empty 11 times without a droplet in between" in faulted[0]
    assert "Give larger syringes" in faulted[0]


def test_a_dark_taken_as_zeros_is_said_in_the_journal(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spectrometer that can neither switch its lamp nor correct its electric dark (an STS): the dark
    was zeros and every absorbance carried the detector's baseline, with a debug-level log line only."""
    from drivers.errors import SpectrometerError
    from drivers.ocean import OceanSpectrometer

    def no_lamp(self: OceanSpectrometer, enabled: bool) -> None:
        self.correct_dark_counts = False  # as _read_once leaves it on a model without dark pixels
        raise SpectrometerError("this spectrometer cannot switch its lamp", device=self.name)

    monkeypatch.setattr(OceanSpectrometer, "set_lamp_enabled", no_lamp)
    cid = start(store, tmp_path, stop={"max_rounds": 1})
    assert run(store, cid) == state.FINISHED
    (warned,) = [e for e in store.events(cid) if e.kind == "calibration_warning"]
    assert "the dark is taken as zero counts (this spectrometer cannot switch its lamp)" in warned.reason
    assert "no electric-dark correction either" in warned.reason and "lamp shutter" in warned.reason
    (calibrated,) = [e for e in store.events(cid) if e.kind == "calibrated"]
    assert calibrated.reason == warned.reason and not any(calibrated.data["dark_counts"])
    from orchestrator.report import load_report_data

    assert dict(load_report_data(store, cid).facts)["calibration"] == warned.reason  # the morning report says it


def test_start_refuses_bad_inputs_before_anything_is_stored(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown optimiser strategy"):
        start(store, tmp_path, optimizer={"strategy": "nonsense"})
    with pytest.raises(ConfigError, match="no pump carries stream"):
        start(store, tmp_path, remainder_stream="buffer")
    with pytest.raises(ConfigError, match="target"):
        start_campaign(
            store, tiny_protocol(tmp_path), SIM_RIG, options={"target": str(tmp_path / "none.csv")}
        )
    with pytest.raises(ConfigError, match="cannot import module"):
        start_campaign(store, tiny_protocol(tmp_path), SIM_RIG, options={"chemistry": "nowhere:Model"})
    assert store.campaigns() == []


def test_a_rig_files_own_chemistry_model_is_checked_before_anything_is_stored_and_again_at_run_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig_data = yaml.safe_load(SIM_RIG.read_text())
    rig_data["simulation"]["chemistry"] = {"model": "nowhere_model:Peak"}
    rig = tmp_path / "rig_with_model.yaml"
    rig.write_text(yaml.safe_dump(rig_data))
    with pytest.raises(ConfigError, match=r"simulation\.chemistry\.model: cannot import module 'nowhere_model'"):
        start_campaign(store, tiny_protocol(tmp_path), rig, seed=SEED)
    assert store.campaigns() == []  # told before anything was stored (it used to crash in the run)

    # a protocol of one's own on a rig whose model nobody chose: say so, not "rename your variables"
    renamed = tiny_protocol(tmp_path)
    text = renamed.read_text().replace("Q_AgNO3", "Q_silver")
    renamed.write_text(text)
    with pytest.raises(ConfigError, match="the rig file names the reference model") as info:
        start_campaign(store, renamed, SIM_RIG, seed=SEED)
    assert str(info.value).startswith(f"protocol {renamed} with rig {SIM_RIG}")  # the pair, not the rig alone
    real_rig = SIM_RIG.parent / "example_newera.yaml"  # its dry-run twin gets the reference model unasked
    with pytest.raises(ConfigError, match="no chemistry was given, so the dry run uses the reference model"):
        start_campaign(store, renamed, real_rig, seed=SEED, options={"dry_run": True})

    # the model is there when the campaign is stored, gone when it runs (another folder, say)
    (tmp_path / "nowhere_model.py").write_text(
        "import numpy as np\n"
        "class Peak:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return 0.9 * np.exp(-0.5 * ((np.asarray(wavelengths) - 600.0) / 60.0) ** 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cid = start_campaign(store, tiny_protocol(tmp_path), rig, seed=SEED)
    (tmp_path / "nowhere_model.py").unlink()
    monkeypatch.delitem(sys.modules, "nowhere_model")
    importlib.invalidate_caches()
    assert run(store, cid) == state.PAUSED  # not a traceback, nor a campaign left 'created'
    row = store.campaign(cid)
    assert row.reason.startswith("fault: the rig could not be set up") and "nowhere_model" in row.reason
    assert row.owner is None and store.rounds(cid) == []


def test_target_and_chemistry_overrides_are_stored_and_used(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "peak_model.py").write_text(
        "import numpy as np\n"
        "class Peak:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return 0.9 * np.exp(-0.5 * ((np.asarray(wavelengths) - 600.0) / 60.0) ** 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = tmp_path / "target.csv"
    wl = np.arange(350.0, 851.0, 5.0)
    rows = "\n".join(f"{w:g},{0.9 * np.exp(-0.5 * ((w - 600.0) / 60.0) ** 2):.6f}" for w in wl)
    target.write_text("wavelength_nm,absorbance\n" + rows + "\n")
    cid = start_campaign(
        store,
        tiny_protocol(tmp_path),
        SIM_RIG,
        seed=SEED,
        options={"chemistry": "peak_model:Peak", "target": str(target), "max_rounds": 1},
    )
    options = store.campaign(cid).options
    assert options["chemistry"] == "peak_model:Peak" and options["target_csv"].startswith("wavelength_nm")
    target.unlink()  # the campaign holds the target's text: it no longer needs the file
    assert run(store, cid) == state.FINISHED
    losses = [c.median_loss for c in store.conditions(cid)]
    assert all(loss is not None and loss < 0.02 for loss in losses)  # the model's peak is the target


DROPLET_MODELS = '''
import numpy as np


class Peak:
    share = 0.0  # of droplets that come out wrong

    def droplet(self, inputs, wavelengths, rng):
        centre = 680.0 if rng.random() < self.share else 600.0  # a merged droplet, or a second product
        return 0.9 * np.exp(-0.5 * ((np.asarray(wavelengths) - centre) / 60.0) ** 2)


class Bubbly(Peak):
    share = 0.08


class TwoGroups(Peak):
    share = 0.45
'''


def test_outliers_are_judged_on_the_whole_attempt(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few wrong droplets are rejected as outliers, wherever they came in the attempt (the first five
    used to be taken on trust and to decide for the rest); many wrong droplets are a second group of
    real droplets: none is rejected, and the journal says why."""
    (tmp_path / "droplet_models.py").write_text(DROPLET_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = tmp_path / "peak.csv"
    rows = "\n".join(f"{w:g},{0.9 * np.exp(-0.5 * ((w - 600.0) / 60.0) ** 2):.6f}" for w in range(350, 851, 5))
    target.write_text("wavelength_nm,absorbance\n" + rows + "\n")
    replicates = {"replicates": {"n": 12, "min_accepted": 6, "max_remeasure": 1}, "stop": {"max_rounds": 1}}
    bubbly = start_campaign(store, tiny_protocol(tmp_path, **replicates), SIM_RIG, seed=SEED,
                            options={"chemistry": "droplet_models:Bubbly", "target": str(target)})
    assert run(store, bubbly) == state.FINISHED
    wrong = [(r.condition, r.index) for r in store.replicates(bubbly) if r.loss is not None and r.loss > 0.1]
    outliers = [(r.condition, r.index) for r in store.replicates(bubbly) if not r.accepted]
    assert wrong and outliers == wrong  # every wrong droplet, the early ones too, and only they
    assert all("MADs from the median" in r.reject_reason for r in store.replicates(bubbly) if not r.accepted)
    judged = [e for e in store.events(bubbly, limit=2000) if e.kind == "outliers_judged"]
    assert sorted((e.data["condition"], i) for e in judged for i in e.data["rejected"]) == sorted(wrong)
    assert all(c.median_loss is not None and c.median_loss < 0.02 for c in store.conditions(bubbly))

    two = start_campaign(store, tiny_protocol(tmp_path, **replicates), SIM_RIG, seed=SEED,
                         options={"chemistry": "droplet_models:TwoGroups", "target": str(target)})
    assert run(store, two) == state.FINISHED
    assert all(r.accepted for r in store.replicates(two))
    notes = [e.reason for e in store.events(two, limit=2000) if e.kind == "outliers_judged"]
    assert notes and all("too many for bubbles" in n and "none rejected" in n for n in notes)


MODELS_THAT_FAIL = '''
import numpy as np
from scipy.interpolate import interp1d

GRID = np.arange(380.0, 801.0)


class Peak:
    def droplet(self, inputs, wavelengths, rng):
        return 0.9 * np.exp(-0.5 * ((np.asarray(wavelengths) - 600.0) / 60.0) ** 2)


class Tired(Peak):
    """Answers its first four droplets (the check before the run takes one), then fails."""

    calls = 0

    def droplet(self, inputs, wavelengths, rng):
        self.calls += 1
        return super().droplet(inputs, wavelengths, rng) if self.calls <= 4 else self.fail(inputs, wavelengths, rng)


class TiredRaises(Tired):
    def fail(self, inputs, wavelengths, rng):
        raise ValueError("model not valid here")


class TiredWrongShape(Tired):
    def fail(self, inputs, wavelengths, rng):
        return Peak.droplet(self, inputs, wavelengths, rng)[:421]


class Tabulated:
    """A table on the protocol's grid: it cannot answer at the spectrometer's 200-850 nm pixels."""

    def droplet(self, inputs, wavelengths, rng):
        return interp1d(GRID, np.exp(-0.5 * ((GRID - 600.0) / 60.0) ** 2))(wavelengths)
'''


@pytest.mark.parametrize(("model", "said"), [
    ("TiredRaises", "raised ValueError: model not valid here at Q_AgNO3="),
    ("TiredWrongShape", "returned 421 values for 2048 wavelengths"),
])
def test_a_chemistry_model_failing_mid_run_stops_the_dry_run_naming_the_model(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, said: str
) -> None:
    """Not a spectrometer fault held for an operator (the dry run would wait forever for one): the
    campaign stops faulted, the reason names the model, what went wrong and the inputs; nothing is
    retried as if a cable were loose, and what was measured before stays."""
    (tmp_path / "failing_models.py").write_text(MODELS_THAT_FAIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    cid = start_campaign(
        store, tiny_protocol(tmp_path), SIM_RIG, seed=SEED, options={"chemistry": f"failing_models:{model}"}
    )
    told: list[dict] = []
    assert run(store, cid, progress=lambda event, **info: told.append(info) if event == "status" else None) == state.FAULTED
    assert told[-1]["status"] == state.FAULTED and told[-1]["final"]  # not held: no "waiting for an operator"
    reason = store.campaign(cid).reason
    assert f"chemistry model failing_models:{model} {said}" in reason and "fix the model" in reason
    assert "USB" not in reason and "device_error" not in event_kinds(store, cid)
    assert len(store.replicates(cid)) == 4 - 1  # the droplets measured before it failed are kept


def test_a_model_that_cannot_answer_at_the_spectrometers_wavelengths_is_refused_before_the_run(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "failing_models.py").write_text(MODELS_THAT_FAIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"Tabulated raised ValueError.*wavelengths 199\.8-85\d\.\d nm, 2048 points"):
        start_campaign(store, tiny_protocol(tmp_path), SIM_RIG, options={"chemistry": "failing_models:Tabulated"})
    assert store.campaigns() == []


def test_an_optimiser_failure_faults_the_campaign_with_the_reason(store: Store, tmp_path: Path) -> None:
    from orchestrator.optimize import registry

    class Broken:
        name = "broken"

        def suggest(self, history, space, n):
            raise RuntimeError("the model diverged")

    registry.register("test_broken", lambda settings, widening, seed: Broken(), replace=True)
    cid = start(store, tmp_path, optimizer={"strategy": "test_broken"})
    assert run(store, cid) == state.FAULTED
    assert store.campaign(cid).reason == "engine error: RuntimeError: the model diverged (see the log)"
    assert store.rounds(cid) == []


def test_an_exception_from_the_callers_wait_hook_reaches_the_caller(store: Store, tmp_path: Path) -> None:
    """An agent hands a held campaign back by raising from its sleep hook: the runner lets it through."""

    class HandBack(Exception):
        pass

    cid = start(store, tmp_path)
    op = Operator(store, cid)

    def progress(event: str, **info: Any) -> None:
        if event == "replicate" and info["index"] == 0:
            op.request("pause", "agent stopping")

    def sleep(_: float) -> None:
        raise HandBack("stopping")

    with pytest.raises(HandBack):
        run(store, cid, progress=progress, sleep=sleep)
    row = store.campaign(cid)
    assert row.status == state.PAUSED and row.owner is None
    assert all(rate == 0.0 for rate in get_world("simulated")._rates.values())


def test_a_target_given_for_the_run_replaces_a_missing_protocol_target(store: Store, tmp_path: Path) -> None:
    """A protocol copied into a folder of one's own without its targets/ folder runs with --target."""
    protocol = tiny_protocol(tmp_path, target={"file": "targets/missing.csv"})
    with pytest.raises(ConfigError, match="missing.csv"):
        start_campaign(store, protocol, SIM_RIG)
    target = tmp_path / "mine.csv"
    target.write_text(TARGET.read_text())
    cid = start_campaign(store, protocol, SIM_RIG, seed=SEED, options={"target": str(target)})
    assert store.campaign(cid).options["target_csv"] == TARGET.read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("wavelength_nm,absorbance\n400,0.1\n")
    with pytest.raises(ConfigError, match="bad.csv"):
        start_campaign(store, protocol, SIM_RIG, options={"target": str(bad)})
    assert len(store.campaigns()) == 1


def flat_model_campaign(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: float, **changes: Any
) -> str:
    """A campaign on a chemistry model whose every droplet reads ``value`` at every wavelength (the tiny
    protocol, changed as asked)."""
    (tmp_path / "flat_model.py").write_text(
        "import numpy as np\n"
        "class Flat:\n"
        f"    def droplet(self, inputs, wavelengths, rng):\n        return np.full(len(wavelengths), {value!r})\n"
        .replace("nan", "np.nan")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flat_model", raising=False)  # another test's flat model
    return start_campaign(
        store, tiny_protocol(tmp_path, **changes), SIM_RIG, seed=SEED, options={"chemistry": "flat_model:Flat"}
    )


def held_then_aborted(store: Store, cid: str) -> tuple[str, str, int]:
    """Run the campaign; at its first hold note (status, reason, rounds planned) and abort it."""
    held: list[tuple[str, str, int]] = []

    def operator(_: float) -> None:
        row = store.campaign(cid)
        held.append((row.status, row.reason, len(store.rounds(cid))))
        store.request_control(cid, "abort", who="operator", reason="the model is wrong")

    assert run(store, cid, sleep=operator) == state.ABORTED
    return held[0]


def test_a_round_whose_every_condition_failed_holds_the_campaign_with_the_reasons(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model answering in percent transmittance (or a lamp left off) makes every droplet unusable:
    the campaign waits for an operator after that round, saying why, instead of spending its budget
    and reporting "finished"."""
    cid = flat_model_campaign(store, tmp_path, monkeypatch, 95.0)  # %T read as absorbance: no light
    status, reason, rounds = held_then_aborted(store, cid)
    assert status == state.FAULTED and reason.startswith("every condition of round 1 failed (")
    assert rounds == 1  # held before a second round was planned
    assert all(c.failed for c in store.conditions(cid)) and store.replicates(cid)  # the droplets are kept


def test_a_round_failing_on_the_chemistrys_side_is_journaled_and_the_campaign_goes_on(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No valid spectrum anywhere the round looked (a model with no data there, no product) is the
    optimiser's to steer away from, not an operator's to mend: no hold, the next round is planned."""
    cid = flat_model_campaign(store, tmp_path, monkeypatch, float("nan"))

    def operator(_: float) -> None:
        raise AssertionError(f"held: {store.campaign(cid).reason}")

    assert run(store, cid, sleep=operator) == state.FINISHED
    assert len(store.rounds(cid)) == 2 and all(c.failed for c in store.conditions(cid))
    # each failed condition says why (the webhook sent "round 1 condition 1: failed" and nothing more)
    failed = [e for e in store.events(cid, limit=10_000) if e.kind == "condition_failed"]
    assert failed and all(e.reason == "0 of 3 droplets accepted, fewer than 2; rejected: 3 nan" for e in failed), \
        failed[0].reason
    failed_rounds = [e for e in store.events(cid, limit=10_000) if e.kind == "round_failed"]
    assert [e.data["round"] for e in failed_rounds] == [0, 1]
    assert "nan x" in failed_rounds[0].reason


def test_two_rounds_without_one_measurable_condition_hold_the_campaign(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round failing on the chemistry's side is the optimiser's; two running, with budget left, would
    burn the rest the same way (it used to run all 8 rounds of a model that never answers)."""
    cid = flat_model_campaign(store, tmp_path, monkeypatch, float("nan"), stop={"max_rounds": 4})
    status, reason, rounds = held_then_aborted(store, cid)
    assert status == state.FAULTED and rounds == 2  # held after the second round, not the fourth
    assert "and every condition of round 1 before it: no condition gave a spectrum two rounds running" in reason
