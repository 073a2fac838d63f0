"""One spectrum per condition from replicates that may hold a few missing points (the shared helper
behind the composite's medians, the network's means and the accuracy checks)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.optimize.base import Observation
from orchestrator.optimize.composite import median_spectra
from orchestrator.optimize.model_checks import measured_spectrum
from orchestrator.optimize.replicates import bridge_gaps, replicate_mean, replicate_median

WL = np.arange(380.0, 801.0, 1.0)


def test_without_missing_points_the_median_and_mean_are_numpys_exactly() -> None:
    rng = np.random.default_rng(0)
    for r in (1, 2, 3, 5, 20):
        s = rng.standard_normal((r, len(WL))) * rng.uniform(0.01, 2.0)
        np.testing.assert_array_equal(replicate_median(s, WL), np.median(s, axis=0))
        mean, count = replicate_mean(s, WL)
        np.testing.assert_array_equal(mean, np.nanmean(s, axis=0))
        assert count == r
    one = rng.standard_normal(len(WL))  # a single spectrum, not stacked
    np.testing.assert_array_equal(replicate_median(one), one)


def test_a_point_missing_in_some_replicates_comes_from_the_others() -> None:
    s = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, np.nan, 5.0, np.inf], [2.0, 6.0, -np.inf, 8.0]])
    np.testing.assert_array_equal(replicate_median(s), [2.0, 4.0, 4.0, 6.0])
    np.testing.assert_array_equal(replicate_mean(s)[0], [2.0, 4.0, 4.0, 6.0])


def test_a_point_missing_in_every_replicate_is_bridged_along_wavelength() -> None:
    wl = np.array([400.0, 401.0, 402.0, 410.0, 420.0])  # uneven: index and wavelength disagree
    s = np.tile([1.0, 2.0, 3.0, np.nan, 5.0], (3, 1))
    med = replicate_median(s, wl)
    assert med is not None and np.isfinite(med).all()
    assert med[3] == pytest.approx(3.0 + 2.0 * (410.0 - 402.0) / (420.0 - 402.0))
    assert replicate_median(s)[3] == pytest.approx(4.0)  # without wavelengths: the grid index
    # a band at an end takes the nearest finite value
    s[:, :2] = np.nan
    np.testing.assert_array_equal(replicate_median(s, wl)[:2], [3.0, 3.0])
    assert replicate_mean(s, wl)[0][:2].tolist() == [3.0, 3.0]


def test_a_band_as_the_engine_keeps_it() -> None:
    """The new-user case: every replicate NaN at 595-605 nm (2.5 % of the grid, under max_nan_fraction)."""
    rng = np.random.default_rng(1)
    clean = 0.8 * np.exp(-0.5 * ((WL - 560.0) / 40.0) ** 2) + 0.05
    s = clean + 0.002 * rng.standard_normal((20, len(WL)))
    s[:, np.abs(WL - 600.0) < 5.0] = np.nan
    med = replicate_median(s, WL)
    assert np.isfinite(med).all()
    np.testing.assert_allclose(med, clean, atol=0.01)
    assert np.isfinite(replicate_mean(s, WL)[0]).all()


def test_nothing_finite_is_no_spectrum() -> None:
    assert replicate_median(np.full((3, 5), np.nan)) is None
    assert replicate_mean(np.full((3, 5), np.nan)) == (None, 0)
    assert replicate_median(None) is None and replicate_median(np.empty((0, 5))) is None
    assert bridge_gaps(np.full(4, np.nan)) is None
    a = np.arange(4.0)
    assert bridge_gaps(a) is a  # nothing to bridge: the spectrum as it is


def test_median_spectra_without_nan_is_the_old_np_median_and_skips_empty_conditions() -> None:
    rng = np.random.default_rng(2)
    obs = [Observation(0, {}, 0.5, spectra=rng.standard_normal((5, len(WL)))) for _ in range(6)]
    obs.append(Observation(0, {}, 0.4, spectra=np.full((5, len(WL)), np.nan)))  # nothing usable
    obs.append(Observation(0, {}, None, failed=True))
    rows, spectra = median_spectra(obs, WL)
    assert rows == obs[:6]
    np.testing.assert_array_equal(spectra, np.array([np.median(o.spectra, axis=0) for o in obs[:6]]))
    obs[0].spectra[:, 100:110] = np.nan
    _, patched = median_spectra(obs, WL)
    assert np.isfinite(patched).all()


def test_measured_spectrum_uses_the_same_rule() -> None:
    s = np.tile(np.linspace(0.1, 1.0, len(WL)), (4, 1))
    s[:, 200:210] = np.nan
    obs = Observation(0, {}, 0.1, spectra=s)
    np.testing.assert_array_equal(measured_spectrum(obs, WL), replicate_median(s, WL))
    np.testing.assert_allclose(measured_spectrum(obs, WL), np.linspace(0.1, 1.0, len(WL)))
