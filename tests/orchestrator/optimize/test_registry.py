"""The strategy registry: every name builds, "default" names a model-based strategy, settings are checked."""

from __future__ import annotations

import re

import pytest

from orchestrator.optimize import registry
from orchestrator.optimize.registry import (
    OptimizerSettingsError,
    UnknownStrategyError,
    available,
    make_optimizer,
    resolve,
)
from orchestrator.optimize.widening import WideningSettingsError

WIDENING = {"enabled": True, "edge_fraction": 0.05, "trigger_fraction": 0.3, "step_fraction": 0.25}
MINE = ("gp_ei_lp", "gp_ei_lp_paper", "composite", "composite_mix", "qnei_botorch")


def test_default_is_a_registered_model_based_strategy() -> None:
    name = resolve("default")
    assert name == registry.DEFAULT_STRATEGY
    assert name in available() and name not in ("lhs", "random")
    assert make_optimizer("default", {}, WIDENING, 0).name == make_optimizer(name, {}, WIDENING, 0).name


@pytest.mark.parametrize("strategy", MINE)
def test_each_strategy_builds_with_defaults_and_without_widening(strategy: str) -> None:
    assert make_optimizer(strategy, {}, WIDENING, 3).name == strategy
    assert make_optimizer(strategy, {}, None, 3).policy.enabled is False


@pytest.mark.parametrize("strategy", MINE)
def test_unknown_or_mistyped_settings_are_refused(strategy: str) -> None:
    with pytest.raises(OptimizerSettingsError, match="unknown key"):
        make_optimizer(strategy, {"no_such_knob": 1}, WIDENING, 0)
    with pytest.raises(OptimizerSettingsError, match="must be int"):
        make_optimizer(strategy, {"new_ground_max": "three"}, WIDENING, 0)
    with pytest.raises(WideningSettingsError, match="unknown key"):
        make_optimizer(strategy, {}, {**WIDENING, "step": 0.1}, 0)


@pytest.mark.parametrize(("strategy", "settings", "said"), [
    ("gp_ei_lp", {"restarts": 0, "n_global": 0, "n_local": 0}, "n_global for strategy 'gp_ei_lp' must be >= 1, got 0"),
    ("qnei_botorch", {"num_restarts": 0, "raw_samples": 0}, "num_restarts for strategy 'qnei_botorch' must be >= 1"),
    ("qnei_botorch", {"raw_samples": 1}, "raw_samples (1) must be at least num_restarts (10)"),
    ("composite_mix", {"mc_samples": 0}, "mc_samples for strategy 'composite_mix' must be >= 2, got 0"),
    ("composite_mix", {"mc_samples": -4}, "must be >= 2, got -4"),
    ("composite_mix", {"mc_samples": True}, "mc_samples for strategy 'composite_mix' must be int, got True"),
    ("composite", {"k_min": 9, "k_max": 2}, "k_min (9) must not exceed k_max (2)"),
    ("composite", {"max_fit": 0}, "max_fit for strategy 'composite' must be >= 5"),
    ("composite", {"scalar_fraction": 1.5}, "scalar_fraction for strategy 'composite' must be in [0, 1]"),
    ("gp_ei_lp", {"min_radius": -1.0}, "min_radius for strategy 'gp_ei_lp' must be in [0, 1], got -1.0"),
])
def test_settings_that_would_break_a_round_are_refused_when_the_optimiser_is_built(
    strategy: str, settings: dict, said: str
) -> None:
    """They used to be stored and fail a round later (an empty argmax), or spoil the picks silently."""
    with pytest.raises(OptimizerSettingsError, match=re.escape(said)):
        make_optimizer(strategy, settings, WIDENING, 0)


def test_settings_reach_the_optimiser() -> None:
    opt = make_optimizer("composite", {"mc_samples": 16, "new_ground_max": 1}, WIDENING, 0)
    assert opt.s["mc_samples"] == 16 and opt.policy.max_new == 1
    assert make_optimizer("gp_ei_lp_paper", {}, WIDENING, 0).policy.rule == "plain"
    assert make_optimizer("gp_ei_lp", {}, WIDENING, 0).policy.rule == "gated"


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(UnknownStrategyError, match="composite"):
        resolve("simplex")


def test_two_step_names_its_bo_settings_and_refuses_itself_as_bo() -> None:
    with pytest.raises(OptimizerSettingsError, match=r"optimizer\.settings\.bo_settings \(for bo: composite_mix\).*unknown key\(s\) zz"):
        make_optimizer("two_step", {"bo_settings": {"zz": 1}}, WIDENING, 0)
    with pytest.raises(OptimizerSettingsError, match="'two_step' is not a BO strategy"):
        make_optimizer("two_step", {"bo": "two_step"}, WIDENING, 0)
