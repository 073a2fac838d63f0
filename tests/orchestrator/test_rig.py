"""Rig files (good and bad), the protocol/rig check, and the live simulated rig."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from drivers.absorbance import Screening, absorbance_on_grid
from drivers.base import PumpState
from orchestrator.config_errors import ConfigError
from orchestrator.protocol import ExperimentProtocol, load_protocol
from orchestrator.rig import (
    RigConfig,
    RigConnectionError,
    build_rig,
    check_protocol_against_rig,
    dry_run_twin,
    load_rig,
    pump_rate_limits_ul_min,
)
from simulators.chemistry import AgNanoprism
from simulators.world import VirtualClock, WallClock, get_world

ROOT = Path(__file__).resolve().parents[2]
RIGS = ROOT / "deploy" / "rigs"
SIMULATED = RIGS / "simulated.yaml"


@pytest.fixture(scope="module")
def protocol() -> ExperimentProtocol:
    return load_protocol(ROOT / "protocols" / "ag_nanoprism.yaml")


@pytest.fixture
def sim_data() -> dict[str, Any]:
    return yaml.safe_load(SIMULATED.read_text())


@pytest.fixture
def reference_protocol_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "protocols" / "ag_nanoprism.yaml").read_text())


@pytest.fixture
def real_data() -> dict[str, Any]:
    return yaml.safe_load((RIGS / "example_newera.yaml").read_text())


def write_rig(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- the shipped rig files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simulated", "example_newera", "example_harvard"])
def test_shipped_rigs_fit_the_reference_protocol(name: str, protocol: ExperimentProtocol) -> None:
    rig = load_rig(RIGS / f"{name}.yaml")
    check_protocol_against_rig(protocol, rig)
    assert {p.stream_name for p in rig.pumps} == set(protocol.streams)
    assert rig.is_simulated == (name == "simulated")


def test_simulated_rig_mixes_both_pump_families() -> None:
    rig = load_rig(SIMULATED)
    assert {p.driver for p in rig.pumps} == {"newera", "harvard"}
    assert all(p.port.startswith("sim://") for p in rig.pumps)
    assert rig.spectrometer is not None and rig.spectrometer.driver == "simulated"
    assert rig.simulation is not None and rig.simulation.chemistry is not None
    assert rig.simulation.chemistry.model == "simulators.chemistry:AgNanoprism"
    assert 50 <= (rig.dead_volume_ul or 0) <= 100


def test_a_pump_needs_no_more_than_five_fields(tmp_path: Path) -> None:
    path = write_rig(
        tmp_path,
        {
            "name": "bench",
            "pumps": [{"name": "p", "driver": "newera", "port": "/dev/ttyUSB0", "syringe_diameter_mm": 4.61}],
        },
    )
    rig = load_rig(path)
    assert rig.pumps[0].address == 0 and rig.pumps[0].stream_name == "p"
    assert rig.spectrometer is None and not rig.is_simulated


# -- bad rig files ---------------------------------------------------------------------------------------


def _pump(**over: Any) -> dict[str, Any]:
    return {"name": "p", "driver": "newera", "port": "/dev/ttyUSB0", "syringe_diameter_mm": 14.57, **over}


BAD_REAL = [
    ({"pumps": [_pump(driver="kds")]}, "pumps[0].driver", "'newera', 'harvard' or 'sila'"),
    ({"pumps": [_pump(address=100)]}, "pumps[0].address", "less than or equal to 99"),
    ({"pumps": [_pump(syringe_diameter_mm=0)]}, "pumps[0].syringe_diameter_mm", "greater than 0"),
    (
        {"pumps": [_pump(syringe_diameter_mm=0.05)]},
        "pumps[0].syringe_diameter_mm",
        "newera pump accepts (0.1-80 mm)",
    ),
    (
        {"pumps": [_pump(driver="harvard", syringe_diameter_mm=60)]},
        "pumps[0].syringe_diameter_mm",
        "harvard pump accepts (0.1-50 mm)",
    ),
    ({"pumps": [_pump(baudrate=19000)]}, "pumps[0].baudrate", "talks at 19200, 9600 baud, not 19000"),
    (
        {"pumps": [_pump(driver="harvard", baudrate=2400)]},
        "pumps[0].baudrate",
        "9600, 19200, 38400, 57600, 115200",
    ),
    ({"pumps": [_pump(diameter=3)]}, "pumps[0].diameter", "allowed here: name, driver, port, address"),
    # SiLA 2 pumps, checked with the file (a traceback from `sdl run` before, the campaign left behind)
    ({"pumps": [_pump(driver="sila", port="/dev/ttyUSB0")]}, "pumps[0].port", "is not a SiLA 2 address"),
    ({"pumps": [_pump(driver="sila", port="sila://h:50052", address=2)]}, "pumps[0].address", "remove address"),
    ({"pumps": [_pump(driver="sila", port="sila://h:50052", baudrate=19200)]}, "pumps[0].baudrate", "remove address and baudrate"),
    ({"pumps": [_pump(driver="sila", port="sila://h:50052?ca=x.pem&insecure=1")]}, "pumps[0].port", "not both"),
    ({"pumps": [_pump(driver="sila", port="sila://h:50052"), _pump(name="q", driver="sila", port="sila://h:50052")]},
     "pumps[1].port", "a SiLA 2 server serves one pump"),
    ({"pumps": [_pump(port="")]}, "pumps[0].port", "at least 1 character"),
    (
        {"pumps": [_pump(syringe_volume_ul=10)]},
        "pumps[0].syringe_volume_ul",
        "check volume (uL) and diameter",
    ),
    ({"pumps": [_pump(), _pump(address=1)]}, "pumps[1].name", "'p' is already pumps[0]"),
    (
        {"pumps": [_pump(), _pump(name="q")]},
        "pumps[1].address",
        "address 0 on /dev/ttyUSB0 is already pumps[0]",
    ),
    (
        {"pumps": [_pump(), _pump(name="q", address=1, stream="p")]},
        "pumps[1].stream",
        "already pumped by pumps[0]",
    ),
    (
        {"pumps": [_pump(), _pump(name="q", address=1, driver="harvard")]},
        "pumps[1].driver",
        "one port, one protocol",
    ),
    (
        {"pumps": [_pump(baudrate=9600), _pump(name="q", address=1, baudrate=19200)]},
        "pumps[1].baudrate",
        "share one baud rate",
    ),
    ({"pumps": [_pump(faults=[{"kind": "stall"}])]}, "pumps[0].faults", "only be injected into simulated"),
    ({"pumps": [_pump(port="sim://newera/x")]}, "pumps[0].port", "need a 'simulation' section"),
    ({"spectrometer": {"driver": "simulated"}}, "spectrometer.driver", "needs a 'simulation' section"),
    ({"spectrometer": {"driver": "usb2000"}}, "spectrometer.driver", "'ocean' or 'simulated'"),
    (
        {"spectrometer": {"driver": "ocean", "integration_time_us": 0}},
        "spectrometer.integration_time_us",
        ">= 1",
    ),
    ({"dead_volume_ul": -5}, "dead_volume_ul", "greater than 0"),
    ({"name": "rig a"}, "name", "'rig a' is not a name this file accepts: letters, digits, '_', '-' only"),
]


@pytest.mark.parametrize(("change", "field", "allowed"), BAD_REAL, ids=[b[1] + ":" + b[2] for b in BAD_REAL])
def test_bad_rig_names_file_field_and_what_is_allowed(
    tmp_path: Path, change: dict, field: str, allowed: str
) -> None:
    data = {"name": "bench", "pumps": [_pump()], **change}
    path = write_rig(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    message = str(info.value)
    assert message.startswith(str(path))
    allowed = allowed.replace(">= 1", "greater than or equal to 1")
    assert any(p.field == field and allowed in p.message for p in info.value.problems), message


BAD_SIM = [
    ("pumps.0.port", "/dev/ttyUSB0", "pumps[0].port", "needs sim://newera/<bus> ports"),
    ("pumps.0.port", "sim://harvard/rig", "pumps[0].port", "a newera pump needs a sim://newera/<bus> port"),
    ("pumps.0.port", "sim://newera/rig?address=0", "pumps[0].port", "without a query"),
    ("pumps.0.faults", [{"kind": "explode"}], "pumps[0].faults[0].kind", "allowed: no_reply, garbage, stall"),
    (
        "pumps.0.faults",
        [{"kind": "stall", "at_s": -1}],
        "pumps[0].faults[0].at_s",
        "greater than or equal to 0",
    ),
    ("spectrometer.driver", "ocean", "spectrometer.driver", "a simulated rig needs driver: simulated"),
    ("spectrometer.faults", [{"kind": "stall"}], "spectrometer.faults[0].kind", "saturated, dark_lamp"),
    ("simulation.chemistry.model", "AgNanoprism", "simulation.chemistry.model", "'AgNanoprism' is not module:Class"),
    ("simulation.flavour", 1, "simulation.flavour", "allowed here: dead_volume_ul, chemistry, world"),
]


@pytest.mark.parametrize(
    ("where", "value", "field", "allowed"), BAD_SIM, ids=[b[2] + ":" + b[3] for b in BAD_SIM]
)
def test_bad_simulated_rig(
    tmp_path: Path, sim_data: dict, where: str, value: Any, field: str, allowed: str
) -> None:
    data = copy.deepcopy(sim_data)
    *parents, last = where.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    with pytest.raises(ConfigError) as info:
        load_rig(write_rig(tmp_path, data))
    assert any(p.field == field and allowed in p.message for p in info.value.problems), str(info.value)


def test_every_rig_problem_is_listed(tmp_path: Path, real_data: dict) -> None:
    data = copy.deepcopy(real_data)
    data["pumps"][1]["address"] = 0
    data["pumps"][2]["syringe_diameter_mm"] = 0
    data["spectrometer"]["scans_to_average"] = 0
    with pytest.raises(ConfigError) as info:
        load_rig(write_rig(tmp_path, data))
    fields = {p.field for p in info.value.problems}
    # field errors come first; the address clash is a cross-field check pydantic runs once fields are valid
    assert {"pumps[2].syringe_diameter_mm", "spectrometer.scans_to_average"} <= fields


# -- protocol against rig ----------------------------------------------------------------------------


def test_missing_stream_and_spectrometer(protocol: ExperimentProtocol, real_data: dict) -> None:
    data = copy.deepcopy(real_data)
    data["pumps"] = [p for p in data["pumps"] if p["name"] != "seed"]
    del data["spectrometer"], data["dead_volume_ul"]
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(protocol, RigConfig.model_validate(data))
    messages = [str(p) for p in info.value.problems]
    assert any("no pump carries stream 'seed'" in m and "AgNO3, PVA, TSC, water" in m for m in messages)
    assert any("give that pump `stream: seed`" in m for m in messages)  # how to say which pump holds it
    assert any(m.startswith("spectrometer:") for m in messages)
    assert any(m.startswith("dead_volume_ul:") for m in messages)


def test_syringes_that_cannot_deliver_the_hard_limits(protocol: ExperimentProtocol, real_data: dict) -> None:
    data = copy.deepcopy(real_data)
    data["pumps"][0]["syringe_diameter_mm"] = 4.61  # 1 mL: at most ~1.06 mL/min on an NE-1000
    data["pumps"][0]["syringe_volume_ul"] = 1000
    data["pumps"][4]["syringe_diameter_mm"] = (
        32.57  # 50 mL water: its floor is above... no, water's floor is 5
    )
    data["pumps"][4]["syringe_volume_ul"] = 50000
    data["pumps"][3]["syringe_diameter_mm"] = 32.57  # 50 mL seed: cannot go down to 0.25 uL/min
    data["pumps"][3]["syringe_volume_ul"] = 50000
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(protocol, RigConfig.model_validate(data))
    problems = {p.field: p.message for p in info.value.problems}
    assert set(problems) == {"pumps[0].syringe_diameter_mm", "pumps[3].syringe_diameter_mm"}
    assert "1600 uL/min of AgNO3" in problems["pumps[0].syringe_diameter_mm"]
    # what to change, by how much: 80 % of 2000 uL/min against the 1 mL syringe's 1062
    assert ("use a wider syringe or lower Q_total's hard upper limit to <= 1327 uL/min or Q_AgNO3's to <= 53.1 %"
            in problems["pumps[0].syringe_diameter_mm"])
    assert "0.25 uL/min of seed" in problems["pumps[3].syringe_diameter_mm"]
    # a 50 mL syringe cannot go down to 0.5 % of 50 uL/min: at least 0.565 uL/min on an NE-1000
    assert ("raise Q_seed's hard lower limit to >= 1.13 % or Q_total's to >= 113 uL/min"
            in problems["pumps[3].syringe_diameter_mm"])
    assert "check the units" not in problems["pumps[3].syringe_diameter_mm"]  # a syringe to change, not a slip


def test_a_syringe_smaller_than_one_condition_is_refused_at_load(protocol: ExperimentProtocol, real_data: dict) -> None:
    """20 spectra of 3 x 1 s scans and the equilibration (10 + 5 s, two sweeps of the 70 uL dead volume):
    at the bounds' highest total (1000 uL/min) and lowest shares (4 + 10 + 4 + 4 %), water runs at
    780 uL/min for 75 s (975 uL) and sweeps 0.78 x 140 uL (109 uL): 1084 uL, more than a 1 mL syringe."""
    data = copy.deepcopy(real_data)
    data["spectrometer"].update(integration_time_us=1_000_000, scans_to_average=3)
    data["pumps"][4].update(syringe_diameter_mm=8.59, syringe_volume_ul=1000)
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(protocol, RigConfig.model_validate(data))
    (problem,) = info.value.problems
    assert problem.field == "pumps[4].syringe_volume_ul"
    assert "1000 uL syringe holds less than one condition" in problem.message
    assert "(1084 uL:" in problem.message and "use a larger syringe" in problem.message
    data["pumps"][4]["syringe_volume_ul"] = 1100  # fits: nothing to say
    check_protocol_against_rig(protocol, RigConfig.model_validate(data))


def test_a_grid_beyond_the_simulated_spectrometer_is_refused_at_load(
    reference_protocol_data: dict, sim_data: dict, tmp_path: Path
) -> None:
    """It passed, then faulted at calibration blaming the lamp ("as dark as the dark spectrum at ...,
    851-1100 nm") and waited for an operator."""
    data = copy.deepcopy(reference_protocol_data)
    data["grid"] = {"start_nm": 380, "stop_nm": 1000, "step_nm": 1}
    target = tmp_path / "wide.csv"
    target.write_text("".join(f"{w},{np.exp(-((w - 600) / 80) ** 2):.5f}\n" for w in range(150, 1101)))
    data["target"]["file"] = str(target)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(load_protocol(tmp_path / "p.yaml"), RigConfig.model_validate(sim_data))
    (problem,) = info.value.problems
    assert problem.field == "spectrometer"
    assert "reads 207.1-850.9 nm" in problem.message and "on 380-1000 nm" in problem.message
    # its first pixels are optically masked (electric dark): a grid from 200 nm faulted on "the lamp"
    data["grid"] = {"start_nm": 200, "stop_nm": 800, "step_nm": 1}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="(?s)reads 207.1-850.9 nm.*on 200-800 nm"):
        check_protocol_against_rig(load_protocol(tmp_path / "p.yaml"), RigConfig.model_validate(sim_data))
    # and a real rig's dry-run twin, whose spectrometer is the simulated one: refused before it is stored
    from orchestrator.campaign import check_campaign

    rig = RIGS / "example_newera.yaml"
    check_protocol_against_rig(load_protocol(tmp_path / "p.yaml"), load_rig(rig))  # a real unit: at connect
    with pytest.raises(ConfigError, match=r"(?s)dry run of rig .*reads 207.1-850.9 nm"):
        check_campaign(tmp_path / "p.yaml", rig, options={"dry_run": True})
    data["grid"] = {"start_nm": 210, "stop_nm": 850, "step_nm": 1}  # within: fine
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    check_campaign(tmp_path / "p.yaml", rig, options={"dry_run": True})


def test_the_largest_condition_is_the_bounds_corner(protocol: ExperimentProtocol) -> None:
    """largest_condition_ul agrees with condition_ul at the corner it names, and no random condition
    inside the bounds draws more of any stream."""
    corner = {"Q_AgNO3": 4.0, "Q_PVA": 10.0, "Q_TSC": 4.0, "Q_seed": 4.0, "Q_total": 1000.0}
    assert all(protocol.variables[k].bounds[int(k == "Q_total")] == v for k, v in corner.items())
    largest = protocol.largest_condition_ul(70.0, 0.5)
    assert protocol.condition_ul(corner, 70.0, 0.5)["water"] == pytest.approx(largest["water"])
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = {k: rng.uniform(*v.bounds) for k, v in protocol.variables.items()}
        if protocol.check_inputs(x):
            continue
        need = protocol.condition_ul(x, 70.0, 0.5)
        assert all(need[s] <= largest[s] + 1e-9 for s in need)


def test_the_remainder_streams_fix_is_the_other_shares(protocol: ExperimentProtocol, real_data: dict) -> None:
    """Water gets what the shares leave (98 % of 2000 uL/min at their hard lower limits): it has no share
    of its own to lower."""
    data = copy.deepcopy(real_data)
    data["pumps"][4].update(syringe_diameter_mm=4.61, syringe_volume_ul=1000)  # at most 1062 uL/min
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(protocol, RigConfig.model_validate(data))
    (message,) = [p.message for p in info.value.problems if p.field == "pumps[4].syringe_diameter_mm"]
    assert ("lower Q_total's hard upper limit to <= 1083 uL/min, or raise the hard lower limits of the other "
            "shares (to sum to >= 46.9 %)") in message


def test_a_unit_slip_is_named_as_one(real_data: dict, reference_protocol_data: dict, tmp_path: Path) -> None:
    """Shares written as fractions (0.05-0.2 for 5-20 %): a rate far below any pump's range."""
    data = copy.deepcopy(reference_protocol_data)
    data["target"]["file"] = str(ROOT / "protocols" / "targets" / "ag_nanoprism.csv")
    for v in data["variables"].values():
        if v["kind"] == "percent":
            v["bounds"] = [b / 100 for b in v["bounds"]]
            v["hard_limits"] = [b / 100 for b in v["hard_limits"]]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        check_protocol_against_rig(load_protocol(tmp_path / "p.yaml"), RigConfig.model_validate(real_data))
    assert any("check the units; a percent variable is % of the total flow" in p.message for p in info.value.problems)


def test_rate_limits_scale_with_the_barrel_area() -> None:
    # New Era's specification points: 0.73 uL/hr with a 4.78 mm syringe, 2120 mL/hr with 26.59 mm
    low, _ = pump_rate_limits_ul_min("newera", 4.78)
    _, high = pump_rate_limits_ul_min("newera", 26.59)
    assert low == pytest.approx(0.73 / 60, rel=1e-3) and high == pytest.approx(2120e3 / 60, rel=1e-3)
    low2, high2 = pump_rate_limits_ul_min("harvard", 2 * 14.57)
    low1, high1 = pump_rate_limits_ul_min("harvard", 14.57)
    assert low2 / low1 == pytest.approx(4) and high2 / high1 == pytest.approx(4)


# -- building rigs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chemistry", "expected"),
    [
        ("no_such_module:Model", "cannot import module 'no_such_module'"),
        ("no_such_module:Model", "sdl looks in the current folder"),
        ("simulators.chemistry:NoSuchModel", "module 'simulators.chemistry' ("),
        ("simulators.chemistry:NoSuchModel", "chemistry.py) has no 'NoSuchModel'"),
        ("test:MyModel", "another module of the same name comes first: rename yours"),  # the stdlib's test
        ("simulators.chemistry", "is not module:Class"),
        ("simulators/chemistry.py:TwoBand", "name the module with dots and without .py: simulators.chemistry:TwoBand"),
        ("simulators.spectrometer:PIXELS", "is not a class (it is int 2048)"),
        ("collections:OrderedDict", "has no droplet(inputs, wavelengths, rng) method"),
    ],
)
def test_bad_chemistry_is_named(protocol: ExperimentProtocol, chemistry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_rig(load_rig(SIMULATED), protocol, chemistry=chemistry)
    assert expected in str(info.value)
    assert chemistry in str(info.value) or "module:Class" in str(info.value)


def test_chemistry_override_needs_a_simulated_rig(protocol: ExperimentProtocol) -> None:
    with pytest.raises(ConfigError, match="needs a simulated rig"):
        build_rig(
            load_rig(RIGS / "example_newera.yaml"), protocol, chemistry="simulators.chemistry:AgNanoprism"
        )


# -- the live simulated rig ---------------------------------------------------------------------------

BEST = {"Q_AgNO3": 32.5, "Q_PVA": 16.0, "Q_TSC": 6.5, "Q_seed": 4.5, "Q_total": 850.0}


@pytest.fixture
def sim_rig(protocol: ExperimentProtocol):
    rig = build_rig(load_rig(SIMULATED), protocol)
    rig.connect()
    yield rig
    rig.safe_state()
    rig.close()


def _start(rig, protocol: ExperimentProtocol, inputs: dict[str, float]) -> None:
    for stream, rate in protocol.stream_rates_ul_min(inputs).items():
        rig.pump_for_stream[stream].set_rate_ul_min(rate)
    for stream in protocol.streams:
        rig.pump_for_stream[stream].run()


def _absorbance(rig, protocol: ExperimentProtocol, dark, reference) -> np.ndarray:
    spec = rig.spectrometer
    sample = spec.acquire_counts()
    screening = Screening(saturation_counts=spec.saturation_counts)
    return absorbance_on_grid(
        sample, dark, reference, spec.wavelengths_nm(), protocol.wavelengths(), screening
    )


def test_simulated_rig_is_wired_to_one_fresh_world(sim_rig, protocol: ExperimentProtocol) -> None:
    assert sim_rig.is_simulated and isinstance(sim_rig.clock, VirtualClock)
    assert sim_rig.world is get_world(sim_rig.world_name) and sim_rig.world_name == "simulated"
    assert sim_rig.world.clock is sim_rig.clock
    assert sim_rig.dead_volume_ul == 70
    assert set(sim_rig.pump_for_stream) == set(protocol.streams)
    assert isinstance(sim_rig.world.chemistry, AgNanoprism)
    for name, pump in sim_rig.pumps.items():
        status = pump.status()  # every pump answers on its emulated line
        assert status.state == PumpState.STOPPED and status.alarm is None, name
    assert sim_rig.pumps["water"].syringe_diameter_mm == pytest.approx(23.03)
    again = build_rig(load_rig(SIMULATED), protocol)
    assert again.world is not sim_rig.world and again.world is get_world("simulated")


def test_spectrometer_sees_the_chemistry_once_the_dead_volume_is_swept(
    sim_rig, protocol: ExperimentProtocol
) -> None:
    spec = sim_rig.spectrometer
    spec.set_lamp_enabled(False)
    dark = spec.acquire_counts()
    spec.set_lamp_enabled(True)
    reference = spec.acquire_counts()  # nothing has flowed: carrier only
    _start(sim_rig, protocol, BEST)
    # 70 uL at 850 uL/min takes 4.9 s to reach the detector: halfway there, still carrier
    sim_rig.clock.sleep(0.5 * 70 / 850 * 60)
    assert sim_rig.world.detector_inputs() is None
    assert np.nanmax(np.abs(_absorbance(sim_rig, protocol, dark, reference))) < 0.02
    sim_rig.clock.sleep(protocol.equilibration_s(sim_rig.dead_volume_ul, BEST))
    at_detector = sim_rig.world.detector_inputs()
    assert at_detector == pytest.approx(BEST, rel=2e-3)  # the pumps' 4-5 digit rate resolution
    sim_rig.seed_replicate(np.random.SeedSequence([1, 0, 0, 0]))
    absorbance = _absorbance(sim_rig, protocol, dark, reference)
    expected = sim_rig.world.chemistry.spectrum(at_detector, protocol.wavelengths())
    assert np.corrcoef(absorbance, expected)[0, 1] > 0.95
    assert abs(np.argmax(absorbance) - np.argmax(expected)) <= 10  # peak within 10 nm
    assert protocol.loss()(absorbance) < 0.5  # the paper's best condition looks like a nanoprism


def test_seeded_replicates_repeat(sim_rig, protocol: ExperimentProtocol) -> None:
    _start(sim_rig, protocol, BEST)
    sim_rig.clock.sleep(60)
    spectra = []
    for _ in range(2):
        sim_rig.seed_replicate(np.random.SeedSequence([7, 1, 2, 3]))
        spectra.append(sim_rig.spectrometer.acquire_counts())
    np.testing.assert_array_equal(spectra[0], spectra[1])
    sim_rig.seed_replicate(np.random.SeedSequence([7, 1, 2, 4]))
    assert not np.array_equal(sim_rig.spectrometer.acquire_counts(), spectra[0])


def test_safe_state_stops_every_pump(sim_rig, protocol: ExperimentProtocol) -> None:
    _start(sim_rig, protocol, BEST)
    sim_rig.clock.sleep(60)
    assert all(p.status().running for p in sim_rig.pumps.values())
    assert sim_rig.safe_state() == []
    assert not any(p.status().running for p in sim_rig.pumps.values())
    assert sim_rig.world.detector_flows() != {}  # stopped flow leaves the last droplet in the cell


def test_faults_from_the_rig_file_reach_the_firmware(
    tmp_path: Path, sim_data: dict, protocol: ExperimentProtocol
) -> None:
    data = copy.deepcopy(sim_data)
    seed = next(p for p in data["pumps"] if p["name"] == "seed")
    seed["faults"] = [{"kind": "stall", "at_s": 30}]
    rig = build_rig(load_rig(write_rig(tmp_path, data)), protocol)
    rig.connect()
    try:
        _start(rig, protocol, BEST)
        rig.clock.sleep(20)
        assert rig.pumps["seed"].status().running
        rig.clock.sleep(20)
        status = rig.pumps["seed"].status()  # the Harvard driver reports a stall in the status
        assert status.alarm == "stall" and not status.running
        assert rig.world._rates["seed"] == 0.0  # the world saw the seed stream stop
        assert rig.pumps["TSC"].status().running  # the other pumps on that line carry on
    finally:
        rig.safe_state()
        rig.close()


def test_connection_failures_are_collected(
    tmp_path: Path, sim_data: dict, protocol: ExperimentProtocol
) -> None:
    data = copy.deepcopy(sim_data)
    data["pumps"][0]["faults"] = [{"kind": "disconnect"}]
    data["spectrometer"]["faults"] = [{"kind": "disconnect"}]
    rig = build_rig(load_rig(write_rig(tmp_path, data)), protocol)
    with pytest.raises(RigConnectionError) as info:
        rig.connect()
    # an unplugged adapter takes the whole New Era line; the Harvard line connects
    assert [p.field for p in info.value.problems] == ["pump AgNO3", "pump PVA", "spectrometer"]
    assert "3 device(s) failed to connect" in str(info.value)
    assert "pump AgNO3: " in str(info.value) and "Check that the port" in str(info.value)


def test_chemistry_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: ExperimentProtocol
) -> None:
    (tmp_path / "flat_chemistry.py").write_text(
        "import numpy as np\n"
        "class Flat:\n"
        "    def droplet(self, inputs, wavelengths, rng):\n"
        "        return np.full(len(wavelengths), 0.3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rig = build_rig(load_rig(SIMULATED), protocol, chemistry="flat_chemistry:Flat", world_name="override")
    assert type(rig.world.chemistry).__name__ == "Flat"
    assert get_world("override") is rig.world


def test_real_rig_has_a_wall_clock_and_no_world(protocol: ExperimentProtocol) -> None:
    rig = build_rig(load_rig(RIGS / "example_harvard.yaml"), protocol)
    assert not rig.is_simulated and rig.world is None and isinstance(rig.clock, WallClock)
    rig.seed_replicate(np.random.SeedSequence(1))  # a no-op on real rigs
    assert sorted(rig.pump_for_stream) == sorted(protocol.streams)
    assert rig.safe_state() != []  # nothing is connected: every device reports, none raises


def test_build_refuses_a_rig_that_cannot_run_the_protocol(
    real_data: dict, protocol: ExperimentProtocol
) -> None:
    data = copy.deepcopy(real_data)
    data["pumps"] = data["pumps"][:2]
    with pytest.raises(ConfigError, match="no pump carries stream 'TSC'"):
        build_rig(RigConfig.model_validate(data), protocol)


def test_chemistry_that_cannot_take_the_protocols_inputs(
    tmp_path: Path, reference_protocol_data: dict, protocol: ExperimentProtocol
) -> None:
    data = copy.deepcopy(reference_protocol_data)
    data["variables"]["Q_silver"] = data["variables"].pop("Q_AgNO3")
    data["target"]["file"] = str(ROOT / "protocols" / "targets" / "ag_nanoprism.csv")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    renamed = load_protocol(tmp_path / "p.yaml")
    with pytest.raises(ConfigError) as info:
        build_rig(load_rig(SIMULATED), renamed)
    message = str(info.value)
    assert "chemistry model simulators.chemistry:AgNanoprism raised" in message
    assert "lower bounds of protocol ag_nanoprism" in message
    assert "Q_silver" in message


def test_simulated_tubing_may_differ_from_the_planning_dead_volume(
    tmp_path: Path, sim_data: dict, protocol: ExperimentProtocol
) -> None:
    data = copy.deepcopy(sim_data)
    data["simulation"]["dead_volume_ul"] = 140  # the tubing is longer than the rig file says
    rig = build_rig(load_rig(write_rig(tmp_path, data)), protocol)
    assert rig.dead_volume_ul == 70 and rig.world.dead_volume_ul == 140


def test_dry_run_twin_keeps_chains_syringes_and_watchdogs_and_gives_each_port_its_own_line() -> None:
    data = yaml.safe_load((RIGS / "example_newera.yaml").read_text())
    data["pumps"][4] = {"name": "water", "driver": "harvard", "port": "/dev/ttyUSB7", "address": 4,
                        "syringe_diameter_mm": 23.03, "syringe_volume_ul": 25000}
    data["pumps"][0]["safe_mode_timeout_s"] = 9
    real = RigConfig.model_validate(data)
    twin = dry_run_twin(real)
    assert twin.is_simulated and twin.name == "rig-a-dry-run"
    assert [p.port for p in twin.pumps] == ["sim://newera/rig-a-dry-run-0"] * 4 + ["sim://harvard/rig-a-dry-run-1"]
    assert [(p.address, p.baudrate, p.watchdog_s, p.syringe_volume_ul) for p in twin.pumps] == [
        (p.address, p.baudrate, p.watchdog_s, p.syringe_volume_ul) for p in real.pumps
    ]
    assert twin.spectrometer.integration_time_us == real.spectrometer.integration_time_us
    assert twin.spectrometer.scans_to_average == 3 and twin.dead_volume_ul == 70
    assert twin.simulation.chemistry.model == "simulators.chemistry:AgNanoprism"
    simulated = load_rig(SIMULATED)
    assert dry_run_twin(simulated) is simulated
    # a name too long for the suffix is shortened with a digest of the whole name: two never meet
    twins = {dry_run_twin(RigConfig.model_validate({**data, "name": "bench-" + "r" * 52 + end})).name
             for end in ("-01", "-02")}
    assert len(twins) == 2 and all(len(t) == 64 and t.endswith("-dry-run") for t in twins)


def test_a_simulated_line_gives_each_pump_its_own_syringe_and_the_lamp_suits_the_integration_time(
    tmp_path: Path,
) -> None:
    from simulators.serialsim import get_bus

    data = yaml.safe_load(SIMULATED.read_text())
    data["name"] = "mixed-syringes"
    for pump in data["pumps"]:
        pump["port"] = pump["port"].replace("-line", "-mixed")
    del data["pumps"][3]["syringe_volume_ul"]  # seed, on the Harvard line: the emulator's default
    data["pumps"][2]["syringe_volume_ul"] = 5000  # TSC, same line
    data["spectrometer"]["integration_time_us"] = 50_000  # a dim lamp's setting: must not saturate
    cfg = RigConfig.model_validate(data)
    protocol = load_protocol(ROOT / "protocols" / "ag_nanoprism.yaml")
    with build_rig(cfg, protocol) as rig:
        line = get_bus("harvard", "harvard-mixed")
        assert [line.snapshot(a).content_ul for a in (0, 1, 2)] == [5000.0, 50_000.0, 25_000.0]
        spec = rig.spectrometer
        spec.set_integration_time_us(50_000)
        reference = spec.acquire_counts()  # water in the cell: the lamp alone
        assert 0.4 * spec.saturation_counts < reference.max() < 0.85 * spec.saturation_counts


def test_a_device_that_does_not_connect_is_named_once(tmp_path: Path) -> None:
    data = yaml.safe_load(SIMULATED.read_text())
    data["pumps"][1]["faults"] = [{"kind": "no_reply", "at_s": 0}]  # PVA, New Era address 1: silent
    rig = build_rig(load_rig(write_rig(tmp_path, data)))
    with pytest.raises(RigConnectionError) as info:
        rig.connect()
    (problem,) = info.value.problems
    assert str(problem).startswith("pump PVA: no New Era pump answered at address 1")  # not "PVA: PVA: ..."
