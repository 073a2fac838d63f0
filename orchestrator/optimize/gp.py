"""Gaussian-process model of the median loss (scikit-learn).

Matern 5/2 with one length scale per input (ARD) or one shared length scale (the paper's form), a
white-noise term for the replicate scatter of the medians, and ``normalize_y``. Inputs are in the
unit cube of the current bounds (log-scaled where ``Variable.log``).

Hyperparameters are fitted on at most ``max_fit`` rows (the best ones and a spread of the rest): the
likelihood gradient costs O(n^3) per step, which is seconds at 2,000 observations. The final model
then conditions on every row with those hyperparameters (one Cholesky factorisation).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

from orchestrator.optimize.base import History, Space
from orchestrator.optimize.transforms import UnitScaler


@contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS and torch on one thread for the duration (restored after). The models' matrices are small
    (hundreds of rows): a second thread saves little on an idle machine, and on a shared one its
    spin-waiting cost ten times the CPU (measured: 1.4 s -> 16 s for the composite's fit at 135 rows)."""
    import sys

    torch = sys.modules.get("torch")  # only if already imported: the scalar GP never needs torch
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)


def loss_training_data(history: History, space: Space) -> tuple[np.ndarray, np.ndarray, int]:
    """(physical inputs, median losses, number of failed rows). A failed condition counts as the worst
    measured loss: it teaches the model to stay away without inventing a scale of its own."""
    measured = history.measured()
    failed = history.failed()
    x_ok = space.to_array([o.inputs for o in measured]) if measured else np.empty((0, len(space.variables)))
    y_ok = np.array([o.median_loss for o in measured], dtype=float)
    if not failed:
        return x_ok, y_ok, 0
    worst = float(y_ok.max()) if len(y_ok) else 1.0
    x_f = space.to_array([o.inputs for o in failed])
    return np.vstack([x_ok, x_f]), np.concatenate([y_ok, np.full(len(x_f), worst)]), len(x_f)


def fit_subset(y: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices for fitting hyperparameters: half the budget the lowest losses, half random others."""
    n = len(y)
    if n <= max_rows:
        return np.arange(n)
    order = np.argsort(y, kind="stable")
    best = order[: max_rows // 2]
    rest = rng.choice(order[max_rows // 2 :], size=max_rows - len(best), replace=False)
    return np.sort(np.concatenate([best, rest]))


_CHUNK = 2048


class LossGP:
    """A fitted GP of the loss over unit-cube inputs; predictions in loss units."""

    def __init__(
        self,
        *,
        ard: bool = True,
        restarts: int = 2,
        max_fit: int = 300,
        max_condition: int = 600,
        length_scale_bounds: tuple[float, float] = (0.03, 30.0),
        noise_bounds: tuple[float, float] = (1e-6, 1.0),
    ) -> None:
        self.ard = ard
        self.restarts = restarts
        self.max_fit = max_fit
        self.max_condition = max_condition
        self.length_scale_bounds = length_scale_bounds
        self.noise_bounds = noise_bounds
        self.gp: GaussianProcessRegressor | None = None

    def _kernel(self, d: int) -> ConstantKernel:
        ls = np.full(d, 0.3) if self.ard else 0.3
        return ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            length_scale=ls, length_scale_bounds=self.length_scale_bounds, nu=2.5
        ) + WhiteKernel(1e-2, self.noise_bounds)

    def fit(self, u: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> LossGP:
        rows = fit_subset(y, self.max_fit, rng)
        with warnings.catch_warnings():
            # a length scale at its bound is a legitimate answer (an input that does not matter)
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(
                self._kernel(u.shape[1]),
                normalize_y=True,
                n_restarts_optimizer=self.restarts,
                random_state=np.random.RandomState(rng.integers(2**31)),
            ).fit(u[rows], y[rows])
            if len(rows) < len(y):
                # condition on at most max_condition rows (the best and a spread): predicting costs
                # O(rows^2) per candidate, and a campaign's 2,000th condition adds little far from the best
                cond = fit_subset(y, self.max_condition, rng)
                gp = GaussianProcessRegressor(gp.kernel_, normalize_y=True, optimizer=None).fit(u[cond], y[cond])
        self.gp = gp
        return self

    @property
    def _noise_var(self) -> float:
        """White-noise variance in loss units (sklearn's std includes it; EI wants the latent std)."""
        assert self.gp is not None
        noise = self.gp.kernel_.k2.noise_level
        return float(noise * np.square(self.gp._y_train_std))

    def predict(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent (noise-free) standard deviation at unit-cube inputs."""
        assert self.gp is not None, "fit the model first"
        u = np.atleast_2d(u)
        parts = [self.gp.predict(u[i : i + _CHUNK], return_std=True) for i in range(0, len(u), _CHUNK)]
        mean = np.concatenate([p[0] for p in parts]) if parts else np.empty(0)
        std = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
        var = np.clip(np.square(std) - self._noise_var, 1e-12, None)
        return mean, np.sqrt(var)

    def mean(self, u: np.ndarray) -> np.ndarray:
        assert self.gp is not None, "fit the model first"
        u = np.atleast_2d(u)
        # in chunks: scikit-learn builds the whole (candidates x rows) kernel at once
        return np.concatenate([self.gp.predict(u[i : i + _CHUNK]) for i in range(0, len(u), _CHUNK)] or [np.empty(0)])

    def mean_gradient_norm(self, u: np.ndarray, h: float = 1e-4) -> np.ndarray:
        """|grad mean| at rows of ``u`` by central differences (the mean alone is cheap to predict)."""
        u = np.atleast_2d(u)
        n, d = u.shape
        steps = np.concatenate([np.eye(d) * h, -np.eye(d) * h])
        probe = (u[:, None, :] + steps[None, :, :]).reshape(-1, d)
        m = self.mean(probe).reshape(n, 2, d)
        grad = (m[:, 0, :] - m[:, 1, :]) / (2 * h)
        return np.linalg.norm(grad, axis=1)

    def describe(self) -> dict[str, object]:
        assert self.gp is not None
        k = self.gp.kernel_
        return {
            "length_scales": np.atleast_1d(k.k1.k2.length_scale).round(4).tolist(),
            "noise_var": round(self._noise_var, 8),
        }


def unit_scaler(space: Space, *, use_log: bool) -> UnitScaler:
    """Model inputs: the unit cube of the current bounds (log where the variable asks and ``use_log``)."""
    return UnitScaler.for_space(space, use_log=use_log)
