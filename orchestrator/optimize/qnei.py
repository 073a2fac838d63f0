"""The BoTorch reference: qLogNoisyExpectedImprovement on the scalar median loss.

A ``SingleTaskGP`` (BoTorch defaults: Matern/RBF with dimension-scaled priors, learned noise,
standardised outputs) of the negated loss on unit-cube inputs; ``qLogNoisyExpectedImprovement``
(Ament et al. 2023) with the measured conditions as baseline; the batch by sequential greedy
``optimize_acqf``. The sum constraint goes to the optimiser as a linear inequality when the percent
inputs are scaled linearly (with log-scaled percent inputs it is enforced afterwards by shrinking).
Same gated widening as the other strategies. Kept as the benchmark's reference, not tuned for speed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from orchestrator.optimize.base import History, Space, Suggestion
from orchestrator.optimize.constraints import candidate_set, check_space, make_feasible
from orchestrator.optimize.gp import loss_training_data
from orchestrator.optimize.lhs import design_suggestion, round_rng
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.optimize.widening import WideningPolicy, select_with_widening

DTYPE = torch.float64


class QNEISurrogate:
    def __init__(self, x: np.ndarray, y: np.ndarray, scaler: UnitScaler, rng: np.random.Generator,
                 settings: Mapping[str, Any]) -> None:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        self.scaler, self.rng, self.s = scaler, rng, settings
        self.train_u = torch.as_tensor(scaler.to_unit(x), dtype=DTYPE)
        self.model = SingleTaskGP(self.train_u, torch.as_tensor(-y[:, None], dtype=DTYPE))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BoTorch warns on refits it then handles itself
            fit_gpytorch_mll(ExactMarginalLogLikelihood(self.model.likelihood, self.model))
        self.anchors = x[np.argsort(y, kind="stable")[:5]]

    def _sum_constraint(self, space: Space) -> list[tuple[torch.Tensor, torch.Tensor, float]] | None:
        mask = space.percent_mask()
        if not mask.any() or self.scaler.log[mask].any():
            return None
        idx = np.flatnonzero(mask)
        span = self.scaler.hi[idx] - self.scaler.lo[idx]
        rhs = space.percent_sum_max - self.scaler.lo[idx].sum()
        # BoTorch form: sum(coef * X[idx]) >= rhs
        return [(torch.as_tensor(idx), torch.as_tensor(-span, dtype=DTYPE), float(-rhs))]

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        """Sequential greedy: one qLogNEI optimisation per pick, earlier picks pending. Raw samples come
        from our feasible sampler (BoTorch's hit-and-run polytope sampler took most of the time)."""
        box = UnitScaler.for_space(space)
        bounds = torch.as_tensor(np.vstack([self.scaler.to_unit(box.lo[None, :])[0],
                                            self.scaler.to_unit(box.hi[None, :])[0]]), dtype=DTYPE)
        constraints = self._sum_constraint(space)
        chosen = [torch.as_tensor(self.scaler.to_unit(pending), dtype=DTYPE)] if len(pending) else []
        with warnings.catch_warnings():
            # linear_operator warns each time it adds jitter to a near-singular posterior covariance
            warnings.simplefilter("ignore")
            return self._select(space, n, pending, bounds, constraints, chosen)

    def _select(self, space: Space, n: int, pending: np.ndarray, bounds: torch.Tensor,
                constraints: list | None, chosen: list[torch.Tensor]) -> np.ndarray:
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.optim import optimize_acqf
        from botorch.optim.initializers import initialize_q_batch

        for _ in range(n):
            x_pending = torch.cat(chosen) if chosen else None
            acq = qLogNoisyExpectedImprovement(self.model, X_baseline=self.train_u, X_pending=x_pending,
                                               prune_baseline=True, cache_root=True)
            raw = candidate_set(space, self.rng, scaler=self.scaler, n_global=int(self.s["raw_samples"]),
                                anchors=self.anchors, n_local=int(self.s["raw_samples"]) // 2)
            raw_u = torch.as_tensor(self.scaler.to_unit(raw), dtype=DTYPE).unsqueeze(1)
            with torch.no_grad():
                values = acq(raw_u)
            init = initialize_q_batch(raw_u, values, n=int(self.s["num_restarts"]))[0]
            u, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=int(self.s["num_restarts"]),
                                 batch_initial_conditions=init, inequality_constraints=constraints,
                                 options={"maxiter": 100})
            chosen.append(u.detach())
        picks = torch.cat(chosen)[len(pending):].numpy()
        return make_feasible(space, self.scaler.from_unit(picks))

    def _mean(self, u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return -self.model.posterior(torch.as_tensor(u, dtype=DTYPE)).mean.squeeze(-1).numpy()

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return self._mean(self.scaler.to_unit(np.atleast_2d(x)))

    def predicted_best(self, space: Space) -> np.ndarray:
        cands = candidate_set(space, self.rng, scaler=self.scaler, n_global=1024, anchors=self.anchors, n_local=512)
        return cands[int(np.argmin(self.predicted_loss(cands)))]


DEFAULTS: dict[str, Any] = {"num_restarts": 10, "raw_samples": 512, "new_ground_max": 3}
RANGES: dict[str, tuple[float | None, float | None]] = {
    "num_restarts": (1, None), "raw_samples": (1, None), "new_ground_max": (0, None),
}


class QNEIOptimizer:
    name = "qnei_botorch"

    def __init__(self, seed: int, policy: WideningPolicy, settings: Mapping[str, Any]) -> None:
        self.seed, self.policy, self.s = seed, policy, dict(settings)

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        check_space(space)
        if len(history.measured()) < 3:
            return design_suggestion(self.name, self.seed, history, space, n, "fewer than 3 measured conditions")
        rng = round_rng(self.seed, history.round_index)
        torch.manual_seed(int(rng.integers(2**31)))
        x, y, _ = loss_training_data(history, space)
        surrogate = QNEISurrogate(x, y, UnitScaler.for_space(space), rng, self.s)
        batch, new_space, notes = select_with_widening(surrogate, history, space, n, self.policy)
        batch = make_feasible(new_space, batch)
        notes["predicted_loss"] = [round(float(v), 5) for v in surrogate.predicted_loss(batch)]
        return Suggestion(batch=new_space.to_dicts(batch), space=new_space, sources=[self.name] * len(batch),
                          predictions=[None] * len(batch), notes=notes)


def build(settings: Mapping[str, Any], widening: Mapping[str, Any] | None, seed: int) -> QNEIOptimizer:
    from orchestrator.optimize.registry import take_settings

    s = take_settings("qnei_botorch", settings, DEFAULTS, RANGES)
    if s["raw_samples"] < s["num_restarts"]:
        from orchestrator.optimize.registry import OptimizerSettingsError

        raise OptimizerSettingsError(
            f"optimizer.settings.raw_samples ({s['raw_samples']}) must be at least num_restarts "
            f"({s['num_restarts']}): the restarts start from the best raw samples")
    policy = WideningPolicy.from_protocol(widening, rule="gated", max_new=int(s["new_ground_max"]))
    return QNEIOptimizer(seed, policy, s)
