"""The strategy registry: every name builds, "default" names a model-based strategy, settings are checked."""

from __future__ import annotations

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


def test_settings_reach_the_optimiser() -> None:
    opt = make_optimizer("composite", {"mc_samples": 16, "new_ground_max": 1}, WIDENING, 0)
    assert opt.s["mc_samples"] == 16 and opt.policy.max_new == 1
    assert make_optimizer("gp_ei_lp_paper", {}, WIDENING, 0).policy.rule == "plain"
    assert make_optimizer("gp_ei_lp", {}, WIDENING, 0).policy.rule == "gated"


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(UnknownStrategyError, match="composite"):
        resolve("simplex")
