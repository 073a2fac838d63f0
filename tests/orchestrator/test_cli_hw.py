"""``sdl hw``: refusals before anything is sent, and the commands against emulated pumps and spectrometer."""

from __future__ import annotations

import csv
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import yaml

from orchestrator.cli.main import main
from orchestrator.cli.sim import serve_pump
from simulators.serialsim import get_bus

ROOT = Path(__file__).resolve().parents[2]
SIMULATED = ROOT / "deploy" / "rigs" / "simulated.yaml"


def write_rig(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def real_rig(tmp_path: Path, port: str, **pump: Any) -> Path:
    entry = {"name": "AgNO3", "driver": "newera", "port": port, "address": 0, "syringe_diameter_mm": 14.57}
    return write_rig(tmp_path, {"name": "bench", "pumps": [{**entry, **pump}]})


@pytest.fixture(autouse=True)
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """sdl hw asks the store whether a campaign drives the rig: this test's own, never ./runs/sdl.db."""
    url = f"sqlite:///{tmp_path / 'hw-store.db'}"
    monkeypatch.setenv("SDL_DB_URL", url)
    return url


@pytest.fixture
def no_device(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if a refused command got as far as building a device."""
    built: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        built.append("build_rig")
        raise AssertionError("a refused command must not build devices")

    monkeypatch.setattr("orchestrator.cli.hw.build_rig", refuse)
    return built


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pump", "gold"], "has no pump 'gold'; its pumps: AgNO3"),
        (
            ["pump", "AgNO3", "--rate", "-5"],
            "--rate -5 uL/min: pump AgNO3 (newera) with a 14.57 mm syringe delivers",
        ),
        (["pump", "AgNO3", "--rate", "50000"], "delivers 0.113-1.061e+04 uL/min"),
        (["pump", "AgNO3", "--rate", "nan"], "--rate nan uL/min"),
        (
            ["pump", "AgNO3", "--diameter", "0"],
            "--diameter 0 mm: a newera pump accepts 0.1-80 mm",
        ),
        (["pump", "AgNO3", "--diameter", "4.61", "--rate", "2000"], "with a 4.61 mm syringe delivers"),
        (["spectrum", "--out", "x.csv"], "the rig has no spectrometer section"),
    ],
)
def test_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_device: list[str], args: list[str], expected: str
) -> None:
    rig = real_rig(tmp_path, "/dev/does-not-exist")
    assert main(["hw", "--rig", str(rig), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert no_device == []


def test_bad_rig_file_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_device: list
) -> None:
    rig = real_rig(tmp_path, "/dev/ttyUSB0", syringe_diameter_mm=99)
    assert main(["hw", "--rig", str(rig), "pump", "AgNO3", "--status"]) == 2
    err = capsys.readouterr().err
    assert (
        str(rig) in err and "pumps[0].syringe_diameter_mm" in err and "newera pump accepts (0.1-80 mm)" in err
    )


def test_missing_rig_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["hw", "--rig", str(tmp_path / "nope.yaml"), "pump", "AgNO3"]) == 2
    assert "rig file not found" in capsys.readouterr().err


def test_run_and_stop_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["hw", "--rig", str(real_rig(tmp_path, "x")), "pump", "AgNO3", "--run", "--stop"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_unplugged_port_is_a_device_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rig = real_rig(tmp_path, str(tmp_path / "ttyUSB-unplugged"))
    assert main(["hw", "--rig", str(rig), "pump", "AgNO3", "--status"]) == 1
    err = capsys.readouterr().err
    assert "pump AgNO3" in err and "ttyUSB-unplugged" in err and "Traceback" not in err
    assert "NOT STOPPED" not in err  # only asked for its state
    assert main(["hw", "--rig", str(rig), "pump", "AgNO3", "--stop"]) == 1
    err = capsys.readouterr().err
    # connecting failed (here: no such port; a running pump may refuse a set-up command instead), said once
    assert "NOT STOPPED: connecting to pump AgNO3 failed (the error below says why)" in err
    assert "so it may still be pumping" in err and "keypad" in err
    assert "ttyUSB-unplugged" not in err.split("\n")[0] and "ttyUSB-unplugged" in err  # the path, in the error below


# -- against emulated devices ---------------------------------------------------------------------------


@pytest.fixture
def pty_pump():
    """A New Era line served on a pty, as ``sdl sim pump --protocol newera`` does."""
    stop = threading.Event()
    ready: queue.Queue[str] = queue.Queue()
    server = threading.Thread(
        target=serve_pump,
        args=("newera", [0]),
        kwargs={"bus": "hw-test", "world_name": "hw-test", "stop": stop, "ready": ready.put},
        daemon=True,
    )
    server.start()
    path = ready.get(timeout=5)
    firmware = get_bus("newera", "hw-test")
    yield path, firmware
    stop.set()
    server.join(timeout=5)


def test_hw_drives_a_pump_served_on_a_pty(tmp_path: Path, capsys: pytest.CaptureFixture, pty_pump) -> None:
    path, firmware = pty_pump
    assert path.startswith("/dev/pts/")
    rig = str(real_rig(tmp_path, path))

    assert main(["hw", "--rig", rig, "pump", "AgNO3", "--rate", "120", "--run"]) == 0
    assert "AgNO3: infusing, rate 120 uL/min, syringe 14.57 mm" in capsys.readouterr().out
    snap = firmware.snapshot(0)
    assert (
        snap.state == "I"
        and snap.rate_ul_min == pytest.approx(120)
        and snap.diameter_mm == pytest.approx(14.57)
    )

    # the pump keeps running after the command: a second process finds it infusing
    assert main(["hw", "--rig", rig, "pump", "AgNO3", "--status"]) == 0
    assert "AgNO3: infusing" in capsys.readouterr().out

    assert main(["hw", "--rig", rig, "pump", "AgNO3", "--stop"]) == 0
    assert "AgNO3: stopped" in capsys.readouterr().out
    assert firmware.snapshot(0).state == "S"

    assert main(["hw", "--rig", rig, "pump", "AgNO3", "--diameter", "4.61", "--rate", "20"]) == 0
    assert "rate 20 uL/min, syringe 4.61 mm" in capsys.readouterr().out
    assert firmware.snapshot(0).diameter_mm == pytest.approx(4.61)

    # refused before sending: the firmware keeps its settings
    assert main(["hw", "--rig", rig, "pump", "AgNO3", "--diameter", "4.61", "--rate", "5000", "--run"]) == 2
    assert firmware.snapshot(0).state == "S" and firmware.snapshot(0).rate_ul_min == pytest.approx(20)


def test_hw_pump_on_the_simulated_rig(capsys: pytest.CaptureFixture) -> None:
    logging_before = structlog.get_config()
    assert main(["hw", "--rig", str(SIMULATED), "pump", "seed", "--rate", "50", "--run"]) == 0
    captured = capsys.readouterr()
    # stdout carries only the answer; the drivers' logs stay quiet without -v
    assert captured.out.splitlines() == ["seed: infusing, rate 50 uL/min, syringe 14.57 mm, dispensed 0 uL"]
    assert captured.err == ""
    assert structlog.get_config() == logging_before
    assert main(["hw", "--rig", str(SIMULATED), "pump", "AgNO3", "--status"]) == 0
    assert "AgNO3: stopped" in capsys.readouterr().out


def test_hw_spectrum_writes_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reference.csv"
    assert (
        main(["hw", "--rig", str(SIMULATED), "spectrum", "--out", str(out), "--integration-time-us", "5000"])
        == 0
    )
    assert f"to {out}; integration 5000 us" in capsys.readouterr().out
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["wavelength_nm", "counts"]
    wl = np.array([float(r[0]) for r in rows[1:]])
    counts = np.array([float(r[1]) for r in rows[1:]])
    assert len(wl) > 1000 and np.all(np.diff(wl) > 0)
    assert wl[0] < 380 and wl[-1] > 800  # the spectrometer covers the protocol's grid
    assert counts.max() > 10 * np.median(counts[:20])  # lamp light through carrier, above the dark


def test_hw_spectrum_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "no" / "such" / "spectrum.csv"
    assert main(["hw", "--rig", str(SIMULATED), "spectrum", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hw_spectrometer_fault_is_a_device_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = yaml.safe_load(SIMULATED.read_text())
    data["spectrometer"]["faults"] = [{"kind": "disconnect"}]
    rig = write_rig(tmp_path, data)
    assert main(["hw", "--rig", str(rig), "spectrum", "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err
    assert "spectrometer" in err and "re-plug" in err and "Traceback" not in err
    assert not (tmp_path / "s.csv").exists()


def test_an_error_naming_a_path_with_brackets_is_printed_as_written(tmp_path: Path, capsys) -> None:
    """Error text is not rich markup: '[red]' in a file name stays, '[/x]' does not crash the CLI."""
    from orchestrator.cli.main import main

    for name in ("rigs[red].yaml", "nope[/x].yaml"):
        code = main(["hw", "--rig", str(tmp_path / name), "pump", "A", "--status"])
        err = capsys.readouterr().err.replace("\n", "")
        assert code != 0 and name in err, err


def test_hw_refuses_a_rig_a_live_campaign_drives_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, own_store: str
) -> None:
    """Connecting re-sends set-up commands and turns a New Era pump's Safe mode off, unseen by the
    campaign's driver: a crash of its process would then leave that pump running. Refused first."""
    from orchestrator.campaign import start_campaign
    from orchestrator.store import open_store
    from tests.orchestrator.campaign_support import tiny_protocol

    store = open_store(own_store)
    try:
        cid = start_campaign(store, tiny_protocol(tmp_path), SIMULATED, seed=1)
        store.claim(cid, "sdl@lab-pc:4242")  # a live process holds it: heartbeat now
        built: list[str] = []
        monkeypatch.setattr("orchestrator.cli.hw.build_rig", lambda *a, **k: built.append("x"))
        for args in (["pump", "AgNO3", "--status"], ["spectrum", "--out", str(tmp_path / "s.csv")]):
            assert main(["hw", "--rig", str(SIMULATED), *args]) == 2
            err = capsys.readouterr().err
            assert f"rig 'simulated' is driving campaign {cid}" in err and "--force" in err and "Safe mode" in err
        assert built == []  # nothing was sent
        monkeypatch.undo()
        monkeypatch.setenv("SDL_DB_URL", own_store)
        assert main(["hw", "--rig", str(SIMULATED), "--force", "pump", "AgNO3", "--status"]) == 0
        store.release(cid, "sdl@lab-pc:4242")  # the process let go: the rig is free again
        assert main(["hw", "--rig", str(SIMULATED), "pump", "AgNO3", "--status"]) == 0
    finally:
        store.close()
