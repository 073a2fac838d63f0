"""Strategy names -> optimisers. The protocol's ``optimizer.strategy`` is looked up here.

Entries are ``"module:function"`` strings imported on first use, so a campaign that runs a Latin
hypercube never imports torch. Each factory is ``factory(settings, widening, seed) -> Optimizer`` and
must refuse settings it does not know (use :func:`take_settings`). Other modules add their strategy
with one line in ``_FACTORIES`` (or :func:`register` at run time, e.g. in tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.optimize.base import Optimizer

Factory = Callable[[dict[str, Any], dict[str, Any] | None, int], Optimizer]


class UnknownStrategyError(ValueError):
    """The protocol names a strategy no module provides."""


class OptimizerSettingsError(ValueError):
    """``optimizer.settings`` holds a key or value the strategy cannot use."""


# which strategy "default" means: the best one in docs/optimizer_benchmark.md (the composite with a third of
# each batch from the scalar GP: as fast to 0.01 as the composite inside the bounds, and the only one that
# was not slow on any of the four chemistries benchmarked when the optimum lay outside them)
DEFAULT_STRATEGY = "composite_mix"

_FACTORIES: dict[str, str | Factory] = {
    "lhs": "orchestrator.optimize.registry:_make_lhs",
    "random": "orchestrator.optimize.registry:_make_random",
    "two_step": "orchestrator.optimize.twostep:make_two_step",
    "dnn": "orchestrator.optimize.twostep:make_dnn",
    "gp_ei_lp": "orchestrator.optimize.registry:_make_gp_ei_lp",
    "gp_ei_lp_paper": "orchestrator.optimize.registry:_make_gp_ei_lp_paper",
    "composite": "orchestrator.optimize.composite:build",
    "composite_mix": "orchestrator.optimize.composite:build_mixed",
    "composite_edge": "orchestrator.optimize.composite:build_edge_mixed",
    "qnei_botorch": "orchestrator.optimize.qnei:build",
}


def register(name: str, factory: str | Factory, *, replace: bool = False) -> None:
    if name in _FACTORIES and not replace:
        raise ValueError(f"optimiser strategy {name!r} is already registered")
    _FACTORIES[name] = factory


def available() -> list[str]:
    """Strategy names a protocol may use (``default`` included)."""
    return sorted([*_FACTORIES, "default"])


def resolve(strategy: str) -> str:
    """The registered name behind ``strategy`` (``default`` -> :data:`DEFAULT_STRATEGY`)."""
    name = DEFAULT_STRATEGY if strategy == "default" else strategy
    if name not in _FACTORIES:
        raise UnknownStrategyError(
            f"unknown optimiser strategy {strategy!r}: use one of {', '.join(available())}"
        )
    return name


def make_optimizer(
    strategy: str, settings: Mapping[str, Any] | None, widening: Mapping[str, Any] | None, seed: int
) -> Optimizer:
    """Build the optimiser a protocol names. ``widening`` is the protocol's ``optimizer.widening``
    (a dict; None or ``enabled: false`` turns widening off)."""
    name = resolve(strategy)
    factory = _FACTORIES[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(dict(settings or {}), dict(widening) if widening is not None else None, int(seed))


def take_settings(
    strategy: str,
    settings: Mapping[str, Any],
    defaults: Mapping[str, Any],
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> dict[str, Any]:
    """``defaults`` updated by ``settings``; unknown keys, wrongly typed values (a bool is not a
    number) and numbers outside ``ranges`` (key -> (low, high), inclusive, None: open) are refused,
    so a campaign never runs a round before its optimiser fails on them."""
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise OptimizerSettingsError(
            f"optimizer.settings for strategy {strategy!r} has unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(defaults)) or 'none'}"
        )
    out = dict(defaults)
    for key, value in settings.items():
        want = type(defaults[key])
        if isinstance(value, bool) and want is not bool:
            raise OptimizerSettingsError(
                f"optimizer.settings.{key} for strategy {strategy!r} must be {want.__name__}, got {value!r}"
            )
        if defaults[key] is not None and not isinstance(value, want):
            # ints are fine where floats are expected; bools are not numbers here
            if not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                raise OptimizerSettingsError(
                    f"optimizer.settings.{key} for strategy {strategy!r} must be {want.__name__}, "
                    f"got {value!r}"
                )
            value = float(value)
        low, high = (ranges or {}).get(key, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"in [{low:g}, {high:g}]"
            raise OptimizerSettingsError(
                f"optimizer.settings.{key} for strategy {strategy!r} must be {allowed}, got {value!r}"
            )
        out[key] = value
    return out


def _make_lhs(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    from orchestrator.optimize.lhs import LatinHypercubeOptimizer

    take_settings("lhs", settings, {})
    return LatinHypercubeOptimizer(seed)


def _make_random(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    from orchestrator.optimize.lhs import RandomOptimizer

    take_settings("random", settings, {})
    return RandomOptimizer(seed)


def _make_gp_ei_lp(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    from orchestrator.optimize.ei_lp import build

    return build("gp_ei_lp", settings, widening, seed, ard=True, use_log=True, rule="gated")


def _make_gp_ei_lp_paper(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    """The paper's form: one length scale, linear inputs, the plain widening rule."""
    from orchestrator.optimize.ei_lp import build

    return build("gp_ei_lp_paper", settings, widening, seed, ard=False, use_log=False, rule="plain")
