"""The BoTorch qLogNEI reference: feasible under the sum constraint, reproducible, widens like the rest."""

from __future__ import annotations

import numpy as np

from orchestrator.optimize.base import History, Observation, Space, Variable
from orchestrator.optimize.constraints import make_feasible
from orchestrator.optimize.registry import make_optimizer
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.spectra import SpectrumLoss

FAST = {"num_restarts": 2, "raw_samples": 64}
WIDENING = {"enabled": True, "edge_fraction": 0.05, "trigger_fraction": 0.3, "step_fraction": 0.25}


def space3(sum_max: float) -> Space:
    return Space(
        variables=(
            Variable("a", 4.0, 20.0, 0.5, 80.0),
            Variable("b", 4.0, 20.0, 0.5, 80.0),
            Variable("q", 200.0, 1000.0, 50.0, 2000.0, kind="total", log=True),
        ),
        percent_sum_max=sum_max,
    )


def history(space: Space, optimum: np.ndarray, n: int = 15, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    scaler = UnitScaler.for_space(space)
    x = make_feasible(space, scaler.from_unit(rng.random((n, 3))))
    loss = ((scaler.to_unit(x) - optimum) ** 2).sum(axis=1) + 0.005 * rng.standard_normal(n)
    obs = [Observation(1, row, float(v)) for row, v in zip(space.to_dicts(x), loss, strict=True)]
    return History(obs, np.linspace(380, 800, 5), SpectrumLoss(np.arange(5.0)), round_index=2)


def test_batches_are_feasible_under_a_tight_sum_and_reproducible() -> None:
    space = space3(22.0)  # the box corner (20, 20) is far over the sum limit
    hist = history(space, np.array([0.4, 0.5, 0.5]))
    a = make_optimizer("qnei_botorch", FAST, None, 4).suggest(hist, space, 3)
    b = make_optimizer("qnei_botorch", FAST, None, 4).suggest(hist, space, 3)
    assert a.batch == b.batch
    x = a.space.to_array(a.batch)
    assert len(x) == 3 and a.space.feasible(x).all() and space.feasible(x, hard=True).all()
    assert a.sources == ["qnei_botorch"] * 3


def test_batch_goes_where_the_loss_is_low() -> None:
    space = space3(90.0)
    hist = history(space, np.array([0.3, 0.6, 0.5]), n=25)
    sug = make_optimizer("qnei_botorch", FAST, WIDENING, 0).suggest(hist, space, 2)
    u = UnitScaler.for_space(space).to_unit(space.to_array(sug.batch))
    # the best pick lies nearer the optimum than a random point would (mean distance ~0.6)
    assert np.linalg.norm(u - np.array([0.3, 0.6, 0.5]), axis=1).min() < 0.25
