"""Composite Bayesian optimisation: model the spectrum, compute the exact loss on samples of it.

The loss (cosine after min-max normalisation, times the absorbance window) is a sharp, folded
function of the spectrum; a GP on the scalar loss has to learn that fold from few points. Following
Astudillo & Frazier ("Bayesian optimization of composite functions", ICML 2019) we model what is smooth
instead: independent Gaussian processes on the first 5-8 principal-component scores of the median
spectra. The acquisition is a noisy expected improvement in the style of BoTorch's
qLogNoisyExpectedImprovement with a ``GenericMCObjective`` (PC scores -> spectrum -> -loss): joint
posterior samples of the already-measured best conditions and of the batch so far, the loss computed
exactly on every sampled spectrum, and the batch built greedily (sequential greedy, as BoTorch's
``optimize_acqf(sequential=True)``), each pick conditioned on the previous ones with fixed base samples.

Speed (the goal is <= 2 s for 15 conditions at 135 observations on two cores): the GPs are one
batched exact GP in plain torch with its likelihood gradient written out (BoTorch's model and fitting
machinery cost ~60 ms per likelihood evaluation here, against ~4 ms for this, value and gradient), with
BoTorch's default dimension-scaled length-scale prior (Hvarfner et al. 2024); the acquisition is
maximised over a feasible candidate set (uniform plus clouds around the incumbents) refined by
shrinking local clouds, with the loss evaluated through the PC basis; the widening's picks in new
ground reuse the main batch's joint posterior; large histories fit hyperparameters on a subset and
condition on the most relevant rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from orchestrator.optimize.base import History, Observation, Space, Suggestion
from orchestrator.optimize.constraints import candidate_set, check_space, make_feasible, refine_locally
from orchestrator.optimize.gp import fit_subset, single_threaded
from orchestrator.optimize.lhs import design_suggestion, round_rng
from orchestrator.optimize.replicates import replicate_median
from orchestrator.optimize.success import UNLIKELY, SuccessModel, matern52
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.optimize.widening import WideningPolicy, best_measured, edges_pressed, select_with_widening
from orchestrator.spectra import SpectrumLoss, minmax

DTYPE = torch.float64


# ---- principal components of the median spectra ----------------------------------------------
@dataclass(frozen=True)
class SpectrumPCA:
    mean: np.ndarray  # (W,)
    basis: np.ndarray  # (k, W), orthonormal rows
    explained: float  # fraction of variance the k components hold

    @classmethod
    def fit(cls, spectra: np.ndarray, *, k_min: int = 5, k_max: int = 8, variance: float = 0.9999) -> SpectrumPCA:
        mean = spectra.mean(axis=0)
        _, s, vt = np.linalg.svd(spectra - mean, full_matrices=False)
        frac = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
        k = int(np.searchsorted(frac, variance) + 1)
        k = max(1, min(max(k_min, min(k, k_max)), len(s), len(spectra) - 2))
        return cls(mean=mean, basis=vt[:k], explained=float(frac[k - 1]))

    def scores(self, spectra: np.ndarray) -> np.ndarray:
        return (spectra - self.mean) @ self.basis.T


class ScoreLoss:
    """The protocol's loss of the spectra behind PC scores, vectorised in torch.

    Same formula as :class:`orchestrator.spectra.SpectrumLoss` (tests hold them equal): the cosine of
    min-max normalised spectra equals the cosine of ``a - min(a)``, since the positive scale cancels."""

    def __init__(self, loss: SpectrumLoss, pca: SpectrumPCA, *, stride: int = 1) -> None:
        t = minmax(np.asarray(loss.target, dtype=float))
        t = t / np.linalg.norm(t)
        # float32 for the full spectra (only their min and max are needed), float64 for the rest; with
        # ``stride`` > 1 min and max are taken on every stride-th wavelength (and both ends): smooth
        # spectra change by ~1e-4 of their height between neighbours, and this is most of the cost
        grid = np.unique(np.r_[np.arange(0, len(t), max(1, int(stride))), len(t) - 1])
        self.mean = torch.as_tensor(pca.mean[grid], dtype=torch.float32)
        self.basis = torch.as_tensor(pca.basis[:, grid], dtype=torch.float32)
        # the basis rows are orthonormal, so a.t, sum(a) and |a|^2 follow from the scores alone
        self.bt = torch.as_tensor(pca.basis @ t, dtype=DTYPE)
        self.b1 = torch.as_tensor(pca.basis.sum(axis=1), dtype=DTYPE)
        self.bm = torch.as_tensor(pca.basis @ pca.mean, dtype=DTYPE)
        self.mt, self.m1, self.mm = float(pca.mean @ t), float(pca.mean.sum()), float(pca.mean @ pca.mean)
        self.t1, self.w = float(t.sum()), float(len(t))
        self.a_low, self.a_high = float(loss.a_low), float(loss.a_high)

    def extremes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimum and maximum over wavelengths of the spectra of scores ``z`` (..., k) -> (...), (...).

        One 2-D ``addmm`` over all samples, then separate min and max: ten times faster than a batched
        matmul on the (strided) sample tensor followed by ``aminmax``, with the same numbers."""
        flat = z.to(torch.float32).reshape(-1, z.shape[-1])
        a = torch.addmm(self.mean, flat, self.basis)
        return a.amin(-1).reshape(z.shape[:-1]).to(DTYPE), a.amax(-1).reshape(z.shape[:-1]).to(DTYPE)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Loss of the spectra of scores ``z`` (..., k) -> (...)."""
        z = z.to(DTYPE)
        amin, amax = self.extremes(z)
        # c = a - min(a):  c.t = a.t - min sum(t);  |c|^2 = |a|^2 - 2 min sum(a) + W min^2
        at = self.mt + z @ self.bt
        a1 = self.m1 + z @ self.b1
        aa = self.mm + 2.0 * (z @ self.bm) + (z * z).sum(-1)
        ct = at - amin * self.t1
        cc = (aa - 2.0 * amin * a1 + self.w * amin * amin).clamp_min(0.0)
        norm = cc.sqrt()
        cos = torch.where(norm > 1e-12, ct / norm.clamp_min(1e-12), torch.zeros_like(norm))
        delta = torch.where(
            amax > self.a_high,
            torch.zeros_like(amax),
            torch.where(amax >= self.a_low, torch.ones_like(amax), amax.clamp_min(0.0) / self.a_low),
        )
        return 1.0 - delta * cos


# ---- a batch of independent exact GPs (one per PC score) -----------------------------------------
class BatchedGP:
    """Independent Matern-5/2 ARD GPs with a shared input set, MAP-fitted in one batched torch problem.

    Priors as BoTorch's defaults for ``SingleTaskGP``: length scales LogNormal(sqrt2 + log(d)/2, sqrt3)
    above 0.025, noise variance LogNormal(-4, 1), outputs standardised (unit signal variance)."""

    def __init__(self, max_iter: int = 60) -> None:
        self.max_iter = max_iter

    kernel = staticmethod(matern52)

    @staticmethod
    def map_objective(u: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        """The MAP objective of the k GPs on standardised outputs ``y`` (n, k) at inputs ``u`` (n, d), per
        row, as a function of the raw parameters (log(ls - 0.025) (k*d), log noise (k), constant mean (k)):
        negative log marginal likelihood plus log priors, and its exact gradient
        0.5 tr((K^-1 - alpha alpha^T) dK/dtheta) written out (a third of autograd's backward through
        the Cholesky factor here)."""
        k, d = y.shape[1], u.shape[1]
        x = torch.as_tensor(u, dtype=DTYPE)  # (n, d), shared by the k GPs
        yt = torch.as_tensor(y.T, dtype=DTYPE)  # (k, n)
        mu, sigma = BatchedGP.ls_prior(d)
        n = x.shape[0]
        eye = torch.eye(n, dtype=DTYPE)
        diff2 = (x[:, None, :] - x[None, :, :]).square()  # (n, n, d)

        def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            raw_ls, raw_noise, const = BatchedGP.unpack(theta, k, d)
            ls = 0.025 + torch.exp(raw_ls)
            noise = torch.exp(raw_noise).clamp_min(1e-6)
            s = math.sqrt(5.0) * torch.sqrt((diff2 @ ls.square().reciprocal().T).permute(2, 0, 1).clamp_min(1e-12))
            e = torch.exp(-s)
            kxx = (1.0 + s + s.square() / 3.0) * e + (noise[:, None, None] + 1e-8) * eye
            chol, info = torch.linalg.cholesky_ex(kxx)
            if bool(info.any()):
                return 1e10, np.zeros_like(theta)
            r = (yt - const[:, None]).unsqueeze(-1)
            alpha = torch.cholesky_solve(r, chol)  # (k, n, 1)
            nll = 0.5 * (r * alpha).sum((-1, -2)) + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            log_ls, log_noise = torch.log(ls), torch.log(noise)
            prior = ((log_ls - mu) ** 2 / (2 * sigma**2) + log_ls).sum(-1) + (log_noise + 4.0) ** 2 / 2.0 + log_noise
            value = float((nll + prior).sum()) / n
            if not math.isfinite(value):
                return 1e10, np.zeros_like(theta)
            w = torch.cholesky_inverse(chol) - alpha @ alpha.transpose(-1, -2)  # K^-1 - alpha alpha^T (k, n, n)
            # dk/dls_j = 5/3 (1 + s) exp(-s) (x_aj - x_bj)^2 / ls_j^3 for Matern 5/2
            g_ls = 0.5 * torch.einsum("kab,abd->kd", w * (5.0 / 3.0) * (1.0 + s) * e, diff2) / ls**3
            g_ls = (g_ls + ((log_ls - mu) / sigma**2 + 1.0) / ls) * (ls - 0.025)
            g_noise = (0.5 * torch.diagonal(w, dim1=-2, dim2=-1).sum(-1) + (log_noise + 5.0) / noise) * noise
            g_const = -alpha.sum((-1, -2))
            return value, torch.cat([g_ls.reshape(-1), g_noise, g_const]).numpy() / n

        return value_and_grad

    @staticmethod
    def unpack(theta: np.ndarray, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The raw parameter vector's parts: log(ls - 0.025) (k, d), log noise (k), constant mean (k)."""
        return (torch.as_tensor(theta[: k * d], dtype=DTYPE).reshape(k, d),
                torch.as_tensor(theta[k * d : k * d + k], dtype=DTYPE), torch.as_tensor(theta[k * d + k :], dtype=DTYPE))

    @staticmethod
    def ls_prior(d: int) -> tuple[float, float]:
        """Location and scale of the log-normal length-scale prior in ``d`` dimensions."""
        return math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)

    def fit(self, u: np.ndarray, y: np.ndarray, rows: np.ndarray) -> BatchedGP:
        """MAP hyperparameters on ``rows``, by scipy's L-BFGS-B (torch.optim would import torch._dynamo, ~3 s)."""
        k, d = y.shape[1], u.shape[1]
        self.y_mean = y[rows].mean(axis=0)
        self.y_std = np.maximum(y[rows].std(axis=0), 1e-9)
        value_and_grad = self.map_objective(u[rows], (y[rows] - self.y_mean) / self.y_std)
        mu, sigma = self.ls_prior(d)
        mode = math.exp(mu - sigma**2)
        theta0 = np.concatenate([np.full(k * d, math.log(mode - 0.025)), np.full(k, math.log(0.05)), np.zeros(k)])
        bounds = [(math.log(1e-3), math.log(50.0))] * (k * d) + [(math.log(1e-6), math.log(2.0))] * k \
            + [(-5.0, 5.0)] * k
        res = minimize(value_and_grad, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": self.max_iter})
        raw_ls, raw_noise, self.const = self.unpack(res.x, k, d)
        self.ls = (0.025 + torch.exp(raw_ls)).unsqueeze(1)  # (k, 1, d)
        self.noise = torch.exp(raw_noise).clamp_min(1e-6)
        return self

    def condition(self, u: np.ndarray, y: np.ndarray) -> BatchedGP:
        """Condition on (possibly more) rows with the fitted hyperparameters."""
        k = y.shape[1]
        self.x = torch.as_tensor(u, dtype=DTYPE).expand(k, -1, -1)
        yt = torch.as_tensor(((y - self.y_mean) / self.y_std).T, dtype=DTYPE)
        kxx = self.kernel(self.x, self.x, self.ls) + (self.noise[:, None, None] + 1e-8) * torch.eye(len(u), dtype=DTYPE)
        self.chol = torch.linalg.cholesky(kxx)
        self.alpha = torch.cholesky_solve((yt - self.const[:, None]).unsqueeze(-1), self.chol)
        return self

    def parts(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior pieces at points ``u`` (N, d): mean (k, N) and V = L^-1 K_XU (k, n, N),
        so that cov(a, b) = k(a, b) - V_a . V_b (standardised units)."""
        uu = u.expand(self.x.shape[0], -1, -1)
        kxu = self.kernel(self.x, uu, self.ls)
        mean = self.const[:, None] + (kxu.transpose(-1, -2) @ self.alpha).squeeze(-1)
        v = torch.linalg.solve_triangular(self.chol, kxu, upper=False)
        return mean, v

    def prior_cov(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        k = self.x.shape[0]
        return self.kernel(a.expand(k, -1, -1), b.expand(k, -1, -1), self.ls)


# ---- the noisy-EI batch ---------------------------------------------------------------------------
class GreedyNoisyEI:
    """Joint MC samples over the incumbents and the batch so far; candidates sampled conditionally on
    them with common base samples; EI of the batch loss over the incumbents' sampled best."""

    def __init__(self, gp: BatchedGP, score_loss: ScoreLoss, baseline_u: np.ndarray, rng: np.random.Generator,
                 *, n_samples: int, failed_u: np.ndarray, tau: float = 1e-4) -> None:
        self.gp, self.score_loss, self.rng = gp, score_loss, rng
        self.k = gp.x.shape[0]
        self.m = n_samples
        self.tau = tau
        self.failed_u = torch.as_tensor(failed_u, dtype=DTYPE)
        self._success: SuccessModel | None = None
        self.y_mean = torch.as_tensor(gp.y_mean, dtype=DTYPE)
        self.y_std = torch.as_tensor(gp.y_std, dtype=DTYPE)
        self.p_u = torch.empty((0, baseline_u.shape[1]), dtype=DTYPE)
        self.p_eps = torch.empty((self.k, 0, self.m), dtype=DTYPE)
        # the joint posterior of the points added so far: mean (k, p), V (k, n, p), Cholesky factor (k, p, p)
        self.p_mean = torch.empty((self.k, 0), dtype=DTYPE)
        self.p_v = torch.empty((self.k, gp.x.shape[1], 0), dtype=DTYPE)
        self.p_chol = torch.empty((self.k, 0, 0), dtype=DTYPE)
        self.p_loss = torch.empty((0, self.m), dtype=DTYPE)  # each point's loss samples
        self.best = torch.full((self.m,), float("inf"), dtype=DTYPE)
        for u in baseline_u:
            self.add(u, self.draw())
        self.n_base = len(self.p_u)

    def draw(self) -> torch.Tensor:
        return torch.as_tensor(self.rng.standard_normal((self.k, self.m)), dtype=DTYPE)

    def _to_scores(self, f: torch.Tensor) -> torch.Tensor:
        """Standardised (k, ..., M) -> original score units (..., M, k)."""
        return torch.movedim(f, 0, -1) * self.y_std + self.y_mean

    def add(self, u: np.ndarray, eps: torch.Tensor) -> None:
        """Append a point (a measured incumbent, a pending or a chosen condition) with its base sample.

        The joint posterior of the points so far is kept as a Cholesky factor and grown by one row
        (the new point's covariance with the others), not refactored: adding p points costs O(p^2)
        posterior evaluations less than recomputing it each time."""
        ut = torch.as_tensor(np.atleast_2d(u), dtype=DTYPE)
        mean, v = self.gp.parts(ut)  # (k, 1), (k, n, 1)
        var = 1.0 + 1e-8 - (v * v).sum(-2, keepdim=True)  # (k, 1, 1); Matern with unit signal variance
        cross = self.gp.prior_cov(ut, self.p_u) - v.transpose(-1, -2) @ self.p_v  # (k, 1, p)
        row = torch.linalg.solve_triangular(self.p_chol, cross.transpose(-1, -2), upper=False).transpose(-1, -2)
        diag = (var - (row * row).sum(-1, keepdim=True)).clamp_min(1e-12).sqrt()
        top = torch.cat([self.p_chol, torch.zeros((self.k, len(self.p_u), 1), dtype=DTYPE)], dim=-1)
        self.p_chol = torch.cat([top, torch.cat([row, diag], dim=-1)], dim=-2)
        self.p_mean, self.p_v = torch.cat([self.p_mean, mean], dim=-1), torch.cat([self.p_v, v], dim=-1)
        self.p_u = torch.cat([self.p_u, ut])
        self.p_eps = torch.cat([self.p_eps, eps[:, None, :]], dim=1)
        # the new point's samples: its row of the factor times the base samples of every point so far
        f = mean.unsqueeze(-1) + torch.cat([row, diag], dim=-1) @ self.p_eps  # (k, 1, M)
        losses = self.score_loss(self._to_scores(f))[0]  # (M,)
        self.p_loss = torch.cat([self.p_loss, losses[None, :]])
        self.best = torch.minimum(self.best, losses)

    def truncate(self, p: int) -> None:
        """Keep the first ``p`` points only (their factor is the leading block of the joint one)."""
        self.p_chol, self.p_v, self.p_u = self.p_chol[:, :p, :p], self.p_v[..., :p], self.p_u[:p]
        self.p_mean, self.p_eps, self.p_loss = self.p_mean[:, :p], self.p_eps[:, :p], self.p_loss[:p]
        self._update_best()

    def _update_best(self) -> None:
        self.best = self.p_loss.amin(0) if len(self.p_u) else torch.full((self.m,), float("inf"), dtype=DTYPE)

    def resample(self) -> None:
        """New base samples for every point (the joint samples a state built afresh on them would draw;
        the factor does not depend on them)."""
        self.p_eps = torch.as_tensor(self.rng.standard_normal((self.k, len(self.p_u), self.m)), dtype=DTYPE)
        f = self.p_mean.unsqueeze(-1) + self.p_chol @ self.p_eps  # (k, p, M)
        self.p_loss = self.score_loss(self._to_scores(f))  # (p, M)
        self._update_best()

    def continue_with(self, pending_u: np.ndarray, *, fresh_samples: bool) -> None:
        """Make the points after the incumbents exactly ``pending_u``: keep the longest run of the current
        ones that it starts with, drop the rest, add the remainder; with ``fresh_samples`` every point's
        samples are then drawn anew, as in a state built from scratch."""
        added = self.p_u[self.n_base :].numpy()
        j = 0
        while j < min(len(added), len(pending_u)) and np.allclose(added[j], pending_u[j], rtol=0.0, atol=1e-12):
            j += 1
        self.truncate(self.n_base + j)
        for u in pending_u[j:]:
            self.add(u, self.draw())
        if fresh_samples:
            self.resample()

    def sample_losses(self, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Loss samples (N, M) at candidates ``u`` (N, d), conditioned on the points added so far."""
        mean, v = self.gp.parts(u)
        prior_var = torch.ones_like(mean)  # Matern with unit signal variance
        cross = self.gp.prior_cov(u, self.p_u) - v.transpose(-1, -2) @ self.p_v  # (k, N, p)
        a = torch.linalg.solve_triangular(self.p_chol, cross.transpose(-1, -2), upper=False).transpose(-1, -2)
        var = (prior_var - (v * v).sum(-2) - (a * a).sum(-1)).clamp_min(1e-12)
        f = mean.unsqueeze(-1) + a @ self.p_eps + var.sqrt().unsqueeze(-1) * eps[:, None, :]  # (k, N, M)
        return self.score_loss(self._to_scores(f))

    def log_value(self, u: np.ndarray, eps: torch.Tensor, chunk: int = 384) -> np.ndarray:
        out = []
        ut = torch.as_tensor(np.atleast_2d(u), dtype=DTYPE)
        for i in range(0, len(ut), chunk):
            part = ut[i : i + chunk]
            improvement = self.best - self.sample_losses(part, eps)
            # log of E[tau * softplus(improvement / tau)]: a smooth ReLU keeps a ranking where EI is ~0
            soft = torch.nn.functional.softplus(improvement / self.tau) * self.tau
            value = torch.log(soft.mean(-1).clamp_min(1e-300))
            if len(self.failed_u):
                # EI weighted by the chance of a measurement, and (the probabilistic constraint of Gelbart
                # et al.) ground where failures outweigh successes more than 2 : 1 ranked last
                log_p = self.log_success(part)
                value = value + log_p - 1e6 * (log_p < UNLIKELY)
            out.append(value)
        return torch.cat(out).numpy()

    def log_success(self, u: torch.Tensor) -> torch.Tensor:
        """Log of the chance that a condition at ``u`` gives a measurement at all (constrained BO with an
        unknown constraint weighs EI by it, Gelbart et al., UAI 2014); :class:`SuccessModel`."""
        if self._success is None:
            self._success = SuccessModel(self.gp.x[0], self.failed_u)
        return self._success.log_p(u)


class CompositeSurrogate:
    def __init__(self, gp: BatchedGP, pca: SpectrumPCA, loss: SpectrumLoss, scaler: UnitScaler,
                 x_data: np.ndarray, u_data: np.ndarray, x_failed: np.ndarray, rng: np.random.Generator,
                 settings: Mapping[str, Any]) -> None:
        self.gp, self.pca, self.scaler, self.rng = gp, pca, scaler, rng
        self.score_loss = ScoreLoss(loss, pca, stride=int(settings["minmax_stride"]))
        self.s = settings
        self.m = int(settings["mc_samples"])
        self.eval_eps = torch.as_tensor(np.random.default_rng(0).standard_normal((gp.x.shape[0], self.m)), dtype=DTYPE)
        self.u_failed = scaler.to_unit(x_failed) if len(x_failed) else np.empty((0, u_data.shape[1]))
        # incumbents: the measured conditions with the best expected loss (BoTorch prunes its baseline alike)
        expected = self.expected_loss(u_data)
        order = np.argsort(expected, kind="stable")
        self.baseline_u = u_data[order[: int(settings["baseline"])]]
        self.anchors = x_data[order[:5]]
        self._state: GreedyNoisyEI | None = None

    def expected_loss(self, u: np.ndarray) -> np.ndarray:
        """Posterior mean of the loss (MC over the marginal posterior of the scores, fixed samples)."""
        ut = torch.as_tensor(np.atleast_2d(u), dtype=DTYPE)
        out = []
        with torch.no_grad():
            for i in range(0, len(ut), 512):
                mean, v = self.gp.parts(ut[i : i + 512])
                std = (1.0 - (v * v).sum(-2)).clamp_min(1e-12).sqrt()
                f = mean.unsqueeze(-1) + std.unsqueeze(-1) * self.eval_eps[:, None, :]
                z = torch.movedim(f, 0, -1) * torch.as_tensor(self.gp.y_std) + torch.as_tensor(self.gp.y_mean)
                out.append(self.score_loss(z).mean(-1))
        return torch.cat(out).numpy()

    def predicted_spectra(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mean, _ = self.gp.parts(torch.as_tensor(self.scaler.to_unit(x), dtype=DTYPE))
        z = mean.T.numpy() * self.gp.y_std + self.gp.y_mean
        return self.pca.mean + z @ self.pca.basis

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return self.expected_loss(self.scaler.to_unit(np.atleast_2d(x)))

    def _candidates(self, space: Space) -> np.ndarray:
        return candidate_set(space, self.rng, scaler=self.scaler, n_global=int(self.s["n_global"]),
                             anchors=self.anchors, n_local=int(self.s["n_local"]))

    def predicted_best(self, space: Space) -> np.ndarray:
        cands = self._candidates(space)
        k = int(np.argmin(self.predicted_loss(cands)))
        x, _ = refine_locally(lambda x: -self.predicted_loss(x), space, cands[k], self.scaler, self.rng,
                              scales=(0.03, 0.01), n_each=32)
        return x

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        """``n`` conditions by sequential greedy noisy EI given ``pending`` ones. One joint posterior of the
        incumbents and the conditions chosen serves all calls on this model: a later call (the widening's
        picks for new ground, after the main batch) keeps the part of it that its ``pending`` starts
        with instead of building it again, and draws fresh samples for it, as a new state would."""
        with torch.no_grad():
            again = self._state is not None
            if not again:
                self._state = GreedyNoisyEI(self.gp, self.score_loss, self.baseline_u, self.rng, n_samples=self.m,
                                            failed_u=self.u_failed)
            state = self._state
            state.continue_with(self.scaler.to_unit(np.atleast_2d(pending)) if len(pending) else
                                np.empty((0, self.baseline_u.shape[1])), fresh_samples=again)
            cands = self._candidates(space)
            keep = np.arange(len(cands))
            picks = []
            if int(self.s["exploit"]) and n > 1:
                # one pure exploitation pick: the predicted-best condition (the lowest posterior-mean loss)
                x = self.predicted_best(space)
                picks.append(x)
                state.add(self.scaler.to_unit(x[None, :])[0], state.draw())
            while len(picks) < n:
                eps = state.draw()
                values = state.log_value(self.scaler.to_unit(cands[keep]), eps)
                order = np.argsort(-values, kind="stable")
                best = keep[order[0]]
                # later picks only re-rank the front runners: conditioning lowers values, rarely reorders far
                keep = keep[order[: int(self.s["rerank"])]]

                def score(x: np.ndarray, e: torch.Tensor = eps) -> np.ndarray:
                    return state.log_value(self.scaler.to_unit(x), e)

                x, _ = refine_locally(score, space, cands[best], self.scaler, self.rng,
                                      scales=(0.03, 0.01, 0.003), n_each=int(self.s["refine"]))
                picks.append(x)
                state.add(self.scaler.to_unit(x[None, :])[0], eps)
        return np.array(picks).reshape(n, -1)


class MixedSurrogate:
    """A share of each batch from the scalar-loss GP-EI-LP, the rest from the composite model.

    Two models that fail differently: the composite is sharp once its spectrum model holds, but with
    few, uniformly poor conditions (an optimum far outside the initial bounds) its sampled EI chases
    variance; the scalar GP follows the loss's trend. Predictions (and the widening gate's first
    opinion) are the composite's; the scalar model is offered to the gate as a second opinion."""

    def __init__(self, main: CompositeSurrogate, scalar: Any, fraction: float) -> None:
        self.main, self.scalar, self.fraction = main, scalar, fraction
        scalar.label = "scalar-loss GP"  # how the widening gate's reasons name its second opinion
        self.alternatives = (scalar,)

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        m = int(round(self.fraction * n)) if n > 1 else 0
        first = self.scalar.select(space, m, pending) if m else np.empty((0, pending.shape[1]))
        rest = self.main.select(space, n - m, np.vstack([pending, first]) if len(pending) else first)
        return np.vstack([first, rest])

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return self.main.predicted_loss(x)

    def predicted_best(self, space: Space) -> np.ndarray:
        return self.main.predicted_best(space)

    def predicted_spectra(self, x: np.ndarray) -> np.ndarray:
        return self.main.predicted_spectra(x)


def median_spectra(observations: list[Observation],
                   wavelengths: np.ndarray | None = None) -> tuple[list[Observation], np.ndarray]:
    """Measured conditions that carry spectra, and the median spectrum of each: the replicates' median
    over their finite points, a point missing in every replicate bridged along ``wavelengths``
    (:func:`orchestrator.optimize.replicates.replicate_median`); a condition without any finite point
    is left out. Every row returned is finite, as the PCA and the GPs need."""
    rows, medians = [], []
    for o in observations:
        if o.median_loss is None:
            continue
        med = replicate_median(o.spectra, wavelengths)
        if med is not None:
            rows.append(o)
            medians.append(med)
    if not rows:
        return [], np.empty((0, 0))
    return rows, np.array(medians)


# new_ground_max: up to 5 of a batch go into ground a widening just opened (3 before): on the chemistries
# with the optimum outside, 20 seeds, 0.01 by round 6 rose from 20 to 50 % (bands) and 30 to 40 %
# (AuNanorod), TwoBand 40 -> 30 %; a later re-draw of the same code gave 30, 35 and 25 %: the gains are
# within seed noise except perhaps on bands (40 seeds: 25-32 %); docs/optimizer_benchmark.md
DEFAULTS: dict[str, Any] = {
    "mc_samples": 48, "n_global": 768, "n_local": 384, "rerank": 128, "refine": 32, "baseline": 16,
    "max_fit": 100, "max_condition": 400, "fit_iterations": 50, "minmax_stride": 3, "k_min": 5, "k_max": 8, "new_ground_max": 5,
    "scalar_fraction": 0.0, "scalar_when": "always", "exploit": 0,
}
# what each number may be: fewer would leave nothing to score, sample or fit (None: no limit)
RANGES: dict[str, tuple[float | None, float | None]] = {
    "mc_samples": (2, None), "n_global": (1, None), "n_local": (0, None), "rerank": (1, None),
    "refine": (0, None), "baseline": (1, None), "max_fit": (5, None), "max_condition": (5, None),
    "fit_iterations": (1, None), "minmax_stride": (1, None), "k_min": (1, None), "k_max": (1, None),
    "new_ground_max": (0, None), "scalar_fraction": (0, 1), "exploit": (0, None),
}


class CompositeOptimizer:
    name = "composite"

    def __init__(self, seed: int, policy: WideningPolicy, settings: Mapping[str, Any]) -> None:
        self.seed, self.policy, self.s = seed, policy, dict(settings)

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        with single_threaded():
            return self._suggest(history, space, n)

    def _suggest(self, history: History, space: Space, n: int) -> Suggestion:
        check_space(space)
        rows, spectra = median_spectra(history.measured(), history.wavelengths)
        if len(rows) < int(self.s["k_min"]) + 3:
            return self._fallback(history, space, n, len(rows))
        rng = round_rng(self.seed, history.round_index)
        torch.manual_seed(int(rng.integers(2**31)))
        x = space.to_array([o.inputs for o in rows])
        scaler = UnitScaler.for_space(space)
        u = scaler.to_unit(x)
        losses = np.array([o.median_loss for o in rows], dtype=float)
        cond = fit_subset(losses, int(self.s["max_condition"]), rng)
        pca = SpectrumPCA.fit(spectra[cond], k_min=int(self.s["k_min"]), k_max=int(self.s["k_max"]))
        scores = pca.scores(spectra[cond])
        fit_rows = fit_subset(losses[cond], int(self.s["max_fit"]), rng)
        # with a scalar GP in every batch (``scalar_when: always``) its scikit-learn fit runs next to the
        # composite's torch fit, on the second core: the suggestion waits for the longer of the two only.
        # It takes its draws from ``rng`` before anything after it does, as it would in turn.
        always = float(self.s["scalar_fraction"]) > 0 and self.s["scalar_when"] == "always"
        with ThreadPoolExecutor(1) as pool:
            scalar = pool.submit(self._scalar_surrogate, history, space, rng) if always else None
            gp = BatchedGP(int(self.s["fit_iterations"])).fit(u[cond], scores, fit_rows).condition(u[cond], scores)
        failed = history.failed()
        x_failed = space.to_array([o.inputs for o in failed]) if failed else np.empty((0, x.shape[1]))
        surrogate = CompositeSurrogate(gp, pca, history.loss, scaler, x[cond], u[cond], x_failed, rng, self.s)
        mixed = float(self.s["scalar_fraction"]) > 0 and self._wants_second_model(surrogate, history, space)
        if mixed:
            second = scalar.result() if scalar is not None else self._scalar_surrogate(history, space, rng)
            surrogate = MixedSurrogate(surrogate, second, float(self.s["scalar_fraction"]))
        batch, new_space, notes = select_with_widening(surrogate, history, space, n, self.policy)
        batch = make_feasible(new_space, batch)
        predicted = surrogate.predicted_spectra(batch)
        notes.update({
            "components": int(pca.basis.shape[0]), "explained_variance": round(pca.explained, 6),
            "predicted_loss": [round(float(v), 5) for v in surrogate.predicted_loss(batch)],
            "length_scales": gp.ls.squeeze(1).numpy().round(3).tolist(),
            "scalar_gp_conditions": int(round(float(self.s["scalar_fraction"]) * n)) if mixed and n > 1 else 0,
        })
        return Suggestion(batch=new_space.to_dicts(batch), space=new_space, sources=[self.name] * len(batch),
                          predictions=list(predicted), notes=notes)

    def _wants_second_model(self, surrogate: CompositeSurrogate, history: History, space: Space) -> bool:
        """``scalar_when: always``, or ``edge``: only while the best measured or the predicted-best
        condition presses against an edge that may still widen. Inside the box the composite alone is
        the sharper model; at an edge the optimum may lie beyond it, where the composite's sampled EI
        chases variance and the scalar GP's trend (and second opinion for the widening gate) helps."""
        if self.s["scalar_when"] == "always":
            return True
        return bool(edges_pressed(space, [best_measured(history, space), surrogate.predicted_best(space)],
                                  self.policy.gate_fraction))

    def _scalar_surrogate(self, history: History, space: Space, rng: np.random.Generator):
        from orchestrator.optimize.ei_lp import EILPSurrogate
        from orchestrator.optimize.gp import LossGP, loss_training_data, unit_scaler

        x, y, _ = loss_training_data(history, space)
        n_ok = len(history.measured())
        scaler = unit_scaler(space, use_log=True)
        # hyperparameters from at most 150 rows (the composite's own GPs use 100): the second model is
        # a second opinion, and at 500 observations a 300-row fit took half the suggestion's time
        gp = LossGP(ard=True, max_fit=150).fit(scaler.to_unit(x), y, rng)
        return EILPSurrogate(gp, scaler, x[:n_ok], y[:n_ok], rng)

    def _fallback(self, history: History, space: Space, n: int, n_spectra: int) -> Suggestion:
        """Too few spectra to model (a history imported without them): the scalar-loss GP, else a design."""
        if len(history.measured()) >= 3:
            from orchestrator.optimize.ei_lp import GpEiLpOptimizer

            sug = GpEiLpOptimizer(self.name, self.seed, self.policy, ard=True, use_log=True).suggest(history, space, n)
            sug.notes["fallback"] = f"only {n_spectra} measured conditions carry spectra: scalar-loss GP-EI-LP"
            return sug
        return design_suggestion(self.name, self.seed, history, space, n, "too few measured conditions to model")


def build(settings: Mapping[str, Any], widening: Mapping[str, Any] | None, seed: int,
          *, name: str = "composite", defaults: Mapping[str, Any] = DEFAULTS) -> CompositeOptimizer:
    from orchestrator.optimize.registry import OptimizerSettingsError, take_settings

    s = take_settings(name, settings, defaults, RANGES)
    if s["scalar_when"] not in ("always", "edge"):
        raise OptimizerSettingsError(
            f"optimizer.settings.scalar_when must be 'always' or 'edge', got {s['scalar_when']!r}")
    if s["k_min"] > s["k_max"]:
        raise OptimizerSettingsError(
            f"optimizer.settings.k_min ({s['k_min']}) must not exceed k_max ({s['k_max']})")
    if s["max_fit"] > s["max_condition"]:
        raise OptimizerSettingsError(
            f"optimizer.settings.max_fit ({s['max_fit']}) must not exceed max_condition ({s['max_condition']}): "
            "the hyperparameters are fitted on rows the model conditions on")
    policy = WideningPolicy.from_protocol(widening, rule="gated", max_new=int(s["new_ground_max"]))
    optimizer = CompositeOptimizer(seed, policy, s)
    optimizer.name = name
    return optimizer


def build_mixed(settings: Mapping[str, Any], widening: Mapping[str, Any] | None, seed: int) -> CompositeOptimizer:
    """``composite_mix``: the composite with a third of each batch from the scalar GP-EI-LP."""
    return build(settings, widening, seed, name="composite_mix", defaults={**DEFAULTS, "scalar_fraction": 1 / 3})


def build_edge_mixed(settings: Mapping[str, Any], widening: Mapping[str, Any] | None, seed: int) -> CompositeOptimizer:
    """``composite_edge``: the composite alone while its best conditions lie inside the box, a third of
    the batch from the scalar GP-EI-LP while they press against an edge that may still widen; the
    first pick of each batch is the predicted-best condition."""
    return build(settings, widening, seed, name="composite_edge",
                 defaults={**DEFAULTS, "scalar_fraction": 1 / 3, "scalar_when": "edge", "exploit": 1})
