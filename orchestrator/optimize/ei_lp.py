"""Batch Bayesian optimisation: Expected Improvement with local penalisation (scikit-learn GP).

Local penalisation (Gonzalez, Dai, Hennig & Lawrence, "Batch Bayesian optimization via local
penalization", AISTATS 2016) picks a batch without refitting: after each pick x_j, the acquisition is
multiplied by phi(x; x_j) = P(L * |x - x_j| >= mu(x_j) - M), the probability that x lies outside the
ball around x_j that, by a Lipschitz bound L on the loss, cannot hold anything better than the best
observed loss M. L is estimated from the gradient of the GP mean. We minimise the loss, and work in
log space: log EI + sum_j log phi_j (the erfc form of phi is a normal CDF, so ``log_ndtr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import erfcx, log_ndtr

from orchestrator.optimize.base import History, Space, Suggestion
from orchestrator.optimize.constraints import candidate_set, check_space, make_feasible, refine_locally
from orchestrator.optimize.gp import LossGP, loss_training_data, single_threaded, unit_scaler
from orchestrator.optimize.lhs import design_suggestion, round_rng
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.optimize.widening import WideningPolicy, select_with_widening

_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def log_expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """log E[max(best - f, 0)] for f ~ N(mean, std^2), accurate far into the tail where EI underflows
    (Ament et al., NeurIPS 2023, 'Unexpected improvements to expected improvement')."""
    std = np.maximum(std, 1e-12)
    z = (best - mean) / std
    out = np.empty_like(z)
    hi = z > -1
    # h(z) = pdf(z) + z cdf(z); direct where it is not a tiny difference
    zh = z[hi]
    out[hi] = np.log(np.exp(-0.5 * zh**2 - _LOG_SQRT_2PI) + zh * np.exp(log_ndtr(zh)))
    zl = z[~hi]
    # h(z) = pdf(z) (1 + z sqrt(pi/2) erfcx(-z/sqrt 2)); the bracket is ~1/z^2, use log1p
    bracket = np.maximum(zl * np.sqrt(np.pi / 2) * erfcx(-zl / np.sqrt(2)), -1 + 1e-300)
    out[~hi] = -0.5 * zl**2 - _LOG_SQRT_2PI + np.log1p(bracket)
    return out + np.log(std)


class EILPSurrogate:
    """A fitted loss GP with EI + local penalisation batch selection (inputs in physical units)."""

    def __init__(
        self,
        gp: LossGP,
        scaler: UnitScaler,
        x_measured: np.ndarray,
        y_measured: np.ndarray,
        rng: np.random.Generator,
        *,
        n_global: int = 1500,
        n_local: int = 600,
        min_radius: float = 0.02,
    ) -> None:
        self.gp, self.scaler, self.rng = gp, scaler, rng
        self.n_global, self.n_local, self.min_radius = n_global, n_local, min_radius
        u = scaler.to_unit(x_measured)
        mean_at_data = gp.mean(u)
        # noisy observations: the incumbent is the best *predicted* loss among measured conditions
        self.incumbent = float(mean_at_data.min())
        self.best_observed = float(np.min(y_measured))
        self.anchors = x_measured[np.argsort(mean_at_data, kind="stable")[:5]]
        probe = np.vstack([u, rng.random((500, u.shape[1]))])
        self.lipschitz = max(float(gp.mean_gradient_norm(probe).max()), 1e-7)

    def _unit(self, x: np.ndarray) -> np.ndarray:
        return self.scaler.to_unit(np.atleast_2d(x))

    def log_acquisition(self, x: np.ndarray) -> np.ndarray:
        mean, std = self.gp.predict(self._unit(x))
        return log_expected_improvement(mean, std, self.incumbent)

    def _centre_stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = self._unit(x)
        mean, std = self.gp.predict(u)
        radius = np.maximum((mean - self.best_observed) / self.lipschitz, self.min_radius)
        return u, radius, np.maximum(std / self.lipschitz, 1e-9)

    @staticmethod
    def log_penalty(u: np.ndarray, centres: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """sum_j log phi(x; x_j); phi = Phi((|x - x_j| - r_j) / s_j), r_j = (mu_j - M)/L, s_j = sigma_j/L."""
        cu, radius, scale = centres
        if len(cu) == 0:
            return np.zeros(len(u))
        dist = np.linalg.norm(u[:, None, :] - cu[None, :, :], axis=2)
        return log_ndtr((dist - radius[None, :]) / scale[None, :]).sum(axis=1)

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        cands = candidate_set(
            space, self.rng, scaler=self.scaler, n_global=self.n_global, anchors=self.anchors, n_local=self.n_local
        )
        base = self.log_acquisition(cands)
        cand_u = self._unit(cands)
        centres = self._centre_stats(pending) if len(pending) else (np.empty((0, cand_u.shape[1])),) + (np.empty(0),) * 2
        penalty = self.log_penalty(cand_u, centres)
        picks = []
        for _ in range(n):
            k = int(np.argmax(base + penalty))

            def score(x: np.ndarray, c: tuple = centres) -> np.ndarray:
                return self.log_acquisition(x) + self.log_penalty(self._unit(x), c)

            x, _ = refine_locally(score, space, cands[k], self.scaler, self.rng)
            picks.append(x)
            new = self._centre_stats(x[None, :])
            centres = tuple(np.concatenate([a, b]) for a, b in zip(centres, new, strict=True))
            penalty = penalty + self.log_penalty(cand_u, new)
        return np.array(picks).reshape(n, -1)

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return self.gp.mean(self._unit(x))

    def predicted_best(self, space: Space) -> np.ndarray:
        cands = candidate_set(
            space, self.rng, scaler=self.scaler, n_global=self.n_global, anchors=self.anchors, n_local=self.n_local
        )
        k = int(np.argmin(self.predicted_loss(cands)))
        x, _ = refine_locally(lambda x: -self.predicted_loss(x), space, cands[k], self.scaler, self.rng)
        return x


class GpEiLpOptimizer:
    """GP-EI with local penalisation; ``ard``/``use_log`` off gives the paper's plain form."""

    def __init__(self, name: str, seed: int, policy: WideningPolicy, *, ard: bool, use_log: bool,
                 restarts: int = 2, max_fit: int = 300, n_global: int = 1500, n_local: int = 600,
                 min_radius: float = 0.02, min_data: int = 3) -> None:
        self.name, self.seed, self.policy = name, seed, policy
        self.ard, self.use_log = ard, use_log
        self.restarts, self.max_fit = restarts, max_fit
        self.n_global, self.n_local, self.min_radius, self.min_data = n_global, n_local, min_radius, min_data

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        with single_threaded():
            return self._suggest(history, space, n)

    def _suggest(self, history: History, space: Space, n: int) -> Suggestion:
        check_space(space)
        if len(history.measured()) < self.min_data:
            return design_suggestion(self.name, self.seed, history, space, n,
                                     f"fewer than {self.min_data} measured conditions to model")
        rng = round_rng(self.seed, history.round_index)
        x, y, _ = loss_training_data(history, space)
        n_ok = len(history.measured())
        scaler = unit_scaler(space, use_log=self.use_log)
        gp = LossGP(ard=self.ard, restarts=self.restarts, max_fit=self.max_fit).fit(scaler.to_unit(x), y, rng)
        surrogate = EILPSurrogate(gp, scaler, x[:n_ok], y[:n_ok], rng, n_global=self.n_global,
                                  n_local=self.n_local, min_radius=self.min_radius)
        batch, new_space, notes = select_with_widening(surrogate, history, space, n, self.policy)
        batch = make_feasible(new_space, batch)
        notes["model"] = gp.describe()
        predicted = surrogate.predicted_loss(batch)
        notes["predicted_loss"] = [round(float(v), 5) for v in predicted]
        return Suggestion(batch=new_space.to_dicts(batch), space=new_space, sources=[self.name] * len(batch),
                          predictions=[None] * len(batch), notes=notes)


DEFAULTS: dict[str, Any] = {"restarts": 2, "max_fit": 300, "n_global": 1500, "n_local": 600,
                            "min_radius": 0.02, "new_ground_max": 3}
RANGES: dict[str, tuple[float | None, float | None]] = {
    "restarts": (0, None), "max_fit": (5, None), "n_global": (1, None), "n_local": (0, None),
    "min_radius": (0, 1), "new_ground_max": (0, None),
}


def build(name: str, settings: Mapping[str, Any], widening: Mapping[str, Any] | None, seed: int, *,
          ard: bool, use_log: bool, rule: str) -> GpEiLpOptimizer:
    from orchestrator.optimize.registry import take_settings

    s = take_settings(name, settings, DEFAULTS, RANGES)
    policy = WideningPolicy.from_protocol(widening, rule=rule, max_new=s.pop("new_ground_max"))  # type: ignore[arg-type]
    return GpEiLpOptimizer(name, seed, policy, ard=ard, use_log=use_log, **s)
