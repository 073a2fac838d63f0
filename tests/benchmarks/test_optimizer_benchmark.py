"""The optimiser benchmark on a chemistry model of one's own (``--chemistry module:Class``)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import optimizer as bench

PEAK_MODEL = textwrap.dedent(
    """
    import numpy as np

    NAMES = ("Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total")


    class Peak:
        '''One band whose position follows the AgNO3 share: 400 nm + 6 nm per %.'''

        def __init__(self, per_percent=6.0):
            self.per_percent = per_percent

        def spectra(self, x, wavelengths):
            x = np.atleast_2d(x)
            centre = 400.0 + self.per_percent * x[:, :1]
            return 1.0 * np.exp(-0.5 * ((wavelengths[None, :] - centre) / 40.0) ** 2)

        def droplet(self, inputs, wavelengths, rng):
            x = np.array([[inputs[n] for n in NAMES]])
            return self.spectra(x, wavelengths)[0] + 0.003 * rng.standard_normal(len(wavelengths))


    class OnlyDroplets:
        def droplet(self, inputs, wavelengths, rng):
            return np.ones(len(wavelengths))


    class GoldSeeds(Peak):
        def droplet(self, inputs, wavelengths, rng):
            return super().droplet({"Q_AgNO3": inputs["HAuCl4_pct"], **inputs}, wavelengths, rng)
    """
)


@pytest.fixture
def peak_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "peak_chem.py").write_text(PEAK_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("peak_chem", None)


def target_at(agno3: float, path: Path) -> Path:
    wl = np.arange(380.0, 801.0, 5.0)
    a = np.exp(-0.5 * ((wl - (400.0 + 6.0 * agno3)) / 40.0) ** 2)
    path.write_text("wavelength_nm,absorbance\n" + "".join(f"{w},{v:.6f}\n" for w, v in zip(wl, a, strict=True)))
    return path


def test_a_model_of_ones_own_runs_paired_campaigns_against_its_target(peak_module: Path) -> None:
    target = target_at(45.0, peak_module / "peak45.csv")  # 670 nm: AgNO3 45 %, past the initial 4-20 %
    problem = bench.draw_problem(0, "outside", "peak_chem:Peak", str(target))
    assert problem.x_best[0] == pytest.approx(45.0, rel=0.05)
    assert problem.f_best_inside - problem.f_best > 0.05
    runs = bench.run_all(["lhs"], [0, 1], ["outside"], "peak_chem:Peak", {"lhs": 2}, 1, lambda done: None,
                         str(target))
    assert [(r.seed, len(r.best_true)) for r in runs] == [(0, 2), (1, 2)]
    assert all(np.all(np.diff(r.best_true) <= 1e-12) for r in runs)  # best so far never gets worse


def test_no_outside_problem_for_a_model_whose_optimum_is_inside_says_so(peak_module: Path) -> None:
    target = target_at(10.0, peak_module / "peak10.csv")  # AgNO3 10 %: inside the initial bounds
    with pytest.raises(SystemExit, match="run --scenario inside"):
        bench.draw_problem(0, "outside", "peak_chem:Peak", str(target))


def test_a_model_without_noise_free_spectra_is_refused(peak_module: Path) -> None:
    with pytest.raises(SystemExit, match="spectrum\\(inputs, wavelengths\\)"):
        bench.make_chemistry("peak_chem:OnlyDroplets", np.random.default_rng(0))


def test_chemistry_names_are_checked() -> None:
    assert bench.chemistry_arg("bands") == "bands"
    assert bench.chemistry_arg("mymodel:Model") == "mymodel:Model"
    with pytest.raises(Exception, match="module:Class"):
        bench.chemistry_arg("nanocubes")


def test_a_model_for_other_inputs_is_told_which_the_benchmark_runs(peak_module: Path) -> None:
    """It used to end in a traceback: KeyError: 'HAuCl4_pct'."""
    with pytest.raises(SystemExit, match="asks for the input 'HAuCl4_pct'.*Q_AgNO3, Q_PVA, Q_TSC, Q_seed, Q_total.*sdl run"):
        bench.make_chemistry("peak_chem:GoldSeeds", np.random.default_rng(0))
