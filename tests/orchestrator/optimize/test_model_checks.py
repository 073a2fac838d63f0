"""Accuracy and stability of the spectrum network: pure functions, and the history helper."""

from __future__ import annotations

import numpy as np
import pytest
from toy_spectra import WAVELENGTHS, toy_loss, toy_space, toy_spectra

from orchestrator.optimize.base import History, Observation
from orchestrator.optimize.model_checks import (
    accuracy_by_round,
    accuracy_from_history,
    agreement,
    cosine_similarity,
    measured_spectrum,
    probe_points,
    stability,
)


def test_cosine_similarity_rows() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [1.0, -1.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="shapes"):
        cosine_similarity(a, b[:2])


def test_agreement_perfect_and_degraded() -> None:
    x = np.array([[10.0, 20.0, 200.0], [30.0, 10.0, 400.0]])
    truth = toy_spectra(x)
    perfect = agreement(truth, truth, loss=toy_loss())
    assert perfect.cosine_mean == pytest.approx(1.0)
    assert perfect.mse == 0.0 and perfect.loss_mae == pytest.approx(0.0)
    shifted = agreement(toy_spectra(x + [5.0, 0.0, 0.0]), truth, loss=toy_loss())
    assert shifted.cosine_mean < 1.0 and shifted.mse > 0 and shifted.loss_mae > 0
    assert shifted.cosine_min <= shifted.cosine_mean
    d = shifted.to_dict()
    assert d["n"] == 2 and isinstance(d["cosine_mean"], float)


def test_stability_of_identical_models_is_one() -> None:
    p = toy_spectra(probe_points(toy_space(), 30, seed=3))
    s = stability(p, p)
    assert s.cosine_mean == pytest.approx(1.0) and s.mse == 0.0


def test_probe_points_fixed_and_feasible() -> None:
    space = toy_space()
    a, b = probe_points(space, 64, seed=5), probe_points(space, 64, seed=5)
    np.testing.assert_array_equal(a, b)
    assert space.feasible(a).all()
    assert not np.array_equal(a, probe_points(space, 64, seed=6))


def test_measured_spectrum_is_the_replicate_median() -> None:
    s = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan], [100.0, 0.0, np.nan]])
    s[0, 2] = 5.0
    obs = Observation(0, {}, 0.1, spectra=s)
    np.testing.assert_allclose(measured_spectrum(obs), [3.0, 2.0, 5.0])
    assert measured_spectrum(Observation(0, {}, None, failed=True)) is None


def _obs(r: int, x: list[float], prediction: np.ndarray | None) -> Observation:
    truth = toy_spectra(np.array(x))[0]
    return Observation(
        r,
        dict(zip(toy_space().names, x, strict=True)),
        float(toy_loss()(truth)),
        spectra=np.stack([truth, truth]),
        prediction=prediction,
    )


def test_accuracy_from_history_uses_the_latest_round_with_predictions() -> None:
    x0, x1 = [10.0, 20.0, 200.0], [30.0, 10.0, 400.0]
    good = toy_spectra(np.array(x1))[0]
    bad = toy_spectra(np.array(x0))[0]  # predicted the other condition's spectrum
    history = History(
        [_obs(0, x0, None), _obs(1, x0, good), _obs(1, x1, good), _obs(2, x1, None)],
        WAVELENGTHS,
        toy_loss(),
        3,
    )
    acc = accuracy_from_history(history)
    assert acc is not None and acc.n == 2  # round 1; round 2 has no predictions
    assert 0.0 < acc.cosine_min < acc.cosine_mean < 1.0
    assert accuracy_from_history(history, round_index=0) is None
    exact = History([_obs(0, x1, good)], WAVELENGTHS, toy_loss(), 1)
    assert accuracy_from_history(exact).cosine_mean == pytest.approx(1.0)
    by_round = accuracy_by_round(history)
    assert list(by_round) == [1]
    assert bad.shape == good.shape
    assert accuracy_from_history(History([], WAVELENGTHS, toy_loss())) is None
