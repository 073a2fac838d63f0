"""Feasible points under the box bounds and the linear sum constraint on the percent inputs.

Every optimiser routes its batch through :func:`make_feasible` last, so nothing it proposes can
break the bounds or the sum constraint, whatever the model did.
"""

from __future__ import annotations

import numpy as np

from orchestrator.optimize.base import Space
from orchestrator.optimize.transforms import UnitScaler


class InfeasibleSpaceError(ValueError):
    """The bounds leave no room under the sum constraint."""


def _box(space: Space) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([v.low for v in space.variables], dtype=float)
    hi = np.array([v.high for v in space.variables], dtype=float)
    return lo, hi


def check_space(space: Space) -> None:
    """Raise with an operator-readable message when the lower bounds alone break the sum constraint."""
    lo, hi = _box(space)
    mask = space.percent_mask()
    bad = [v.name for v in space.variables if not v.low <= v.high]
    if bad:
        raise InfeasibleSpaceError(f"bounds of {', '.join(bad)} have low > high: fix the protocol's bounds")
    outside = [
        v.name for v in space.variables if v.low < v.hard_low - 1e-9 or v.high > v.hard_high + 1e-9
    ]
    if outside:
        raise InfeasibleSpaceError(
            f"bounds of {', '.join(outside)} lie outside their hard limits: narrow the bounds"
        )
    if lo[mask].sum() > space.percent_sum_max + 1e-9:
        raise InfeasibleSpaceError(
            f"the lower bounds of the percent inputs add up to {lo[mask].sum():g} %, above the "
            f"sum limit of {space.percent_sum_max:g} %: lower some lower bounds or raise percent_sum_max"
        )


def make_feasible(space: Space, x: np.ndarray) -> np.ndarray:
    """Clip rows into the box, then shrink the percent inputs of rows over the sum limit towards
    their lower bounds, just far enough (keeps the direction of the point; stays inside the box)."""
    lo, hi = _box(space)
    mask = space.percent_mask()
    x = np.clip(np.atleast_2d(np.asarray(x, dtype=float)), lo, hi)
    if not mask.any():
        return x
    excess_room = x[:, mask].sum(axis=1) - space.percent_sum_max
    over = excess_room > 0
    if over.any():
        base = lo[mask]
        free = x[over][:, mask] - base
        room = space.percent_sum_max - base.sum()
        # tiny margin so float round-off never leaves a row 1e-15 over the limit
        scale = np.clip((room * (1.0 - 1e-12)) / np.maximum(free.sum(axis=1), 1e-300), 0.0, 1.0)
        rows = x[over]
        rows[:, mask] = base + free * scale[:, None]
        x[over] = rows
    return x


def sample_feasible(
    space: Space, n: int, rng: np.random.Generator, *, scaler: UnitScaler | None = None, max_tries: int = 50
) -> np.ndarray:
    """``n`` uniform points (in the scaler's warped space) of the feasible set, by rejection; rows
    still missing after ``max_tries`` rounds are repaired with :func:`make_feasible`."""
    check_space(space)
    scaler = scaler or UnitScaler.for_space(space)
    d = len(space.variables)
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(max_tries):
        x = scaler.from_unit(rng.random((max(2 * (n - have), 16), d)))
        ok = x[space.feasible(x)]
        kept.append(ok)
        have += len(ok)
        if have >= n:
            break
    out = np.concatenate(kept)[:n] if kept else np.empty((0, d))
    if len(out) < n:
        out = np.concatenate([out, make_feasible(space, scaler.from_unit(rng.random((n - len(out), d))))])
    return out


def perturb_feasible(
    space: Space, centres: np.ndarray, scaler: UnitScaler, rng: np.random.Generator, scale: float, n_each: int
) -> np.ndarray:
    """Gaussian perturbations (sd ``scale`` in the scaler's unit cube) of each centre, feasible rows only."""
    if len(centres) == 0 or n_each <= 0:
        return np.empty((0, len(space.variables)))
    u = scaler.to_unit(np.atleast_2d(centres))
    probe = u[:, None, :] + scale * rng.standard_normal((len(u), n_each, u.shape[1]))
    x = scaler.from_unit(probe.reshape(-1, u.shape[1]))
    # clipping into the box keeps the many proposals that step just over an edge, where optima sit
    x = make_feasible(space, x)
    return x


def candidate_set(
    space: Space,
    rng: np.random.Generator,
    *,
    scaler: UnitScaler,
    n_global: int,
    anchors: np.ndarray | None = None,
    n_local: int = 0,
    scales: tuple[float, ...] = (0.02, 0.06, 0.15),
) -> np.ndarray:
    """Feasible candidates for maximising an acquisition: uniform over ``space`` plus Gaussian clouds
    around ``anchors`` (the promising points) at several scales."""
    parts = [sample_feasible(space, n_global, rng)]
    if anchors is not None and len(anchors) and n_local > 0:
        per = max(1, n_local // (len(anchors) * len(scales)))
        parts += [perturb_feasible(space, anchors, scaler, rng, s, per) for s in scales]
    return np.concatenate(parts)


def refine_locally(
    score, space: Space, x0: np.ndarray, scaler: UnitScaler, rng: np.random.Generator,
    *, scales: tuple[float, ...] = (0.03, 0.01, 0.003), n_each: int = 48,
) -> tuple[np.ndarray, float]:
    """Derivative-free hill climb from ``x0`` (shrinking Gaussian clouds); ``score`` maps physical rows
    to values to maximise. Returns the best point and its score (``x0`` itself if nothing beats it)."""
    best_x = np.atleast_2d(x0)[0]
    best_s = float(score(best_x[None, :])[0])
    for s in scales:
        cloud = perturb_feasible(space, best_x[None, :], scaler, rng, s, n_each)
        values = score(cloud)
        k = int(np.argmax(values))
        if values[k] > best_s:
            best_x, best_s = cloud[k], float(values[k])
    return best_x, best_s
