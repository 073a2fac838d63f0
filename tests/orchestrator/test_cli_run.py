"""``sdl run`` and ``sdl resume`` in-process: exit codes, where the results are, summary, options,
queueing, bad input refused before anything is stored."""

from __future__ import annotations

import getpass
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from campaign_support import ROOT, SIM_RIG, new_store, rig_with_faults, tiny_protocol

from orchestrator import state
from orchestrator.cli.main import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs' / 'sdl.db'}"


def test_run_finishes_and_says_where_the_results_are(tmp_path: Path, db: str, capsys) -> None:
    summary = tmp_path / "out" / "summary.json"
    code = main(
        [
            "run",
            str(tiny_protocol(tmp_path)),
            "--rig",
            str(SIM_RIG),
            "--db",
            db,
            "--seed",
            "4",
            "--summary",
            str(summary),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    assert row.status == state.FINISHED and row.seed == 4
    assert f"store    {db}" in out and f"summary  {summary}" in out
    log = tmp_path / "runs" / "logs" / f"{row.id}.log"
    assert f"log      {log}" in out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    measured = [e for e in lines if e.get("event") == "condition done"]
    assert len(measured) == 6
    assert all(e["campaign"] == row.id and {"round", "condition", "attempt"} <= set(e) for e in measured)
    document = json.loads(summary.read_text())
    assert document["campaign_id"] == row.id and document["status"] == "finished"
    assert [r["index"] for r in document["rounds"]] == [0, 1]
    first = document["rounds"][0]["conditions"][0]
    assert set(first) >= {"inputs", "losses", "median_loss", "source"}
    assert len(first["losses"]) == 3


def test_max_rounds_chemistry_and_target_options(tmp_path: Path, db: str, monkeypatch) -> None:
    (tmp_path / "const_model.py").write_text(
        "import numpy as np\n"
        "class Const:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return 0.9 * np.exp(-0.5 * ((np.asarray(wavelengths) - 500.0) / 50.0) ** 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = tmp_path / "t.csv"
    # as a German spreadsheet saves it: a Windows code page, semicolons, decimal commas
    target.write_bytes("Wellenl\u00e4nge;Extinktion\r\n300;0,0\r\n500;1,0\r\n900;0,0\r\n".encode("cp1252"))
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--max-rounds", "1"]
    assert main([*args, "--chemistry", "const_model:Const", "--target", str(target)]) == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    assert len(store.rounds(row.id)) == 1
    assert row.options["chemistry"] == "const_model:Const" and row.options["max_rounds"] == 1
    assert "500;1,0" in row.options["target_csv"]



def test_a_chemistry_that_needs_params_says_where_to_give_them(tmp_path: Path, db: str, monkeypatch, capsys) -> None:
    (tmp_path / "needs_k.py").write_text(
        "import numpy as np\n"
        "class NeedsK:\n"
        "    def __init__(self, k):\n"
        "        self.k = k\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return np.ones(len(wavelengths))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--chemistry", "needs_k:NeedsK"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "missing 1 required positional argument: 'k'" in err
    assert "built without params" in err and "simulation.chemistry" in err
    assert new_store(tmp_path / "runs").campaigns() == []  # nothing stored


def test_a_chemistry_module_in_the_working_directory_is_found(tmp_path: Path, db: str, monkeypatch) -> None:
    """The ``sdl`` script does not put the working directory on sys.path (``python -m`` does):
    ``--chemistry mymodel:Class`` must still find ``./mymodel.py``, as a chemist would expect."""
    (tmp_path / "cwd_model_for_sdl_test.py").write_text(
        "import numpy as np\n"
        "class Band:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return 0.5 * np.exp(-0.5 * ((np.asarray(wavelengths) - 600.0) / 40.0) ** 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--max-rounds", "1"]
    assert main([*args, "--chemistry", "cwd_model_for_sdl_test:Band"]) == 0
    assert sys.path[-1] == str(tmp_path)  # appended: an installed package of the same name still wins


def test_queue_only_stores_the_campaign(tmp_path: Path, db: str, capsys) -> None:
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    out = capsys.readouterr().out
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    assert row.status == state.QUEUED and row.queued_for_rig == "simulated"
    assert out.strip().splitlines()[-1] == row.id
    assert store.rounds(row.id) == []
    assert "e-stopped" not in out
    store.latch_estop(who="otto", reason="smoke", rig="simulated")  # queued onto a stopped rig: said
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    assert "note: rig simulated is e-stopped (smoke, by otto): it waits until an admin clears" in capsys.readouterr().out


def test_check_only_checks_and_stores_nothing(tmp_path: Path, db: str, capsys) -> None:
    """A chemist checks a protocol, rig and target before the night without running or queueing it."""
    protocol = str(tiny_protocol(tmp_path))
    assert main(["run", protocol, "--rig", str(SIM_RIG), "--db", db, "--check"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ok: protocol 'tiny_campaign'" in out and "nothing stored, no device opened" in out
    assert "Q_total: bounds 200-1000 uL/min, hard limits 50-2000" in out
    assert "seed drawn when it runs" in out and "water 305 of 25000" in out
    assert not (tmp_path / "runs").exists()  # not even a store was made
    assert "not checked here" not in out  # the simulated spectrometer's range was checked
    real = str(ROOT / "deploy" / "rigs" / "example_newera.yaml")
    assert main(["run", protocol, "--rig", real, "--db", db, "--check"]) == 0
    assert "not checked here: whether the spectrometer reads 380-800 nm" in " ".join(capsys.readouterr().out.split())
    (tmp_path / "bad").mkdir()
    bad = str(tiny_protocol(tmp_path / "bad", batch_size=0))
    assert main(["run", bad, "--rig", str(SIM_RIG), "--db", db, "--check"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["run", protocol, "--rig", str(SIM_RIG), "--db", db, "--check", "--seed", "4"]) == 0
    assert "seed 4" in capsys.readouterr().out
    # seeds a run would fail on (numpy takes none below 0, the store none past 2^63 - 1): refused by both
    for seed in ("-5", str(2**64)):
        for check in (["--check"], []):
            assert main(["run", protocol, "--rig", str(SIM_RIG), "--db", db, "--seed", seed, *check]) == 2
            assert "seed must be a whole number from 0 to 2^63 - 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # a refused run leaves no new database behind either


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": {"strategy": "nope"}}, "unknown optimiser strategy 'nope'"),
        ({"remainder_stream": "buffer"}, "no pump carries stream 'buffer'"),
        ({"remainder_stream": "WATER"}, "The rig's 'water' differs only in case"),
    ],
)
def test_bad_protocols_are_refused_before_anything_is_stored(
    tmp_path: Path, db: str, capsys, change: dict, message: str
) -> None:
    assert main(["run", str(tiny_protocol(tmp_path, **change)), "--rig", str(SIM_RIG), "--db", db]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert new_store(tmp_path / "runs").campaigns() == []


def test_bad_rig_and_options_are_refused(tmp_path: Path, db: str, capsys) -> None:
    protocol = str(tiny_protocol(tmp_path))
    bad_rig = tmp_path / "bad_rig.yaml"
    bad_rig.write_text(
        SIM_RIG.read_text().replace("syringe_diameter_mm: 23.03", "syringe_diameter_mm: 230.3")
    )
    assert main(["run", protocol, "--rig", str(bad_rig), "--db", db]) == 2
    assert "syringe_diameter_mm" in capsys.readouterr().err
    assert main(["run", protocol, "--rig", str(SIM_RIG), "--db", db, "--chemistry", "no_such:Model"]) == 2
    assert "cannot import module 'no_such'" in capsys.readouterr().err
    assert (
        main(["run", protocol, "--rig", str(SIM_RIG), "--db", db, "--target", str(tmp_path / "x.csv")]) == 2
    )
    assert "cannot read the target spectrum" in capsys.readouterr().err
    assert new_store(tmp_path / "runs").campaigns() == []


def test_resume_continues_a_paused_campaign_and_refuses_final_or_unknown(
    tmp_path: Path, db: str, capsys
) -> None:
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    store.set_status(row.id, state.PAUSED, reason="waiting for a fresh seed solution", who="alice")
    capsys.readouterr()
    assert main(["resume", row.id, "--db", db, "--reason", "fresh seed made"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {row.id} (paused by alice" in out
    assert store.campaign(row.id).status == state.FINISHED
    # who resumed it and why are journaled, as for every control action (they were dropped)
    resumed = [e for e in store.events(row.id, limit=2000) if e.kind == state.RUNNING][-1]
    assert resumed.who == getpass.getuser() and resumed.reason.endswith(": fresh seed made")
    assert main(["resume", row.id, "--db", db]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert main(["resume", "c-nope", "--db", db]) == 2


def test_resume_queue_hands_a_held_campaign_to_its_rigs_agent(tmp_path: Path, db: str, capsys) -> None:
    """`sdl resume` ran the campaign wherever it was typed; in a lab whose rigs sit at other PCs the rig's
    agent must run it."""
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    store.set_status(row.id, state.PAUSED, reason="refill", who="alice")
    capsys.readouterr()
    assert main(["resume", row.id, "--db", db, "--queue", "--reason", "refilled"]) == 0
    out = capsys.readouterr().out
    assert f"queued {row.id} for rig 'simulated': no agent has served rig simulated yet" in out
    row = store.campaign(row.id)
    assert (row.status, row.queued_for_rig, row.reason) == (state.QUEUED, "simulated", "resume: refilled")
    assert store.replicates(row.id) == []  # nothing ran here


def test_resume_asks_a_live_process_instead_of_running_twice(tmp_path: Path, db: str, capsys) -> None:
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    store.claim(row.id, "agent@elsewhere:1")
    store.set_status(row.id, state.RUNNING)
    store.set_status(row.id, state.PAUSED, reason="bubble", who="bob")
    assert main(["resume", row.id, "--db", db, "--reason", "line cleared"]) == 0
    (request,) = store.pending_controls(row.id)
    assert request.action == "resume" and request.reason == "line cleared"
    assert "asked agent@elsewhere:1" in capsys.readouterr().out


def test_resume_on_an_e_stopped_rig_says_to_clear_that_rigs_latch(tmp_path: Path, db: str, capsys) -> None:
    """Not 'asked the agent to resume it' (the agent refuses while the latch holds): the command says
    the rig is e-stopped and how to clear that rig's latch only."""
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    store.claim(row.id, "agent@elsewhere:1")
    store.set_status(row.id, state.RUNNING)
    store.latch_estop(who="bob", reason="spill under the pumps", rig=row.rig_name)
    store.set_status(row.id, state.ESTOPPED, reason="spill under the pumps", who="bob")
    capsys.readouterr()
    assert main(["resume", row.id, "--db", db, "--reason", "try"]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"rig {row.rig_name} is e-stopped (spill under the pumps)" in err
    assert f"sdl estop --clear --rig {row.rig_name} --reason TEXT" in err
    assert store.pending_controls(row.id) == []


def test_a_faulted_run_exits_1_with_the_reason(tmp_path: Path, db: str, capsys, monkeypatch) -> None:
    # the runner waits for an operator while faulted: here the operator aborts at once
    from orchestrator import campaign

    rig = rig_with_faults(tmp_path, pumps={"AgNO3": [{"kind": "disconnect", "at_s": 20}]})

    def abort_when_faulted(seconds: float) -> None:
        s = new_store(tmp_path / "runs")
        (row,) = s.campaigns()
        s.request_control(row.id, "abort", who="carol", reason="no spare adapter")

    monkeypatch.setattr(campaign, "_operator_wait", abort_when_faulted)
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(rig), "--db", db]) == 3
    out = capsys.readouterr().out
    assert "faulted: fault: New Era line" in out.replace("\n", " ")
    (row,) = new_store(tmp_path / "runs").campaigns()
    assert f"waiting for an operator: `sdl resume {row.id}`" in out.replace("\n", " ")
    assert "aborted by carol" in out


@pytest.mark.parametrize(("held", "reason", "after"), [
    (state.RUNNING, "started", state.PAUSED),
    (state.FAULTED, "fault: pump seed stalled, retried 3 times", state.FAULTED),
])
def test_ctrl_c_pauses_a_running_campaign_and_keeps_a_held_ones_reason(
    tmp_path: Path, db: str, monkeypatch, capsys, held: str, reason: str, after: str
) -> None:
    """Ctrl-C at the terminal leaves the campaign resumable; one already held (faulted at 2 a.m.)
    keeps the reason it was held for instead of 'interrupted'."""
    import orchestrator.campaign as campaign

    def interrupted(store, campaign_id, **kwargs):
        store.set_status(campaign_id, state.RUNNING, reason="started", who="test")
        if held != state.RUNNING:
            store.set_status(campaign_id, held, reason=reason, who="system")
        raise KeyboardInterrupt

    monkeypatch.setattr(campaign, "run_campaign", interrupted)
    main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--seed", "4"])
    (row,) = new_store(tmp_path / "runs").campaigns()
    assert row.status == after
    assert row.reason == (reason if after == held else "interrupted at the terminal (Ctrl-C)")
    assert f"is {after}; `sdl resume {row.id}` continues it" in capsys.readouterr().out


def test_run_on_a_rig_another_process_drives_is_refused_naming_that_campaign(tmp_path: Path, db: str, capsys) -> None:
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]
    assert main(args) == 0
    store = new_store(tmp_path / "runs")
    (busy,) = store.campaigns()
    store.claim(busy.id, "sdl-agent@elsewhere:1")  # an agent on another host drives it
    capsys.readouterr()
    code = main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db])
    out = capsys.readouterr()
    assert code != 0
    assert f"is driving campaign {busy.id}" in (out.out + out.err).replace("\n", " ")
    assert [r.id for r in store.campaigns()] == [busy.id]  # refused before anything was stored


def test_sigterm_pauses_a_foreground_run_and_lets_go_of_it(tmp_path: Path, db: str) -> None:
    """`kill PID` stops a foreground `sdl run` as Ctrl-C does: exit 130, the campaign paused with no
    owner, so `sdl resume` can continue it at once (not a minute later, when the claim goes stale)."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "SDL_SIM_PACE": "0.05", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG),
         "--db", db, "--seed", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if (tmp_path / "runs" / "sdl.db").exists():
                rows = new_store(tmp_path / "runs").campaigns()
                if rows and rows[0].status == state.RUNNING:
                    break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    (row,) = new_store(tmp_path / "runs").campaigns()
    assert proc.returncode == 130, out
    assert row.status == state.PAUSED and row.owner is None
    assert "interrupted" in row.reason


REAL_RIGS = ROOT / "deploy" / "rigs"


@pytest.mark.parametrize("rig_file", ["example_newera.yaml", "example_harvard.yaml"])
def test_dry_run_runs_a_real_rig_file_on_its_simulated_twin(tmp_path: Path, db: str, rig_file: str, capsys) -> None:
    # the rig file's ports (/dev/serial/by-id/...) do not exist here: a run that opened one would fault
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(REAL_RIGS / rig_file), "--db", db, "--max-rounds", "1"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    real = yaml.safe_load((REAL_RIGS / rig_file).read_text())
    assert row.status == state.FINISHED and row.rig_name == real["name"] + "-dry-run"
    assert f"dry run: simulated twin, {row.rig_name}" in out
    twin = yaml.safe_load(row.rig_yaml)
    assert [(p["name"], p["driver"], p.get("address", 0), p["syringe_diameter_mm"], p["syringe_volume_ul"])
            for p in twin["pumps"]] == [
        (p["name"], p["driver"], p["address"], p["syringe_diameter_mm"], p["syringe_volume_ul"]) for p in real["pumps"]
    ]
    assert {p["port"] for p in twin["pumps"]} == {f"sim://{real['pumps'][0]['driver']}/{row.rig_name}-0"}
    assert twin["spectrometer"]["driver"] == "simulated"
    assert twin["dead_volume_ul"] == real["dead_volume_ul"]
    assert len(store.conditions(row.id)) == 3


def test_chemistry_on_a_real_rig_points_at_dry_run_and_sila_pumps_cannot_dry_run(
    tmp_path: Path, db: str, capsys
) -> None:
    protocol = str(tiny_protocol(tmp_path))
    real = str(REAL_RIGS / "example_newera.yaml")
    assert main(["run", protocol, "--rig", real, "--db", db, "--chemistry", "simulators.chemistry:AuNanorod"]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    data = yaml.safe_load((REAL_RIGS / "example_newera.yaml").read_text())
    data["pumps"][1] = {"name": "PVA", "driver": "sila", "port": "sila://127.0.0.1:50052", "syringe_diameter_mm": 14.57}
    sila_rig = tmp_path / "sila_rig.yaml"
    sila_rig.write_text(yaml.safe_dump(data))
    assert main(["run", protocol, "--rig", str(sila_rig), "--db", db, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "pumps[1] (PVA): a SiLA 2 pump has no emulator" in err
    assert new_store(tmp_path / "runs").campaigns() == []


@pytest.mark.timeout(60)  # without the refill the run would hold for an operator
# a Harvard pump with a 1 mL barrel; a New Era pump, which takes RUN on an empty syringe and stalls
# later, with the shortest 10 mL-wide barrel the rig file accepts (10 mm of stroke)
@pytest.mark.parametrize(("pump", "diameter", "volume", "rounds"), [("water", 4.61, 1000, 4), ("PVA", 14.57, 1700, 11)])
def test_a_dry_run_refills_an_empty_syringe_and_says_how_often_the_rig_will_need_it(
    tmp_path: Path, db: str, capsys, pump: str, diameter: float, volume: int, rounds: int
) -> None:
    rig = yaml.safe_load(SIM_RIG.read_text())
    small = next(p for p in rig["pumps"] if p["name"] == pump)
    small.update(syringe_diameter_mm=diameter, syringe_volume_ul=volume)  # empty within the run
    rig_file = tmp_path / "small_syringe.yaml"
    rig_file.write_text(yaml.safe_dump(rig))
    summary = tmp_path / "s.json"
    protocol = tiny_protocol(tmp_path, stop={"max_rounds": rounds})
    assert main(["run", str(protocol), "--rig", str(rig_file), "--db", db, "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    store = new_store(tmp_path / "runs")
    (row,) = store.campaigns()
    assert row.status == state.FINISHED
    refills = [e for e in store.events(row.id, after_id=0, limit=10_000) if e.kind == "syringe_refilled"]
    assert [e.data["pump"] for e in refills] == [pump] and refills[0].data["ul"] == volume
    totals = json.loads(summary.read_text())["totals"]
    assert volume < totals["volume_ul"][pump] < 2 * volume and totals["syringe_ul"][pump] == volume
    assert totals["syringe_ul"]["AgNO3"] == 10000 and totals["pumping_s"] > 0
    line = next(x for x in out.splitlines() if x.strip().startswith("used"))
    assert re.search(rf"{pump} \d\.\d mL \({volume / 1000:g} mL syringe: refill 1x\)", line) and "pumps ran" in line
    assert re.search(r"AgNO3 \d\.\d mL \(10 mL syringe\),", line) and totals["refills"] == {pump: 1}


def test_resume_of_a_campaign_whose_rig_is_busy_is_refused_with_what_to_do(tmp_path: Path, db: str, capsys) -> None:
    for _ in range(2):
        assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--queue"]) == 0
    store = new_store(tmp_path / "runs")
    waiting, busy = store.campaigns()  # newest first
    store.claim(busy.id, "sdl-agent@elsewhere:1")
    store.set_status(busy.id, state.RUNNING)
    store.set_status(waiting.id, state.PAUSED, reason="paused by the operator")
    capsys.readouterr()
    assert main(["resume", waiting.id, "--db", db]) == 1  # refused: not 130 (nothing was interrupted)
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"is driving campaign {busy.id}" in out and f"wait for it to end or abort it, then `sdl resume {waiting.id}`" in out
    assert "sdl run --queue" not in out and "pumps ran" not in out
    assert store.campaign(waiting.id).status == state.PAUSED


def test_a_run_that_measured_nothing_says_so_instead_of_sending_people_to_sdl_report(
    tmp_path: Path, db: str, monkeypatch, capsys
) -> None:
    (tmp_path / "no_product.py").write_text(
        "import numpy as np\n"
        "class NoProduct:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return np.full(len(wavelengths), np.nan)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db, "--max-rounds", "1",
            "--chemistry", "no_product:NoProduct", "--report", str(tmp_path / "rep")]
    main(args)
    out = capsys.readouterr().out.replace("\n", " ")
    assert "no report written: campaign" in out and "has no measured condition yet" in out
    assert "sdl report" not in out


def test_a_run_whose_store_stays_away_ends_in_one_line(
    tmp_path: Path, db: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It ended in four chained tracebacks (233 lines) after a 6-minute outage."""
    from sqlalchemy.exc import OperationalError

    import orchestrator.campaign as campaign_module

    def gone(*args: Any, **kwargs: Any) -> str:
        raise OperationalError("SELECT", {}, Exception("connection failed: Connection refused"))

    monkeypatch.setattr(campaign_module, "run_campaign", gone)
    assert main(["run", str(tiny_protocol(tmp_path)), "--rig", str(SIM_RIG), "--db", db]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "error: the store is unreachable (connection failed: Connection refused): campaign c-" in err
    assert "stopped with its pumps safe; `sdl resume c-" in err and "Traceback" not in err
