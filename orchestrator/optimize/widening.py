"""Bound widening: open an edge of the search box when the search presses against it.

Two rules, both driven by the protocol's ``optimizer.widening`` (``edge_fraction``, ``trigger_fraction``,
``step_fraction``, ``step_growth``) and never past the hard limits:

* ``plain`` (the paper's rule, kept for the baseline): widen every edge that at least
  ``trigger_fraction`` of the batch crowds (lies within ``edge_fraction`` of the range of it). It fires
  on any edge the acquisition likes, and an acquisition likes edges (the model is least certain
  there), so it runs away: in a pilot it pushed AgNO3's upper bound from 45 % to over 100 % of range in
  six rounds though the optimum was inside.
* ``gated`` (default): a crowded edge is widened only if the best measured condition, the
  predicted-best condition or the batch's most promising pick on that edge sits on it *and* the model
  predicts a lower loss a half (first) step outward than on the edge.
  One step per edge per round, and at most ``max_new`` of the batch go into the newly opened strip
  (they replace the last, least valuable picks of the batch), so a wrong guess costs a few conditions.
  An edge that moved out in each of the last k rounds and passes the gate again steps
  ``step_fraction x step_growth^k`` (at most the whole current range): an optimum far beyond the
  first bounds is reached in a few rounds instead of one quarter-range per round, while an edge
  that stops paying (the gate refuses it once) falls back to the first step. Trust-region methods
  grow their region the same way after successes (TuRBO, Eriksson et al., NeurIPS 2019).
  With ``stalled_edge_rounds`` = k > 0, an edge the best measured condition sits on also triggers
  once that condition is k rounds old (no later round beat it), and opens even when no model predicts
  a gain beyond it: along an input the loss is nearly flat in, the models never do (default k = 2;
  0 turns it off).

Every change is returned as a note (the engine journals ``Suggestion.notes["widening"]``) and the
widened box as ``Suggestion.space``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from orchestrator.optimize.base import History, Observation, Space
from orchestrator.optimize.constraints import InfeasibleSpaceError, check_space, make_feasible
from orchestrator.optimize.transforms import UnitScaler

Rule = Literal["gated", "plain"]
_PROTOCOL_KEYS = {"enabled", "edge_fraction", "trigger_fraction", "step_fraction", "step_growth", "stalled_edge_rounds"}


class WideningSettingsError(ValueError):
    """The protocol's ``optimizer.widening`` holds a key or value the optimiser cannot use."""


class Surrogate(Protocol):
    """What widening needs from a fitted model (inputs in physical units)."""

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        """``n`` new conditions inside ``space``, chosen greedily (best first) given ``pending`` ones."""
        ...

    def predicted_loss(self, x: np.ndarray) -> np.ndarray: ...

    def predicted_best(self, space: Space) -> np.ndarray: ...


@dataclass(frozen=True)
class WideningPolicy:
    enabled: bool = True
    edge_fraction: float = 0.05
    trigger_fraction: float = 0.3
    step_fraction: float = 0.25
    step_growth: float = 2.0
    stalled_edge_rounds: int = 2
    rule: Rule = "gated"
    max_new: int = 3
    gate_on_picks: bool = True

    @classmethod
    def from_protocol(cls, widening: Mapping[str, Any] | None, *, rule: Rule, max_new: int = 3) -> WideningPolicy:
        """The protocol's widening dict (None: off), plus the rule and quota the strategy chose."""
        if widening is None:
            return cls(enabled=False, rule=rule, max_new=max_new)
        unknown = sorted(set(widening) - _PROTOCOL_KEYS)
        if unknown:
            raise WideningSettingsError(
                f"optimizer.widening has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_PROTOCOL_KEYS))}"
            )
        policy = replace(cls(rule=rule, max_new=max_new), **dict(widening))
        for key in ("edge_fraction", "trigger_fraction", "step_fraction"):
            value = getattr(policy, key)
            if not 0 < value <= 1:
                raise WideningSettingsError(f"optimizer.widening.{key} must lie in (0, 1], got {value!r}")
        if not 1 <= policy.step_growth <= 4:
            raise WideningSettingsError(f"optimizer.widening.step_growth must lie in [1, 4], got {policy.step_growth!r}")
        k = policy.stalled_edge_rounds
        if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or k < 0:
            raise WideningSettingsError(
                f"optimizer.widening.stalled_edge_rounds must be a whole number >= 0, got {policy.stalled_edge_rounds!r}")
        if rule not in ("gated", "plain"):
            raise WideningSettingsError(f"widening rule must be 'gated' or 'plain', got {rule!r}")
        if max_new < 0:
            raise WideningSettingsError(f"the new-ground quota must be >= 0, got {max_new}")
        return policy

    def step_for(self, streak: int) -> float:
        """The step (fraction of the current range) of an edge that moved out ``streak`` rounds running."""
        return min(self.step_fraction * self.step_growth**streak, 1.0)

    @property
    def gate_fraction(self) -> float:
        # the best measured point rarely lies exactly on the edge: nobody has measured there yet
        return max(2 * self.edge_fraction, 0.1)


@dataclass(frozen=True)
class EdgeChange:
    variable: str
    edge: Literal["low", "high"]
    old: float
    new: float
    reason: str

    def note(self) -> dict[str, Any]:
        return asdict(self)


def _side_index(side: str) -> int:
    return 0 if side == "low" else 1


def stepped_edge(space: Space, i: int, side: str, step_fraction: float) -> float | None:
    """The edge one step out (a fraction of the current range), capped at the hard limit; None when the
    edge already sits on the hard limit. A log variable steps by the larger of the log and the linear
    step: outward by a factor at the top, and at the bottom at least as far as a linear variable would
    (log steps alone approach a small hard limit geometrically: 4 -> 2.7 -> 1.8 -> 1.2 % ..., five
    rounds to reach 0.5 %, where a reagent that is best left out sits; the linear step gets there in one)."""
    v = space.variables[i]
    lo, hi = v.low, v.high
    linear = lo - step_fraction * (hi - lo) if side == "low" else hi + step_fraction * (hi - lo)
    new = linear
    if UnitScaler.for_space(space).log[i]:
        wlo, whi = np.log(lo), np.log(hi)
        logged = float(np.exp(wlo - step_fraction * (whi - wlo) if side == "low" else whi + step_fraction * (whi - wlo)))
        new = min(linear, logged) if side == "low" else max(linear, logged)
    if side == "low":
        new = max(new, v.hard_low)
        return new if new < v.low - 1e-12 else None
    new = min(new, v.hard_high)
    return new if new > v.high + 1e-12 else None


def edge_streak(past_bounds: list[Mapping[str, tuple[float, float]]], name: str, side: str) -> int:
    """How many of the latest rounds running moved ``name``'s ``side`` edge outward (from ``History.bounds``)."""
    k = _side_index(side)
    edges = [float(b[name][k]) for b in past_bounds if name in b]
    streak = 0
    for before, after in zip(edges[-2::-1], edges[::-1], strict=False):
        moved_out = after < before - 1e-12 if side == "low" else after > before + 1e-12
        if not moved_out:
            break
        streak += 1
    return streak


def near_edge(u: np.ndarray, side: str, fraction: float) -> np.ndarray:
    """Whether unit-scaled coordinates ``u`` lie within ``fraction`` of the range of the ``side`` edge."""
    return u <= fraction if side == "low" else u >= 1 - fraction


def crowded_edges(space: Space, batch: np.ndarray, policy: WideningPolicy) -> list[tuple[int, str, float]]:
    """(variable index, side, crowding fraction) of every edge at least ``trigger_fraction`` crowd."""
    if len(batch) == 0:
        return []
    u = UnitScaler.for_space(space).to_unit(batch)
    out = []
    for i in range(len(space.variables)):
        for side in ("low", "high"):
            frac = float(near_edge(u[:, i], side, policy.edge_fraction).mean())
            if frac >= policy.trigger_fraction:
                out.append((i, side, frac))
    return out


def edges_pressed(space: Space, points: list[np.ndarray | None], fraction: float) -> list[tuple[int, str]]:
    """(variable index, side) of every edge that may still widen (not on its hard limit) and that one of
    ``points`` lies within ``fraction`` of (in the unit scaling of the current bounds)."""
    scaler = UnitScaler.for_space(space)
    out: list[tuple[int, str]] = []
    for x in points:
        if x is None:
            continue
        u = scaler.to_unit(np.asarray(x, dtype=float)[None, :])[0]
        for i, v in enumerate(space.variables):
            for side, open_ in (("low", v.low > v.hard_low + 1e-9), ("high", v.high < v.hard_high - 1e-9)):
                if near_edge(u[i], side, fraction) and open_ and (i, side) not in out:
                    out.append((i, side))
    return out


def best_observation(history: History) -> Observation | None:
    """The measured condition with the lowest median loss (the first of equals), or None."""
    return min(history.measured(), key=lambda o: o.median_loss, default=None)


def best_measured(history: History, space: Space) -> np.ndarray | None:
    best = best_observation(history)
    return None if best is None else space.to_array([best.inputs])[0]


def stalled_edges(
    best: Observation | None, round_index: int, space: Space, policy: WideningPolicy
) -> dict[tuple[int, str], int]:
    """Open edges that the best measured condition (``best``, from :func:`best_observation`) sits on
    (within the gate fraction) when it was measured ``stalled_edge_rounds`` or more rounds before the one
    being suggested (``round_index``): no later round beat it, and the optimum may lie beyond an edge
    along which the models see the loss as flat (none of them then predicts the gain the gate asks
    for). Maps (variable index, side) to that condition's age in rounds; empty with the setting at 0."""
    if best is None or policy.stalled_edge_rounds <= 0:
        return {}
    age = round_index - best.round_index
    if age < policy.stalled_edge_rounds:
        return {}
    return {edge: age for edge in edges_pressed(space, [space.to_array([best.inputs])[0]], policy.gate_fraction)}


def _gate(
    space: Space, widened: Space, surrogate: Surrogate, anchors: dict[str, np.ndarray], i: int, side: str,
    policy: WideningPolicy,
) -> tuple[bool, str]:
    scaler = UnitScaler.for_space(space)
    for label, x in anchors.items():
        u = scaler.to_unit(x[None, :])[0]
        if not near_edge(u[i], side, policy.gate_fraction):
            continue
        # a grown step does not move the probe: it asks for the local trend, where the model has data
        edge_u, out_u = (0.0, -0.5 * policy.step_fraction) if side == "low" else (1.0, 1.0 + 0.5 * policy.step_fraction)
        pair = np.repeat(u[None, :], 2, axis=0)
        pair[:, i] = [edge_u, out_u]
        x_edge = make_feasible(space, scaler.from_unit(pair[:1]))
        x_out = make_feasible(widened, scaler.from_unit(pair[1:]))
        if np.allclose(x_edge, x_out):
            continue  # the sum constraint leaves no room outward
        f_edge, f_out = surrogate.predicted_loss(np.vstack([x_edge, x_out]))
        if f_out < f_edge:
            return True, f"{label} sits on the edge; predicted loss {f_edge:.4f} -> {f_out:.4f} a half step out"
    return False, f"none of {', '.join(anchors)} sits on it with a better predicted loss outward"


def _best_pick_on_edge(on_edge: np.ndarray, model: Surrogate, typical: float) -> tuple[dict[str, np.ndarray], str]:
    """The batch's pick on the edge that ``model`` predicts best (the acquisition's own reason to crowd
    it), if that pick is itself promising: predicted no worse than ``typical`` (the median of the
    measured conditions' median losses). A worse pick is there for the model's uncertainty, which every
    edge has; widening for it spends the batch's new-ground share far from the best conditions.
    Returns the anchor (or none) and, when the pick was passed over, why (for the journal)."""
    if len(on_edge) == 0:
        return {}, ""
    predicted = model.predicted_loss(on_edge)
    k = int(np.argmin(predicted))
    if predicted[k] <= typical:
        return {"the most promising pick on the edge": on_edge[k]}, ""
    return {}, (f"; the most promising pick on it predicts {predicted[k]:.4f}, worse than the median "
                f"measured condition ({typical:.4f})")


def _strip(widened: Space, space: Space, i: int, side: str) -> Space:
    v_old, v_new = space.variables[i], widened.variables[i]
    lo, hi = (v_new.low, v_old.low) if side == "low" else (v_old.high, v_new.high)
    return widened.with_bounds({**widened.bounds, v_new.name: (lo, hi)})


def select_with_widening(
    surrogate: Surrogate, history: History, space: Space, n: int, policy: WideningPolicy
) -> tuple[np.ndarray, Space, dict[str, Any]]:
    """The batch, the (possibly widened) space and notes for the journal."""
    d = len(space.variables)
    batch = surrogate.select(space, n, np.empty((0, d)))
    notes: dict[str, Any] = {"widening": []}
    if not policy.enabled:
        return batch, space, notes
    crowded = crowded_edges(space, batch, policy)
    best_obs = best_observation(history) if policy.rule == "gated" else None  # the plain rule needs none
    stalled = stalled_edges(best_obs, history.round_index, space, policy)
    crowded += [(i, side, 0.0) for i, side in stalled if all((i, side) != (j, s) for j, s, _ in crowded)]
    if not crowded:
        return batch, space, notes

    if policy.rule == "plain":
        bounds = dict(space.bounds)
        changes = []
        for i, side, frac in crowded:
            new = stepped_edge(space, i, side, policy.step_fraction)
            if new is None:
                continue
            v = space.variables[i]
            lo, hi = bounds[v.name]
            bounds[v.name] = (new, hi) if side == "low" else (lo, new)
            changes.append(EdgeChange(v.name, side, (v.low, v.high)[_side_index(side)], new,
                                      f"plain rule: {frac:.0%} of the batch crowds it"))
        notes["widening"] = [c.note() for c in changes]
        return batch, space.with_bounds(bounds), notes

    best = None if best_obs is None else space.to_array([best_obs.inputs])[0]
    losses = [o.median_loss for o in history.measured()]
    typical = float(np.median(losses)) if losses else np.inf
    opinions = []  # (model, its anchors): the surrogate, then any second opinions it offers
    for k, model in enumerate([surrogate, *getattr(surrogate, "alternatives", ())]):
        # a second opinion says whose it is (the scalar-loss GP beside the spectrum model), not "model 2"
        label = ("the predicted-best condition" if k == 0
                 else f"the {getattr(model, 'label', f'model {k + 1}')}'s predicted-best condition")
        anchors = {"the best measured condition": best, label: model.predicted_best(space)}
        opinions.append((model, {a: x for a, x in anchors.items() if x is not None}))
    changes, strips, refused = [], [], []
    bounds = dict(space.bounds)
    u_batch = UnitScaler.for_space(space).to_unit(batch)
    for i, side, frac in crowded:
        v = space.variables[i]
        streak = edge_streak(history.bounds, v.name, side)
        step = policy.step_for(streak)
        new = stepped_edge(space, i, side, step)
        if new is None:
            refused.append({"variable": v.name, "edge": side, "reason": "already at the hard limit"})
            continue
        lo, hi = bounds[v.name]
        trial = space.with_bounds({**space.bounds, v.name: (new, v.high) if side == "low" else (v.low, new)})
        on_edge = batch[near_edge(u_batch[:, i], side, policy.edge_fraction)]
        passed_over = ""
        for model, anchors in opinions:
            picks, over = _best_pick_on_edge(on_edge, model, typical) if policy.gate_on_picks else ({}, "")
            passed_over = passed_over or over
            ok, why = _gate(space, trial, model, {**anchors, **picks}, i, side, policy)
            if ok:
                break
        if not ok and (i, side) in stalled:
            ok, why = True, (f"the best measured condition sits on it, unbeaten for {stalled[(i, side)] - 1} "
                             "round(s) since; opened to look beyond though no model predicts a gain there")
        if not ok:
            refused.append({"variable": v.name, "edge": side, "reason": why + passed_over})
            continue
        try:
            check_space(_strip(trial, space, i, side))
        except InfeasibleSpaceError:
            refused.append({"variable": v.name, "edge": side, "reason": "no feasible ground beyond it under the sum limit"})
            continue
        bounds[v.name] = (new, hi) if side == "low" else (lo, new)
        grown = f"; step {step:.0%} of the range (moved out {streak} round(s) running)" if streak else ""
        if new == (v.hard_low if side == "low" else v.hard_high):  # why a step looks larger or smaller
            grown += f"; stopped at the hard limit {new:g}"
        changes.append(EdgeChange(v.name, side, (v.low, v.high)[_side_index(side)], new,
                                  f"gated rule: {frac:.0%} of the batch crowds it; {why}{grown}" if frac > 0
                                  else f"gated rule, stalled edge: {why}{grown}"))
        strips.append((i, side))
    if refused:
        notes["widening_refused"] = refused
    if not changes:
        return batch, space, notes

    widened = space.with_bounds(bounds)
    quota = min(policy.max_new, n)
    keep = batch[: n - quota]
    new_pts: list[np.ndarray] = []
    for j in range(quota):
        i, side = strips[j % len(strips)]
        pending = np.vstack([keep, *new_pts]) if new_pts else keep
        new_pts.append(surrogate.select(_strip(widened, space, i, side), 1, pending))
    batch = np.vstack([keep, *new_pts])
    notes["widening"] = [c.note() for c in changes]
    notes["new_ground_conditions"] = quota
    return batch, widened, notes
