"""The AgNanoprism chemistry model, the nanoprism target and the paper's loss.

The loss cases are computed by hand from the definition in shared/data/agbonn/README.md
(Mekki-Berrada et al. 2021): loss = 1 - delta * cos(minmax(A), minmax(target)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from orchestrator.spectra import SpectrumLoss, interpolate_target, read_target_csv, wavelength_grid
from simulators.chemistry import AgNanoprism, AuNanorod, ChemistryInputError, TwoBand

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "protocols" / "targets" / "ag_nanoprism.csv"
GRID = wavelength_grid()
BEST_DNN8 = {"Q_AgNO3": 32.5, "Q_PVA": 16.0, "Q_TSC": 6.5, "Q_seed": 4.5, "Q_total": 850.0}


# ---- the target file and the loss ---------------------------------------------------------------


def test_target_file_is_the_papers_table() -> None:
    wl, a = read_target_csv(TARGET)
    assert len(wl) == 25 and wl[0] == 380.0 and wl[-1] == 800.0
    assert a[wl == 642.5][0] == 1.2 and a[wl == 397.5][0] == pytest.approx(0.23351)
    t = interpolate_target(wl, a, GRID)
    assert GRID[np.argmax(t)] == 642.0  # README: the peak sits at 642 nm on the 1 nm grid
    # 'slinear' = straight lines between the table's points
    assert t[GRID == 389.0][0] == pytest.approx(0.107835 + 9.0 / 17.5 * (0.23351 - 0.107835))


@pytest.mark.parametrize(
    ("spectrum", "expected"),
    [
        ([0.0, 1.0, 0.0], 0.0),  # same shape, Amax 1.0 in [0.7, 1.2]: delta 1, cos 1
        ([0.2, 0.5, 0.2], 1.0 - 0.5 / 0.7),  # same shape, Amax 0.5: delta 0.5/0.7
        ([0.1, 0.9, 0.5], 1.0 - 1.0 / np.sqrt(1.25)),  # minmax [0, 1, .5]: cos 1/sqrt(1.25)
        ([0.0, 0.0, 1.3], 1.0),  # Amax above 1.2: delta 0
        ([0.0, 0.7, 0.0], 0.0),  # the band edges count as inside
        ([0.0, 1.2, 0.0], 0.0),
        ([0.0, -0.1, -0.2], 1.0),  # no positive absorbance: delta 0
    ],
)
def test_loss_matches_the_definition(spectrum: list[float], expected: float) -> None:
    loss = SpectrumLoss(np.array([0.0, 1.0, 0.0]))
    assert loss(np.array(spectrum)) == pytest.approx(expected, abs=1e-12)


def test_loss_on_a_stack_and_a_reversed_shape() -> None:
    loss = SpectrumLoss(np.array([1.0, 2.0, 3.0]))  # minmax [0, .5, 1]
    out = loss(np.array([[0.9, 0.6, 0.3], [0.3, 0.6, 0.9]]))
    # reversed: minmax [1, .5, 0], cos = .25 / 1.25 = 0.2; the second is the target's shape
    np.testing.assert_allclose(out, [0.8, 0.0], atol=1e-12)


def test_target_itself_has_zero_loss() -> None:
    wl, a = read_target_csv(TARGET)
    t = interpolate_target(wl, a, GRID)
    loss = SpectrumLoss(t)
    assert loss(t) == pytest.approx(0.0, abs=1e-12)  # peak 1.2: delta 1
    # on the 1 nm grid the peak is at 642 nm, half a nm short of the table's 1.2 at 642.5
    peak = 1.2 - 0.5 / 17.5 * (1.2 - 0.928419)
    assert t.max() == pytest.approx(peak)
    assert loss(t * 0.35) == pytest.approx(1.0 - 0.35 * peak / 0.7, abs=1e-12)  # delta < 1, cos 1


# ---- the model --------------------------------------------------------------------------------


def _peak_nm(model: AgNanoprism, inputs: dict[str, float], lo: float = 450.0) -> float:
    wl = np.arange(300.0, 1100.0, 1.0)
    a = model.spectrum(inputs, wl)
    window = wl >= lo
    return float(wl[window][np.argmax(a[window])])


def _fwhm_nm(model: AgNanoprism, inputs: dict[str, float]) -> float:
    wl = np.arange(450.0, 1100.0, 0.5)
    a = model.spectrum(inputs, wl)
    above = wl[a >= a.max() / 2]
    return float(above[-1] - above[0])


def test_droplets_are_reproducible_for_a_seed() -> None:
    m = AgNanoprism()
    a = m.droplet(BEST_DNN8, GRID, np.random.default_rng(7))
    b = m.droplet(BEST_DNN8, GRID, np.random.default_rng(7))
    c = m.droplet(BEST_DNN8, GRID, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(m.spectrum(BEST_DNN8, GRID), m.spectrum(BEST_DNN8, GRID))


def test_dipole_red_shifts_with_silver_per_seed() -> None:
    m = AgNanoprism()
    peaks = [_peak_nm(m, {**BEST_DNN8, "Q_AgNO3": ag}) for ag in (12.0, 20.0, 32.5, 45.0)]
    assert peaks == sorted(peaks) and peaks[-1] - peaks[0] > 100
    fewer_seeds = _peak_nm(m, {**BEST_DNN8, "Q_seed": 2.0})
    assert fewer_seeds > peaks[2] + 30
    # near the paper's best condition the dipole sits within 40 nm of the target's 642 nm
    assert abs(peaks[2] - 642.0) < 40.0


def test_seed_band_dominates_when_silver_per_seed_is_small() -> None:
    m = AgNanoprism()
    a = m.spectrum({**BEST_DNN8, "Q_AgNO3": 1.0, "Q_seed": 20.0}, GRID)
    assert 380.0 <= GRID[np.argmax(a)] <= 420.0


def test_citrate_broadens_and_lowers_the_band_pva_narrows_it() -> None:
    m = AgNanoprism()
    low, high = (_fwhm_nm(m, {**BEST_DNN8, "Q_TSC": c}) for c in (1.0, 25.0))
    assert high > low * 1.3
    a_low = m.spectrum({**BEST_DNN8, "Q_TSC": 1.0}, GRID).max()
    a_high = m.spectrum({**BEST_DNN8, "Q_TSC": 25.0}, GRID).max()
    assert a_high < a_low
    assert _fwhm_nm(m, {**BEST_DNN8, "Q_PVA": 40.0}) < _fwhm_nm(m, {**BEST_DNN8, "Q_PVA": 10.0})


def test_longer_residence_reduces_more_silver() -> None:
    m = AgNanoprism()
    fast = m.spectrum({**BEST_DNN8, "Q_total": 1000.0}, GRID).max()
    slow = m.spectrum({**BEST_DNN8, "Q_total": 200.0}, GRID).max()
    assert slow > fast


def test_stock_concentration_moves_the_optimum() -> None:
    base = AgNanoprism().spectrum(BEST_DNN8, GRID)
    diluted = AgNanoprism(agno3_stock=0.5).spectrum({**BEST_DNN8, "Q_AgNO3": 65.0}, GRID)
    np.testing.assert_allclose(diluted, base, rtol=1e-12)


def test_defect_droplets_occur_at_their_rate() -> None:
    m = AgNanoprism(bubble_probability=0.05, empty_probability=0.05)
    rng = np.random.default_rng(3)
    peaks = np.array([m.droplet(BEST_DNN8, GRID, rng).max() for _ in range(1000)])
    empty = np.mean(peaks < 0.03)
    assert 0.03 < empty < 0.08


def test_bad_inputs_and_params_are_refused() -> None:
    m = AgNanoprism()
    with pytest.raises(ChemistryInputError, match="Q_seed"):
        m.spectrum({k: v for k, v in BEST_DNN8.items() if k != "Q_seed"}, GRID)
    with pytest.raises(ChemistryInputError, match=">= 0"):
        m.spectrum({**BEST_DNN8, "Q_PVA": -1.0}, GRID)
    with pytest.raises(ChemistryInputError, match="Q_total"):
        m.spectrum({**BEST_DNN8, "Q_total": 0.0}, GRID)
    with pytest.raises(TypeError, match="unknown parameter"):
        AgNanoprism(agno3=1.0)


# ---- calibration floor (no fitting here: the fitted defaults against the 164 medians) -------------


def test_model_ranks_the_measured_conditions() -> None:
    from benchmarks.calibration import TRAIN_RUNS, load_condition_summary, noise_free_losses

    cond = load_condition_summary(Path(__file__).parent / "data" / "AgNP_conditions_summary.csv")
    assert len(cond.runs) == 164 and sum(cond.n_droplets) == 3295
    model_loss = noise_free_losses(AgNanoprism(), cond.x)
    rho_all = stats.spearmanr(model_loss, cond.median).statistic
    held_out = cond.mask(TRAIN_RUNS, invert=True)
    rho_held_out = stats.spearmanr(model_loss[held_out], cond.median[held_out]).statistic
    assert rho_all >= 0.85
    assert rho_held_out >= 0.8


def test_droplet_spread_matches_the_measured_one() -> None:
    from benchmarks.calibration import evaluate, load_condition_summary

    cond = load_condition_summary(Path(__file__).parent / "data" / "AgNP_conditions_summary.csv")
    model = AgNanoprism(bubble_probability=0.0, empty_probability=0.0)  # the data holds no such droplets
    everything = evaluate(model, cond, seed=0)[0]
    assert everything.spread_measured == pytest.approx(0.022, abs=0.001)  # README: 0.022
    # issue 2's goal: within a factor of 2 of the measured median per-condition spread
    assert 0.5 < everything.spread_model / everything.spread_measured < 2.0
    assert everything.spearman >= 0.85  # with the droplet noise, not only the noise-free model


# ---- the other models: gold nanorods and a generic two-band problem ---------------------------------

PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
TARGETS = REPO / "protocols" / "targets"


def _box_sample(n: int, seed: int = 0) -> np.ndarray:
    """Random conditions in the paper's initial bounds under the 90 % sum rule."""
    from orchestrator.protocol import load_protocol

    variables = load_protocol(PROTOCOL).variables
    low = np.array([v.bounds[0] for v in variables.values()])
    high = np.array([v.bounds[1] for v in variables.values()])
    x = np.random.default_rng(seed).uniform(low, high, size=(n, 5))
    return x[x[:, :4].sum(axis=1) <= 90.0]


@pytest.mark.parametrize(("model", "target_file"), [(AuNanorod, "au_nanorod.csv"), (TwoBand, "two_band.csv")])
def test_optimum_lies_outside_the_initial_bounds(model: type, target_file: str) -> None:
    from orchestrator.protocol import load_protocol

    m = model()
    protocol = load_protocol(PROTOCOL)
    optimum = m.optimum()
    outside = [k for k, v in protocol.variables.items() if not v.bounds[0] <= optimum[k] <= v.bounds[1]]
    assert len(outside) >= 2
    assert all(v.hard_limits[0] <= optimum[k] <= v.hard_limits[1] for k, v in protocol.variables.items())
    assert sum(optimum[k] for k in ("Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed")) <= protocol.percent_sum_max
    wl, a = read_target_csv(TARGETS / target_file)
    loss = SpectrumLoss(interpolate_target(wl, a, GRID))
    assert loss(m.spectrum(optimum, GRID)) == pytest.approx(0.0, abs=1e-6)
    # nothing in the initial box comes close: an optimiser must widen its bounds to do better than ~0.25
    in_box = np.asarray(loss(m.spectra(_box_sample(3000), GRID)))
    assert in_box.min() > 0.25 and np.median(in_box) > 0.4
    # a step toward the optimum from anywhere in the box helps (there is a direction to follow)
    near = {k: v * 1.03 for k, v in optimum.items()}
    assert loss(m.spectrum(near, GRID)) < 0.1


def test_target_files_are_the_models_spectra() -> None:
    from benchmarks.targets import main as targets_main

    assert targets_main(["--check", "--out", str(TARGETS)]) == 0


@pytest.mark.parametrize("model", [AuNanorod, TwoBand])
def test_droplets_follow_the_contract(model: type) -> None:
    m = model()
    x = m.optimum()
    a = m.droplet(x, GRID, np.random.default_rng(5))
    np.testing.assert_array_equal(a, m.droplet(x, GRID, np.random.default_rng(5)))
    assert a.shape == GRID.shape and np.isfinite(a).all()
    loss = SpectrumLoss(m.target(GRID))
    rng = np.random.default_rng(6)
    losses = np.asarray(loss(np.array([m.droplet(x, GRID, rng) for _ in range(200)])))
    assert np.median(losses) < 0.05  # replicate noise, not a different spectrum
    assert 0.0 < np.mean(losses > 0.5) < 0.08  # the occasional bubble or empty slot
    with pytest.raises(ChemistryInputError, match="Q_total"):
        m.spectrum({**x, "Q_total": 0.0}, GRID)
    with pytest.raises(TypeError, match=f"{model.__name__}: unknown parameter"):
        model(optimum=1.0)


def _peak(model: AuNanorod, inputs: dict[str, float], lo: float = 380.0) -> float:
    wl = np.arange(lo, 1000.0, 1.0)
    return float(wl[np.argmax(model.spectrum(inputs, wl))])


def test_nanorod_longitudinal_band_follows_the_aspect_ratio() -> None:
    m = AuNanorod()
    x = m.optimum()
    ar = m.aspect_ratio(np.array([list(x.values())]))[0]
    assert 3.5 < ar < 4.5
    # Link et al. 1999 in water: 59.01 nm per unit of AR + 390.34 nm
    assert _peak(m, x, 560.0) == pytest.approx(390.34 + 59.01 * ar, abs=2.0)
    # more silver per gold (the gold share kept: CTAB gives way): longer rods, a redder band
    peaks = [_peak(m, {**x, "Q_AgNO3": ag, "Q_PVA": 66.0 - ag}, 540.0) for ag in (14.0, 22.0, 30.0, 38.0)]
    assert peaks == sorted(peaks) and peaks[-1] - peaks[0] > 40
    # more seeds share the gold: shorter rods
    assert _peak(m, {**x, "Q_seed": 10.0}, 540.0) < _peak(m, x, 540.0) - 40
    # a large excess of ascorbic acid grows them isotropically
    assert m.aspect_ratio(np.array([[38.0, 28.0, 25.0, 1.5, 500.0]]))[0] < ar - 0.5


def test_nanorod_needs_ctab_and_reductant() -> None:
    m = AuNanorod()
    x = m.optimum()
    spheres = m.spectrum({**x, "Q_PVA": 3.0}, GRID)  # the PVA stream carries CTAB here
    assert 505.0 <= GRID[np.argmax(spheres)] <= 540.0
    starved = m.spectrum({**x, "Q_TSC": 1.0}, GRID)  # too little ascorbic acid: Au(III)-CTAB stays
    full = m.spectrum(x, GRID)
    assert GRID[np.argmax(starved)] == pytest.approx(395.0, abs=5.0) and starved.max() < 0.5 * full.max()
    # the longer the residence time, the more gold is reduced
    assert m.spectrum({**x, "Q_total": 1500.0}, GRID).max() < full.max()


def test_two_band_optimum_moves_with_its_params() -> None:
    moved = TwoBand(optimum_agno3=30.0, optimum_pva=12.0, optimum_total=300.0)
    x = moved.optimum()
    assert x["Q_AgNO3"] == 30.0 and x["Q_PVA"] == 12.0 and x["Q_total"] == 300.0
    loss = SpectrumLoss(moved.target(GRID))
    assert loss(moved.spectrum(x, GRID)) == pytest.approx(0.0, abs=1e-12)
    assert loss(moved.spectrum({**x, "Q_PVA": 24.0}, GRID)) > 0.2
    # the target's shape stays (the product band alone); the default optimum is now a poor condition
    np.testing.assert_allclose(moved.target(GRID), TwoBand().target(GRID), rtol=1e-12)
    assert loss(moved.spectrum(TwoBand().optimum(), GRID)) > 0.3


def test_two_band_drifts_broadens_and_grows_a_by_product() -> None:
    m = TwoBand()
    x = m.optimum()
    p = m.params
    more_silver = {**x, "Q_AgNO3": x["Q_AgNO3"] + p.scale_percent}
    # one unit more AgNO3: the product band moves by shift_agno3_nm and the by-product appears
    assert _peak(m, more_silver, 480.0) == pytest.approx(p.product_nm + p.shift_agno3_nm, abs=3.0)
    side = GRID == p.side_nm
    assert m.spectrum(more_silver, GRID)[side][0] > 3 * m.spectrum(x, GRID)[side][0]
    far = {**x, "Q_PVA": x["Q_PVA"] - 2 * p.scale_percent, "Q_TSC": x["Q_TSC"] + 2 * p.scale_percent}
    assert _fwhm(m, far) > 1.5 * _fwhm(m, x)


def _fwhm(model: TwoBand, inputs: dict[str, float]) -> float:
    wl = np.arange(480.0, 800.0, 0.5)
    a = model.spectrum(inputs, wl)
    above = wl[a >= a.max() / 2]
    return float(above[-1] - above[0])


@pytest.mark.parametrize("spec", ["simulators.chemistry:AuNanorod", "simulators.chemistry:TwoBand"])
def test_a_simulated_rig_takes_the_other_models(spec: str) -> None:
    from orchestrator.protocol import load_protocol
    from orchestrator.rig import build_rig, load_rig

    rig = build_rig(
        load_rig(REPO / "deploy" / "rigs" / "simulated.yaml"),
        load_protocol(PROTOCOL),
        chemistry=spec,
        world_name=f"test-{spec}",
    )
    assert type(rig.world.chemistry).__name__ == spec.split(":")[1]
