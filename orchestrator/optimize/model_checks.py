"""How far to trust the spectrum network: accuracy and stability, as Mekki-Berrada et al. (2021) judged it.

* Accuracy: the spectra a model predicted for a batch *before* it was measured, against the measured
  spectra (per condition, the median of the accepted replicates): cosine similarity and mean squared
  error, and how far the loss of the predicted spectrum was from the measured median loss.
* Stability: two successive models (trained before and after the latest batch) predicting the same
  fixed probe conditions: the same cosine similarity and squared error between their predictions.
  A model that still changes its mind a lot with each batch has not converged, however well it fits.

Everything here is a pure function of arrays, except :func:`accuracy_from_history`, which reads the
predictions the engine stored with each observation (``Observation.prediction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from orchestrator.optimize.base import History, Observation, Space
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.optimize.replicates import replicate_median
from orchestrator.spectra import SpectrumLoss


@dataclass(frozen=True)
class Agreement:
    """How closely one set of spectra matches another, row by row."""

    n: int
    cosine_mean: float
    cosine_min: float
    mse: float  # mean over conditions and wavelengths, absorbance^2
    loss_mae: float | None = None  # mean |loss(predicted) - measured loss|, when losses are known

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain floats for the journal (JSON)."""
        return {
            k: (None if v is None else (int(v) if k == "n" else float(v))) for k, v in asdict(self).items()
        }


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two stacks of spectra (n, n_wl) as they are (no normalisation), as the paper
    compared spectra (scikit-learn's ``cosine_similarity``); a zero row scores 0."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"cannot compare spectra of shapes {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)


def agreement(
    predicted: np.ndarray,
    reference: np.ndarray,
    *,
    loss: SpectrumLoss | None = None,
    reference_loss: np.ndarray | None = None,
) -> Agreement:
    """Cosine and squared error of ``predicted`` against ``reference`` spectra (n, n_wl); with ``loss``
    the mean absolute error of the predicted spectra's loss against ``reference_loss`` (default: the
    loss of the reference spectra)."""
    predicted = np.atleast_2d(np.asarray(predicted, dtype=float))
    reference = np.atleast_2d(np.asarray(reference, dtype=float))
    if len(predicted) == 0:
        raise ValueError("no spectra to compare")
    cos = cosine_similarity(predicted, reference)
    mse = float(np.mean((predicted - reference) ** 2))
    loss_mae = None
    if loss is not None:
        ref = np.asarray(loss(reference) if reference_loss is None else reference_loss, dtype=float)
        loss_mae = float(np.mean(np.abs(np.asarray(loss(predicted), dtype=float) - ref)))
    return Agreement(
        n=len(predicted),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        mse=mse,
        loss_mae=loss_mae,
    )


def stability(previous: np.ndarray, current: np.ndarray, loss: SpectrumLoss | None = None) -> Agreement:
    """Successive models' predictions at the same probe conditions (n, n_wl each); with ``loss``, also
    how far their predicted losses moved."""
    return agreement(current, previous, loss=loss)


def probe_points(space: Space, n: int, seed: int) -> np.ndarray:
    """A fixed set of feasible probe conditions: the same ``space`` and ``seed`` give the same points,
    so two models are compared where neither chose to look."""
    return sample_feasible(space, n, np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])))


def measured_spectrum(obs: Observation, wavelengths: np.ndarray | None = None) -> np.ndarray | None:
    """A condition's measured spectrum: the median of its accepted replicate spectra over their finite
    points, a point missing in every replicate bridged along ``wavelengths``
    (:func:`orchestrator.optimize.replicates.replicate_median`); None without spectra."""
    return replicate_median(obs.spectra, wavelengths)


def accuracy_from_history(history: History, round_index: int | None = None) -> Agreement | None:
    """Accuracy of the predictions recorded before the batch of ``round_index`` (default: the latest
    round that has any) against what was then measured; None when no such pair exists."""
    pairs: dict[int, list[tuple[np.ndarray, np.ndarray, float | None]]] = {}
    for obs in history.observations:
        if obs.prediction is None or obs.failed:
            continue
        measured = measured_spectrum(obs, history.wavelengths)
        if measured is None:
            continue
        pred = np.asarray(obs.prediction, dtype=float)
        if pred.shape != measured.shape:
            continue
        pairs.setdefault(obs.round_index, []).append((pred, measured, obs.median_loss))
    if not pairs:
        return None
    r = max(pairs) if round_index is None else round_index
    if r not in pairs:
        return None
    pred = np.array([p for p, _, _ in pairs[r]])
    meas = np.array([m for _, m, _ in pairs[r]])
    losses = [ml for _, _, ml in pairs[r]]
    measured_loss = None if any(ml is None for ml in losses) else np.array(losses, dtype=float)
    return agreement(pred, meas, loss=history.loss, reference_loss=measured_loss)


def accuracy_of(
    predict: Callable[[np.ndarray], np.ndarray],
    observations: list[Observation],
    space: Space,
    loss: SpectrumLoss,
) -> Agreement | None:
    """Accuracy of a model that did not see ``observations`` (``predict``: inputs -> spectra) on their
    measured spectra; None when none of them has spectra. For a history whose predictions were not
    recorded, the model trained without the latest round gives the same numbers as the ones recorded."""
    pairs = [(o, measured_spectrum(o)) for o in observations if not o.failed]
    pairs = [(o, m) for o, m in pairs if m is not None]
    if not pairs:
        return None
    predicted = predict(space.to_array([o.inputs for o, _ in pairs]))
    measured = np.array([m for _, m in pairs])
    losses = [o.median_loss for o, _ in pairs]
    reference = None if any(v is None for v in losses) else np.array(losses, dtype=float)
    return agreement(predicted, measured, loss=loss, reference_loss=reference)


def accuracy_by_round(history: History) -> dict[int, Agreement]:
    """:func:`accuracy_from_history` for every round with recorded predictions."""
    rounds = sorted({o.round_index for o in history.observations if o.prediction is not None})
    out: dict[int, Agreement] = {}
    for r in rounds:
        acc = accuracy_from_history(history, r)
        if acc is not None:
            out[r] = acc
    return out
