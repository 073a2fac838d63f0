"""Replicate screening: every reject reason, the loss of a spectrum with a few masked points, outliers."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.protocol import ReplicateSpec
from orchestrator.screening import MIN_FOR_OUTLIER, ReplicateScreen, median_mad, outlier_verdicts
from orchestrator.spectra import SpectrumLoss

WL = np.linspace(300.0, 900.0, 1201)  # detector pixels, 0.5 nm apart
GRID = np.arange(380.0, 801.0, 1.0)
DARK = np.full(WL.shape, 1000.0)
REFERENCE = DARK + 20_000.0
SCREEN = ReplicateScreen.from_protocol(ReplicateSpec(n=20), saturation_counts=65_535.0)


def band(wl: np.ndarray, peak: float = 0.9) -> np.ndarray:
    return 0.05 + peak * np.exp(-0.5 * ((wl - 642.0) / 40.0) ** 2)


LOSS = SpectrumLoss(band(GRID))


def sample_for(absorbance: np.ndarray) -> np.ndarray:
    return DARK + (REFERENCE - DARK) * 10.0 ** (-absorbance)


def screen(sample: np.ndarray, reference: np.ndarray = REFERENCE):
    return SCREEN.screen(sample, DARK, reference, WL, GRID, LOSS)


def test_a_good_droplet_is_accepted_with_its_loss() -> None:
    result = screen(sample_for(band(WL)))
    assert result.accepted and result.reason is None and result.kind is None
    assert result.absorbance.shape == GRID.shape
    np.testing.assert_allclose(result.absorbance, band(GRID), atol=1e-6)
    assert result.loss == pytest.approx(0.0, abs=1e-6)


def test_saturated_sample_is_rejected_and_kept() -> None:
    sample = sample_for(band(WL))
    sample[600:610] = 65_535.0
    result = screen(sample)
    assert not result.accepted and result.kind == "saturated"
    assert "10 pixels" in result.reason and "integration time" in result.reason
    assert result.absorbance.shape == GRID.shape  # kept for the record


def test_no_light_is_rejected() -> None:
    result = screen(DARK + 3.0)
    assert not result.accepted and result.kind == "no_light"
    assert "lamp" in result.reason


def test_carrier_only_is_empty() -> None:
    result = screen(REFERENCE.copy())
    assert not result.accepted and result.kind == "empty"
    assert "0.02" in result.reason


def test_too_many_masked_points_is_nan() -> None:
    reference = REFERENCE.copy()
    reference[(WL > 500) & (WL < 560)] = DARK[0] + 10.0  # no light through the reference there
    result = screen(sample_for(band(WL)), reference=reference)
    assert not result.accepted and result.kind == "nan"
    assert np.isnan(result.absorbance).any()


def test_a_few_masked_points_are_bridged_for_the_loss() -> None:
    reference = REFERENCE.copy()
    reference[(WL > 700) & (WL < 706)] = DARK[0] + 10.0  # 3 of 421 grid points masked (< 5 %)
    result = screen(sample_for(band(WL)), reference=reference)
    assert result.accepted
    assert np.isnan(result.absorbance).sum() in range(1, 5)
    assert result.loss == pytest.approx(0.0, abs=1e-3)


def test_a_droplet_on_its_own_is_never_an_outlier() -> None:
    flat = sample_for(np.full(WL.shape, 0.9))  # loss 1: nothing like the band, but a real spectrum
    result = screen(flat)
    assert result.accepted and result.loss == pytest.approx(1.0, abs=1e-6)


def test_outliers_are_judged_on_the_whole_attempt_whatever_the_order() -> None:
    """A bubble among twenty droplets is rejected wherever it came; before, only droplets judged against
    the first five accepted could be, and those five decided which of two groups survived."""
    losses = [0.010, 0.012, 0.011, 0.009, 0.010, 0.011, 0.010, 0.012, 0.009, 1.0]
    verdicts, note = outlier_verdicts(losses, 5.0)
    assert note is None and [i for i, v in enumerate(verdicts) if v] == [9]
    assert "MADs from the median" in verdicts[9] and "bubble" in verdicts[9]
    first = outlier_verdicts([1.0, *losses[:-1]], 5.0)[0]
    assert [i for i, v in enumerate(first) if v] == [0]  # the same droplet, first in: the same verdict
    assert outlier_verdicts(losses[: MIN_FOR_OUTLIER - 1], 5.0) == ([None] * (MIN_FOR_OUTLIER - 1), None)


def test_two_groups_of_droplets_are_not_bubbles() -> None:
    """A condition at the edge of the absorbance window: 8 of 20 droplets past a_high score 1.0. Forty per
    cent of the droplets is not a bubble: none is rejected, and the note says why."""
    rng = np.random.default_rng(3)
    losses = list(rng.permutation([0.0003] * 12 + [1.0] * 8))
    verdicts, note = outlier_verdicts(losses, 5.0)
    assert verdicts == [None] * 20
    assert note is not None and note.startswith("8 of 20 droplets lie more than 5 MADs") and "two groups" in note
    assert outlier_verdicts(losses[:4] + [0.0003] * 16, 5.0)[1] is None  # a few far out: bubbles after all


def test_outlier_floor_and_off() -> None:
    assert outlier_verdicts([0.5] * 10, 5.0) == ([None] * 10, None)  # identical losses: the floor keeps all
    assert outlier_verdicts([0.5] * 10 + [0.6], 5.0)[0][-1] is not None
    assert outlier_verdicts([0.5] * 10 + [0.6], None) == ([None] * 11, None)  # outlier_mad: null keeps all


def test_median_mad() -> None:
    assert median_mad([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 1.0)
