"""Step two of the optimiser: an ensemble of small torch networks predicting the whole spectrum.

Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021) trained one dense network (5 inputs, layers of
50-100-200-500 units, 421 outputs: the absorbance on 380-800 nm at 1 nm) on every droplet spectrum and
searched it for the inputs whose predicted spectrum scores the lowest loss. Here an ensemble of such
networks (different initial weights and bootstrap resamples of the conditions) gives an uncertainty
too: the spread of the members' predicted losses.

The output layer predicts the scores of the leading principal components of the training spectra,
mapped back to every wavelength by a fixed linear layer: a 421-output network whose last layer is
low rank. It trains several times faster (the 200 x 421 output layer was most of the work), and the
squared error in the component scores is the squared error of the spectra up to a constant.

Training on every accepted replicate with a squared error is the same problem as training on each
condition's mean spectrum weighted by its replicate count (the replicates of a condition share its
inputs, so the per-replicate errors differ from the mean's only by a constant). The ensemble fits the
weighted means: identical gradients, a twentieth of the work.

The batch: many feasible candidates (bounds and sum constraint), scored by the predicted loss minus
an uncertainty bonus, the best refined by a small local search, then picked greedily with a minimum
distance between picks so that the batch does not pile onto one point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.optimize.base import History, Space
from orchestrator.optimize.constraints import make_feasible, sample_feasible
from orchestrator.optimize.registry import OptimizerSettingsError
from orchestrator.optimize.replicates import replicate_mean
from orchestrator.optimize.success import UNLIKELY, SuccessModel
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.spectra import SpectrumLoss

log = structlog.get_logger(__name__)

SOURCE = "dnn"


class DnnSettingsError(OptimizerSettingsError):
    """Settings of the spectrum network the protocol cannot use."""


class NotEnoughSpectra(ValueError):
    """Too few measured spectra to train the network on."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnsembleSettings(_Settings):
    """How the ensemble is built and trained (``optimizer.settings.dnn.model`` in a protocol)."""

    members: int = Field(5, ge=1, le=32, description="networks in the ensemble")
    # the paper's network was 50-100-200-500 -> 421; the 500 layer adds 3x the weights for little
    # gain on a few hundred conditions, so it is left out by default
    hidden: tuple[int, ...] = Field((50, 100, 200), min_length=1, max_length=6)
    max_epochs: int = Field(1500, ge=10, le=100_000)
    max_condition_epochs: int = Field(
        100_000, ge=1000, description="work cap: epochs x conditions (keeps big data sets to seconds)"
    )
    batch_conditions: int = Field(256, ge=8, description="mini-batch size once there are more conditions")
    patience_epochs: int = Field(100, ge=10, description="stop a member this long after its best validation")
    learning_rate: float = Field(1e-2, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    components: int = Field(
        32, ge=0, le=4096, description="principal components the output layer predicts; 0: every wavelength"
    )
    bootstrap: bool = Field(True, description="resample conditions per member (out-of-bag ones validate)")
    threads: int = Field(1, ge=1, le=64, description="torch CPU threads while training and predicting")
    min_conditions: int = Field(8, ge=2, description="measured conditions with spectra needed to train")


class SearchSettings(_Settings):
    """How the batch is searched on the trained ensemble (``optimizer.settings.dnn.search``)."""

    candidates: int = Field(4000, ge=100, le=200_000, description="random feasible candidates")
    refine_starts: int = Field(24, ge=0, le=1000, description="best candidates refined locally")
    refine_iterations: int = Field(4, ge=0, le=50)
    refine_samples: int = Field(24, ge=2, le=1000, description="perturbations per start and iteration")
    refine_step: float = Field(0.06, gt=0, le=1, description="first perturbation size (unit-scaled range)")
    uncertainty_weight: float = Field(
        0.5, ge=0, description="score = mean predicted loss - this x spread of the members' losses"
    )
    min_distance: float = Field(
        0.08, ge=0, le=2, description="least distance between two picks (unit-scaled bounds, Euclidean)"
    )
    measured_distance: float = Field(0.02, ge=0, le=2, description="least distance to a measured condition")
    failed_distance: float = Field(0.05, ge=0, le=2, description="least distance to a failed condition")


class DnnSettings(_Settings):
    model: EnsembleSettings = Field(default_factory=EnsembleSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)


def parse_settings(
    settings: Mapping[str, Any] | None, *, where: str = "optimizer.settings.dnn"
) -> DnnSettings:
    """Validate the network's settings, naming every wrong key."""
    try:
        return DnnSettings.model_validate(dict(settings or {}))
    except ValidationError as exc:
        lines = [f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise DnnSettingsError("; ".join(lines) + " (fix the protocol's optimizer settings)") from exc


# ---------------------------------------------------------------------------------------------
# training data


@dataclass(frozen=True)
class SpectrumData:
    """Per-condition mean of the accepted replicate spectra and the replicate count (the weight); points
    missing in some replicates or all are handled by :func:`orchestrator.optimize.replicates.replicate_mean`."""

    x: np.ndarray  # (n, d) physical inputs
    mean: np.ndarray  # (n, n_wl)
    count: np.ndarray  # (n,)

    @classmethod
    def from_history(cls, history: History, names: Sequence[str]) -> SpectrumData:
        xs, means, counts = [], [], []
        for obs in history.observations:
            spectrum, count = replicate_mean(obs.spectra, history.wavelengths)
            if spectrum is None:
                continue
            xs.append([float(obs.inputs[n]) for n in names])
            means.append(spectrum)
            counts.append(count)
        n_wl = len(history.wavelengths)
        if not xs:
            return cls(np.empty((0, len(names))), np.empty((0, n_wl)), np.empty(0))
        return cls(np.array(xs, dtype=float), np.array(means, dtype=float), np.array(counts, dtype=float))

    def __len__(self) -> int:
        return len(self.x)

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for a in (self.x, self.mean, self.count):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch CPU threads, then restore (the machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# the ensemble: all members in one batched MLP so a full-batch step trains every member at once


class _BatchedMLP(torch.nn.Module):
    """``members`` independent MLPs evaluated together: weights (members, in, out)."""

    def __init__(self, members: int, sizes: Sequence[int], generator: torch.Generator) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            # torch.nn.Linear's default initialisation, drawn from our own generator (no global state)
            bound = 1.0 / np.sqrt(fan_in)
            w = (
                torch.rand(members, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1
            ) * bound
            b = (torch.rand(members, 1, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            self.weights.append(torch.nn.Parameter(w.float()))
            self.biases.append(torch.nn.Parameter(b.float()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (n, d) shared by every member, or (members, n, d); returns (members, n, out)."""
        h = z.expand(len(self.weights[0]), *z.shape[-2:]) if z.dim() == 2 else z
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.nn.functional.silu(h)
        return h


@dataclass
class SpectrumEnsemble:
    """A trained ensemble: physical inputs in, absorbance spectra out."""

    scaler: UnitScaler
    z_mean: np.ndarray
    z_std: np.ndarray
    y_mean: np.ndarray
    y_scale: float
    basis: np.ndarray  # (k, n_wl) orthonormal rows: network outputs -> centred, scaled spectra
    net: _BatchedMLP
    threads: int
    train_mse: np.ndarray  # per member, absorbance^2 per wavelength, on its own training conditions
    valid_mse: np.ndarray  # per member, out-of-bag (NaN when a member had no out-of-bag condition)
    epochs: np.ndarray  # per member, the epoch its kept weights come from

    @property
    def members(self) -> int:
        return len(self.train_mse)

    @classmethod
    def fit(
        cls,
        data: SpectrumData,
        scaler: UnitScaler,
        settings: EnsembleSettings,
        seed: int | np.random.SeedSequence,
    ) -> SpectrumEnsemble:
        if len(data) < settings.min_conditions:
            raise NotEnoughSpectra(
                f"the spectrum network needs spectra of at least {settings.min_conditions} conditions, "
                f"has {len(data)}"
            )
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        rng = np.random.default_rng(ss)
        generator = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))

        u = scaler.to_unit(data.x)
        z_mean, z_std = u.mean(axis=0), u.std(axis=0)
        z_std = np.where(z_std > 1e-9, z_std, 1.0)
        w_cond = data.count / data.count.sum()
        y_mean = (w_cond[:, None] * data.mean).sum(axis=0)
        y_scale = float(np.sqrt((w_cond[:, None] * (data.mean - y_mean) ** 2).sum(axis=0).mean()))
        y_scale = y_scale if y_scale > 1e-12 else 1.0

        basis = _output_basis(data, y_mean, w_cond, settings.components)
        coeff = ((data.mean - y_mean) / y_scale) @ basis.T

        m, n = settings.members, len(data)
        if settings.bootstrap and m > 1:
            picks = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(float)
        else:
            picks = np.ones((m, n))
        train_w = picks * data.count[None, :]
        # out-of-bag conditions validate their member; without any, its own training error decides
        oob = (picks == 0) * data.count[None, :]
        has_oob = oob.sum(axis=1) > 0

        with torch_threads(settings.threads):
            net = _BatchedMLP(m, [u.shape[1], *settings.hidden, len(basis)], generator)
            z = torch.as_tensor((u - z_mean) / z_std, dtype=torch.float32)
            y = torch.as_tensor(coeff, dtype=torch.float32)
            tw = torch.as_tensor(train_w / train_w.sum(axis=1, keepdims=True), dtype=torch.float32)
            vw_np = np.where(has_oob[:, None], oob, train_w)
            vw = torch.as_tensor(vw_np / vw_np.sum(axis=1, keepdims=True), dtype=torch.float32)
            result = _train(net, z, y, tw, vw, settings, generator)
        best_train, best_valid, best_epoch = result
        # the error outside the kept components does not depend on the weights; averaged over all
        # conditions (a member's own resample would weigh it slightly differently)
        residual = float((w_cond * (((data.mean - y_mean) / y_scale - coeff @ basis) ** 2).sum(axis=1)).sum())
        scale2 = y_scale**2 / data.mean.shape[1]
        best_train = best_train * len(basis) + residual
        best_valid = best_valid * len(basis) + residual
        return cls(
            scaler=scaler,
            z_mean=z_mean,
            z_std=z_std,
            y_mean=y_mean,
            y_scale=y_scale,
            basis=basis,
            net=net,
            threads=settings.threads,
            train_mse=best_train * scale2,
            valid_mse=np.where(has_oob, best_valid * scale2, np.nan),
            epochs=best_epoch,
        )

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """Every member's predicted spectra for physical inputs ``x`` (n, d): (members, n, n_wl)."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        z = (self.scaler.to_unit(x) - self.z_mean) / self.z_std
        out = []
        with torch_threads(self.threads), torch.no_grad():
            # chunks keep the (members, n, hidden) activations small for big candidate sets
            for start in range(0, len(z), 8192):
                zt = torch.as_tensor(z[start : start + 8192], dtype=torch.float32)
                out.append(self.net(zt).double().numpy())
        coeff = np.concatenate(out, axis=1) if out else np.empty((self.members, 0, len(self.basis)))
        return (coeff @ self.basis) * self.y_scale + self.y_mean

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and spread (standard deviation) of the predicted spectra, each (n, n_wl)."""
        p = self.predict_members(x)
        return p.mean(axis=0), p.std(axis=0)

    def predict_loss(self, x: np.ndarray, loss: SpectrumLoss) -> np.ndarray:
        """Every member's loss of its predicted spectrum: (members, n)."""
        return np.asarray(loss(self.predict_members(x)), dtype=float).reshape(self.members, -1)


def _output_basis(data: SpectrumData, y_mean: np.ndarray, w: np.ndarray, components: int) -> np.ndarray:
    """Leading principal directions of the (count-weighted) centred spectra, or the identity."""
    n_wl = data.mean.shape[1]
    if components == 0 or components >= n_wl:
        return np.eye(n_wl)
    _, _, vt = np.linalg.svd(np.sqrt(w)[:, None] * (data.mean - y_mean), full_matrices=False)
    k = min(components, len(vt))
    basis = vt[:k]
    # a fixed sign per component, so the same data always gives the same basis
    signs = np.sign(basis[np.arange(k), np.abs(basis).argmax(axis=1)])
    return basis * np.where(signs == 0, 1.0, signs)[:, None]


def _train(
    net: _BatchedMLP,
    z: torch.Tensor,
    y: torch.Tensor,
    train_w: torch.Tensor,
    valid_w: torch.Tensor,
    settings: EnsembleSettings,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AdamW on every member at once (full batch, or shuffled mini-batches on big data sets), keeping
    each member's weights of its best validation error."""
    opt = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    m, n = train_w.shape
    # a fixed amount of work per fit, not a wall-clock limit: the same data must give the same model
    epochs = int(min(settings.max_epochs, max(20, settings.max_condition_epochs // n)))
    batch = settings.batch_conditions if n > settings.batch_conditions else n
    best_valid = np.full(m, np.inf)
    best_train = np.full(m, np.inf)
    best_epoch = np.zeros(m, dtype=int)
    best_state = [p.detach().clone() for p in net.parameters()]
    check_every = 5 if batch == n else 1
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator) if batch < n else None
        for start in range(0, n, batch):
            idx = order[start : start + batch] if order is not None else slice(None)
            opt.zero_grad(set_to_none=True)
            per_cond = ((net(z[idx]) - y[idx]) ** 2).mean(dim=2)  # (members, batch)
            (per_cond * train_w[:, idx]).sum().backward()
            opt.step()
        if epoch % check_every and epoch != epochs - 1:
            continue
        with torch.no_grad():
            per_cond = ((net(z) - y) ** 2).mean(dim=2)
            valid = (per_cond * valid_w).sum(dim=1).numpy()
            train = (per_cond * train_w).sum(dim=1).numpy()
        better = valid < best_valid
        if better.any():
            best_valid[better] = valid[better]
            best_train[better] = train[better]
            best_epoch[better] = epoch
            keep = torch.as_tensor(np.flatnonzero(better))
            for saved, p in zip(best_state, net.parameters(), strict=True):
                saved[keep] = p.detach()[keep]
        if np.all(epoch - best_epoch >= settings.patience_epochs):
            break
    with torch.no_grad():
        for saved, p in zip(best_state, net.parameters(), strict=True):
            p.copy_(saved)
    return best_train, best_valid, best_epoch


# ---------------------------------------------------------------------------------------------
# the batch


@dataclass(frozen=True)
class DnnBatch:
    """The network's picks: physical inputs, ensemble-mean predicted spectra, and their scores."""

    x: np.ndarray  # (k, d)
    predictions: np.ndarray  # (k, n_wl)
    predicted_loss: np.ndarray  # (k,) mean over members
    loss_spread: np.ndarray  # (k,) standard deviation over members
    predicted_best: float  # lowest mean predicted loss found anywhere in the search (NaN if none)
    predicted_best_x: np.ndarray  # (d,) where it is


def _score(
    ensemble: SpectrumEnsemble, x: np.ndarray, loss: SpectrumLoss, kappa: float
) -> tuple[np.ndarray, ...]:
    losses = ensemble.predict_loss(x, loss)
    mean, spread = losses.mean(axis=0), losses.std(axis=0)
    return mean - kappa * spread, mean, spread


def search_batch(
    ensemble: SpectrumEnsemble,
    space: Space,
    loss: SpectrumLoss,
    n: int,
    rng: np.random.Generator,
    settings: SearchSettings,
    *,
    avoid: np.ndarray | None = None,
    measured: np.ndarray | None = None,
    failed: np.ndarray | None = None,
) -> DnnBatch:
    """``n`` feasible conditions of lowest predicted loss (minus the uncertainty bonus), spread apart.

    ``avoid``: conditions already in this batch (another strategy's picks) that count as picks for the
    spacing; ``measured``/``failed``: earlier conditions not to repeat, or to keep clear of."""
    d = len(space.variables)
    unit = UnitScaler.for_space(space)
    kappa = settings.uncertainty_weight
    cand = sample_feasible(space, settings.candidates, rng, scaler=unit)
    score, mean, spread = _score(ensemble, cand, loss, kappa)

    if settings.refine_starts and settings.refine_iterations:
        starts = cand[np.argsort(score)[: settings.refine_starts]]
        tried = refine_minimum(
            lambda x: _score(ensemble, x, loss, kappa)[0],
            space,
            starts,
            rng,
            iterations=settings.refine_iterations,
            samples=settings.refine_samples,
            step=settings.refine_step,
        )
        cand = np.concatenate([cand, tried])
        score, mean, spread = _score(ensemble, cand, loss, kappa)

    keep = space.feasible(cand)
    cand, score, mean, spread = cand[keep], score[keep], mean[keep], spread[keep]
    best_i = int(np.argmin(mean)) if len(mean) else -1
    u = unit.to_unit(cand)
    blocked = np.zeros(len(cand), dtype=bool)
    for pts, radius in ((measured, settings.measured_distance), (failed, settings.failed_distance)):
        if pts is not None and len(pts) and radius > 0:
            blocked |= _min_dist(u, unit.to_unit(np.atleast_2d(pts))) < radius
    if failed is not None and len(failed) and measured is not None and len(measured):
        # ground where failures outweigh successes (orchestrator.optimize.success), as the composite does
        success = SuccessModel(torch.as_tensor(unit.to_unit(np.atleast_2d(measured))),
                               torch.as_tensor(unit.to_unit(np.atleast_2d(failed))))
        with torch.no_grad():
            blocked |= (success.log_p(torch.as_tensor(u)) < UNLIKELY).numpy()
    order = np.argsort(np.where(blocked, np.inf, score), kind="stable")
    order = order[~blocked[order]] if (~blocked).sum() >= n else order

    fixed_u = unit.to_unit(np.atleast_2d(avoid)) if avoid is not None and len(avoid) else np.empty((0, d))
    picks: list[int] = []
    radius = settings.min_distance
    # relax the spacing until the batch fills (a narrow box may not hold n points that far apart)
    while len(picks) < n and radius >= 1e-6:
        for i in order:
            if len(picks) >= n:
                break
            if i in picks:
                continue
            taken = np.concatenate([fixed_u, u[picks]]) if picks else fixed_u
            if len(taken) == 0 or _min_dist(u[i : i + 1], taken)[0] >= radius:
                picks.append(int(i))
        radius *= 0.5
    if len(picks) < n:
        extra = [int(i) for i in order if i not in picks][: n - len(picks)]
        picks.extend(extra)
    picks_arr = np.array(picks[:n], dtype=int)
    x = cand[picks_arr]
    pred_mean, _ = ensemble.predict(x)
    return DnnBatch(
        x=x,
        predictions=pred_mean,
        predicted_loss=mean[picks_arr],
        loss_spread=spread[picks_arr],
        predicted_best=float(mean[best_i]) if best_i >= 0 else float("nan"),
        predicted_best_x=cand[best_i] if best_i >= 0 else np.full(d, np.nan),
    )


def refine_minimum(
    score: Callable[[np.ndarray], np.ndarray],
    space: Space,
    starts: np.ndarray,
    rng: np.random.Generator,
    *,
    iterations: int = 4,
    samples: int = 24,
    step: float = 0.06,
) -> np.ndarray:
    """Local search for lower ``score`` around each start: rounds of shrinking Gaussian perturbations
    in the unit-scaled box, each start moving to its best perturbation when that is better.
    Derivative-free, because the loss has kinks where the amplitude factor switches. Returns every
    feasible point tried, (iterations * len(starts) * samples, d)."""
    unit = UnitScaler.for_space(space)
    d = len(space.variables)
    starts = np.atleast_2d(starts)
    s_score = score(starts)
    rows = np.arange(len(starts))
    tried = []
    for _ in range(iterations):
        trial_u = unit.to_unit(starts)[:, None, :] + step * rng.standard_normal((len(starts), samples, d))
        trial = make_feasible(space, unit.from_unit(np.clip(trial_u, 0.0, 1.0).reshape(-1, d)))
        t_score = score(trial).reshape(len(starts), samples)
        best = t_score.argmin(axis=1)
        improved = t_score[rows, best] < s_score
        trial = trial.reshape(len(starts), samples, d)
        starts = np.where(improved[:, None], trial[rows, best], starts)
        s_score = np.where(improved, t_score[rows, best], s_score)
        tried.append(trial.reshape(-1, d))
        step *= 0.5
    return np.concatenate(tried) if tried else np.empty((0, d))


class NetworkSurrogate:
    """The ensemble seen by bound widening (:class:`orchestrator.optimize.widening.Surrogate`): picks
    by :func:`search_batch`, predicted loss = the members' mean. Remembers the lowest predicted loss
    any of its searches found (``best``, ``best_x``)."""

    def __init__(
        self,
        ensemble: SpectrumEnsemble,
        loss: SpectrumLoss,
        settings: SearchSettings,
        rng: np.random.Generator,
        *,
        measured: np.ndarray | None = None,
        failed: np.ndarray | None = None,
    ) -> None:
        self.ensemble, self.loss, self.settings, self.rng = ensemble, loss, settings, rng
        self.measured, self.failed = measured, failed
        self.best = float("inf")
        self.best_x: np.ndarray | None = None

    def _search(self, space: Space, n: int, pending: np.ndarray | None) -> DnnBatch:
        batch = search_batch(
            self.ensemble,
            space,
            self.loss,
            n,
            self.rng,
            self.settings,
            avoid=pending,
            measured=self.measured,
            failed=self.failed,
        )
        if batch.predicted_best < self.best:
            self.best, self.best_x = batch.predicted_best, batch.predicted_best_x
        return batch

    def select(self, space: Space, n: int, pending: np.ndarray) -> np.ndarray:
        return self._search(space, n, pending).x

    def predicted_loss(self, x: np.ndarray) -> np.ndarray:
        return self.ensemble.predict_loss(x, self.loss).mean(axis=0)

    def predicted_best(self, space: Space) -> np.ndarray:
        return self._search(space, 1, None).predicted_best_x


def _min_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``a``, the distance to the nearest row of ``b``."""
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)).min(axis=1)


def model_scaler(space: Space) -> UnitScaler:
    """Model inputs scaled on the hard limits, so the scale stays put while the bounds widen."""
    return UnitScaler.for_space(space, hard=True)


def fit_on_history(
    history: History, space: Space, settings: EnsembleSettings, seed: int | np.random.SeedSequence
) -> SpectrumEnsemble:
    """Train an ensemble on every spectrum the history holds."""
    data = SpectrumData.from_history(history, space.names)
    return SpectrumEnsemble.fit(data, model_scaler(space), settings, seed)
