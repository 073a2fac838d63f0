"""Protocol files: the reference protocol, every kind of bad file, and the way from inputs to pump rates."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.config_errors import ConfigError
from orchestrator.protocol import ExperimentProtocol, InfeasibleInputs, load_protocol, protocol_from_dict
from orchestrator.spectra import TargetFileError, read_target_csv

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "protocols" / "ag_nanoprism.yaml"
BEST_DNN8 = {"Q_AgNO3": 32.5, "Q_PVA": 16.0, "Q_TSC": 6.5, "Q_seed": 4.5, "Q_total": 850.0}


@pytest.fixture(scope="module")
def reference() -> ExperimentProtocol:
    return load_protocol(REFERENCE)


@pytest.fixture
def reference_data() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE.read_text())


def write_protocol(tmp_path: Path, data: dict[str, Any], target: Path | None = None) -> Path:
    """A protocol file in tmp_path, with the reference target copied next to it."""
    (tmp_path / "targets").mkdir(exist_ok=True)
    shutil.copy(
        target or ROOT / "protocols" / "targets" / "ag_nanoprism.csv",
        tmp_path / "targets" / "ag_nanoprism.csv",
    )
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_protocol(path)
    return info.value


# -- the reference protocol --------------------------------------------------------------------------


def test_reference_protocol_is_the_papers_first_run(reference: ExperimentProtocol) -> None:
    space = reference.space()
    assert space.names == ["Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total"]
    assert space.bounds == {
        "Q_AgNO3": (4, 20),
        "Q_PVA": (10, 40),
        "Q_TSC": (4, 20),
        "Q_seed": (4, 20),
        "Q_total": (200, 1000),
    }
    assert space.percent_sum_max == 90
    assert [v.kind for v in space.variables] == ["percent"] * 4 + ["total"]
    assert reference.batch_size == 15 and reference.replicates.n == 20
    assert reference.stop.max_rounds == 9
    assert reference.optimizer.strategy == "default"
    assert reference.streams == ["AgNO3", "PVA", "TSC", "seed", "water"]


def test_reference_target_on_the_grid(reference: ExperimentProtocol) -> None:
    wl = reference.wavelengths()
    assert len(wl) == 421 and wl[0] == 380 and wl[-1] == 800
    target = reference.target_spectrum()
    assert target.shape == (421,)
    assert wl[np.argmax(target)] == 642  # the README: peak at 642 nm on the 1 nm grid
    loss = reference.loss()
    assert loss(target) == pytest.approx(0.0, abs=1e-12)  # the target (peak 1.2) scores perfectly
    # same shape, too weak: delta = max(A) / a_low
    assert loss(target * 0.35) == pytest.approx(1 - 0.35 * target.max() / 0.7)


def test_the_papers_conditions_fit_the_hard_limits(reference: ExperimentProtocol) -> None:
    """The ranges every condition of the paper's data spans (shared/data/agbonn/README.md: inputs
    across all 164 conditions, and their percent sums 32.9-89.2 %) lie inside the hard limits."""
    paper_ranges = {
        "Q_AgNO3": (4.53, 42.81),
        "Q_PVA": (10.0, 40.0),
        "Q_TSC": (0.5, 30.5),
        "Q_seed": (0.5, 19.5),
        "Q_total": (200.0, 983.0),
    }
    for name, (low, high) in paper_ranges.items():
        hard_low, hard_high = reference.variables[name].hard_limits
        assert hard_low <= low and high <= hard_high, name
    assert 89.2 <= reference.percent_sum_max
    # and the paper's best condition runs as it is
    assert reference.check_inputs(BEST_DNN8) == []


def test_stream_rates_of_the_best_condition(reference: ExperimentProtocol) -> None:
    rates = reference.stream_rates_ul_min(BEST_DNN8)
    assert rates == pytest.approx(
        {"AgNO3": 276.25, "PVA": 136.0, "TSC": 55.25, "seed": 38.25, "water": 344.25}
    )
    assert sum(rates.values()) == pytest.approx(850.0)


def test_stream_rates_on_the_sum_limit_leave_the_remainder(reference: ExperimentProtocol) -> None:
    inputs = {"Q_AgNO3": 30.0, "Q_PVA": 30.0, "Q_TSC": 20.0, "Q_seed": 10.0, "Q_total": 1000.0}
    assert reference.stream_rates_ul_min(inputs)["water"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"Q_AgNO3": 85.0}, "Q_AgNO3=85 % is outside the hard limits [0.5, 80]"),
        ({"Q_AgNO3": 0.1}, "Q_AgNO3=0.1 % is outside the hard limits [0.5, 80]"),
        ({"Q_total": 2500.0}, "Q_total=2500 uL/min is outside the hard limits [50, 2000]"),
        ({"Q_AgNO3": 40.0, "Q_PVA": 40.0}, "add up to 91 % > percent_sum_max 90 %"),
        ({"Q_seed": math.nan}, "Q_seed=nan is not finite"),
        ({"Q_seed": "lots"}, "Q_seed='lots' is not a number"),
        ({"Q_water": 3.0}, "unknown inputs ['Q_water']"),
    ],
)
def test_infeasible_inputs_never_become_rates(
    reference: ExperimentProtocol, change: dict, expected: str
) -> None:
    inputs = {**BEST_DNN8, **change}
    with pytest.raises(InfeasibleInputs) as info:
        reference.stream_rates_ul_min(inputs)
    assert expected in str(info.value)


def test_every_problem_with_inputs_is_listed(reference: ExperimentProtocol) -> None:
    inputs = dict(BEST_DNN8, Q_AgNO3=95.0, Q_total=10.0)
    del inputs["Q_seed"]
    with pytest.raises(InfeasibleInputs) as info:
        reference.stream_rates_ul_min(inputs)
    assert len(info.value.problems) == 3
    assert "missing inputs ['Q_seed']" in info.value.problems


def test_rate_ranges_within_hard_limits(reference: ExperimentProtocol) -> None:
    ranges = reference.rate_ranges_ul_min()
    assert ranges["AgNO3"] == pytest.approx((0.25, 1600.0))  # 0.5 % of 50 .. 80 % of 2000 uL/min
    assert ranges["water"] == pytest.approx((5.0, 1960.0))  # (100 - 90) % of 50 .. (100 - 4 * 0.5) % of 2000


def test_equilibration_sweeps_the_dead_volume(reference: ExperimentProtocol) -> None:
    # 10 s settling + 2 x (70 uL at 420 uL/min = 10 s) + 5 s margin
    assert reference.equilibration_s(70.0, dict(BEST_DNN8, Q_total=420.0)) == pytest.approx(35.0)


# -- bad files: each error names the file, the field and what is allowed ------------------------------


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()

BAD_FIELDS = [
    ("variables.Q_AgNO3.kind", "fraction", "variables.Q_AgNO3.kind", "'percent' or 'total'"),
    ("variables.Q_AgNO3.bounds", [4, 90], "variables.Q_AgNO3.bounds", "inside hard_limits [0.5, 80] %"),
    ("variables.Q_AgNO3.bounds", [20, 4], "variables.Q_AgNO3.bounds", "low < high"),
    ("variables.Q_AgNO3.hard_limits", [-1, 80], "variables.Q_AgNO3.hard_limits", "[0, 100]"),
    ("variables.Q_total.hard_limits", [0, 2000], "variables.Q_total.hard_limits", "above 0 uL/min"),
    ("variables.Q_AgNO3.stream", _DELETE, "variables.Q_AgNO3.stream", "must name the stream"),
    ("variables.Q_AgNO3.stream", "PVA", "variables.Q_PVA.stream", "'PVA' is already set by Q_AgNO3"),
    ("variables.Q_seed.stream", "water", "variables.Q_seed.stream", "remainder_stream"),
    (
        "variables.Q_AgNO3.sped",
        3,
        "variables.Q_AgNO3.sped",
        "allowed here: kind, stream, bounds, hard_limits, log",
    ),
    ("variables.Q_total", _DELETE, "variables", "exactly one variable of kind 'total'"),
    ("variables.Q_PVA.bounds", [79, 80], "variables", "lower bounds add up to 91 % > percent_sum_max"),
    ("variables.Q_AgNO3.bounds", ["4%", 20], "variables.Q_AgNO3.bounds[0]", "valid number"),
    ("percent_sum_max", 120, "percent_sum_max", "less than or equal to 100"),
    ("replicates.n", 0, "replicates.n", "greater than or equal to 1"),
    ("replicates.n", 101, "replicates.n", "less than or equal to 100"),
    ("replicates.min_accepted", 30, "replicates.min_accepted", "at most n (20)"),
    ("replicates.saturation", 0.9, "replicates.saturation", "allowed here: n, min_accepted"),
    ("target.a_high", 0.5, "target.a_high", "must exceed a_low"),
    ("target.file", "targets/none.csv", "target.file", "cannot read the target spectrum"),
    ("grid.stop_nm", 900, "target.file", "extend the target or narrow the grid"),
    ("grid.step_nm", 0.9, "grid.step_nm", "does not divide"),
    ("stop", {"loss_threshold": 0.1}, "stop", "at least one of max_rounds"),
    ("stop.max_round", 9, "stop.max_round", "allowed here: loss_threshold, max_rounds"),
    ("name", "ag nanoprism", "name", "'ag nanoprism' is not a name this file accepts: letters, digits, '_' only"),
    ("variables.Q_total.hard_limits", "50-2000", "variables.Q_total.hard_limits",
     "give a list of numbers such as [30, 1500], not the text '50-2000'"),
    ("batch_size", "fifteen", "batch_size", "valid integer"),
    ("optimizer.widening.step_fraction", 2, "optimizer.widening.step_fraction", "less than or equal to 1"),
    ("optimizer.widening.step_growth", 0.5, "optimizer.widening.step_growth", "greater than or equal to 1"),
    ("optimizer.widening.stalled_edge_rounds", -1, "optimizer.widening.stalled_edge_rounds",
     "greater than or equal to 0"),
    ("stop.loss_threshold", 1.5, "stop.loss_threshold", "less than or equal to 1"),
    ("colour", "red", "colour", "allowed here: name, description, variables"),
]


@pytest.mark.parametrize(
    ("where", "value", "field", "allowed"), BAD_FIELDS, ids=[f"{b[0]}={b[1]!r}" for b in BAD_FIELDS]
)
def test_bad_protocol_names_file_field_and_what_is_allowed(
    tmp_path: Path, reference_data: dict, where: str, value: Any, field: str, allowed: str
) -> None:
    data = copy.deepcopy(reference_data)
    _set(data, where, value)
    path = write_protocol(tmp_path, data)
    error = load_error(path)
    message = str(error)
    assert message.startswith(str(path))
    assert any(p.field == field and allowed in p.message for p in error.problems), message
    assert f"  - {field}: " in message


def test_all_problems_come_back_at_once(tmp_path: Path, reference_data: dict) -> None:
    data = copy.deepcopy(reference_data)
    data["replicates"]["n"] = 0
    data["target"]["a_low"] = "low"
    data["stop"]["max_rounds"] = 0
    data["variables"]["Q_PVA"]["kind"] = "percentage"
    error = load_error(write_protocol(tmp_path, data))
    assert {p.field for p in error.problems} == {
        "replicates.n",
        "target.a_low",
        "stop.max_rounds",
        "variables.Q_PVA.kind",
    }
    assert "4 problems" in str(error)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nvariables: {Q: [1, 2}\n")
    error = load_error(path)
    assert str(path) in str(error) and "line 2" in str(error)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nbatch_size: 15\nbatch_size: 5\n")
    error = load_error(path)
    assert "duplicate key 'batch_size' (first on line 2)" in str(error)


@pytest.mark.parametrize(("text", "expected"), [("", "empty"), ("- a\n- b\n", "must be a mapping")])
def test_empty_or_list_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert expected in str(load_error(path))


def test_missing_file(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nope.yaml")
    assert "nope.yaml: 1 problem" in str(error) and "protocol file not found" in str(error)


# -- paths, overrides, defaults ------------------------------------------------------------------------


def test_target_is_found_relative_to_the_protocol_file(
    tmp_path: Path, reference_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    path = write_protocol(protocols, reference_data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    protocol = load_protocol(path)
    assert protocol.target_path == path.parent / "targets" / "ag_nanoprism.csv"
    assert protocol.target_spectrum().shape == (421,)


def test_target_override(tmp_path: Path, reference: ExperimentProtocol) -> None:
    other = tmp_path / "blue.csv"
    other.write_text("wavelength_nm,absorbance\n300,0.1\n450,1.0\n900,0.1\n")
    target = reference.target_spectrum(override_csv=other)
    assert reference.wavelengths()[np.argmax(target)] == 450
    assert reference.loss(override_csv=other)(target) == pytest.approx(0.0, abs=1e-12)
    short = tmp_path / "short.csv"
    short.write_text("wavelength_nm,absorbance\n400,0.1\n600,1.0\n")
    with pytest.raises(TargetFileError, match="short.csv.*extend the target"):
        reference.target_spectrum(override_csv=short)


# the same three points as spectrometer software and spreadsheets write them
TARGET_LAYOUTS = {
    "comma": "wavelength_nm,absorbance\n300,0.1\n450,1.0\n900,0.1\n",
    "semicolon, decimal comma": "Wellenl\u00e4nge (nm);Extinktion\n300;0,1\n450;1,0\n900;0,1\n",
    "tab, extra column": "nm\tA\tsd\n300\t0.1\t0.01\n450\t1.0\t0.01\n900\t0.1\t0.01\n",
    "spaces, no header": "  300   0.1\n450 1.0\n  900 0.1  \n",
    "spaces, decimal comma": "Wellenl\u00e4nge Extinktion\n300,0 0,1\n450 1,0\n900,0   0,1\n",
    "comma and space": "nm, A\n300, 0.1\n450 ,1.0\n900,0.1\n",
    "comma and space, decimal comma": "nm, A\n300, 0,1\n450, 1,0\n900,0, 0,1\n",
    "OceanView export": (
        "Data from abs.txt Node\nDate: Sat Nov 28 10:00:00 CET 2026\nIntegration Time (sec): 1.000000E-1\n"
        "Number of Pixels in Spectrum: 3\n>>>>>Begin Spectral Data<<<<<\n300.0\t0.1\n450.0\t1.0\n900.0\t0.1\n"
        ">>>>>End Spectral Data<<<<<\nExported by OceanView\n"
    ),
    "BOM, CRLF, quotes": "\ufeff\"wavelength\",\"absorbance\"\r\n\"300\",\"0.1\"\r\n450,1.0\r\n900,0.1\r\n",
    # LibreOffice in a German locale with a comma separator: a quoted comma is a decimal comma
    "quoted, comma, decimal comma": "\"Wellenl\u00e4nge\",\"Extinktion\"\n\"300\",\"0,1\"\n\"450\",\"1,0\"\n\"900\",\"0,1\"\n",
    "quoted where needed, comma, decimal comma": "nm,A\n300,\"0,1\"\n450,\"1,0\"\n900,\"0,1\"\n",
    "quoted, comma, decimal comma wavelengths": "\"300,0\",\"0,1\"\n\"450,0\",\"1,0\"\n\"900,0\",\"0,1\"\n",
    "comma, extra column": "nm,A,sd\n300,0.1,0.01\n450,1.0,0.01\n900,0.1,0.01\n",
    "comma, extra column, no header": "300,0.1,0.01\n450,1,0\n900,0.1,0.01\n",
}


@pytest.mark.parametrize("layout", sorted(TARGET_LAYOUTS))
def test_target_file_layouts(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(TARGET_LAYOUTS[layout], encoding="utf-8")
    wl, a = read_target_csv(path)
    np.testing.assert_array_equal(wl, [300, 450, 900])
    np.testing.assert_array_equal(a, [0.1, 1.0, 0.1])


@pytest.mark.parametrize("head", ["Wavelength (nm);Absorbance (AU)", "nm;Extinktion", "Wavelength;Abs (T=25 C)",
                                  "lambda (nm);A", "Wellenl\u00e4nge;Absorption"])
def test_absorbance_headers_are_not_taken_for_transmittance(tmp_path: Path, head: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"Probe: reflection probe R600\n{head}\n300;0.1\n450;1.0\n")  # metadata may say anything
    np.testing.assert_array_equal(read_target_csv(path)[1], [0.1, 1.0])


@pytest.mark.parametrize("head", [
    "Wavelength (nm),epsilon (M-1 cm-1)", "Wavelength (nm),Absorption coefficient (cm^-1)", "wavelength_nm,alpha_1/cm",
    "Wavelength (nm)\tPixel", "Spectrometer: FLMS01234\nNumber of Pixels in Spectrum: 2048",
])
def test_other_columns_may_name_any_unit(tmp_path: Path, head: str) -> None:
    """An extinction-coefficient spectrum (cm^-1 in its second column) or a metadata line naming pixels
    was refused as a wavenumber or pixel axis: only the first column's name says what the x axis is."""
    path = tmp_path / "t.csv"
    sep = "\t" if "\t" in head else ","
    path.write_text(head + "\n" + "".join(f"{w}{sep}{0.5 + 0.001 * (w - 380)}\n" for w in range(380, 801)))
    wl, _ = read_target_csv(path)
    assert (wl[0], wl[-1], len(wl)) == (380, 800, 421)


def test_nan_absorbance_beyond_the_ends_is_dropped_but_not_inside(tmp_path: Path) -> None:
    """An absorbance export's dark UV pixels read NaN or inf: no data there, so those rows go (the grid
    check still says if the grid needs them); a NaN between two readings is a gap, refused."""
    path = tmp_path / "t.txt"
    path.write_text("Wavelength (nm)\tAbsorbance\n198.5\tNaN\n199.0\t-Infinity\n300\t0.1\n450\t1.0\n600\t0.2\n901\tnan\n")
    wl, a = read_target_csv(path)
    np.testing.assert_array_equal(wl, [300, 450, 600])
    np.testing.assert_array_equal(a, [0.1, 1.0, 0.2])
    path.write_text("300,0.1\n450,nan\n600,0.2\n")
    with pytest.raises(TargetFileError, match=r"NaN or infinite values \(1 row, the first on line 2: '450,nan'\)"):
        read_target_csv(path)


def test_target_file_in_a_windows_code_page(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("Wellenl\u00e4nge (nm);Extinktion (\u00b5A)\r\n300;0,1\r\n450;1,0\r\n".encode("cp1252"))
    np.testing.assert_array_equal(read_target_csv(path)[1], [0.1, 1.0])


@pytest.mark.parametrize(("text", "match"), [
    ("wavelength_nm,absorbance\n300,0.1\n450,n/a\n900,0.1\n", r"line 3 \('450,n/a'\) is not two numbers"),
    ("300,0.1\n450,0.5\nsee notes\n\n900,0.1\nend\n", r"line 3 \('see notes'\) is not two numbers"),
    ("300,0.1\n450,0.5\n900,n/a\n", r"line 3 \('900,n/a'\) is not two numbers"),
    ("wavelength_nm;absorbance\n300\n", "at least two rows of two numbers.*found 0; it starts with 'wavelength_nm;absorbance'"),
    ("just some notes\nabout a spectrum\n", "found 0; it starts with 'just some notes'"),
    ("300,0.1\n450,1.0\n450,0.5\n", r"wavelengths must be distinct, but lines 2 and 3 both give 450 nm \(1 repeated"),
    # an x axis in pixels, wavenumbers or micrometres: refused, not read as nm (pixels 380-800 were scored
    # as 380-800 nm, a spectrum stretched over the wrong range)
    ("Spectrometer: FLMS01234\nXAxis mode: Pixels\n>>>>>Begin Spectral Data<<<<<\n120\t0.1\n121\t0.2\n122\t0.5\n",
     r"first column is pixel numbers \(120-122\), not wavelengths.*XAxis mode Wavelengths"),
    ("0\t0.1\n1\t0.2\n2\t0.5\n3\t0.4\n", r"pixel numbers \(0-3\)"),
    ("pixel,absorbance\n400,0.1\n410,0.2\n420,0.5\n", r"pixel numbers \(400-420\)"),
    ("Wavenumber (cm-1);Abs\n12500;0.1\n20000;1.0\n25000;0.1\n", r"axis in wavenumbers.*nm = 10\^7 / wavenumber"),
    ("wavelength_um,abs\n0.3,0.1\n0.5,1.0\n0.8,0.1\n", r"runs 0.3-0.8, below any UV-Vis wavelength in nm: is it in micrometres"),
    ("3.8e-07,0.1\n5e-07,1.0\n8e-07,0.1\n", r"is it in metres \(nm = 10\^9 x m\)"),
    ("Wavelength (Angstrom),Abs\n3800,0.1\n5000,1.0\n8000,0.1\n", r"axis in angstroms.*nm = angstrom / 10"),
    ("Pixel Number\tAbsorbance\n400\t0.1\n410\t0.2\n", r"pixel numbers \(400-410\)"),
    ("300,0.1\n450,nan\n", r"NaN or infinite values \(1 row, the first on line 2: '450,nan'\)"),
    ("absorbance,nm\n0.1,300\n0.1,450\n0.5,600\n", "the columns look swapped.*wavelength_nm first"),
    ("Wavelength (nm),%T\n300,90\n450,40\n600,80\n", "header says transmittance or reflectance"),
    # the same in other words and languages (a German Cary export, a Spanish one, T (%), R%)
    *[(f"{head}\n300;90\n450;40\n600;80\n", "header says transmittance or reflectance") for head in (
        "Wellenl\u00e4nge (nm);Transmission (%)", "Longitud de onda (nm);Transmitancia (%)", "nm;T (%)", "nm;T%",
        "nm;R%", "nm;Durchl\u00e4ssigkeit", "nm;R\u00e9flectance", "nm;Reflexionsgrad")],
    ("Energy (eV);Abs\n1.5;0.1\n2.0;1.0\n3.0;0.1\n", r"axis in electronvolts.*nm = 1239.84 / eV"),
    ("300 0,1\n450 1,0,5\n900 0,1\n", r"line 2 \('450 1,0,5'\) is not two numbers"),
    # commas as separators and decimal commas: refused, not read as 380 and 0
    (
        "wavelength_nm,absorbance\n380,0,0000\n450,1,0000\n900,0,1000\n",
        r"line 2 \('380,0,0000'\) splits into 3 fields at its commas but the header names 2 columns: "
        r"commas both separate the columns and mark decimals.*semicolons or tabs as separators",
    ),
    ("nm,A\n300,0.1\n450,1,0\n900,0.1\n", r"line 3 \('450,1,0'\) splits into 3 fields.*header names 2 columns"),
    ("300,0,1\n450,1\n900,0,1\n", r"line 1 \('300,0,1'\) splits into 3 fields at its commas but line 2 \('450,1'\) into 2"),
    ("300,0,1\n450,1,0\n900,0,1\n", r"line 1 \('300,0,1'\) splits into 3 fields.*no decimal point in any row"),
    # one column
    ("0.00000\n0.1\n0.5\n", r"found 0; its rows hold one number each \(line 1: '0.00000'\), but a target needs two columns"),
    ("absorbance\n0.1\n1.0\n", r"found 0; it starts with 'absorbance'; its rows hold one number each \(line 2: '0.1'\)"),
])
def test_bad_target_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TargetFileError, match=match):
        read_target_csv(path)


def test_min_accepted_defaults_to_half_of_n(tmp_path: Path, reference_data: dict) -> None:
    data = copy.deepcopy(reference_data)
    data["replicates"] = {"n": 15}
    protocol = load_protocol(write_protocol(tmp_path, data))
    assert protocol.replicates.min_accepted == 8


def test_protocol_from_dict_resolves_against_base_dir(reference: ExperimentProtocol) -> None:
    again = protocol_from_dict(reference.model_dump(mode="json"), base_dir=REFERENCE.parent)
    assert again == reference
    np.testing.assert_array_equal(again.target_spectrum(), reference.target_spectrum())
    with pytest.raises(ConfigError, match="target.file"):
        protocol_from_dict(reference.model_dump(mode="json"), base_dir=Path("/nonexistent"))


def test_an_unknown_strategy_is_named_with_the_other_problems(tmp_path: Path, reference_data: dict) -> None:
    """A misspelt strategy was reported only once every other problem was fixed, and as `optimizer`."""
    data = copy.deepcopy(reference_data)
    data["optimizer"]["strategy"] = "defualt"
    data["replicates"]["n"] = 0
    with pytest.raises(ConfigError) as info:
        load_protocol(write_protocol(tmp_path, data))
    text = str(info.value)
    assert "optimizer.strategy" in text and "unknown optimiser strategy 'defualt'" in text and "replicates.n" in text
