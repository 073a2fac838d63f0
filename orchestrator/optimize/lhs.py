"""Space-filling designs: a Latin hypercube honouring the sum constraint, and plain random sampling.

The first round of the paper (Mekki-Berrada et al. 2021) was a 15-point Latin hypercube. A Latin
hypercube over the box can put rows above the percent-sum limit; we draw several hypercubes, keep the
one with the most feasible rows (ties: the largest minimum distance), and shrink only its infeasible
rows onto the constraint, so the stratification of every other row is kept exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import qmc

from orchestrator.optimize.base import History, Space, Suggestion
from orchestrator.optimize.constraints import check_space, make_feasible, sample_feasible
from orchestrator.optimize.transforms import UnitScaler


def round_rng(seed: int, round_index: int) -> np.random.Generator:
    """The generator of one optimiser in one round (the contract in ``base.py``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(round_index)]))


def latin_hypercube(space: Space, n: int, rng: np.random.Generator, *, candidates: int = 32) -> np.ndarray:
    """``n`` points of a Latin hypercube over the current bounds (log-scaled where ``Variable.log``)."""
    check_space(space)
    if n <= 0:
        return np.empty((0, len(space.variables)))
    scaler = UnitScaler.for_space(space)
    best: tuple[int, float] | None = None
    best_x = None
    for _ in range(candidates):
        u = qmc.LatinHypercube(d=len(space.variables), rng=rng).random(n)
        x = scaler.from_unit(u)
        n_ok = int(space.feasible(x).sum())
        spread = float(pdist(u).min()) if n > 1 else 0.0
        if best is None or (n_ok, spread) > best:
            best, best_x = (n_ok, spread), x
    assert best_x is not None
    return make_feasible(space, best_x)


class LatinHypercubeOptimizer:
    """Every round a fresh Latin hypercube over the current bounds (no model; the benchmark's floor)."""

    name = "lhs"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        x = latin_hypercube(space, n, round_rng(self.seed, history.round_index))
        return Suggestion(batch=space.to_dicts(x), space=space, sources=[self.name] * len(x))


class RandomOptimizer:
    """Uniform random feasible points (uniform in log space for log variables)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        x = sample_feasible(space, n, round_rng(self.seed, history.round_index))
        return Suggestion(batch=space.to_dicts(x), space=space, sources=[self.name] * len(x))


def design_suggestion(name: str, seed: int, history: History, space: Space, n: int, why: str) -> Suggestion:
    """What a model-based strategy proposes before it has data to model: a Latin hypercube."""
    x = latin_hypercube(space, n, round_rng(seed, history.round_index))
    notes: dict[str, object] = {"widening": []}
    if history.observations:  # a first round is the initial design, not a fall-back to report as one
        notes["fallback"] = why
    return Suggestion(batch=space.to_dicts(x), space=space, sources=["lhs"] * len(x), notes=notes)
