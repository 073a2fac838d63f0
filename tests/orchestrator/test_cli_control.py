"""sdl pause / abort / estop / status / export / db, through main(argv) against a SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.cli.main import main
from orchestrator.store import PlannedCondition, Store, open_store
from orchestrator.summary import build_summary


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    monkeypatch.delenv("SDL_DB_URL", raising=False)
    monkeypatch.delenv("SDL_DB", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: table cells are not folded
    return f"sqlite:///{tmp_path / 'sdl.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def campaign(store: Store, status: str = "running", rig: str = "sim") -> str:
    cid = store.create_campaign(
        name="ag",
        protocol_yaml="variables:\n  Q_total: {kind: total, bounds: [200, 1000], hard_limits: [50, 2000]}\n",
        protocol_path="protocols/ag.yaml",
        rig_yaml="",
        rig_path="deploy/rigs/simulated.yaml",
        rig_name=rig,
        seed=3,
        options={},
    )
    if status != "created":
        store.set_status(cid, "running")
    if status not in ("created", "running"):
        store.set_status(cid, status, reason="set up by the test")
    return cid


def stale_claim(url: str, cid: str, owner: str = "host-a:42") -> None:
    """A claim whose heartbeat is two minutes old: its process died."""
    past = open_store(url, clock=lambda: datetime.now(UTC) - timedelta(minutes=2))
    past.claim(cid, owner)
    past.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test's own set-up logged is not the command's output
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich may wrap stderr lines


# ------------------------------------------------------------------------------------ pause / abort


def test_pause_of_a_live_campaign_is_a_request_to_its_process(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store)
    store.claim(cid, "host-a:42")
    code, _, err = run(capsys, "pause", cid, "--reason", "bubble in line", "--db", url)
    assert code == 0
    assert "host-a:42" in err and "next replicate boundary" in err
    (req,) = store.pending_controls(cid)
    assert (req.action, req.who, req.reason) == ("pause", "alice", "bubble in line")
    assert store.campaign(cid).status == "running"  # the process pauses it, not the CLI


def test_pause_of_a_campaign_nobody_runs_applies_at_once(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store)
    stale_claim(url, cid)
    code, _, err = run(capsys, "pause", cid, "--reason", "lunch", "--db", url)
    assert code == 0 and "now paused" in err and f"sdl resume {cid}" in err
    row = store.campaign(cid)
    assert (row.status, row.reason, row.status_by) == ("paused", "lunch", "alice")
    last = store.events(cid)[-1]
    assert (last.kind, last.who, last.reason, last.data["from"]) == ("paused", "alice", "lunch", "running")
    assert store.pending_controls(cid) == []


def test_pausing_twice_is_refused_with_what_to_do(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store, "paused")
    code, _, err = run(capsys, "pause", cid, "--db", url)
    assert code == 2 and "already paused" in err and "sdl resume" in err
    assert store.campaign(cid).reason == "set up by the test"


@pytest.mark.parametrize(("held", "advice"), [("faulted", "read the fault"), ("estopped", "clear the e-stop")])
def test_a_held_campaign_is_not_paused_over_its_reason(
    url: str, store: Store, capsys: pytest.CaptureFixture[str], held: str, advice: str
) -> None:
    """The console refused it (409); `sdl pause` said it would pause it, and with no process it put the
    campaign in paused, the fault's reason (and its "NOT STOPPED, stop by hand") gone."""
    cid = campaign(store, held)
    code, _, err = run(capsys, "pause", cid, "--db", url)
    assert code == 2 and f"a campaign that is {held} cannot become paused" in err and advice in err
    assert "CAMPAIGN" not in err and f"sdl resume {cid}" in err  # the advice, ready to paste
    assert (store.campaign(cid).status, store.campaign(cid).reason) == (held, "set up by the test")


def test_abort_of_a_stopped_campaign_ends_it_and_closes_its_requests(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store, "paused")
    left = store.request_control(cid, "resume", who="bob", reason="later")
    code, _, err = run(capsys, "abort", cid, "--reason", "wrong reagent", "--db", url)
    assert code == 0 and "aborted" in err and "data are kept" in err
    row = store.campaign(cid)
    assert (row.status, row.reason, row.status_by) == ("aborted", "wrong reagent", "alice")
    assert store.pending_controls(cid) == []
    handled = [e for e in store.events(cid) if e.kind == "control_handled"]
    assert handled[-1].data["request_id"] == left


def test_abort_of_a_live_campaign_is_a_request(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store)
    store.claim(cid, "agent-7")
    assert run(capsys, "abort", cid, "--db", url)[0] == 0
    assert [r.action for r in store.pending_controls(cid)] == ["abort"]
    assert store.campaign(cid).status == "running"


def test_ended_and_unknown_campaigns_are_refused(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store, "finished")
    code, _, err = run(capsys, "abort", cid, "--db", url)
    assert code == 2 and "final" in err
    code, _, err = run(capsys, "pause", "c-nope", "--db", url)
    assert code == 2 and "no campaign 'c-nope'" in err and "sdl status" in err


def test_a_missing_store_is_not_created_by_status_or_pause(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "sdl.db"
    for argv in (["status"], ["pause", "c-x"], ["export", "c-x"], ["db", "current"]):
        code, _, err = run(capsys, *argv, "--db", f"sqlite:///{missing}")
        assert code == 2 and "no store at" in err, argv
    assert not missing.exists()


def test_default_store_comes_from_sdl_db_url(
    url: str, store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = campaign(store)
    monkeypatch.setenv("SDL_DB_URL", url)
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0 and [r["campaign_id"] for r in json.loads(out)] == [cid]


# ------------------------------------------------------------------------------------ e-stop


def test_estop_latches_and_clears(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    live = campaign(store, rig="rig-a")
    store.claim(live, "host-a:1")
    idle = campaign(store, rig="rig-b")
    code, _, err = run(capsys, "estop", "--rig", "rig-a", "--reason", "spill", "--db", url)
    assert code == 0 and "latched on rig rig-a" in err and live in err and idle not in err
    assert "sdl estop --clear --rig rig-a --reason TEXT" in err.replace("\n", " ")  # not every rig's
    latch = store.estop_latched("rig-a")
    assert latch is not None and (latch.who, latch.reason) == ("alice", "spill")
    assert store.estop_latched("rig-b") is None

    code, _, err = run(capsys, "estop", "--clear", "--db", url)
    assert code == 2 and "--reason" in err
    assert store.estop_latched("rig-a") is not None

    assert run(capsys, "estop", "--db", url)[0] == 0  # every rig, default reason
    everywhere = store.estop_latched(None)
    assert everywhere is not None and everywhere.reason == "e-stop from the command line"
    code, _, err = run(capsys, "estop", "--clear", "--rig", "rig-a", "--reason", "mopped", "--db", url)
    assert code == 0 and "every-rig e-stop still holds it" in err
    code, _, err = run(capsys, "estop", "--clear", "--reason", "all checked", "--db", url)
    assert code == 0 and "cleared 1" in err
    assert store.active_estops() == []
    code, _, err = run(capsys, "estop", "--clear", "--reason", "again", "--db", url)
    assert code == 0 and "nothing to clear" in err


def test_estop_on_a_fresh_store_creates_it(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = f"sqlite:///{tmp_path / 'new' / 'sdl.db'}"
    assert run(capsys, "estop", "--db", fresh)[0] == 0
    s = open_store(fresh)
    try:
        assert s.estop_latched("any-rig") is not None
    finally:
        s.close()


# ------------------------------------------------------------------------------------ status


def _measured(store: Store) -> str:
    cid = campaign(store)
    store.add_round(
        cid,
        0,
        strategy="lhs",
        bounds={"Q_total": (200, 1000)},
        conditions=[PlannedCondition({"Q_total": 300.0}, "lhs"), PlannedCondition({"Q_total": 600.0}, "lhs")],
        notes={},
    )
    for i, loss in enumerate([0.4, 0.2, 0.3]):
        store.add_replicate(
            cid,
            0,
            1,
            0,
            i,
            absorbance=np.zeros(3),
            raw={},
            loss=loss,
            accepted=i != 0,
            reject_reason=None if i else "bubble",
            clock_s=float(i),
        )
    store.finish_condition(cid, 0, 1, median_loss=0.25, mad=0.05, accepted=2, failed=False)
    return cid


def test_status_json_lists_every_campaign(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    old = campaign(store, "paused")
    cid = _measured(store)
    store.claim(cid, "host-a:1")
    code, out, _ = run(capsys, "status", "--json", "--db", url)
    assert code == 0
    records = json.loads(out)
    assert [r["campaign_id"] for r in records] == [cid, old] or {r["campaign_id"] for r in records} == {
        cid,
        old,
    }
    by_id = {r["campaign_id"]: r for r in records}
    rec = by_id[cid]
    assert (rec["status"], rec["reason"], rec["rig"], rec["owner"], rec["live"]) == (
        "running",
        "",
        "sim",
        "host-a:1",
        True,
    )
    assert (
        rec["rounds"],
        rec["conditions"],
        rec["conditions_done"],
        rec["replicates"],
        rec["replicates_accepted"],
    ) == (
        1,
        2,
        1,
        3,
        2,
    )
    assert rec["best"] == {"round": 0, "condition": 1, "median_loss": 0.25}
    assert by_id[old]["reason"] == "set up by the test" and by_id[old]["status_text"].startswith("paused")
    assert by_id[old]["best"] is None and by_id[old]["live"] is False

    code, out, _ = run(capsys, "status", old, "--json", "--db", url)
    assert code == 0 and [r["campaign_id"] for r in json.loads(out)] == [old]


def test_status_json_shows_the_latch_holding_a_campaign(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store, rig="rig-a")
    store.latch_estop(who="bob", reason="smoke", rig="rig-a")
    (rec,) = json.loads(run(capsys, "status", cid, "--json", "--db", url)[1])
    assert rec["estop"]["who"] == "bob" and rec["estop"]["reason"] == "smoke"


def test_status_table_and_detail(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cid = _measured(store)
    store.request_control(cid, "pause", who="bob", reason="look")
    store.latch_estop(who="bob", reason="smoke")
    code, out, _ = run(capsys, "status", "--db", url)
    assert code == 0 and cid in out and "E-STOP latched on every rig" in out and "0.2500" in out
    assert f"{cid}: no live process: no process drives it; `sdl resume {cid}` continues it here, or " \
        "`sdl agent --rig sim` resumes it" in out
    store.agent_seen("sdl-agent@lab-pc:7", "sim")
    assert "the live agent of rig sim marks it orphaned and resumes it" in run(capsys, "status", "--db", url)[1]
    code, out, _ = run(capsys, "status", cid, "--db", url)
    assert code == 0
    assert "1/2 conditions done" in out and "3 replicates (2 accepted)" in out
    assert "best: 0.2500 (r1 c2)" in out  # round 0, condition 1 in the JSON: people count from 1
    assert "pending request" in out and "pause by bob" in out
    assert "control_requested by bob: look" in out
    assert f"sdl resume {cid}" in out


def test_status_of_an_empty_store(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--db", url)
    assert code == 0 and "no campaigns" in out
    assert json.loads(run(capsys, "status", "--json", "--db", url)[1]) == []


# ------------------------------------------------------------------------------------ export


def test_export_json_is_the_summary_document(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = _measured(store)
    code, out, _ = run(capsys, "export", cid, "--db", url)
    assert code == 0
    exported = json.loads(out)
    expected = build_summary(store, cid)
    exported.pop("generated_at")
    expected.pop("generated_at")
    assert exported == expected


def test_export_csv_to_a_file(
    tmp_path: Path, url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = _measured(store)
    out_path = tmp_path / "out" / "reps.csv"
    code, out, err = run(capsys, "export", cid, "--format", "csv", "--out", str(out_path), "--db", url)
    assert code == 0 and out == "" and str(out_path) in err
    lines = out_path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("campaign_id,round,condition,source,attempt,replicate,Q_total,loss")
    assert len(lines) == 4 and lines[1].split(",")[:7] == [cid, "0", "1", "lhs", "0", "0", "600.0"]


def test_export_of_an_unknown_campaign(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "export", "c-nope", "--format", "csv", "--db", url)
    assert code == 2 and out == "" and "sdl status" in err


# ------------------------------------------------------------------------------------ db


def test_db_upgrade_then_current(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = f"sqlite:///{tmp_path / 'db' / 'sdl.db'}"
    code, _, err = run(capsys, "db", "upgrade", "--db", fresh)
    assert code == 0 and "from an empty database to revision 0002" in err
    code, _, err = run(capsys, "db", "upgrade", "--db", fresh)
    assert code == 0 and "up to date" in err
    code, out, err = run(capsys, "db", "current", "--db", fresh)
    assert code == 0 and out == "0002\n" and "up to date" in err


def test_status_table_piped_keeps_each_reason_on_its_line(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """`sdl status | grep` or a log file: the table is not wrapped at 80 columns, and a reason with
    brackets in it ('sdl-orchestrator[ocean]') is printed as written."""
    cid = campaign(store, rig="rig-a")
    reason = "fault: spectrometer: no seabreeze backend; pip install sdl-orchestrator[ocean], then resume"
    store.set_status(cid, "paused", reason=reason, who="bob")
    code, out, _ = run(capsys, "status", "--db", url)
    assert code == 0
    assert any(cid in line and "sdl-orchestrator[ocean], then resume" in line for line in out.splitlines()), out


def test_a_refusal_is_printed_as_written(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Brackets in what the user typed are not rich markup in the error (the run/hw commands' rule too)."""
    code, _, err = run(capsys, "pause", "c-[/x]", "--reason", "bubble", "--db", url)
    assert code != 0 and "c-[/x]" in err


def test_status_says_when_a_queued_campaign_has_no_live_agent_and_lists_the_agents(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store, status="queued", rig="rig-a")
    code, out, _ = run(capsys, "status", "--db", url)
    assert code == 0 and "no agent has served rig rig-a yet: start one with `sdl agent --rig rig-a`" in out
    assert "rig agents" not in out
    record = json.loads(run(capsys, "status", "--json", "--db", url)[1])[0]
    assert record["note"].startswith("no agent has served rig rig-a")
    store.agent_seen("sdl-agent@lab-pc:7", "rig-a")
    code, out, _ = run(capsys, "status", "--db", url)
    assert "no agent has served" not in out and "no live agent" not in out
    assert "rig agents" in out and "sdl-agent@lab-pc:7" in out and "idle, waiting for work" in out
    store.agent_stopped("sdl-agent@lab-pc:7")
    store.agent_seen("sdl-agent@lab-pc:8", "rig-a")
    store.agent_stopped("sdl-agent@lab-pc:8")
    out = run(capsys, "status", "--db", url)[1]
    assert "sdl-agent@lab-pc:8" in out and "sdl-agent@lab-pc:7" not in out  # of the stopped, the rig's latest
    code, out, _ = run(capsys, "status", cid, "--db", url)
    assert "no live agent for rig rig-a (the last, sdl-agent@lab-pc:8, stopped at" in out


def test_a_long_reason_is_cut_in_the_table_and_whole_in_the_detail(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = campaign(store)
    hint = "fault: the rig did not connect: spectrometer: python-seabreeze is not installed. " + "x" * 200
    store.set_status(cid, "paused", reason=hint + "\n  - pump seed: no reply")
    out = run(capsys, "status", "--db", url)[1]
    row = next(line for line in out.splitlines() if "paused" in line)
    assert "…" in out and "pump seed: no reply" not in out and len(row) < 250
    assert "pump seed: no reply" in run(capsys, "status", cid, "--db", url)[1]  # the detail has it all


def test_status_of_a_campaign_whose_process_was_killed_does_not_say_live(
    url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """After kill -9 it said "driven by: sdl@vm:12141 (live, ...)" and, a line below, "no live process"."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cid = campaign(store)
    store.claim(cid, f"sdl@{socket.gethostname()}:{gone.pid}")
    code, out, _ = run(capsys, "status", cid, "--db", url)
    assert code == 0 and "(not running, heartbeat" in out and "(live," not in out
    assert "is no longer running on this host" in out
    code, out, _ = run(capsys, "status", "--json", "--db", url)
    assert json.loads(out)[0]["live"] is False


def test_status_counts_set_aside_droplets_apart(url: str, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """`sdl status` said 160 replicates where the store and the CSV hold 200, without a word."""
    cid = _measured(store)
    for i in range(2):
        store.add_replicate(cid, 0, 0, 0, i, absorbance=np.zeros(3), raw={}, loss=0.5, accepted=True,
                            reject_reason=None, clock_s=float(i))
    store.set_aside(cid, 0, 0, 0, "paused too long")
    code, out, _ = run(capsys, "status", cid, "--db", url)
    assert code == 0 and "5 replicates (2 accepted, 2 set aside)" in out
    code, out, _ = run(capsys, "status", "--json", "--db", url)
    rec = json.loads(out)[0]
    assert (rec["replicates"], rec["replicates_accepted"], rec["replicates_set_aside"]) == (5, 2, 2)
    totals = build_summary(store, cid)["totals"]  # the same counts as the summary's
    assert (totals["replicates"], totals["replicates_accepted"], totals["replicates_set_aside"]) == (5, 2, 2)
