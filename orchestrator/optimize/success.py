"""Where do conditions give a measurement at all? A model of success and failure for the optimisers.

A condition fails when too few of its droplets pass screening: no valid spectrum, no product, a
precipitate. Failures carry no spectrum, so a model of the spectra cannot learn from them; this one
does, and the optimisers weigh or block candidates with it (constrained Bayesian optimisation with an
unknown constraint, Gelbart, Snoek & Adams, UAI 2014).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

DTYPE = torch.float64
# below this chance of a measurement a candidate is not worth a condition: failures outweigh successes 2:1
UNLIKELY = math.log(1.0 / 3.0)
# the success trend's L2 penalties to choose from (inverse strength, on unit inputs)
TREND_CS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def matern52(a: torch.Tensor, b: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Matern 5/2 correlation, (k, n, d) x (k, m, d) with length scales ls (k, 1, d) -> (k, n, m)."""
    a, b = a / ls, b / ls
    # |a|^2 + |b|^2 - 2 a.b: one matmul, and a cheap backward (cdist's is slow)
    d2 = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-1, -2)
    r = torch.sqrt(d2.clamp_min(1e-12)) * math.sqrt(5.0)
    return (1.0 + r + r.square() / 3.0) * torch.exp(-r)


class SuccessModel:
    """Where do conditions give a measurement at all? The kernel-weighted share of successes among the
    measured conditions near a point, shrunk toward a trend by one pseudo-observation, with length
    scales of its own (leave-one-out likelihood): which inputs a failure depends on need not be those
    the spectra do. Near a cluster of failures the chance is low; next to a lone failure among
    successes (a bubble), barely lower.

    The trend is a logistic regression of success on the unit inputs (L2-penalised), which is what the
    model says in ground nobody measured. Failures in chemistry mostly lie beyond a boundary (too much
    metal for the seeds or the ligand: a precipitate; too little reductant: no product), so ground past
    a band of failures is as unlikely to measure as the band, not as likely as the campaign's average;
    sporadic failures (bubbles, a flooded detector) give a flat trend, the overall share."""

    def __init__(self, ok: torch.Tensor, bad: torch.Tensor) -> None:
        self.ok, self.bad = ok, bad
        self.coef, self.intercept = self._trend()
        self.ls = self._length_scales()

    def prior(self, u: torch.Tensor) -> torch.Tensor:
        """The trend's chance of a measurement at ``u`` (the overall share where failures have no side)."""
        return torch.sigmoid(u @ self.coef + self.intercept)

    def log_p(self, u: torch.Tensor) -> torch.Tensor:
        w_ok = matern52(u[None], self.ok[None], self.ls[None, None])[0].sum(-1)
        w_bad = matern52(u[None], self.bad[None], self.ls[None, None])[0].sum(-1)
        return torch.log((self.prior(u) + w_ok) / (1.0 + w_ok + w_bad))

    def _trend(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logistic regression of success on the unit inputs. Its L2 penalty is chosen by stratified
        cross-validated log loss among ``TREND_CS`` (a sharp boundary earns a steep slope, a few
        scattered failures a flat one); with fewer than three of either outcome, C = 1. Without both
        outcomes: no slope, the Laplace share of successes."""
        d = self.ok.shape[1] if len(self.ok) else self.bad.shape[1]
        if not len(self.ok) or not len(self.bad):
            share = (len(self.ok) + 1.0) / (len(self.ok) + len(self.bad) + 2.0)
            return torch.zeros(d, dtype=DTYPE), torch.tensor(math.log(share / (1.0 - share)), dtype=DTYPE)
        x = torch.cat([self.ok, self.bad]).numpy()
        y = np.r_[np.ones(len(self.ok)), np.zeros(len(self.bad))]
        folds = min(5, len(self.ok), len(self.bad))
        with warnings.catch_warnings():
            # separable outcomes (a sharp boundary) converge slowly at weak penalties: a slope near the
            # optimum is all a prior needs, not a warning on a chemist's terminal
            warnings.simplefilter("ignore", ConvergenceWarning)
            if folds < 3:
                fit = LogisticRegression(C=1.0).fit(x, y)
            else:
                fit = LogisticRegressionCV(
                    Cs=TREND_CS, cv=StratifiedKFold(folds), scoring="neg_log_loss", l1_ratios=(0.0,),
                    use_legacy_attributes=False,
                ).fit(x, y)
        return torch.as_tensor(fit.coef_[0], dtype=DTYPE), torch.tensor(float(fit.intercept_[0]), dtype=DTYPE)

    def _length_scales(self, at_most: int = 240) -> torch.Tensor:
        """The length scales (0.02-10 unit widths) whose kernel share best predicts each measured
        condition's outcome from the others (leave-one-out log likelihood, L-BFGS-B in log units), on at
        most ``at_most`` conditions (up to half of them failures, the rest successes, a fixed subset)."""
        pick = np.random.default_rng(len(self.ok) + 7919 * len(self.bad))
        bad = self.bad[np.sort(pick.permutation(len(self.bad))[: at_most // 2])]
        ok = self.ok[np.sort(pick.permutation(len(self.ok))[: at_most - len(bad)])]
        x = torch.cat([ok, bad])
        y = torch.cat([torch.ones(len(ok), dtype=DTYPE), torch.zeros(len(bad), dtype=DTYPE)])
        off = 1.0 - torch.eye(len(x), dtype=DTYPE)
        prior = self.prior(x)

        def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
            with torch.enable_grad():  # the batch selection runs under no_grad
                t = torch.as_tensor(theta, dtype=DTYPE).requires_grad_(True)
                w = matern52(x[None], x[None], torch.exp(t)[None, None])[0] * off
                p = ((prior + w @ y) / (1.0 + w.sum(-1))).clamp(1e-6, 1 - 1e-6)
                value = -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean()
                value.backward()
            return float(value.detach()), t.grad.numpy().copy()

        d = x.shape[1]
        res = minimize(nll, np.full(d, math.log(0.3)), jac=True, method="L-BFGS-B",
                       bounds=[(math.log(0.02), math.log(10.0))] * d, options={"maxiter": 30})
        return torch.exp(torch.as_tensor(res.x, dtype=DTYPE))
