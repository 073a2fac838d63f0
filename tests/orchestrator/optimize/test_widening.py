"""Bound widening: the plain rule fires on crowding alone; the gated rule needs the best conditions on
the edge and a predicted improvement outward, steps once per edge and spends few conditions outside."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.optimize.base import History, Observation, Space, Variable
from orchestrator.optimize.registry import make_optimizer
from orchestrator.optimize.widening import (
    WideningPolicy,
    WideningSettingsError,
    crowded_edges,
    edge_streak,
    select_with_widening,
    stepped_edge,
)
from orchestrator.protocol import WideningSpec
from orchestrator.spectra import SpectrumLoss

WIDENING = {"enabled": True, "edge_fraction": 0.05, "trigger_fraction": 0.3, "step_fraction": 0.25}


def space2(high: float = 20.0) -> Space:
    return Space(
        variables=(Variable("a", 0.0, high, 0.0, 80.0), Variable("b", 0.0, 20.0, 0.0, 80.0)),
        percent_sum_max=90.0,
    )


class BowlSurrogate:
    """A fake model: loss = |x - centre|^2 / 100; its picks hug the upper edge of ``a``."""

    def __init__(self, centre: tuple[float, float]) -> None:
        self.centre = np.array(centre)
        self.selected_spaces: list[Space] = []

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(x) - self.centre) ** 2).sum(axis=1) / 100.0

    def predicted_best(self, space: Space) -> np.ndarray:
        lo = np.array([v.low for v in space.variables])
        hi = np.array([v.high for v in space.variables])
        return np.clip(self.centre, lo, hi)

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        self.selected_spaces.append(space)
        a = space.variables[0]
        b = np.linspace(space.variables[1].low, space.variables[1].high, n)
        return np.column_stack([np.full(n, a.high), b])


def history_at(points: list[tuple[float, float]], losses: list[float]) -> History:
    wl = np.linspace(380, 800, 5)
    obs = [Observation(1, {"a": p[0], "b": p[1]}, v) for p, v in zip(points, losses, strict=True)]
    return History(obs, wl, SpectrumLoss(np.arange(5.0)), round_index=2)


def test_stepped_edge_is_a_fraction_of_range_and_capped_at_the_hard_limit() -> None:
    assert stepped_edge(space2(20.0), 0, "high", 0.25) == pytest.approx(25.0)
    assert stepped_edge(space2(78.0), 0, "high", 0.25) == pytest.approx(80.0)
    assert stepped_edge(space2(80.0), 0, "high", 0.25) is None
    assert stepped_edge(space2(), 0, "low", 0.25) is None  # low already on the hard limit 0


def test_log_variables_step_in_log_units() -> None:
    space = Space((Variable("q", 100.0, 1000.0, 10.0, 5000.0, kind="total", log=True),))
    assert stepped_edge(space, 0, "high", 0.5) == pytest.approx(1000.0 * 10**0.5)


def test_log_variables_step_down_at_least_as_far_as_a_linear_one() -> None:
    share = Space((Variable("tsc", 4.0, 20.0, 0.5, 80.0, log=True),))
    # the log step alone would give 4 / 5**0.25 = 2.67; the linear step reaches the hard limit
    assert stepped_edge(share, 0, "low", 0.25) == pytest.approx(0.5)
    flow = Space((Variable("q", 200.0, 1000.0, 10.0, 5000.0, kind="total", log=True),))
    assert stepped_edge(flow, 0, "low", 0.1) == pytest.approx(min(200.0 / 5**0.1, 200.0 - 80.0))
    assert stepped_edge(flow, 0, "high", 0.1) == pytest.approx(1000.0 * 5**0.1)


def test_crowding_counts_the_fraction_near_each_edge() -> None:
    batch = np.array([[20.0, 5.0], [19.5, 6.0], [10.0, 7.0], [1.0, 8.0]])
    assert crowded_edges(space2(), batch, WideningPolicy(trigger_fraction=0.5)) == [(0, "high", 0.5)]


def test_plain_rule_widens_every_crowded_edge() -> None:
    policy = WideningPolicy.from_protocol(WIDENING, rule="plain")
    hist = history_at([(5.0, 5.0)], [0.5])
    batch, space, notes = select_with_widening(BowlSurrogate((5.0, 5.0)), hist, space2(), 15, policy)
    assert space.variables[0].high == pytest.approx(25.0)
    assert notes["widening"][0] | {"reason": ""} == {"variable": "a", "edge": "high", "old": 20.0, "new": 25.0, "reason": ""}
    assert np.all(batch[:, 0] <= 20.0)


def test_gated_rule_refuses_when_the_best_is_inside() -> None:
    policy = WideningPolicy.from_protocol(WIDENING, rule="gated")
    hist = history_at([(8.0, 8.0), (20.0, 2.0)], [0.1, 0.6])
    batch, space, notes = select_with_widening(BowlSurrogate((8.0, 8.0)), hist, space2(), 15, policy)
    assert space == space2()
    assert notes["widening"] == []
    assert notes["widening_refused"][0]["variable"] == "a"


def test_gated_rule_widens_one_step_and_spends_at_most_max_new_outside() -> None:
    policy = WideningPolicy.from_protocol(WIDENING, rule="gated", max_new=3)
    hist = history_at([(19.5, 8.0), (5.0, 8.0)], [0.1, 0.6])
    surrogate = BowlSurrogate((40.0, 8.0))
    batch, space, notes = select_with_widening(surrogate, hist, space2(), 15, policy)
    assert space.variables[0].high == pytest.approx(25.0)  # one step, not all the way to 40
    assert [c["variable"] for c in notes["widening"]] == ["a"]
    assert len(batch) == 15
    assert int(np.sum(batch[:, 0] > 20.0 + 1e-9)) == 3
    assert space.feasible(batch).all()


class InsideSurrogate(BowlSurrogate):
    """Predicts its best inside the box and picks away from every edge: nothing crowds, nothing passes."""

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        self.selected_spaces.append(space)
        lo = np.array([v.low for v in space.variables])
        hi = np.array([v.high for v in space.variables])
        return np.tile((lo + hi) / 2, (n, 1))


@pytest.mark.parametrize(("rounds_setting", "best_round", "opens"), [
    (2, 1, True),    # measured in round 1, round 2 did not beat it, round 3 is being suggested
    (2, 2, False),   # measured in the last round: not stalled yet
    (0, 1, False),   # off
    (3, 1, False),   # not old enough for this setting
])
def test_a_stalled_best_on_an_edge_opens_it_without_the_models_support(
    rounds_setting: int, best_round: int, opens: bool
) -> None:
    policy = WideningPolicy.from_protocol(WIDENING | {"stalled_edge_rounds": rounds_setting}, rule="gated")
    wl = np.linspace(380, 800, 5)
    obs = [Observation(best_round, {"a": 19.8, "b": 8.0}, 0.1), Observation(1, {"a": 5.0, "b": 8.0}, 0.6),
           Observation(2, {"a": 10.0, "b": 8.0}, 0.5)]
    hist = History(obs, wl, SpectrumLoss(np.arange(5.0)), round_index=3)
    # the model's bowl sits inside, so the gate alone refuses: the loss rises a half step out
    batch, space, notes = select_with_widening(InsideSurrogate((10.0, 8.0)), hist, space2(), 15, policy)
    assert (space.variables[0].high > 20.0) is opens
    if opens:
        (change,) = notes["widening"]
        assert change["variable"] == "a" and change["edge"] == "high"
        assert "stalled edge" in change["reason"] and "unbeaten for 1 round(s)" in change["reason"]
        assert notes["new_ground_conditions"] == policy.max_new
        assert int(np.sum(batch[:, 0] > 20.0 + 1e-9)) == policy.max_new
    else:
        assert notes["widening"] == []


def test_the_protocols_widening_defaults_are_the_policys() -> None:
    spec = WideningSpec().model_dump()
    assert spec["stalled_edge_rounds"] == 2  # on by default (docs/optimizer_benchmark.md, "Stalled edges")
    assert WideningPolicy.from_protocol(spec, rule="gated") == WideningPolicy(rule="gated")
    assert WideningPolicy.from_protocol(WIDENING, rule="gated").stalled_edge_rounds == 2  # key left out


def test_edge_streak_counts_the_latest_rounds_running_that_moved_an_edge_out() -> None:
    rounds = [{"a": (0.0, 20.0)}, {"a": (0.0, 25.0)}, {"a": (0.0, 31.25)}]
    assert edge_streak(rounds, "a", "high") == 2
    assert edge_streak(rounds, "a", "low") == 0
    assert edge_streak([*rounds, {"a": (0.0, 31.25)}], "a", "high") == 0  # a round without a move ends it
    assert edge_streak([{"a": (0.0, 20.0)}, {"a": (0.0, 20.0)}, {"a": (0.0, 25.0)}], "a", "high") == 1
    assert edge_streak([{"a": (5.0, 20.0)}, {"a": (2.0, 20.0)}], "a", "low") == 1
    assert edge_streak([], "a", "high") == 0


def test_an_edge_that_keeps_paying_steps_further_each_round() -> None:
    policy = WideningPolicy.from_protocol(WIDENING | {"step_growth": 2.0}, rule="gated", max_new=3)
    hist = history_at([(31.0, 8.0), (5.0, 8.0)], [0.1, 0.6])
    hist.bounds = [{"a": (0.0, 20.0), "b": (0.0, 20.0)}, {"a": (0.0, 25.0), "b": (0.0, 20.0)},
                   {"a": (0.0, 31.25), "b": (0.0, 20.0)}]
    surrogate = BowlSurrogate((70.0, 8.0))
    batch, space, notes = select_with_widening(surrogate, hist, space2(31.25), 15, policy)
    # moved out two rounds running: 0.25 x 2^2 = the whole current range, 31.25 -> 62.5
    assert space.variables[0].high == pytest.approx(62.5)
    assert "moved out 2 round(s) running" in notes["widening"][0]["reason"]
    assert int(np.sum(batch[:, 0] > 31.25 + 1e-9)) == 3 and space.feasible(batch).all()
    # the same history with step_growth 1 steps a quarter, and the paper's plain rule never grows
    for same in (WideningPolicy.from_protocol(WIDENING | {"step_growth": 1.0}, rule="gated"),
                 WideningPolicy.from_protocol(WIDENING, rule="plain")):
        _, space, _ = select_with_widening(BowlSurrogate((70.0, 8.0)), hist, space2(31.25), 15, same)
        assert space.variables[0].high == pytest.approx(31.25 * 1.25)


def test_a_grown_step_is_still_gated_and_capped_at_the_hard_limit() -> None:
    policy = WideningPolicy.from_protocol(WIDENING, rule="gated")
    rounds = [{"a": (0.0, 20.0), "b": (0.0, 20.0)}, {"a": (0.0, 30.0), "b": (0.0, 20.0)},
              {"a": (0.0, 50.0), "b": (0.0, 20.0)}]
    hist = history_at([(49.0, 8.0), (5.0, 8.0)], [0.1, 0.6])
    hist.bounds = rounds
    _, space, notes = select_with_widening(BowlSurrogate((75.0, 8.0)), hist, space2(50.0), 15, policy)
    assert space.variables[0].high == pytest.approx(80.0)  # 50 + 50 capped at the hard limit
    assert notes["widening"][0]["reason"].endswith("; stopped at the hard limit 80")  # why the step is short
    _, space, notes = select_with_widening(BowlSurrogate((30.0, 8.0)), hist, space2(50.0), 15, policy)
    assert space.variables[0].high == 50.0 and notes["widening_refused"][0]["variable"] == "a"


class TwoBasins(BowlSurrogate):
    """Best inside at (8, 8); a second, slightly worse basin at (26, 8) just beyond a's edge at 20."""

    def __init__(self) -> None:
        super().__init__((8.0, 8.0))

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        inner = ((x - [8.0, 8.0]) ** 2).sum(axis=1)
        outer = ((x - [26.0, 8.0]) ** 2).sum(axis=1) + 5.0
        return np.minimum(inner, outer) / 100.0


def test_the_batchs_own_picks_on_an_edge_can_pass_the_gate() -> None:
    """The acquisition crowds a's edge because the slope runs outward there, though the best measured and
    the predicted-best conditions sit inside: the most promising pick on the edge opens it."""
    hist = history_at([(8.0, 8.0), (2.0, 15.0), (15.0, 2.0)], [0.05, 0.6, 0.7])
    policy = WideningPolicy.from_protocol(WIDENING, rule="gated")
    _, space, notes = select_with_widening(TwoBasins(), hist, space2(), 15, policy)
    assert space.variables[0].high == pytest.approx(25.0)
    assert notes["widening"][0]["reason"].startswith("gated rule: 100% of the batch crowds it; the most promising pick")
    _, space, notes = select_with_widening(TwoBasins(), hist, space2(), 15, replace(policy, gate_on_picks=False))
    assert space == space2() and notes["widening_refused"][0]["variable"] == "a"


def test_a_pick_on_the_edge_worse_than_most_measured_conditions_opens_nothing() -> None:
    """The same edge, but most measured conditions already beat the best pick on it (predicted 0.41
    against a median of 0.3): the pick is there for the model's uncertainty, and widening for it would
    spend the new-ground share far from the best conditions (a traced TwoBand campaign lost two rounds
    so, with its optimum inside the box)."""
    hist = history_at([(8.0, 8.0), (2.0, 15.0), (15.0, 2.0)], [0.05, 0.3, 0.7])
    policy = WideningPolicy.from_protocol(WIDENING, rule="gated")
    _, space, notes = select_with_widening(TwoBasins(), hist, space2(), 15, policy)
    assert space == space2() and "new_ground_conditions" not in notes
    assert notes["widening_refused"][0]["variable"] == "a"
    assert re.search(r"; the most promising pick on it predicts 0\.41\d\d, worse than the median measured "
                     r"condition \(0\.3000\)$", notes["widening_refused"][0]["reason"])


def test_a_second_opinion_can_open_an_edge_the_first_model_refuses() -> None:
    class WithSecondOpinion(BowlSurrogate):
        def __init__(self) -> None:
            super().__init__((8.0, 8.0))  # the first model sees its optimum inside
            self.alternatives = (BowlSurrogate((40.0, 8.0)),)  # the second sees it beyond a's edge

    policy = WideningPolicy.from_protocol(WIDENING, rule="gated", max_new=3)
    hist = history_at([(19.5, 8.0), (5.0, 8.0)], [0.1, 0.6])
    _, alone, _ = select_with_widening(BowlSurrogate((8.0, 8.0)), hist, space2(), 15, policy)
    _, both, notes = select_with_widening(WithSecondOpinion(), hist, space2(), 15, policy)
    assert alone.variables[0].high == 20.0
    assert both.variables[0].high == pytest.approx(25.0) and notes["widening"][0]["variable"] == "a"


def test_widening_settings_are_validated() -> None:
    with pytest.raises(WideningSettingsError, match="unknown key"):
        WideningPolicy.from_protocol({"enabled": True, "step": 0.1}, rule="gated")
    with pytest.raises(WideningSettingsError, match="step_growth"):
        WideningPolicy.from_protocol(WIDENING | {"step_growth": 0.5}, rule="gated")
    with pytest.raises(WideningSettingsError, match="step_fraction"):
        WideningPolicy.from_protocol({"step_fraction": 0.0}, rule="gated")
    with pytest.raises(WideningSettingsError, match="stalled_edge_rounds"):
        WideningPolicy.from_protocol(WIDENING | {"stalled_edge_rounds": -1}, rule="gated")
    with pytest.raises(WideningSettingsError, match="stalled_edge_rounds"):
        WideningPolicy.from_protocol(WIDENING | {"stalled_edge_rounds": 1.5}, rule="gated")
    with pytest.raises(WideningSettingsError, match="stalled_edge_rounds"):
        WideningPolicy.from_protocol(WIDENING | {"stalled_edge_rounds": "two"}, rule="gated")
    assert not WideningPolicy.from_protocol(None, rule="gated").enabled


# ---- the real optimiser over several rounds ----------------------------------------------------------
def toy_space() -> Space:
    return Space(
        variables=(Variable("a", 5.0, 20.0, 0.5, 80.0), Variable("b", 5.0, 20.0, 0.5, 80.0)),
        percent_sum_max=90.0,
    )


def run_rounds(strategy: str, optimum: tuple[float, float], rounds: int, seed: int = 0) -> list[Space]:
    """A smooth scalar loss with a noise floor; returns the space after every round."""
    rng = np.random.default_rng(seed)
    space = toy_space()
    wl = np.linspace(380, 800, 5)
    history = History([], wl, SpectrumLoss(np.arange(5.0)), round_index=1)
    opt = make_optimizer(strategy, {"n_global": 400, "n_local": 200, "restarts": 0}, WIDENING, seed)
    spaces = []
    for r in range(1, rounds + 1):
        history.round_index = r
        sug = opt.suggest(history, space, 15)
        space = sug.space
        spaces.append(space)
        x = space.to_array(sug.batch)
        loss = 1 - np.exp(-(((x - np.array(optimum)) / 12.0) ** 2).sum(axis=1)) + 0.005 * rng.standard_normal(len(x))
        history.observations += [Observation(r, row, float(v)) for row, v in zip(sug.batch, loss, strict=True)]
    return spaces


def test_gated_rule_does_not_run_away_when_the_optimum_is_inside() -> None:
    # the optimum sits inside, in a corner: the plain rule keeps firing on the crowded edges
    step = 0.25 * 15.0
    plain = run_rounds("gp_ei_lp_paper", optimum=(19.5, 19.5), rounds=6)
    assert max(v.high for v in plain[-1].variables) > 20.0 + step
    gated = run_rounds("gp_ei_lp", optimum=(19.5, 19.5), rounds=6)
    for v in gated[-1].variables:
        assert v.high <= 20.0 + step + 1e-9 and v.low >= 5.0 - step - 1e-9


def test_gated_rule_widens_towards_an_optimum_outside() -> None:
    spaces = run_rounds("gp_ei_lp", optimum=(40.0, 12.0), rounds=5)
    assert spaces[-1].variables[0].high > 25.0  # at least two steps towards 40
    assert spaces[-1].variables[1].high <= 20.0 + 0.25 * 15.0 + 1e-9


def test_edges_pressed_lists_open_edges_near_the_points() -> None:
    from orchestrator.optimize.widening import edges_pressed

    space = Space(variables=(Variable("a", 10.0, 20.0, 0.5, 80.0), Variable("b", 0.5, 20.0, 0.5, 80.0)))
    assert edges_pressed(space, [np.array([19.5, 10.0])], 0.1) == [(0, "high")]
    assert edges_pressed(space, [np.array([15.0, 10.0]), None], 0.1) == []
    # b's low edge is its hard limit: nothing to widen there
    assert edges_pressed(space, [np.array([10.2, 0.6])], 0.1) == [(0, "low")]
