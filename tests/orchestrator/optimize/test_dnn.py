"""The spectrum-network ensemble: it learns a spectrum function, and its batches are feasible, spread
out, predicted and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from toy_spectra import WAVELENGTHS, random_history, toy_loss, toy_space, toy_spectra

from orchestrator.optimize.base import History, Observation
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.optimize.dnn import (
    EnsembleSettings,
    NotEnoughSpectra,
    SearchSettings,
    SpectrumData,
    SpectrumEnsemble,
    fit_on_history,
    model_scaler,
    parse_settings,
    search_batch,
)
from orchestrator.optimize.model_checks import cosine_similarity
from orchestrator.optimize.registry import OptimizerSettingsError
from orchestrator.optimize.transforms import UnitScaler

FAST = EnsembleSettings(members=3, max_epochs=600)


@pytest.fixture(scope="module")
def history() -> History:
    return random_history(4, seed=1)


@pytest.fixture(scope="module")
def ensemble(history: History) -> SpectrumEnsemble:
    return fit_on_history(history, toy_space(), FAST, seed=7)


def test_learns_the_toy_spectra_on_unseen_conditions(ensemble: SpectrumEnsemble) -> None:
    space = toy_space()
    x = sample_feasible(space, 200, np.random.default_rng(99))
    truth = toy_spectra(x)
    mean, spread = ensemble.predict(x)
    assert mean.shape == truth.shape == spread.shape
    cos = cosine_similarity(mean, truth)
    # floor well above what the average spectrum achieves (checked below), so a model that learned
    # nothing fails
    assert np.median(cos) > 0.99
    assert np.mean((mean - truth) ** 2) < 0.1 * np.mean((truth - truth.mean(axis=0)) ** 2)
    baseline = cosine_similarity(np.broadcast_to(truth.mean(axis=0), truth.shape), truth)
    assert np.median(baseline) < 0.95
    loss = toy_loss()
    assert np.mean(np.abs(loss(mean) - loss(truth))) < 0.05
    assert np.all(spread >= 0) and spread.mean() > 0  # members disagree somewhat


def test_mean_spectra_weighted_by_replicates_and_nan_bridged() -> None:
    space = toy_space()
    spectra = np.ones((3, len(WAVELENGTHS)))
    spectra[0, 10] = np.nan
    spectra[:, 20] = np.nan  # NaN in every replicate at one point: bridged from its neighbours
    spectra[:, 21] = 3.0
    obs = [
        Observation(0, {"Q_a": 10.0, "Q_b": 10.0, "Q_total": 200.0}, 0.5, spectra=spectra),
        Observation(0, {"Q_a": 20.0, "Q_b": 10.0, "Q_total": 200.0}, None, failed=True),  # no spectra
    ]
    data = SpectrumData.from_history(History(obs, WAVELENGTHS, toy_loss()), space.names)
    assert len(data) == 1 and data.count.tolist() == [3]
    assert data.mean[0, 10] == 1.0
    assert data.mean[0, 20] == pytest.approx(2.0)
    assert np.isfinite(data.mean).all()


def test_too_few_conditions_is_refused() -> None:
    history = random_history(1, per_round=4)
    with pytest.raises(NotEnoughSpectra, match="at least 8 conditions"):
        fit_on_history(history, toy_space(), FAST, seed=0)


def test_same_seed_same_model_other_seed_other_model(history: History, ensemble: SpectrumEnsemble) -> None:
    x = sample_feasible(toy_space(), 20, np.random.default_rng(3))
    again = fit_on_history(history, toy_space(), FAST, seed=7)
    np.testing.assert_array_equal(again.predict_members(x), ensemble.predict_members(x))
    other = fit_on_history(history, toy_space(), FAST, seed=8)
    assert not np.allclose(other.predict_members(x), ensemble.predict_members(x))


def test_full_width_output_layer_also_learns(history: History) -> None:
    """components=0: the paper's plain form, one output per wavelength."""
    model = fit_on_history(history, toy_space(), EnsembleSettings(members=2, components=0), seed=1)
    assert model.basis.shape == (len(WAVELENGTHS), len(WAVELENGTHS))
    x = sample_feasible(toy_space(), 50, np.random.default_rng(5))
    assert np.median(cosine_similarity(model.predict(x)[0], toy_spectra(x))) > 0.98


def test_batch_is_feasible_spread_out_and_good(ensemble: SpectrumEnsemble) -> None:
    space = toy_space()
    loss = toy_loss()
    settings = SearchSettings(candidates=1500, min_distance=0.1)
    avoid = sample_feasible(space, 3, np.random.default_rng(4))
    batch = search_batch(ensemble, space, loss, 12, np.random.default_rng(0), settings, avoid=avoid)
    assert batch.x.shape == (12, 3)
    assert space.feasible(batch.x).all()
    u = UnitScaler.for_space(space).to_unit(np.concatenate([avoid, batch.x]))
    d = np.sqrt(((u[:, None] - u[None]) ** 2).sum(-1))
    assert d[np.triu_indices(len(u), 1)].min() >= 0.1 - 1e-9
    assert batch.predictions.shape == (12, len(WAVELENGTHS))
    np.testing.assert_allclose(batch.predictions, ensemble.predict(batch.x)[0])
    # the picks are far better than random feasible conditions, by the true loss
    random_loss = loss(toy_spectra(sample_feasible(space, 500, np.random.default_rng(6))))
    picked_loss = loss(toy_spectra(batch.x))
    assert np.median(picked_loss) < np.quantile(random_loss, 0.1)
    assert batch.predicted_best <= batch.predicted_loss.min() + 1e-12


def test_batch_keeps_clear_of_measured_and_failed_conditions(ensemble: SpectrumEnsemble) -> None:
    space = toy_space()
    first = search_batch(ensemble, space, toy_loss(), 4, np.random.default_rng(0), SearchSettings())
    settings = SearchSettings(measured_distance=0.05, failed_distance=0.05)
    second = search_batch(
        ensemble,
        space,
        toy_loss(),
        4,
        np.random.default_rng(0),
        settings,
        measured=first.x[:2],
        failed=first.x[2:],
    )
    u = UnitScaler.for_space(space)
    d = np.sqrt(((u.to_unit(second.x)[:, None] - u.to_unit(first.x)[None]) ** 2).sum(-1))
    assert d.min() >= 0.05


def test_search_is_reproducible(ensemble: SpectrumEnsemble) -> None:
    space = toy_space()
    a = search_batch(
        ensemble, space, toy_loss(), 5, np.random.default_rng(11), SearchSettings(candidates=500)
    )
    b = search_batch(
        ensemble, space, toy_loss(), 5, np.random.default_rng(11), SearchSettings(candidates=500)
    )
    np.testing.assert_array_equal(a.x, b.x)


def test_model_inputs_scaled_on_hard_limits() -> None:
    scaler = model_scaler(toy_space())
    np.testing.assert_allclose(scaler.lo, [1.0, 1.0, 50.0])
    assert scaler.log.tolist() == [False, False, True]


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(OptimizerSettingsError, match=r"model\.memberz"):
        parse_settings({"model": {"memberz": 3}})
    with pytest.raises(OptimizerSettingsError, match=r"search\.candidates"):
        parse_settings({"search": {"candidates": 5}})
    assert parse_settings({"model": {"members": 2}}).model.members == 2


def test_batch_stays_out_of_ground_where_failures_outweigh_successes(ensemble: SpectrumEnsemble) -> None:
    """The network's favourite ground failed, over and over (a precipitate): its batch goes elsewhere,
    though the failures are too far apart for the fixed exclusion radius alone to cover the ground."""
    space = toy_space()
    unit = UnitScaler.for_space(space)
    free = search_batch(ensemble, space, toy_loss(), 6, np.random.default_rng(0), SearchSettings())
    centre = unit.to_unit(free.x).mean(axis=0)
    rng = np.random.default_rng(1)
    around = np.clip(centre + rng.uniform(-0.2, 0.2, (30, len(centre))), 0, 1)
    failed = unit.from_unit(around)
    failed = failed[space.feasible(failed)]
    measured = sample_feasible(space, 40, np.random.default_rng(2))
    far = np.abs(unit.to_unit(measured) - centre).max(axis=1) > 0.3
    batch = search_batch(ensemble, space, toy_loss(), 6, np.random.default_rng(0), SearchSettings(),
                         measured=measured[far], failed=failed)
    inside = np.abs(unit.to_unit(batch.x) - centre).max(axis=1) < 0.15
    assert np.abs(unit.to_unit(free.x) - centre).max(axis=1).min() < 0.15  # it did want to go there
    assert inside.sum() == 0, unit.to_unit(batch.x)
