"""Input scaling between physical units and the unit cube models work in.

Flows and their ratios span decades, so a variable marked ``Variable.log`` is scaled in log space:
a Gaussian process then sees 1 -> 10 uL/min as far apart as 100 -> 1000. The scale is taken from
either the current bounds (designs over the current box) or the hard limits (model inputs that stay
put while the bounds widen, so a fitted length scale keeps its meaning across rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.optimize.base import Space


@dataclass(frozen=True)
class UnitScaler:
    """Affine (or log-affine) map of each input from ``[lo, hi]`` to ``[0, 1]``."""

    lo: np.ndarray
    hi: np.ndarray
    log: np.ndarray

    @classmethod
    def for_space(cls, space: Space, *, hard: bool = False, use_log: bool = True) -> UnitScaler:
        lo = np.array([v.hard_low if hard else v.low for v in space.variables], dtype=float)
        hi = np.array([v.hard_high if hard else v.high for v in space.variables], dtype=float)
        log = np.array([bool(use_log and v.log) for v in space.variables])
        # log of 0 is undefined: a log variable whose box touches 0 is scaled linearly instead
        log &= lo > 0
        return cls(lo=lo, hi=hi, log=log)

    def _warp(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=float)
        x[..., self.log] = np.log(np.clip(x[..., self.log], 1e-300, None))
        return x

    @property
    def _wlo(self) -> np.ndarray:
        return np.where(self.log, np.log(np.clip(self.lo, 1e-300, None)), self.lo)

    @property
    def _whi(self) -> np.ndarray:
        return np.where(self.log, np.log(np.clip(self.hi, 1e-300, None)), self.hi)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Physical (n, d) -> unit cube; points outside the box map outside [0, 1]."""
        return (self._warp(x) - self._wlo) / (self._whi - self._wlo)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        w = self._wlo + np.asarray(u, dtype=float) * (self._whi - self._wlo)
        w[..., self.log] = np.exp(np.clip(w[..., self.log], -700.0, 700.0))
        return w
