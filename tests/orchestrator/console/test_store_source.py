"""The console over a real SQLite campaign store: what a campaign process writes is what the console
shows, and what the console asks for lands in the store for that process to obey."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from orchestrator import state
from orchestrator.console import create_app
from orchestrator.console.events import CONTROL, ESTOP, NOTIFY_CATEGORIES, PAUSED, PROGRESS
from orchestrator.console.source import ControlRefused, UnknownCampaign, allowed_actions
from orchestrator.console.store_source import StoreSource, event_text
from orchestrator.console.users import Role
from orchestrator.store import STALE_AFTER_S, PlannedCondition, Store, open_store

from .conftest import FAST_HASHER

REPO = Path(__file__).resolve().parents[3]
PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
RIG = REPO / "deploy" / "rigs" / "simulated.yaml"
VARS = ["Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total"]
GRID = np.linspace(380, 800, 421)


def _inputs(x: float) -> dict[str, float]:
    return {"Q_AgNO3": 10 + x, "Q_PVA": 20.0, "Q_TSC": 8.0, "Q_seed": 6.0, "Q_total": 500.0}


def _bounds(seed_low: float = 4.0) -> dict[str, tuple[float, float]]:
    return {
        "Q_AgNO3": (4, 20),
        "Q_PVA": (10, 40),
        "Q_TSC": (4, 20),
        "Q_seed": (seed_low, 20),
        "Q_total": (200, 1000),
    }


def stored_campaign(store: Store, protocol_yaml: str, *, status: str = state.RUNNING, rig: str = "simulated") -> str:
    """The reference protocol (as given) on the simulated rig, stored as ``status``; its id."""
    return store.create_campaign(
        name="ag_nanoprism",
        protocol_yaml=protocol_yaml,
        protocol_path=str(PROTOCOL),
        rig_yaml=RIG.read_text(),
        rig_path=str(RIG),
        rig_name=rig,
        seed=3,
        options={},
        status=status,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    protocol = yaml.safe_load(PROTOCOL.read_text())
    protocol["batch_size"] = 3
    protocol["replicates"]["n"] = 4
    protocol["stop"]["max_rounds"] = 2
    protocol["stop"]["max_conditions"] = 6
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    stored_campaign(s, yaml.safe_dump(protocol))
    s.claim(s.campaigns()[0].id, "runner-1")  # a live campaign process (it heartbeats)
    yield s
    s.close()


def _campaign(store: Store) -> str:
    return store.campaigns()[0].id


def _droplet(peak_nm: float) -> np.ndarray:
    return 0.9 * np.exp(-(((GRID - peak_nm) / 60) ** 2)) + 0.02


def _measure(store: Store, cid: str, round_index: int, condition: int, replicates: int, loss: float) -> None:
    store.start_condition(cid, round_index, condition, 0, rates={"AgNO3": 50.0})
    for r in range(replicates):
        store.add_replicate(
            cid,
            round_index,
            condition,
            0,
            r,
            absorbance=_droplet(600 + 5 * r),
            raw={"counts": np.ones(4)},
            loss=loss + 0.01 * r,
            accepted=r != 1,
            reject_reason=None if r != 1 else "bubble",
            clock_s=10.0 * r,
        )


def test_progress_spectra_losses_and_bounds_follow_the_store(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    assert source.campaign(cid).progress.round is None  # nothing planned yet

    store.add_round(
        cid,
        0,
        strategy="lhs",
        bounds=_bounds(),
        conditions=[PlannedCondition(_inputs(i), "lhs") for i in range(3)],
    )
    _measure(store, cid, 0, 0, 4, 0.40)
    store.finish_condition(cid, 0, 0, median_loss=0.41, mad=0.01, accepted=3, failed=False)
    _measure(store, cid, 0, 1, 2, 0.30)

    detail = source.campaign(cid)
    p = detail.progress
    assert (p.round, p.rounds_max, p.condition, p.conditions, p.replicate, p.replicates) == (1, 2, 2, 3, 2, 4)
    assert p.fraction == pytest.approx((4 + 2) / (6 * 4))
    assert detail.best is not None and detail.best.loss == pytest.approx(0.41)
    assert detail.current_inputs == _inputs(1)
    assert detail.variables == VARS
    assert detail.reason.startswith("running at ")

    spectra = source.spectra(cid, 20)
    assert len(spectra.wavelengths_nm) == len(spectra.target) == 211  # every 2 nm of 380-800
    assert [d.replicate for d in spectra.droplets] == [1, 2]  # the condition being measured
    assert {(d.round, d.condition) for d in spectra.droplets} == {(1, 2)}
    assert [d.accepted for d in spectra.droplets] == [True, False]
    assert max(spectra.target) == pytest.approx(max(spectra.target))  # finite numbers, JSON-ready
    assert np.argmax(spectra.droplets[0].absorbance) == pytest.approx((600 - 380) / 2, abs=1)

    _measure(store, cid, 0, 1, 0, 0.3)
    store.finish_condition(cid, 0, 1, median_loss=0.25, mad=0.02, accepted=2, failed=False)
    store.finish_condition(cid, 0, 2, median_loss=None, mad=None, accepted=0, failed=True)
    store.finish_round(cid, 0, bounds_next=_bounds(1.0))
    store.add_round(
        cid, 1, strategy="bo", bounds=_bounds(1.0), conditions=[PlannedCondition(_inputs(5), "bo")]
    )
    _measure(store, cid, 1, 0, 1, 0.5)
    store.finish_condition(cid, 1, 0, median_loss=0.5, mad=0.0, accepted=1, failed=False)

    losses = source.losses(cid)
    assert [(r.index, r.strategy) for r in losses.rounds] == [(1, "lhs"), (2, "bo")]
    assert [c.median_loss for c in losses.rounds[0].conditions] == [0.41, 0.25, None]
    # a null loss says whether it failed or is not measured yet (they looked the same)
    assert [c.status for c in losses.rounds[0].conditions] == ["done", "done", "failed"]
    # a failed condition is worth reading, not a fault to notify (fifty overnight were fifty webhooks)
    failed = [e for e in source.events(cid, 0, 500) if e.kind == "condition_failed"]
    assert [e.category for e in failed] == ["warning"] and "warning" not in NOTIFY_CATEGORIES
    assert [c.index for c in losses.rounds[0].conditions] == [1, 2, 3]
    assert losses.best_so_far == [{"round": 1, "loss": 0.25}, {"round": 2, "loss": 0.25}]

    bounds = source.bounds(cid)
    assert [(v.name, v.hard_limits, v.unit) for v in bounds.variables][-1] == (
        "Q_total",
        (50.0, 2000.0),
        "uL/min",
    )
    assert bounds.variables[0].unit == "%"
    assert [s.widened for s in bounds.history] == [[], ["Q_seed"]]
    assert bounds.history[1].bounds["Q_seed"] == (1.0, 20.0)
    assert source.campaign(cid).progress.round == 2  # the cache moved with the journal
    store.set_status(cid, state.FINISHED, reason="loss threshold reached")
    assert source.campaign(cid).progress.fraction == 1.0  # before the budget of 2 rounds x 3 was spent


def test_events_read_as_sentences_with_categories(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    store.add_round(
        cid, 0, strategy="lhs", bounds=_bounds(), conditions=[PlannedCondition(_inputs(0), "lhs")]
    )
    _measure(store, cid, 0, 0, 2, 0.3)
    events = source.recent_events(cid, 50)
    texts = [e.text for e in events]
    assert "round 1 planned: 1 condition (lhs)" in texts
    assert "round 1 condition 1 replicate 1: loss 0.300" in texts
    assert "round 1 condition 1 replicate 2: loss 0.310, rejected: bubble" in texts
    assert {e.category for e in events if e.kind == "replicate_acquired"} == {PROGRESS}
    assert all(e.campaign_name == "ag_nanoprism" for e in events)
    assert source.recent_events(cid, 2) == list(events[-2:])
    after = events[-3].id
    assert [e.id for e in source.events(cid, after, 10)] == [e.id for e in events[-2:]]
    assert source.latest_event_id() == events[-1].id

    # without the per-droplet detail (the page's default): each condition's result and what people did
    store.request_control(cid, "pause", who="alice", reason="refill")
    brief = source.recent_events(cid, 3, detail=False)
    assert [e.kind for e in brief] == ["claimed", "batch_planned", "control_requested"]
    assert [e.id for e in source.events(cid, brief[0].id, 50, detail=False)] == [e.id for e in brief[1:]]
    app = create_app(store.url, secret="s" * 48, background=False, password_hasher=FAST_HASHER, source=source)
    app.state.auth.users.add_user("olga", Role.OBSERVER, None, who="test")
    token, _ = app.state.auth.users.issue_token("olga", days=1, who="test")
    got = TestClient(app).get(
        f"/api/campaigns/{cid}/events?detail=false&limit=3", headers={"Authorization": f"Bearer {token}"}
    ).json()["events"]
    assert [e["id"] for e in got] == [e.id for e in brief] and not any(e["detail"] for e in got)
    assert {e.kind for e in events if e.as_json()["detail"]} == {"replicate_acquired", "condition_started"}


def test_control_requests_land_in_the_store_for_the_campaign_process(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    receipt = source.request_control(cid, "pause", "alice", "bubble in line")
    pending = store.pending_controls(cid)
    assert [(c.id, c.action, c.who, c.reason) for c in pending] == [
        (receipt.request_id, "pause", "alice", "bubble in line")
    ]
    requested = source.recent_events(cid, 1)[-1]
    assert (requested.category, requested.who, requested.text) == (
        CONTROL,
        "alice",
        "pause requested: bubble in line",
    )

    # the campaign process honours it at its checkpoint: the console shows who paused and why
    store.set_status(cid, state.PAUSED, reason="bubble in line", who="alice")
    summary = source.list_campaigns()[0]
    assert summary.state == "paused"
    assert summary.reason.startswith("paused by alice at ") and summary.reason.endswith(": bubble in line")
    assert source.recent_events(cid, 1)[-1].category == PAUSED


def test_estop_latches_the_rig_and_only_an_admin_clear_releases_it(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    source.request_control(cid, "estop", "otto", "smoke")
    latch = store.estop_latched("simulated")
    assert latch is not None and (latch.who, latch.reason, latch.rig) == ("otto", "smoke", "simulated")
    assert [c.action for c in store.pending_controls(cid)] == ["estop"]
    estop_events = [e for e in source.events(None, 0, 100) if e.kind == "estop"]
    assert [(e.category, e.text, e.who) for e in estop_events] == [
        (ESTOP, "e-stop latched on rig simulated: smoke", "otto")
    ]

    store.set_status(cid, state.ESTOPPED, reason="smoke", who="otto")
    source.request_control(cid, "estop-clear", "ada", "checked the pumps")
    assert store.estop_latched("simulated") is None

    store.latch_estop(who="otto", reason="smoke again", rig="simulated")
    store.latch_estop(who="cli", reason="fire drill", rig=None)  # every rig: not the console's to clear
    with pytest.raises(ControlRefused, match="every rig"):
        source.request_control(cid, "estop-clear", "ada", "checked")
    # refused means nothing changed: the rig's own latch is still there too (it used to be cleared)
    assert {(e.rig, e.reason) for e in store.active_estops()} == {("simulated", "smoke again"), (None, "fire drill")}


def test_ended_and_unknown_campaigns(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    with pytest.raises(UnknownCampaign):
        source.campaign("c-nope")
    with pytest.raises(UnknownCampaign):
        source.request_control("c-nope", "pause", "alice", "x")
    assert source.health("c-nope") is None
    store.set_status(cid, state.FINISHED, reason="loss below threshold")
    with pytest.raises(ControlRefused, match="finished"):
        source.request_control(cid, "resume", "alice", "again")
    assert store.pending_controls(cid) == []
    assert source.list_campaigns()[0].progress.fraction == 1.0


def test_health_names_the_rig_ports_and_the_time_since_progress(store: Store) -> None:
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    health = source.health(cid)
    assert health is not None and health.active
    assert health.rig_ports["seed"] == "sim://harvard/harvard-line"
    assert 0 <= health.seconds_since_last_event < 60
    store.set_status(cid, state.PAUSED, reason="x", who="alice")
    assert not source.health(cid).active  # type: ignore[union-attr]


def test_event_text_for_kinds_it_does_not_know() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, 2, 14, tzinfo=UTC)
    assert event_text("paused", "bubble", "alice", at, {}) == "paused by alice at 02:14: bubble"
    where = {"round": 0, "condition": 2}
    assert event_text("pumps_primed", "", "system", at, where) == "round 1 condition 3: pumps primed"
    assert event_text("round_done", "", "system", at, {"round": 1}) == "round 2 done"
    judged = {**where, "rejected": [8]}
    assert event_text("outliers_judged", "", "system", at, judged) == (
        "round 1 condition 3: 1 droplet rejected as an outlier (replicate 9)")
    assert event_text("outliers_judged", "", "system", at, {**where, "rejected": [0, 4]}) == (
        "round 1 condition 3: 2 droplets rejected as outliers (replicates 1, 5)")
    rates = {"rates_ul_min": {"AgNO3": 50, "water": 120.25}}
    assert (
        event_text("rates_set", "", "system", at, rates) == "pump rates set (uL/min): AgNO3 50.0, water 120.2"
    )
    assert event_text("claimed", "", "sdl@pc:1", at, {"owner": "sdl@pc:1"}) == "taken by sdl@pc:1"
    handled = {"action": "pause", "by": "otto", "outcome": "refused: already paused"}
    assert event_text("control_handled", "", "system", at, handled) == "pause by otto: refused: already paused"


def test_the_api_over_a_real_store(store: Store) -> None:
    """The routes over the store source: read a campaign, pause it, find the request in the store."""
    app = create_app(store.url, secret="s" * 48, background=False, password_hasher=FAST_HASHER)
    directory = app.state.auth.users
    directory.add_user("otto", Role.OPERATOR, None, who="test")
    token, _ = directory.issue_token("otto", days=1, who="test")
    cid = _campaign(store)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        r = client.get(f"/api/campaigns/{cid}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "running" and "pause" in r.json()["actions"]
        r = client.post(f"/api/campaigns/{cid}/pause", json={"reason": "bubble"}, headers=headers)
        assert r.status_code == 202, r.text
        assert [c.action for c in store.pending_controls(cid)] == ["pause"]
        for path in ("/events", "/spectra", "/losses", "/bounds"):
            assert client.get(f"/api/campaigns/{cid}{path}", headers=headers).status_code == 200
        assert client.get("/api/campaigns/c-nope", headers=headers).status_code == 404


def test_views_are_cached_until_the_journal_moves(store: Store) -> None:
    """Within ``fresh_s`` the position is not read again (many pages, one query); after it, any new
    event makes the next read recompute."""
    now = [0.0]
    source = StoreSource(store, fresh_s=0.1, clock=lambda: now[0])
    cid = _campaign(store)
    first = source.campaign(cid)
    store.add_round(
        cid, 0, strategy="lhs", bounds=_bounds(), conditions=[PlannedCondition(_inputs(0), "lhs")]
    )
    assert source.campaign(cid) is first  # within the freshness window
    now[0] += 0.11
    assert source.campaign(cid).progress.round == 1
    cached = source.campaign(cid)
    now[0] += 0.11
    assert source.campaign(cid) is cached  # the journal stood still


def test_refresh_renews_the_views_readers_asked_for(store: Store) -> None:
    """The background refresher reads the journal and renews hot views first, so the event loop can
    answer them (``peek``) without the database."""
    now = [0.0]
    source = StoreSource(store, fresh_s=0.1, clock=lambda: now[0])
    cid = _campaign(store)
    assert source.peek("campaign", cid) is None  # nothing cached yet
    source.campaign(cid)
    source.losses(cid)
    assert source.peek("campaign", cid) is not None
    store.add_round(
        cid, 0, strategy="lhs", bounds=_bounds(), conditions=[PlannedCondition(_inputs(0), "lhs")]
    )
    source.refresh()
    assert source.peek("campaign", cid).progress.round == 1
    assert source.peek("losses", cid).rounds[0].strategy == "lhs"
    assert source.peek("bounds", cid) is None  # never asked for: not renewed
    now[0] += 0.2
    assert source.peek("campaign", cid) is None  # the position is no longer known to be current
    source.start()
    try:
        assert source._trust_s() >= 0.3
    finally:
        source.stop()


def test_without_a_live_process_pause_and_abort_apply_at_once(store: Store) -> None:
    """As ``sdl pause``/``sdl abort``: nobody would honour a request, so the state changes now."""
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    store.release(cid, "runner-1")
    receipt = source.request_control(cid, "pause", "alice", "lunch")
    assert receipt.request_id is None and store.pending_controls(cid) == []
    assert store.campaign(cid).description.startswith("paused by alice")
    with pytest.raises(ControlRefused, match=f"sdl resume {cid}"):
        source.request_control(cid, "resume", "alice", "back")
    with pytest.raises(ControlRefused, match="none would take the dark spectrum"):
        source.request_control(cid, "recalibrate", "alice", "lamp warmed up")
    assert store.pending_controls(cid) == []  # not left for a process that will never come
    source.request_control(cid, "abort", "alice", "wrong syringe")
    assert store.campaign(cid).status == state.ABORTED


def test_a_queued_campaign_says_whether_an_agent_will_pick_it_up(store: Store) -> None:
    cid = _campaign(store)
    store.release(cid, "runner-1")
    store.set_status(cid, state.QUEUED, reason="for the night shift")
    source = StoreSource(store, fresh_s=0)
    (listed,) = source.list_campaigns()
    assert listed.rig == source.campaign(cid).rig == "simulated"  # several rigs may share the store
    assert "for the night shift" in listed.reason and "no agent has served rig simulated yet" in listed.reason
    store.agent_seen("sdl-agent@lab-pc:7", "simulated")
    store.journal(None, "agent_started", who="sdl-agent@lab-pc:7", data={"rig": "simulated"})  # as an agent does
    assert "agent" not in source.campaign(cid).reason


def test_the_console_can_pause_abort_and_estop_a_queued_campaign(store: Store) -> None:
    """Queued for an agent (or orphaned): no process, so a pause or abort applies at once, and the
    e-stop latches the rig; the API used to refuse all three with 409."""
    app = create_app(store.url, secret="s" * 48, background=False, password_hasher=FAST_HASHER,
                     source=StoreSource(store, fresh_s=0))
    directory = app.state.auth.users
    directory.add_user("otto", Role.OPERATOR, None, who="test")
    token, _ = directory.issue_token("otto", days=1, who="test")
    headers = {"Authorization": f"Bearer {token}"}
    cid = _campaign(store)
    store.release(cid, "runner-1")
    store.set_status(cid, state.QUEUED, reason="for the night shift")
    with TestClient(app) as client:
        actions = set(client.get(f"/api/campaigns/{cid}", headers=headers).json()["actions"])
        assert {"pause", "abort", "estop"} <= actions and "recalibrate" not in actions  # nobody would do it
        r = client.post(f"/api/campaigns/{cid}/estop", json={"reason": "smoke"}, headers=headers)
        assert r.status_code == 202, r.text
        # latched, and the campaign shows it (with the admin's Clear e-stop), not a request nobody reads
        assert store.estop_latched("simulated") is not None and store.campaign(cid).status == state.ESTOPPED
        assert store.pending_controls(cid) == []
        directory.add_user("ada", Role.ADMIN, None, who="test")
        admin = {"Authorization": f"Bearer {directory.issue_token('ada', days=1, who='test')[0]}"}
        r = client.post(f"/api/campaigns/{cid}/estop-clear", json={"reason": "lines checked"}, headers=admin)
        assert r.status_code == 202, r.text
        row = store.campaign(cid)
        assert store.estop_latched("simulated") is None and row.status == state.PAUSED
        assert row.reason == "e-stop cleared: lines checked; resume when ready"  # off the queue, held
        actions = set(client.get(f"/api/campaigns/{cid}", headers=headers).json()["actions"])
        assert "abort" in actions and not actions & {"resume", "recalibrate"}  # no process: `sdl resume` it
        store.set_status(cid, state.RUNNING)
        store.set_status(cid, state.ORPHANED, reason="its process vanished")
        r = client.post(f"/api/campaigns/{cid}/abort", json={"reason": "wrong syringe"}, headers=headers)
        assert r.status_code == 202, r.text
        assert store.campaign(cid).status == state.ABORTED


def test_a_running_campaign_whose_process_died_says_so(store: Store, tmp_path: Path) -> None:
    cid = _campaign(store)
    source = StoreSource(store, fresh_s=0)
    assert "no live process" not in source.campaign(cid).reason  # its runner heartbeats
    later = open_store(store.url, clock=lambda: store.now() + timedelta(seconds=STALE_AFTER_S + 5))
    try:
        reason = StoreSource(later, fresh_s=0).campaign(cid).reason
    finally:
        later.close()
    assert "no live process: runner-1 fell silent at" in reason and f"`sdl resume {cid}`" in reason


def test_progress_counts_against_the_tighter_of_max_rounds_and_the_protocols_budget(store: Store) -> None:
    row = store.campaign(_campaign(store))
    cid = store.create_campaign(
        name=row.name, protocol_yaml=row.protocol_yaml, protocol_path=row.protocol_path, rig_yaml=row.rig_yaml,
        rig_path=row.rig_path, rig_name="other-rig", seed=4, options={"max_rounds": 1}, status=state.RUNNING,
    )
    store.add_round(cid, 0, strategy="lhs", bounds=_bounds(),
                    conditions=[PlannedCondition(_inputs(i), "lhs") for i in range(3)])
    _measure(store, cid, 0, 0, 4, 0.40)
    store.finish_condition(cid, 0, 0, median_loss=0.41, mad=0.01, accepted=3, failed=False)
    p = StoreSource(store, fresh_s=0).campaign(cid).progress
    assert p.rounds_max == 1  # `sdl run --max-rounds 1`, tighter than the protocol's 2 rounds / 6 conditions
    assert p.fraction == pytest.approx(4 / (3 * 4))


def test_after_a_kill_9_a_pause_takes_effect_at_once_and_no_old_request_waits(store: Store, tmp_path: Path) -> None:
    """Within the minute a killed process's heartbeat stays fresh, a pause or an abort was stored as a
    request (202) for a process that no longer existed; the morning's `sdl resume` then honoured them
    and aborted the campaign for good. Now they apply at once, and a new process drops what is left."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from orchestrator.campaign import _Runner

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"sdl@{socket.gethostname()}:{gone.pid}"
    cid = _campaign(store)
    store.claim(cid, dead, stale_after_s=0.0)
    source = StoreSource(store, fresh_s=0)
    receipt = source.request_control(cid, "pause", "bob", "refill")
    assert receipt.request_id is None and store.campaign(cid).status == state.PAUSED
    # a request stored for the dead process before (by an older server, or just before the kill)
    old = store.request_control(cid, "abort", who="carol", reason="abort dead?")
    def runner() -> _Runner:
        return _Runner(store, cid, owner=f"sdl@{socket.gethostname()}:{os.getpid()}", progress=None, poll_s=1.0,
                       estop_poll_s=1.0, wall=time.monotonic, sleep=time.sleep)

    # an agent taking the campaign over on its own honours the request: nobody asked it to run
    runner()._claim(store.campaign(cid))  # noqa: SLF001 - the step a resumed run starts with
    assert [c.id for c in store.pending_controls(cid)] == [old]
    store.release(cid, f"sdl@{socket.gethostname()}:{os.getpid()}")
    store.claim(cid, dead, stale_after_s=0.0)
    # a person's `sdl resume` drops it: they want it run, not aborted by a request from before
    person = runner()
    person.started_by = ("bob", "")
    person._claim(store.campaign(cid))  # noqa: SLF001
    assert store.pending_controls(cid) == []
    handled = [e for e in store.events(cid, limit=500) if e.kind == "control_handled"][-1]
    assert handled.data["request_id"] == old and handled.data["outcome"].startswith(f"dropped: {dead} ended")
    assert "bob started the campaign again" in handled.data["outcome"]
    assert store.campaign(cid).status == state.PAUSED  # not aborted by the stale request


def test_clear_estop_is_not_offered_while_an_every_rig_latch_holds(store: Store) -> None:
    """The button was offered, and the clear refused with 409: only `sdl estop --clear` releases a lab-wide
    latch. Offered again once only the rig's own latch holds."""
    app = create_app(store.url, secret="s" * 48, background=False, password_hasher=FAST_HASHER,
                     source=StoreSource(store, fresh_s=0))
    app.state.auth.users.add_user("ada", Role.ADMIN, None, who="test")
    token, _ = app.state.auth.users.issue_token("ada", days=1, who="test")
    cid = _campaign(store)
    store.set_status(cid, state.ESTOPPED, reason="smoke", who="ada")
    store.latch_estop(who="ada", reason="smoke everywhere", rig=None)
    headers = {"Authorization": f"Bearer {token}"}
    client = TestClient(app)  # no lifespan: no background refresher, every read sees the store now
    got = client.get(f"/api/campaigns/{cid}", headers=headers).json()
    assert got["lab_latch"] and "estop-clear" not in got["actions"] and "abort" in got["actions"]
    store.clear_estop(who="ada", reason="aired", rig=None)
    store.latch_estop(who="ada", reason="this rig only", rig="simulated")
    got = client.get(f"/api/campaigns/{cid}", headers=headers).json()
    assert not got["lab_latch"] and "estop-clear" in got["actions"]


def test_resume_with_no_process_queues_it_for_a_live_agent_of_its_rig(store: Store) -> None:
    """A lab with its rigs at other PCs: the console's resume was refused ("`sdl resume` on the lab PC"),
    and `sdl resume` ran the campaign wherever it was typed. With a live agent on the rig, resume queues
    it for that agent; without one, the refusal says to start one."""
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    store.release(cid, "runner-1")
    source.request_control(cid, "pause", "alice", "lunch")  # applied at once: no process
    detail = source.campaign(cid)
    assert not detail.rig_agent and "resume" not in allowed_actions(detail.state, Role.OPERATOR, driven=False)
    with pytest.raises(ControlRefused, match="no agent serves rig simulated.*sdl agent --rig simulated"):
        source.request_control(cid, "resume", "alice", "back")
    store.agent_seen("sdl-agent@rig-pc:7", "simulated")
    source = StoreSource(store, fresh_s=0)  # (a view is cached up to 2 s: an agent's arrival journals nothing)
    detail = source.campaign(cid)
    assert detail.rig_agent and "resume" in allowed_actions(detail.state, Role.OPERATOR, driven=False, rig_agent=True)
    receipt = source.request_control(cid, "resume", "alice", "back from lunch")
    row = store.campaign(cid)
    assert receipt.request_id is None and row.status == state.QUEUED and row.queued_for_rig == "simulated"
    assert row.description.startswith("queued by alice") and row.reason == "resume: back from lunch"


def test_an_estop_pressed_and_cleared_with_no_process_keeps_the_fault_in_sight(store: Store) -> None:
    """Pressed and cleared from the console on a faulted campaign whose process was gone, the e-stop
    replaced the fault's reason (and its "NOT STOPPED, stop by hand") with its own, then with "e-stop
    cleared": the campaign read as an ordinary pause."""
    source = StoreSource(store, fresh_s=0)
    cid = _campaign(store)
    store.set_status(cid, state.FAULTED, reason="fault: pump PVA: no reply | NOT STOPPED, stop by hand: pump PVA")
    store.release(cid, "runner-1")
    source.request_control(cid, "estop", "carol", "smoke")
    held = store.campaign(cid)
    assert held.status == state.ESTOPPED and held.reason.startswith("smoke; before the e-stop: faulted")
    assert "NOT STOPPED, stop by hand: pump PVA" in held.reason
    source.request_control(cid, "estop-clear", "ada", "aired")
    row = store.campaign(cid)
    assert row.status == state.PAUSED and row.reason == (
        "e-stop cleared: aired; before the e-stop: faulted: fault: pump PVA: no reply | NOT STOPPED, stop by "
        "hand: pump PVA; resume when ready")
