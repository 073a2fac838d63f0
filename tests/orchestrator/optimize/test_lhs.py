"""Latin hypercube and random designs: feasible, stratified, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.optimize.base import History, Space, Variable
from orchestrator.optimize.constraints import InfeasibleSpaceError, make_feasible
from orchestrator.optimize.lhs import latin_hypercube
from orchestrator.optimize.registry import OptimizerSettingsError, UnknownStrategyError, make_optimizer
from orchestrator.spectra import SpectrumLoss


def paper_space(agno3_high: float = 20.0, sum_max: float = 90.0) -> Space:
    pct = [("Q_AgNO3", 4.0, agno3_high), ("Q_PVA", 10.0, 40.0), ("Q_TSC", 4.0, 20.0), ("Q_seed", 4.0, 20.0)]
    return Space(
        variables=(
            *(Variable(n, lo, hi, 0.5, 90.0) for n, lo, hi in pct),
            Variable("Q_total", 200.0, 1000.0, 50.0, 2000.0, kind="total", log=True),
        ),
        percent_sum_max=sum_max,
    )


def empty_history(round_index: int = 1) -> History:
    wl = np.linspace(380, 800, 421)
    return History([], wl, SpectrumLoss(np.exp(-(((wl - 640) / 40) ** 2))), round_index=round_index)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    agno3_high=st.floats(5.0, 90.0),
    sum_max=st.floats(30.0, 100.0),
)
def test_lhs_rows_always_feasible(n: int, seed: int, agno3_high: float, sum_max: float) -> None:
    space = paper_space(agno3_high, sum_max)
    x = latin_hypercube(space, n, np.random.default_rng(seed))
    assert x.shape == (n, 5)
    assert space.feasible(x).all()
    assert space.feasible(x, hard=True).all()


def test_lhs_is_stratified_when_the_box_is_feasible() -> None:
    space = paper_space(sum_max=200.0)
    x = latin_hypercube(space, 15, np.random.default_rng(3))
    u = np.column_stack([(x[:, :4] - [4, 10, 4, 4]) / [16, 30, 16, 16], np.log(x[:, 4] / 200) / np.log(5)])
    for column in u.T:  # one point in each of the 15 strata of every input
        assert sorted(np.floor(column * 15).astype(int)) == list(range(15))


def test_lhs_keeps_most_rows_stratified_under_a_tight_sum() -> None:
    space = paper_space(agno3_high=45.0, sum_max=90.0)
    x = latin_hypercube(space, 15, np.random.default_rng(0))
    strata = np.floor((x[:, 1] - 10.0) / 30.0 * 15).astype(int)
    assert len(set(strata)) >= 12


def test_make_feasible_shrinks_only_offending_rows() -> None:
    space = paper_space(agno3_high=60.0)
    x = np.array([[10.0, 20.0, 10.0, 10.0, 500.0], [60.0, 40.0, 20.0, 20.0, 500.0]])
    y = make_feasible(space, x)
    np.testing.assert_array_equal(y[0], x[0])
    assert y[1, :4].sum() == pytest.approx(90.0)
    assert space.feasible(y).all()


def test_lower_bounds_over_the_sum_are_refused() -> None:
    with pytest.raises(InfeasibleSpaceError, match="lower some lower bounds"):
        latin_hypercube(paper_space(sum_max=20.0), 5, np.random.default_rng(0))


@pytest.mark.parametrize("strategy", ["lhs", "random"])
def test_registry_designs_are_deterministic_per_seed_and_round(strategy: str) -> None:
    space = paper_space()
    a = make_optimizer(strategy, {}, None, seed=7).suggest(empty_history(1), space, 15)
    b = make_optimizer(strategy, {}, None, seed=7).suggest(empty_history(1), space, 15)
    c = make_optimizer(strategy, {}, None, seed=7).suggest(empty_history(2), space, 15)
    assert a.batch == b.batch
    assert a.batch != c.batch
    assert a.sources == [strategy] * 15
    assert space.feasible(space.to_array(a.batch)).all()


def test_registry_refuses_unknown_names_and_settings() -> None:
    with pytest.raises(UnknownStrategyError, match="use one of"):
        make_optimizer("simplex", {}, None, 0)
    with pytest.raises(OptimizerSettingsError, match="unknown key"):
        make_optimizer("lhs", {"restarts": 3}, None, 0)
