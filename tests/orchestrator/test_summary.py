"""The campaign summary document and its CSV export, built from a store filled by hand."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import PlannedCondition, Store, open_store
from orchestrator.summary import SCHEMA, build_summary, csv_text, summary_json, write_summary

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
T0 = datetime(2026, 11, 29, 1, 53, tzinfo=UTC)
INPUTS = ["Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'sdl.db'}", clock=lambda: T0)
    yield s
    s.close()


def cond(ag: float, total: float, source: str = "lhs") -> PlannedCondition:
    return PlannedCondition(
        {"Q_AgNO3": ag, "Q_PVA": 20.0, "Q_TSC": 10.0, "Q_seed": 10.0, "Q_total": total}, source
    )


def rep(
    store: Store, cid: str, r: int, c: int, attempt: int, i: int, loss: float | None, ok: bool = True
) -> None:
    store.add_replicate(
        cid,
        r,
        c,
        attempt,
        i,
        absorbance=np.full(4, 0.5),
        raw={"counts": np.arange(4)},
        loss=loss,
        accepted=ok,
        reject_reason=None if ok else "bubble",
        clock_s=float(i),
    )


@pytest.fixture
def campaign(store: Store) -> str:
    """Two rounds: round 0 with a set-aside attempt and a failed condition, round 1 widened."""
    cid = store.create_campaign(
        name="ag_nanoprism",
        protocol_yaml=PROTOCOL.read_text(encoding="utf-8"),
        protocol_path=str(PROTOCOL),
        rig_yaml="name: simulated\n",
        rig_path="deploy/rigs/simulated.yaml",
        rig_name="simulated",
        seed=7,
        options={"max_rounds": 2},
    )
    store.set_status(cid, "running")
    b0 = {"Q_AgNO3": (4, 20), "Q_PVA": (10, 40), "Q_TSC": (4, 20), "Q_seed": (4, 20), "Q_total": (200, 1000)}
    store.add_round(cid, 0, strategy="lhs", bounds=b0, conditions=[cond(5, 500), cond(15, 400)], notes={})
    rates0 = {"AgNO3": 25.0, "PVA": 100.0, "TSC": 50.0, "seed": 50.0, "water": 275.0}
    store.start_condition(cid, 0, 0, 0, rates=rates0)
    rep(store, cid, 0, 0, 0, 0, 0.9)  # this attempt is set aside after a long pause
    store.set_aside(cid, 0, 0, 0, "pause outlasted 600 s")
    store.start_condition(cid, 0, 0, 1, rates=rates0)
    rep(store, cid, 0, 0, 1, 0, 0.30)
    rep(store, cid, 0, 0, 1, 1, None, ok=False)
    rep(store, cid, 0, 0, 1, 2, 0.20)
    store.journal(cid, "reagent_used", data={"round": 0, "condition": 0, "ul": 1000.0})
    store.finish_condition(cid, 0, 0, median_loss=0.25, mad=0.05, accepted=2, failed=False)
    store.start_condition(
        cid, 0, 1, 0, rates={"AgNO3": 60.0, "PVA": 80.0, "TSC": 40.0, "seed": 40.0, "water": 180.0}
    )
    rep(store, cid, 0, 1, 0, 0, None, ok=False)
    store.journal(cid, "reagent_used", data={"round": 0, "condition": 1, "ul": 400.0})
    store.finish_condition(cid, 0, 1, median_loss=None, mad=None, accepted=0, failed=True,
                           reason="0 of 2 droplets accepted, fewer than 1; rejected: 2 no_light")
    b1 = {**b0, "Q_AgNO3": (2, 20)}
    store.finish_round(cid, 0)  # the engine does not know the next bounds yet when a round ends
    why = {"variable": "Q_AgNO3", "edge": "high", "old": 20.0, "new": 25.0, "reason": "gated rule: 60% crowd it"}
    store.add_round(cid, 1, strategy="qnei", bounds=b1, conditions=[cond(3, 900, "qnei")],
                    notes={"widening": [why], "fallback": "too few measured conditions to model"})
    store.start_condition(
        cid, 1, 0, 0, rates={"AgNO3": 27.0, "PVA": 180.0, "TSC": 90.0, "seed": 90.0, "water": 513.0}
    )
    rep(store, cid, 1, 0, 0, 0, 0.12)
    store.journal(cid, "reagent_used", data={"round": 1, "condition": 0, "ul": 900.0})
    store.finish_condition(cid, 1, 0, median_loss=0.12, mad=0.0, accepted=1, failed=False)
    store.finish_round(cid, 1)
    store.set_status(cid, "finished", reason="budget of 2 rounds spent")
    return cid


def test_summary_document(store: Store, campaign: str) -> None:
    s = build_summary(store, campaign)
    assert s["schema"] == SCHEMA and s["campaign_id"] == campaign and s["name"] == "ag_nanoprism"
    assert (s["status"], s["reason"], s["seed"], s["rig"]) == (
        "finished",
        "budget of 2 rounds spent",
        7,
        "simulated",
    )
    assert s["status_text"] == "finished at 01:53: budget of 2 rounds spent"
    assert [v["name"] for v in s["variables"]] == INPUTS
    assert s["variables"][0] == {
        "name": "Q_AgNO3",
        "kind": "percent",
        "stream": "AgNO3",
        "unit": "%",
        "bounds": [4, 20],
        "hard_limits": [0.5, 80],
    }
    assert s["variables"][-1]["unit"] == "uL/min"
    assert s["target"]["file"] == "targets/ag_nanoprism.csv" and s["target"]["grid_nm"] == [380, 800, 1]
    assert "delta" in s["target"]["loss"]

    r0, r1 = s["rounds"]
    assert (r0["index"], r0["strategy"], r0["status"], r0["widened"]) == (0, "lhs", "done", [])
    assert r0["bounds"]["Q_total"] == [200.0, 1000.0] and r0["bounds_next"]["Q_AgNO3"] == [2.0, 20.0]
    assert (r1["strategy"], r1["widened"], r1["bounds_next"]) == ("qnei", ["Q_AgNO3"], None)
    assert r0["widening"] == []  # each edge moved, and why
    # a round the strategy could not model says so (it read "qnei" and nothing more)
    assert (r0["fallback"], r1["fallback"]) == (None, "too few measured conditions to model")
    from types import SimpleNamespace

    from orchestrator.console.store_source import StoreSource
    from orchestrator.report import model_check_rows

    planned = [e.text for e in StoreSource(store).recent_events(campaign, 200) if e.kind == "batch_planned"]
    assert planned[-1] == "round 2 planned: 1 condition (qnei); fell back: too few measured conditions to model"
    data = SimpleNamespace(rounds=store.rounds(campaign), history=SimpleNamespace(observations=[]))
    assert [r["strategy"] for r in model_check_rows(data)] == [  # type: ignore[arg-type]
        "lhs", "qnei (fell back: too few measured conditions to model)"]
    assert r0["policy"] is None
    assert s["chemistry"] is None and s["max_rounds_option"] == 2 and s["optimizer"]["strategy"]
    assert r1["widening"] == [{"variable": "Q_AgNO3", "edge": "high", "old": 20.0, "new": 25.0,
                               "reason": "gated rule: 60% crowd it"}]
    c0, c1 = r0["conditions"]
    assert c0["inputs"] == {"Q_AgNO3": 5.0, "Q_PVA": 20.0, "Q_TSC": 10.0, "Q_seed": 10.0, "Q_total": 500.0}
    assert (c0["source"], c0["status"], c0["failed"], c0["attempt"]) == ("lhs", "done", False, 1)
    assert (c0["median_loss"], c0["mad"], c0["accepted"]) == (0.25, 0.05, 2)
    assert c0["losses"] == [
        {
            "replicate": 0,
            "attempt": 0,
            "loss": 0.9,
            "accepted": True,
            "reject_reason": None,
            "set_aside": True,
        },
        {
            "replicate": 0,
            "attempt": 1,
            "loss": 0.3,
            "accepted": True,
            "reject_reason": None,
            "set_aside": False,
        },
        {
            "replicate": 1,
            "attempt": 1,
            "loss": None,
            "accepted": False,
            "reject_reason": "bubble",
            "set_aside": False,
        },
        {
            "replicate": 2,
            "attempt": 1,
            "loss": 0.2,
            "accepted": True,
            "reject_reason": None,
            "set_aside": False,
        },
    ]
    assert (c1["status"], c1["failed"], c1["median_loss"]) == ("failed", True, None)
    assert c1["failed_reason"] == "0 of 2 droplets accepted, fewer than 1; rejected: 2 no_light"
    assert c0["failed_reason"] is None
    assert c1["rates_ul_min"]["AgNO3"] == 60.0

    assert s["best"] == {
        "round": 1,
        "condition": 0,
        "inputs": {"Q_AgNO3": 3.0, "Q_PVA": 20.0, "Q_TSC": 10.0, "Q_seed": 10.0, "Q_total": 900.0},
        "median_loss": 0.12,
    }
    t = s["totals"]
    assert (t["rounds"], t["conditions"], t["conditions_measured"], t["conditions_failed"]) == (2, 3, 3, 1)
    assert (
        t["replicates"],
        t["replicates_accepted"],
        t["replicates_rejected"],
        t["replicates_set_aside"],
    ) == (
        6,
        3,
        2,
        1,
    )
    # 1000 uL at 25/500 of the flow + 400 uL at 60/400 + 900 uL at 27/900
    assert t["volume_ul"]["AgNO3"] == pytest.approx(50.0 + 60.0 + 27.0)
    assert t["volume_ul"]["water"] == pytest.approx(550.0 + 180.0 + 513.0)
    assert t["reagent_ul"] == pytest.approx(2300.0 - t["volume_ul"]["water"])
    assert t["pumped_ul"] == pytest.approx(2300.0)  # the solvent too, as stop.max_reagent_ml counts
    # the document is plain JSON and says the same thing after a round trip
    assert json.loads(summary_json(s)) == s


def test_summary_of_a_fresh_campaign_has_no_rounds_best_or_volume(store: Store) -> None:
    cid = store.create_campaign(
        name="x",
        protocol_yaml="not: [valid",
        protocol_path="p.yaml",
        rig_yaml="",
        rig_path="r.yaml",
        rig_name="sim",
        seed=1,
        options={},
    )
    s = build_summary(store, cid)
    assert (s["status"], s["rounds"], s["best"], s["variables"]) == ("created", [], None, [])
    assert (
        s["totals"]["volume_ul"] is None
        and s["totals"]["reagent_ul"] is None
        and s["totals"]["replicates"] == 0
    )


def test_nan_losses_become_null(store: Store, campaign: str) -> None:
    store.finish_condition(
        campaign, 1, 0, median_loss=float("nan"), mad=float("nan"), accepted=1, failed=False
    )
    s = build_summary(store, campaign)
    assert s["rounds"][1]["conditions"][0]["median_loss"] is None
    summary_json(s)  # allow_nan=False would raise on a NaN


def test_csv_has_one_row_per_replicate(store: Store, campaign: str) -> None:
    text = csv_text(build_summary(store, campaign))
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0].split(",")
    assert header == [
        "campaign_id",
        "round",
        "condition",
        "source",
        "attempt",
        "replicate",
        *INPUTS,
        "loss",
        "accepted",
        "reject_reason",
        "set_aside",
        "median_loss",
    ]
    assert len(rows) == 6
    first = rows[0]
    assert (first["round"], first["condition"], first["attempt"], first["replicate"]) == ("0", "0", "0", "0")
    assert (first["loss"], first["accepted"], first["set_aside"], first["median_loss"]) == (
        "0.9",
        "true",
        "true",
        "0.25",
    )
    assert first["Q_total"] == "500.0"
    rejected = rows[2]
    assert (rejected["loss"], rejected["accepted"], rejected["reject_reason"]) == ("", "false", "bubble")
    assert rows[4]["median_loss"] == ""  # the failed condition has none
    assert [r["round"] for r in rows] == ["0", "0", "0", "0", "0", "1"]


def test_write_summary_replaces_the_file(store: Store, campaign: str, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "summary.json"
    out.parent.mkdir()
    out.write_text("old", encoding="utf-8")
    assert write_summary(store, campaign, out) == out
    assert json.loads(out.read_text(encoding="utf-8"))["campaign_id"] == campaign
    assert not (out.parent / "summary.json.tmp").exists()


def test_syringes_taken_are_the_dry_runs_refills_where_it_journaled_them() -> None:
    """The volume is the set rates over the condition's time, a stalled pump's wait included: 3.07 mL on
    a 1 mL syringe read "refill 3x" where the dry run had refilled it twice."""
    from orchestrator.summary import reagent_rows

    use = {"volume_ul": {"seed": 3070.0, "water": 3070.0}, "syringe_ul": {"seed": 1000.0, "water": 1000.0},
           "refills": {"seed": 2}}
    assert reagent_rows(use) == [("seed", 3070.0, 1000.0, 3), ("water", 3070.0, 1000.0, 4)]  # water: estimated
