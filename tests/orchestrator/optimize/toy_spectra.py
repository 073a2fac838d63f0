"""A small spectrum-valued toy problem for the network's and the two-step policy's tests.

Three inputs: two reagent shares (sum constraint) and a total flow (log-scaled). The spectrum is one
Gaussian band whose position follows the ratio of the two shares, whose height follows the second
share and whose width follows the total flow; the target is the band at 640 nm, so the optimum is a
known ridge inside the bounds.
"""

from __future__ import annotations

import numpy as np

from orchestrator.optimize.base import History, Observation, Space, Variable
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.spectra import SpectrumLoss

WAVELENGTHS = np.arange(380.0, 801.0, 4.0)  # a coarser grid than the protocol's keeps tests fast


def toy_space(a_high: float = 40.0) -> Space:
    return Space(
        variables=(
            Variable("Q_a", 5.0, a_high, 1.0, 60.0),
            Variable("Q_b", 5.0, 40.0, 1.0, 60.0),
            Variable("Q_total", 100.0, 500.0, 50.0, 1000.0, kind="total", log=True),
        ),
        percent_sum_max=60.0,
    )


def toy_spectra(x: np.ndarray, wl: np.ndarray = WAVELENGTHS) -> np.ndarray:
    x = np.atleast_2d(x)
    a, b, total = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    centre = 450.0 + 300.0 * a / (a + b)
    height = 0.3 + 1.2 * b / 40.0
    width = 30.0 + 30.0 * (total - 100.0) / 400.0
    return height * np.exp(-0.5 * ((wl[None, :] - centre) / width) ** 2) + 0.02


def toy_loss(wl: np.ndarray = WAVELENGTHS) -> SpectrumLoss:
    return SpectrumLoss(np.exp(-0.5 * ((wl - 640.0) / 45.0) ** 2) + 0.02)


def measure(
    space: Space, x: np.ndarray, round_index: int, rng: np.random.Generator, replicates: int = 5
) -> list[Observation]:
    """Noisy replicate spectra of each row of ``x``, as the engine would hand them to the optimiser."""
    loss = toy_loss()
    out = []
    for row, clean in zip(np.atleast_2d(x), toy_spectra(x), strict=True):
        spectra = clean * (1 + 0.03 * rng.standard_normal((replicates, 1)))
        spectra = spectra + 0.01 * rng.standard_normal(spectra.shape)
        out.append(
            Observation(
                round_index=round_index,
                inputs=space.to_dicts(row)[0],
                median_loss=float(np.median(loss(spectra))),
                spectra=spectra,
                source="test",
            )
        )
    return out


def random_history(n_rounds: int, per_round: int = 15, seed: int = 0) -> History:
    """``n_rounds`` rounds of uniformly random feasible conditions, measured."""
    space = toy_space()
    rng = np.random.default_rng(seed)
    obs: list[Observation] = []
    for r in range(n_rounds):
        obs += measure(space, sample_feasible(space, per_round, rng), r, rng)
    return History(obs, WAVELENGTHS, toy_loss(), round_index=n_rounds)
