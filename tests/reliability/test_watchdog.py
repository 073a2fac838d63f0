"""Finding 10: the New Era Safe-mode watchdog is armed by default from the rig file, its heartbeat lives
on the rig's clock (virtual in a dry run, so a fast simulated campaign never trips it), and a rig file
can set it or turn it off, with a clear error for a value the pump cannot take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.newera import DEFAULT_SAFE_TIMEOUT_S, NewEraPump
from orchestrator.config_errors import ConfigError
from orchestrator.rig import build_rig, load_rig
from simulators.faults import Fault
from simulators.serialsim import get_bus, parse_sim_url

from . import campaigns as cz


def _rig_file(tmp_path: Path, change: Any = None) -> Path:
    data = yaml.safe_load(cz.RIG.read_text(encoding="utf-8"))
    if change is not None:
        change(data)
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _firmware(cfg: Any, name: str) -> tuple[Any, int]:
    pump = cfg.pump(name)
    protocol, bus, _ = parse_sim_url(pump.port)
    return get_bus(protocol, bus), pump.address


def test_the_shipped_rigs_arm_the_watchdog_on_every_new_era_pump_and_only_there() -> None:
    for path in sorted((cz.REPO / "deploy" / "rigs").glob("*.yaml")):
        for pump in load_rig(path).pumps:
            want = DEFAULT_SAFE_TIMEOUT_S if pump.driver == "newera" else 0
            assert pump.watchdog_s == want, (path.name, pump.name)
    assert DEFAULT_SAFE_TIMEOUT_S == 5


def test_a_simulated_rig_arms_it_and_a_long_wait_on_its_clock_keeps_it_fed(tmp_path: Path) -> None:
    cfg = load_rig(_rig_file(tmp_path))
    rig = build_rig(cfg)
    rig.connect()
    try:
        firmware, address = _firmware(cfg, "AgNO3")
        assert firmware.snapshot(address).safe_timeout_s == DEFAULT_SAFE_TIMEOUT_S
        assert isinstance(rig.pumps["AgNO3"], NewEraPump) and rig.pumps["AgNO3"].safe_mode
        for name in ("AgNO3", "PVA"):
            rig.pumps[name].set_rate_ul_min(100.0)
            rig.pumps[name].run()
        rig.clock.sleep(3600.0)  # an hour of equilibration and pauses, in no wall time
        assert [firmware.snapshot(a).state for a in (0, 1)] == ["I", "I"]
        assert [firmware.snapshot(a).alarm for a in (0, 1)] == [None, None]
        firmware.inject(0, Fault("no_reply"))  # AgNO3's cable is cut: the host falls silent for it
        rig.clock.sleep(30.0)
        assert (firmware.snapshot(0).state, firmware.snapshot(0).alarm) == ("S", "T")
        assert firmware.snapshot(1).state == "I"  # its neighbour on the line is still fed
        problems = rig.safe_state()
        assert [p.split(": ")[0] for p in problems] == ["pump AgNO3"]
        assert "watchdog stops it 5 s" in problems[0]
    finally:
        rig.close()


def test_zero_turns_it_off(tmp_path: Path) -> None:
    def off(data: dict) -> None:
        data["pumps"][0]["safe_mode_timeout_s"] = 0

    cfg = load_rig(_rig_file(tmp_path, off))
    rig = build_rig(cfg)
    rig.connect()
    try:
        firmware, address = _firmware(cfg, "AgNO3")
        assert firmware.snapshot(address).safe_timeout_s == 0 and not rig.pumps["AgNO3"].safe_mode
        assert firmware.snapshot(1).safe_timeout_s == DEFAULT_SAFE_TIMEOUT_S  # PVA keeps the default
    finally:
        rig.close()


@pytest.mark.parametrize(
    ("pump", "value", "words"),
    [
        (0, 300, "less than or equal to 255"),
        (0, -1, "greater than or equal to 0"),
        (0, 2.5, "integer"),
        (0, "soon", "integer"),
        (4, 5, "has no communication watchdog"),  # water: a Harvard pump
    ],
)
def test_a_bad_time_out_is_refused_naming_the_field(
    tmp_path: Path, pump: int, value: Any, words: str
) -> None:
    def bad(data: dict) -> None:
        data["pumps"][pump]["safe_mode_timeout_s"] = value

    with pytest.raises(ConfigError) as caught:
        load_rig(_rig_file(tmp_path, bad))
    text = str(caught.value)
    assert f"pumps[{pump}]" in text and "safe_mode_timeout_s" in text and words in text, text


@pytest.mark.parametrize(
    ("where", "fault", "field"),
    [
        ("pump", {"kind": "stall", "path": "reply"}, "pumps[0].faults[0].path"),
        ("pump", {"kind": "no_reply", "path": "sideways"}, "pumps[0].faults[0].path"),
        ("spectrometer", {"kind": "no_reply", "path": "reply"}, "spectrometer.faults[0].path"),
    ],
)
def test_a_fault_path_only_where_it_means_something(
    tmp_path: Path, where: str, fault: dict, field: str
) -> None:
    def add(data: dict) -> None:
        (data["pumps"][0] if where == "pump" else data["spectrometer"])["faults"] = [fault]

    with pytest.raises(ConfigError) as caught:
        load_rig(_rig_file(tmp_path, add))
    assert field in str(caught.value), str(caught.value)


def test_a_fault_path_reaches_the_emulator(tmp_path: Path) -> None:
    def add(data: dict) -> None:
        data["pumps"][4]["faults"] = [{"kind": "no_reply", "at_s": 0, "path": "reply"}]

    cfg = load_rig(_rig_file(tmp_path, add))
    assert cfg.pumps[4].faults[0].to_fault() == Fault("no_reply", path="reply")


def test_a_pump_started_by_hand_keeps_running_after_sdl_hw_exits() -> None:
    """``sdl hw pump NAME --run`` documents that the pump runs on after the command: manual control
    arms no watchdog (else the pump would stop, alarm sounding, 5 s after the command)."""
    from orchestrator.cli.main import main
    from simulators.world import get_world

    assert main(["hw", "--rig", str(cz.RIG), "pump", "AgNO3", "--rate", "100", "--run"]) == 0
    firmware, address = _firmware(load_rig(cz.RIG), "AgNO3")
    get_world("simulated").clock.sleep(60.0)  # nobody talks to the pump any more
    snap = firmware.snapshot(address)
    assert (snap.state, snap.alarm, snap.safe_timeout_s) == ("I", None, 0)
