"""The campaign store on SQLite (always) and PostgreSQL (when SDL_TEST_POSTGRES_URL is set; marked
``postgres``): schema from the migrations, round trips, refusals, atomicity, journal order."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator import migrations
from orchestrator.state import InvalidTransition
from orchestrator.store import (
    STALE_AFTER_S,
    CampaignClaimed,
    ClaimLost,
    DuplicateReplicate,
    PlannedCondition,
    RigBusy,
    Store,
    StoreError,
    UnknownCampaign,
    default_db_url,
    jsonable,
    metadata,
    normalise_url,
    open_store,
)

PG_URL = os.environ.get("SDL_TEST_POSTGRES_URL")
T0 = datetime(2026, 11, 29, 1, 53, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[Store]:
    s = open_store(store_url, clock=clock)
    yield s
    s.close()


def new_campaign(store: Store, *, rig: str = "sim", name: str = "ag") -> str:
    return store.create_campaign(
        name=name,
        protocol_yaml="name: ag\n",
        protocol_path="protocols/ag.yaml",
        rig_yaml="name: sim\n",
        rig_path="deploy/rigs/simulated.yaml",
        rig_name=rig,
        seed=7,
        options={"max_rounds": 9, "chemistry": None},
    )


def planned(n: int = 3) -> list[PlannedCondition]:
    return [PlannedCondition(inputs={"Q_AgNO3": 4.0 + i, "Q_total": 500.0}, source="lhs") for i in range(n)]


def kinds(store: Store, campaign_id: str) -> list[str]:
    return [e.kind for e in store.events(campaign_id)]


# ------------------------------------------------------------------------------------- schema


def test_schema_comes_from_the_migrations_and_matches_the_tables_the_code_uses(store: Store) -> None:
    assert migrations.current(store.engine) == migrations.head()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_reopening_is_a_no_op_and_keeps_data(store_url: str, store: Store) -> None:
    cid = new_campaign(store)
    again = open_store(store_url)
    try:
        assert again.campaign(cid).name == "ag"
        assert migrations.current(again.engine) == migrations.head()
    finally:
        again.close()


def test_sqlite_store_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'a' / 'b' / 'sdl.db'}")
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        s.close()


def test_default_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDL_DB_URL", raising=False)
    monkeypatch.delenv("SDL_DB", raising=False)
    assert default_db_url() == "sqlite:///runs/sdl.db"
    monkeypatch.setenv("SDL_DB", "sqlite:///console.db")
    assert default_db_url() == "sqlite:///console.db"
    monkeypatch.setenv("SDL_DB_URL", "postgresql://lab@db/sdl")
    assert default_db_url() == "postgresql://lab@db/sdl"
    assert normalise_url("postgresql://lab@db/sdl") == "postgresql+psycopg://lab@db/sdl"
    assert normalise_url("postgres://lab@db/sdl") == "postgresql+psycopg://lab@db/sdl"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_plain_file_path_is_a_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SDL_DB=/data/lab.db or --db lab.db, as people write a file: that SQLite file, not a URL error."""
    monkeypatch.chdir(tmp_path)
    assert normalise_url("lab.db") == f"sqlite:///{tmp_path / 'lab.db'}"
    assert normalise_url("/data/lab.db") == "sqlite:////data/lab.db"
    monkeypatch.setenv("SDL_DB", "lab.db")
    monkeypatch.delenv("SDL_DB_URL", raising=False)
    s = open_store()
    try:
        assert s.url == f"sqlite:///{tmp_path / 'lab.db'}" and (tmp_path / "lab.db").exists()
    finally:
        s.close()


def test_default_store_is_created_under_runs_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SDL_DB_URL", raising=False)
    monkeypatch.delenv("SDL_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    s = open_store()
    s.close()
    assert (tmp_path / "runs" / "sdl.db").is_file()


# ------------------------------------------------------------------------------------- campaigns


def test_campaign_round_trip(store: Store, clock: FakeClock) -> None:
    cid = new_campaign(store)
    assert cid.startswith("c-20261129-0153-") and len(cid) == len("c-20261129-0153-ab12")
    row = store.campaign(cid)
    assert row.campaign_id == row.id == cid
    assert (row.name, row.status, row.reason, row.rig_name, row.seed) == ("ag", "created", "", "sim", 7)
    assert row.protocol_yaml == "name: ag\n" and row.rig_yaml == "name: sim\n"
    assert row.protocol_path == "protocols/ag.yaml" and row.rig_path == "deploy/rigs/simulated.yaml"
    assert row.options == {"max_rounds": 9, "chemistry": None}
    assert row.created_at == T0 and row.created_at.tzinfo is not None
    assert row.owner is None and row.heartbeat_at is None and not row.ended
    assert kinds(store, cid) == ["campaign_created"]


def test_campaigns_are_listed_newest_first(store: Store, clock: FakeClock) -> None:
    first = new_campaign(store, name="first")
    clock.advance(120)
    second = new_campaign(store, name="second")
    assert [c.id for c in store.campaigns()] == [second, first]


def test_unknown_campaign_names_sdl_status(store: Store) -> None:
    with pytest.raises(UnknownCampaign, match="sdl status") as info:
        store.campaign("c-nope")
    assert isinstance(info.value, LookupError) and isinstance(info.value, StoreError)
    for call in (
        lambda: store.set_status("c-nope", "running"),
        lambda: store.rounds("c-nope"),
        lambda: store.journal("c-nope", "note"),
        lambda: store.request_control("c-nope", "pause", who="a", reason="r"),
    ):
        with pytest.raises(UnknownCampaign):
            call()


def test_a_new_campaign_cannot_start_in_an_arbitrary_state(store: Store) -> None:
    with pytest.raises(InvalidTransition):
        store.create_campaign(
            name="x",
            protocol_yaml="",
            protocol_path="",
            rig_yaml="",
            rig_path="",
            rig_name="sim",
            seed=1,
            options={},
            status="finished",
        )


# ------------------------------------------------------------------------------------- status


def test_set_status_changes_and_journals_in_one_step(store: Store, clock: FakeClock) -> None:
    cid = new_campaign(store)
    store.set_status(cid, "running")
    clock.advance(60)
    store.set_status(
        cid, "paused", reason="bubble in line", who="alice", kind="paused_by_operator", data={"n": 3}
    )
    row = store.campaign(cid)
    assert (row.status, row.reason, row.status_by) == ("paused", "bubble in line", "alice")
    assert row.status_at == T0 + timedelta(seconds=60) == row.updated_at
    assert row.description == "paused by alice at 01:54: bubble in line"
    last = store.events(cid)[-1]
    assert (last.kind, last.who, last.reason) == ("paused_by_operator", "alice", "bubble in line")
    assert last.data == {"from": "running", "to": "paused", "n": 3}
    assert kinds(store, cid) == ["campaign_created", "running", "paused_by_operator"]


def test_refused_transition_changes_nothing(store: Store) -> None:
    cid = new_campaign(store)
    store.set_status(cid, "running")
    store.set_status(cid, "finished")
    before = kinds(store, cid)
    with pytest.raises(InvalidTransition, match="final"):
        store.set_status(cid, "running")
    assert store.campaign(cid).status == "finished"
    assert kinds(store, cid) == before


def test_queued_remembers_the_rig_until_it_leaves_the_queue(store: Store) -> None:
    cid = new_campaign(store, rig="rig-a")
    store.set_status(cid, "queued")
    assert store.campaign(cid).queued_for_rig == "rig-a"
    store.set_status(cid, "running")
    assert store.campaign(cid).queued_for_rig is None


# ------------------------------------------------------------------------------------- claims


def test_claims_heartbeats_and_takeover_after_a_stale_heartbeat(store: Store, clock: FakeClock) -> None:
    cid = new_campaign(store)
    store.claim(cid, "host-a:1")
    assert store.live_owner(cid) == "host-a:1"
    store.claim(cid, "host-a:1")  # re-claiming your own is fine
    with pytest.raises(CampaignClaimed, match="host-a:1"):
        store.claim(cid, "host-b:2")
    clock.advance(30)
    store.heartbeat(cid, "host-a:1")
    clock.advance(59)
    assert store.live_owner(cid) == "host-a:1"
    with pytest.raises(CampaignClaimed):
        store.claim(cid, "host-b:2")
    clock.advance(2)  # 61 s without a heartbeat: presumed dead
    assert store.live_owner(cid) is None
    store.claim(cid, "host-b:2")
    with pytest.raises(ClaimLost, match="host-b:2"):
        store.heartbeat(cid, "host-a:1")
    store.release(cid, "host-a:1")  # not its claim: nothing happens
    assert store.campaign(cid).owner == "host-b:2"
    store.release(cid, "host-b:2")
    row = store.campaign(cid)
    assert row.owner is None and row.heartbeat_at is None
    assert kinds(store, cid).count("claimed") == 3 and kinds(store, cid)[-1] == "released"


def test_an_ended_campaign_cannot_be_claimed(store: Store) -> None:
    cid = new_campaign(store)
    store.set_status(cid, "aborted", reason="test")
    with pytest.raises(StoreError, match="final"):
        store.claim(cid, "me")


def test_agent_claims_the_oldest_queued_campaign_for_its_rig(store: Store, clock: FakeClock) -> None:
    a = new_campaign(store, rig="rig-a")
    clock.advance(1)
    other = new_campaign(store, rig="rig-b")
    clock.advance(1)
    b = new_campaign(store, rig="rig-a")
    for cid in (a, other, b):
        store.set_status(cid, "queued")
    assert store.claim_next("rig-a", "agent-1") == a
    assert store.claim_next("rig-a", "agent-2") is None  # rig-a drives a: one campaign per rig
    assert store.claim_next("rig-b", "agent-3") == other  # another rig is another matter
    store.set_status(a, "running")
    store.set_status(a, "finished", reason="done")
    store.release(a, "agent-1")
    assert store.claim_next("rig-a", "agent-2") == b


def test_one_campaign_per_rig_whoever_claims_it(store: Store, clock: FakeClock) -> None:
    """A foreground run, a second agent with another copy of the rig file: while a live process drives
    one campaign on a rig, no other campaign on that rig can be claimed."""
    a, b, c = new_campaign(store, rig="rig-a"), new_campaign(store, rig="rig-a"), new_campaign(store, rig="rig-b")
    store.claim(a, "sdl@host:1")
    store.set_status(a, "running")
    store.set_status(a, "faulted", reason="fault: pump seed stalled")  # held: it still holds the rig
    with pytest.raises(RigBusy, match=f"rig 'rig-a' is driving campaign {a} .faulted, by sdl@host:1"):
        store.claim(b, "sdl@host:2")
    store.claim(c, "sdl@host:2")  # another rig
    clock.advance(STALE_AFTER_S + 1)  # the first process died without a word
    store.heartbeat(c, "sdl@host:2")
    store.claim(b, "sdl@host:2")
    assert store.campaign(b).owner == "sdl@host:2"


def test_a_queued_claim_whose_agent_went_silent_is_taken_over(store: Store, clock: FakeClock) -> None:
    a = new_campaign(store, rig="rig-a")
    store.set_status(a, "queued")
    assert store.claim_next("rig-a", "agent-1") == a
    clock.advance(STALE_AFTER_S - 1)
    assert store.claim_next("rig-a", "agent-2") is None  # agent-1 is still live
    assert store.claim_next("rig-a", "agent-1") == a  # its own claim is its own again
    clock.advance(STALE_AFTER_S + 1)
    assert store.claim_next("rig-a", "agent-2") == a
    row = store.campaign(a)
    assert row.owner == "agent-2" and row.heartbeat_at == clock()


# ------------------------------------------------------------------------------------- rounds


def test_add_round_persists_round_conditions_and_event(store: Store) -> None:
    cid = new_campaign(store)
    prediction = np.linspace(0.0, 1.0, 421)
    conds = [*planned(2), PlannedCondition({"Q_AgNO3": 9.5, "Q_total": 700.0}, "dnn", prediction)]
    store.add_round(
        cid, 0, strategy="lhs", bounds={"Q_AgNO3": (4, 20)}, conditions=conds, notes={"why": "start"}
    )
    (r,) = store.rounds(cid)
    assert (r.index, r.strategy, r.status, r.notes) == (0, "lhs", "planned", {"why": "start"})
    assert r.bounds == {"Q_AgNO3": (4.0, 20.0)} and r.finished_at is None
    got = store.conditions(cid)
    assert [(c.round, c.index, c.source, c.status, c.attempt) for c in got] == [
        (0, 0, "lhs", "planned", 0),
        (0, 1, "lhs", "planned", 0),
        (0, 2, "dnn", "planned", 0),
    ]
    assert got[1].inputs == {"Q_AgNO3": 5.0, "Q_total": 500.0}
    assert got[0].prediction is None
    assert got[2].prediction is not None
    np.testing.assert_array_equal(got[2].prediction, prediction)
    event = store.events(cid)[-1]
    assert event.kind == "batch_planned" and event.data["round"] == 0 and len(event.data["conditions"]) == 3


def test_a_round_is_planned_once(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={})
    with pytest.raises(StoreError, match="already planned"):
        store.add_round(cid, 0, strategy="random", bounds={}, conditions=planned(5), notes={})
    assert len(store.conditions(cid)) == 3 and store.rounds(cid)[0].strategy == "lhs"
    assert kinds(store, cid).count("batch_planned") == 1


def test_add_round_is_atomic(store: Store) -> None:
    cid = new_campaign(store)
    bad = [*planned(2), PlannedCondition({"Q_AgNO3": "lots"}, "lhs")]  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=bad, notes={})
    assert store.rounds(cid) == [] and store.conditions(cid) == []
    assert kinds(store, cid) == ["campaign_created"]
    store.add_round(
        cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={}
    )  # the index is still free
    assert len(store.conditions(cid, 0)) == 3


def test_condition_and_round_lifecycle(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={"Q_AgNO3": (4, 20)}, conditions=planned(2), notes={})
    store.add_round(cid, 1, strategy="lhs", bounds={"Q_AgNO3": (4, 24)}, conditions=planned(1), notes={})
    store.start_condition(cid, 0, 1, 0, rates={"pump_ag": 12.5})
    assert store.rounds(cid)[0].status == "measuring"
    c = store.conditions(cid, 0)[1]
    assert (c.status, c.attempt, c.rates) == ("measuring", 0, {"pump_ag": 12.5})
    store.start_condition(cid, 0, 1, 1)
    store.finish_condition(cid, 0, 1, median_loss=0.25, mad=0.01, accepted=18, failed=False)
    store.finish_condition(cid, 0, 0, median_loss=None, mad=None, accepted=2, failed=True)
    c0, c1 = store.conditions(cid, 0)
    assert (c0.status, c0.failed, c0.median_loss, c0.accepted) == ("failed", True, None, 2)
    assert (c1.status, c1.attempt, c1.median_loss, c1.mad, c1.accepted) == ("done", 1, 0.25, 0.01, 18)
    store.finish_round(cid, 0, bounds_next={"Q_AgNO3": (4, 24)})
    r0, r1 = store.rounds(cid)
    assert r0.status == "done" and r0.bounds_next == {"Q_AgNO3": (4.0, 24.0)} and r0.finished_at is not None
    assert r1.status == "planned"
    assert [c.round for c in store.conditions(cid, 1)] == [1]
    assert kinds(store, cid)[-3:] == ["condition_done", "condition_failed", "round_done"]
    with pytest.raises(StoreError, match="no round 5"):
        store.finish_round(cid, 5)
    with pytest.raises(StoreError, match="add_round"):
        store.start_condition(cid, 0, 9, 0)


# ------------------------------------------------------------------------------------- replicates


def _replicate(store: Store, cid: str, cond: int, attempt: int, rep: int, **kw: object) -> None:
    rng = np.random.default_rng(rep)
    args: dict[str, object] = {
        "absorbance": rng.random(421),
        "raw": {"counts": rng.integers(0, 60000, 421), "dark": rng.random(421)},
        "loss": 0.1 * rep,
        "accepted": True,
        "reject_reason": None,
        "clock_s": 10.0 * rep,
    }
    args.update(kw)
    store.add_replicate(cid, 0, cond, attempt, rep, **args)  # type: ignore[arg-type]


def test_replicate_round_trip_keeps_arrays_exactly(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={})
    absorbance = np.array([0.1, np.nan, 1e-300, 3.5])
    counts = np.array([[1, 2], [3, 4]], dtype=np.int64)
    store.add_replicate(
        cid,
        0,
        1,
        0,
        0,
        absorbance=absorbance,
        raw={"counts": counts, "reference": np.ones(4)},
        loss=None,
        accepted=False,
        reject_reason="saturated",
        clock_s=12.5,
    )
    (r,) = store.replicates(cid)
    assert (r.round, r.condition, r.attempt, r.index) == (0, 1, 0, 0)
    np.testing.assert_array_equal(r.absorbance, absorbance)
    assert r.absorbance.dtype == np.float64
    np.testing.assert_array_equal(r.raw["counts"], counts)
    assert r.raw["counts"].dtype == np.int64 and set(r.raw) == {"counts", "reference"}
    assert (r.loss, r.accepted, r.reject_reason, r.set_aside, r.clock_s) == (
        None,
        False,
        "saturated",
        False,
        12.5,
    )
    assert r.at == T0
    event = store.events(cid)[-1]
    assert event.kind == "replicate_acquired"
    assert event.data == {
        "round": 0,
        "condition": 1,
        "attempt": 0,
        "replicate": 0,
        "loss": None,
        "accepted": False,
        "reject_reason": "saturated",
        "clock_s": 12.5,
    }


def test_a_replicate_is_stored_once(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={})
    _replicate(store, cid, 0, 0, 0)
    with pytest.raises(DuplicateReplicate, match="replicate 0 is already stored"):
        _replicate(store, cid, 0, 0, 0, loss=0.9)
    assert [r.loss for r in store.replicates(cid)] == [0.0]
    assert kinds(store, cid).count("replicate_acquired") == 1
    _replicate(store, cid, 0, 1, 0)  # another attempt of the same condition is a new replicate
    _replicate(store, cid, 1, 0, 0)
    assert len(store.replicates(cid)) == 3


def test_a_replicate_needs_a_planned_condition(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={})
    with pytest.raises(StoreError, match="no planned round 0 condition 7"):
        _replicate(store, cid, 7, 0, 0)


def test_replicates_filter_order_and_set_aside(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(), notes={})
    for cond, attempt, rep in [(1, 0, 1), (0, 0, 1), (1, 0, 0), (0, 0, 0), (0, 1, 0)]:
        _replicate(store, cid, cond, attempt, rep)
    keys = [(r.condition, r.attempt, r.index) for r in store.replicates(cid)]
    assert keys == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 0, 1)]
    assert [(r.attempt, r.index) for r in store.replicates(cid, 0, 0)] == [(0, 0), (0, 1), (1, 0)]
    store.set_aside(cid, 0, 0, 0, "pause outlasted 600 s")
    assert [(r.condition, r.attempt) for r in store.replicates(cid, 0)] == [(0, 1), (1, 0), (1, 0)]
    everything = store.replicates(cid, 0, 0, include_set_aside=True)
    assert [r.set_aside for r in everything] == [True, True, False]
    assert everything[0].set_aside_reason == "pause outlasted 600 s"
    event = store.events(cid)[-1]
    assert (event.kind, event.reason, event.data["count"]) == (
        "replicates_set_aside",
        "pause outlasted 600 s",
        2,
    )


# ------------------------------------------------------------------------------------- journal


def test_journal_ordering_filters_and_paging(store: Store, clock: FakeClock) -> None:
    a = new_campaign(store)
    b = new_campaign(store)
    ids = []
    for i in range(5):
        clock.advance(1)
        ids.append(store.journal(a if i % 2 == 0 else b, "rates_set", data={"i": i, "x": np.float64(0.5)}))
    ids.append(store.journal(None, "agent_started", who="agent-1", reason="boot"))
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert store.latest_event_id() == ids[-1]
    everything = store.events()
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert everything[-1].campaign_id is None and everything[-1].who == "agent-1"
    assert [e.data["i"] for e in store.events(a) if e.kind == "rates_set"] == [0, 2, 4]
    assert store.events(a)[-1].data["x"] == 0.5
    after = store.events(after_id=ids[1], limit=2)
    assert [e.id for e in after] == ids[2:4]
    assert [e.at for e in store.events(b) if e.kind == "rates_set"] == [
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=4),
    ]


def test_journal_data_is_plain_json() -> None:
    assert jsonable({"a": np.float64("nan"), "b": (1, np.int64(2)), "c": np.array([1.5, np.inf])}) == {
        "a": None,
        "b": [1, 2],
        "c": [1.5, None],
    }


def test_a_poller_sees_every_event_once_while_writers_race(store: Store) -> None:
    cids = [new_campaign(store) for _ in range(3)]
    start = store.latest_event_id()
    stop = threading.Event()
    seen: list[int] = []

    def poll() -> None:
        last = start
        while True:
            done = stop.is_set()
            for e in store.events(after_id=last, limit=50):
                seen.append(e.id)
                last = e.id
            if done:
                return

    def write(cid: str) -> None:
        for i in range(20):
            store.journal(cid, "rates_set", data={"i": i})

    poller = threading.Thread(target=poll)
    writers = [threading.Thread(target=write, args=(cid,)) for cid in cids]
    poller.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    poller.join()
    assert len(seen) == 60 and seen == sorted(set(seen))
    assert seen == [e.id for e in store.events(after_id=start, limit=1000)]


# ------------------------------------------------------------------------------------- control


def test_control_requests_wait_until_handled(store: Store) -> None:
    cid = new_campaign(store)
    other = new_campaign(store)
    first = store.request_control(cid, "pause", who="alice", reason="bubble")
    second = store.request_control(cid, "abort", who="bob", reason="wrong reagent")
    store.request_control(other, "pause", who="carol", reason="x")
    pending = store.pending_controls(cid)
    assert [(p.id, p.action, p.who, p.reason) for p in pending] == [
        (first, "pause", "alice", "bubble"),
        (second, "abort", "bob", "wrong reagent"),
    ]
    assert pending[0].at == T0 and pending[0].campaign_id == cid
    store.mark_control_handled(first, "paused")
    store.mark_control_handled(first, "again")  # closing twice changes nothing
    assert [p.id for p in store.pending_controls(cid)] == [second]
    handled = [e for e in store.events(cid) if e.kind == "control_handled"]
    assert len(handled) == 1 and handled[0].data == {
        "request_id": first,
        "action": "pause",
        "by": "alice",
        "outcome": "paused",
    }
    requested = [e for e in store.events(cid) if e.kind == "control_requested"]
    assert [(e.who, e.reason, e.data["action"]) for e in requested] == [
        ("alice", "bubble", "pause"),
        ("bob", "wrong reagent", "abort"),
    ]
    with pytest.raises(StoreError, match="no control request"):
        store.mark_control_handled(99999, "x")


def test_control_requests_are_refused_for_unknown_actions_and_ended_campaigns(store: Store) -> None:
    cid = new_campaign(store)
    with pytest.raises(StoreError, match="pause"):
        store.request_control(cid, "explode", who="a", reason="")
    store.set_status(cid, "aborted")
    with pytest.raises(InvalidTransition, match="final"):
        store.request_control(cid, "pause", who="a", reason="")


# ------------------------------------------------------------------------------------- e-stop


def test_estop_latch_per_rig_and_for_every_rig(store: Store, clock: FakeClock) -> None:
    assert store.estop_latched("rig-a") is None and store.estop_latched(None) is None
    latch = store.latch_estop(who="alice", reason="smoke", rig="rig-a")
    got = store.estop_latched("rig-a")
    assert got is not None and (got.id, got.rig, got.who, got.reason, got.at) == (
        latch,
        "rig-a",
        "alice",
        "smoke",
        T0,
    )
    assert store.estop_latched("rig-b") is None and store.estop_latched(None) is None
    everywhere = store.latch_estop(who="bob", reason="fire alarm")
    assert store.estop_latched("rig-b") is not None and store.estop_latched(None) is not None
    assert [e.id for e in store.active_estops()] == [latch, everywhere]
    with pytest.raises(StoreError, match="reason"):
        store.clear_estop(who="alice", reason=" ")
    assert store.clear_estop(who="alice", reason="checked", rig="rig-a") == 1
    held = store.estop_latched("rig-a")
    assert held is not None and held.id == everywhere  # the every-rig latch still holds it
    assert store.clear_estop(who="carol", reason="all clear") == 1
    assert store.estop_latched("rig-a") is None and store.estop_latched(None) is None
    assert store.clear_estop(who="carol", reason="again") == 0
    global_kinds = [(e.kind, e.who) for e in store.events() if e.campaign_id is None]
    assert global_kinds == [
        ("estop", "alice"),
        ("estop", "bob"),
        ("estop_cleared", "alice"),
        ("estop_cleared", "carol"),
    ]


def test_a_latched_estop_blocks_running_until_cleared(store: Store) -> None:
    cid = new_campaign(store, rig="rig-a")
    store.set_status(cid, "running")
    store.latch_estop(who="alice", reason="spill", rig="rig-a")
    store.set_status(cid, "estopped", who="alice", reason="spill")
    with pytest.raises(InvalidTransition, match="sdl estop --clear"):
        store.set_status(cid, "running")
    store.set_status(cid, "estopped")  # pressing it twice is harmless
    other = new_campaign(store, rig="rig-b")
    store.set_status(other, "running")  # another rig is not held
    store.clear_estop(who="alice", reason="mopped up", rig="rig-a")
    store.set_status(cid, "running", who="alice", reason="resumed")
    assert store.campaign(cid).status == "running"


# ------------------------------------------------------------------------------------- counts


def test_tally_counts_without_loading_arrays(store: Store) -> None:
    cid = new_campaign(store)
    empty = store.tally(cid)
    assert (empty.rounds, empty.conditions, empty.replicates, empty.best_loss) == (0, 0, 0, None)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(3), notes={})
    _replicate(store, cid, 0, 0, 0)
    _replicate(store, cid, 0, 0, 1, accepted=False)
    _replicate(store, cid, 1, 0, 0)
    store.set_aside(cid, 0, 1, 0, "restart")
    store.finish_condition(cid, 0, 0, median_loss=0.3, mad=0.0, accepted=1, failed=False)
    store.finish_condition(cid, 0, 2, median_loss=0.1, mad=0.0, accepted=1, failed=False)
    store.finish_condition(cid, 0, 1, median_loss=None, mad=None, accepted=0, failed=True)
    t = store.tally(cid)
    assert (t.rounds, t.conditions, t.conditions_done, t.conditions_failed) == (1, 3, 2, 1)
    assert (t.replicates, t.accepted) == (2, 1)
    assert (t.best_loss, t.best_round, t.best_condition) == (0.1, 0, 2)


def test_recent_events_are_the_last_ones_oldest_first(store: Store) -> None:
    cid = new_campaign(store)
    ids = [store.journal(cid, "note", data={"i": i}) for i in range(5)]
    store.journal(None, "agent_started")
    assert [e.id for e in store.recent_events(cid, limit=3)] == ids[2:]
    assert [e.kind for e in store.recent_events(limit=2)] == ["note", "agent_started"]


def test_replicate_losses_match_the_full_rows(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(2), notes={})
    _replicate(store, cid, 1, 0, 0)
    _replicate(store, cid, 0, 0, 1, accepted=False, reject_reason="bubble", loss=None)
    _replicate(store, cid, 0, 0, 0)
    store.set_aside(cid, 0, 1, 0, "restart")
    full = store.replicates(cid, include_set_aside=True)
    lean = store.replicate_losses(cid)
    assert [
        (
            r.round,
            r.condition,
            r.attempt,
            r.index,
            r.loss,
            r.accepted,
            r.reject_reason,
            r.set_aside,
            r.clock_s,
        )
        for r in full
    ] == [
        (
            r.round,
            r.condition,
            r.attempt,
            r.index,
            r.loss,
            r.accepted,
            r.reject_reason,
            r.set_aside,
            r.clock_s,
        )
        for r in lean
    ]
    assert [r.set_aside for r in lean] == [False, False, True] and store.replicate_losses(cid, 1) == []


def test_progress_matches_the_full_rows_and_counts_the_measuring_droplets(store: Store) -> None:
    cid = new_campaign(store)
    assert store.progress(cid).rounds == [] and store.progress(cid).measuring is None
    store.add_round(cid, 0, strategy="lhs", bounds={"Q_AgNO3": (4.0, 20.0)}, conditions=planned(3), notes={})
    store.start_condition(cid, 0, 0, 0)
    _replicate(store, cid, 0, 0, 0)
    store.finish_condition(cid, 0, 0, median_loss=0.25, mad=0.01, accepted=1, failed=False)
    store.start_condition(cid, 0, 1, 1)
    _replicate(store, cid, 1, 0, 0)  # an earlier attempt does not count
    for rep in range(3):
        _replicate(store, cid, 1, 1, rep)
    store.set_aside(cid, 0, 1, 1, "bubble")  # nor do droplets set aside ...
    _replicate(store, cid, 1, 1, 3)  # ... only the current attempt's kept ones
    progress = store.progress(cid)
    assert progress.campaign == store.campaign(cid) and progress.round_indices == [0]
    assert [(r.index, r.strategy, r.bounds) for r in progress.rounds] == [
        (x.index, x.strategy, x.bounds) for x in store.rounds(cid)
    ]
    assert [(c.round, c.index, c.status, c.attempt, c.inputs, c.median_loss, c.accepted) for c in progress.conditions] == [
        (c.round, c.index, c.status, c.attempt, c.inputs, c.median_loss, c.accepted) for c in store.conditions(cid)
    ]
    assert (progress.measuring.index, progress.measuring.attempt, progress.replicates) == (1, 1, 1)
    with pytest.raises(UnknownCampaign):
        store.progress("no-such-campaign")


def test_latest_droplets_are_the_last_kept_ones_of_one_attempt_oldest_first(store: Store) -> None:
    cid = new_campaign(store)
    store.add_round(cid, 0, strategy="lhs", bounds={}, conditions=planned(2), notes={})
    for rep in range(4):
        _replicate(store, cid, 0, 0, rep)
    _replicate(store, cid, 0, 1, 0)
    _replicate(store, cid, 1, 0, 0)
    droplets = store.latest_droplets(cid, 0, 0, 0, limit=3)
    full = {r.index: r for r in store.replicates(cid, 0, 0) if r.attempt == 0}
    assert [d.index for d in droplets] == [1, 2, 3]
    for d in droplets:
        assert np.array_equal(d.absorbance, full[d.index].absorbance)
        assert (d.loss, d.accepted) == (full[d.index].loss, full[d.index].accepted)
    assert [d.index for d in store.latest_droplets(cid, 0, 0, 1, limit=3)] == [0]
    assert store.latest_droplets(cid, 0, 1, 1, limit=3) == []


def test_the_migration_downgrades_and_upgrades_again(store: Store) -> None:
    from alembic import command

    config = migrations.alembic_config()
    with store.engine.connect() as conn:
        conn.execution_options(sdl_write=True)
        with conn.begin():
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
    assert migrations.current(store.engine) is None
    assert set(sa.inspect(store.engine).get_table_names()) <= {"alembic_version"}
    migrations.upgrade(store.engine)
    assert migrations.current(store.engine) == migrations.head()
    assert new_campaign(store)


def test_agents_are_seen_idle_or_through_their_campaigns_heartbeat_and_queues_say_who_waits(
    store: Store, clock: FakeClock
) -> None:
    assert store.queue_note("rig-a") == "no agent has served rig rig-a yet: start one with `sdl agent --rig rig-a`"
    store.agent_seen("agent-1@h:1", "rig-a")
    assert store.queue_note("rig-a") == "" and store.queue_note("rig-b").startswith("no agent has served rig rig-b")
    (agent,) = store.agents()
    assert (agent.owner, agent.rig, agent.started_at, agent.campaign_id) == ("agent-1@h:1", "rig-a", T0, None)
    # driving a campaign, the agent writes nothing itself: the campaign's heartbeat says it lives
    cid = new_campaign(store, rig="rig-a")
    store.claim(cid, "agent-1@h:1")
    store.agent_seen("agent-1@h:1", "rig-a", cid)
    clock.advance(STALE_AFTER_S + 30)
    store.heartbeat(cid, "agent-1@h:1")
    (agent,) = store.agents("rig-a")
    assert agent.campaign_id == cid and agent.seen_at == clock.now and agent.is_live(clock.now)
    assert store.queue_note("rig-a") == ""
    clock.advance(STALE_AFTER_S + 1)  # the process died: no heartbeat, no idle poll
    note = store.queue_note("rig-a")
    assert "no live agent for rig rig-a (the last, agent-1@h:1, silent since" in note and "sdl agent --rig" in note
    store.agent_seen("agent-2@h:2", "rig-a")
    assert store.queue_note("rig-a") == "" and [g.owner for g in store.agents()] == ["agent-2@h:2", "agent-1@h:1"]
    store.agent_stopped("agent-2@h:2")
    assert "(the last, agent-2@h:2, stopped at" in store.queue_note("rig-a")
    assert store.agents("rig-b") == []


def test_a_process_killed_on_this_host_holds_nothing(store: Store) -> None:
    """kill -9 of `sdl run`: its heartbeat is still fresh for a minute, but its pid is gone. The rig is
    free at once, and the status says why the campaign does not move."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owner = f"sdl@{socket.gethostname()}:{gone.pid}"
    cid = new_campaign(store)
    store.claim(cid, owner)
    store.set_status(cid, "running", who=owner)
    row = store.campaign(cid)
    assert row.heartbeat_at is not None and not row.is_live(store.now())  # its heartbeat is fresh
    assert store.waiting_note(row).startswith(f"no live process: {owner} is no longer running on this host")
    store.check_rig_free("sim")  # not busy: nothing runs it
    assert store.live_owner(cid) is None  # a request to it would wait for whoever comes next
    alive = f"sdl@{socket.gethostname()}:{os.getpid()}"  # this test's own process: alive
    store.claim(cid, alive, stale_after_s=0.0)
    with pytest.raises(RigBusy):
        store.check_rig_free("sim")
    assert store.waiting_note(store.campaign(cid)) == ""
