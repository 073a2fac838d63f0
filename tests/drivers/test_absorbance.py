"""Absorbance from counts, masking and resampling, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.absorbance import Screening, absorbance_on_grid, pixel_absorbance, resample
from drivers.errors import DetectorSaturated, LampOff, SpectrometerError

SCREEN = Screening(saturation_counts=10_000.0)  # saturated at >= 9500, no light below 100 counts


def test_absorbance_hand_computed() -> None:
    sample = np.array([550.0, 150.0, 1000.0, 5050.0])
    dark = np.array([50.0, 50.0, 0.0, 50.0])
    reference = np.array([1050.0, 1050.0, 9000.0, 5050.0])
    px = pixel_absorbance(sample, dark, reference, SCREEN)
    # -log10(500/1000), -log10(100/1000), -log10(1000/9000), -log10(5000/5000)
    np.testing.assert_allclose(px.absorbance, [0.30103, 1.0, 0.954243, 0.0], atol=1e-6)
    assert px.valid.all()


def test_masks_dark_reference_and_saturation() -> None:
    sample = np.array([500.0, 9600.0, 500.0, 120.0])
    dark = np.array([0.0, 0.0, 0.0, 50.0])
    reference = np.array([9500.0, 9000.0, 1000.0, 149.0])  # 9500 = 0.95 * 10000: saturated
    px = pixel_absorbance(sample, dark, reference, SCREEN)
    assert px.saturated.tolist() == [True, True, False, False]
    assert px.dark_reference.tolist() == [False, False, False, True]  # 149 - 50 < 100 counts
    assert np.isnan(px.absorbance[[0, 1, 3]]).all()
    assert px.absorbance[2] == pytest.approx(-np.log10(0.5))


def test_opaque_sample_is_floored_not_dropped() -> None:
    px = pixel_absorbance(np.array([40.0]), np.array([50.0]), np.array([1050.0]), SCREEN)
    assert px.absorbance[0] == pytest.approx(4.0)  # min_transmission 1e-4


def test_shapes_must_match() -> None:
    with pytest.raises(SpectrometerError, match="same spectrometer"):
        pixel_absorbance(np.ones(3), np.ones(3), np.ones(4), SCREEN)


def test_resample_interpolates_over_valid_pixels_only() -> None:
    wl = np.array([400.0, 401.0, 402.0, 403.0])
    a = np.array([0.0, 1.0, np.nan, 3.0])
    grid = np.array([400.0, 400.5, 401.5, 402.0, 403.0, 404.0])
    out = resample(wl, a, grid, reach_nm=1.0)
    # 401.5 lies between the valid pixels 401 (1.0) and 403 (3.0); 402 is 1 nm from both; 404 is outside
    np.testing.assert_allclose(out[:5], [0.0, 0.5, 1.5, 2.0, 3.0])
    assert np.isnan(out[5])
    tight = resample(wl, a, grid, reach_nm=0.5)
    assert np.isnan(tight[3]) and tight[2] == pytest.approx(1.5)


def test_resample_accepts_descending_pixels_and_all_invalid() -> None:
    out = resample(np.array([402.0, 401.0, 400.0]), np.array([2.0, 1.0, 0.0]), np.array([400.5, 401.5]))
    np.testing.assert_allclose(out, [0.5, 1.5])
    assert np.isnan(resample(np.array([400.0, 401.0]), np.array([np.nan, np.nan]), np.array([400.5]))).all()


def _pixels() -> np.ndarray:
    return np.arange(380.0, 420.01, 0.5)


def test_absorbance_on_grid_returns_the_grid() -> None:
    wl = _pixels()
    dark = np.full(wl.shape, 100.0)
    reference = np.full(wl.shape, 5100.0)
    sample = 100.0 + 5000.0 * 10 ** -(0.01 * (wl - 380.0))  # A = 0.01 per nm above 380
    grid = np.arange(380.0, 420.01, 1.0)
    a = absorbance_on_grid(sample, dark, reference, wl, grid, SCREEN)
    np.testing.assert_allclose(a, 0.01 * (grid - 380.0), atol=1e-12)


def test_saturated_reference_raises_detector_saturated() -> None:
    wl = _pixels()
    dark = np.zeros(wl.shape)
    # pixels 395.5-404.5 saturate; 396 and 404 still have a valid pixel 1 nm away
    reference = np.where((wl > 395) & (wl < 405), 9990.0, 5000.0)
    with pytest.raises(DetectorSaturated, match=r"reference saturates the detector at 397-403 nm"):
        absorbance_on_grid(reference * 0.5, dark, reference, wl, np.arange(380.0, 420.01), SCREEN)


def test_dark_reference_raises_lamp_off() -> None:
    wl = _pixels()
    dark = np.full(wl.shape, 1000.0)
    reference = dark + 3.0
    with pytest.raises(LampOff, match="as dark as the dark"):
        absorbance_on_grid(reference, dark, reference, wl, np.arange(380.0, 420.01), SCREEN)


def test_grid_outside_the_pixels_raises() -> None:
    wl = _pixels()
    ones = np.ones(wl.shape)
    with pytest.raises(SpectrometerError, match="do not cover"):
        absorbance_on_grid(ones * 500, ones * 0, ones * 1000, wl, np.arange(380.0, 430.01), SCREEN)


def test_a_grid_beyond_the_pixels_is_not_blamed_on_the_lamp() -> None:
    """A few dim pixels inside the range (the UV end of a real lamp) and a grid reaching past the last
    pixel: the range is what is wrong, not the lamp (it said "as dark as the dark spectrum at ...,
    851-1100 nm")."""
    wl = _pixels()
    dark = np.zeros(wl.shape)
    reference = np.where(wl < 382, 50.0, 5000.0)  # dim below 382 nm
    with pytest.raises(SpectrometerError, match=r"pixels \(380.0-420.0 nm\) do not cover the protocol's grid at 422-440 nm") as info:
        absorbance_on_grid(reference * 0.5, dark, reference, wl, np.arange(380.0, 440.01), SCREEN)
    assert not isinstance(info.value, LampOff) and "Narrow the protocol's wavelength grid" in info.value.hint


def test_a_dark_end_of_the_grid_is_named_as_pixels_that_see_no_light() -> None:
    """A grid reaching a spectrometer's masked first pixels (or past the lamp's UV end): "check that the
    lamp is on" sent the operator to a lamp that was on."""
    wl = _pixels()
    dark = np.zeros(wl.shape)
    reference = np.where(wl < 385, 50.0, 5000.0)  # dark below 385 nm only
    with pytest.raises(LampOff, match=r"at 380-384 nm .*the end of the protocol's grid") as info:
        absorbance_on_grid(reference * 0.5, dark, reference, wl, np.arange(380.0, 420.01), SCREEN)
    assert info.value.hint.startswith("Those pixels see no light") and "narrow the protocol's wavelength grid" in info.value.hint
    with pytest.raises(LampOff) as info:  # dark everywhere: the lamp
        absorbance_on_grid(dark + 50, dark, dark + 50, wl, np.arange(380.0, 420.01), SCREEN)
    assert "check that the lamp is on" in info.value.hint


def test_some_masking_can_be_allowed() -> None:
    wl = _pixels()
    dark = np.zeros(wl.shape)
    reference = np.where(wl == 400.0, 9990.0, 5000.0)
    grid = np.arange(380.0, 420.01)
    # one saturated pixel leaves neighbours within 1 nm: nothing masked on the grid
    a = absorbance_on_grid(reference * 0.1, dark, reference, wl, grid, SCREEN)
    assert np.isfinite(a).all()
    wide = np.where((wl > 398) & (wl < 402), 9990.0, 5000.0)
    a = absorbance_on_grid(wide * 0.1, dark, wide, wl, grid, SCREEN, max_masked_fraction=0.1)
    assert np.isnan(a[grid == 400.0]).all() and np.isfinite(a[grid == 390.0]).all()
