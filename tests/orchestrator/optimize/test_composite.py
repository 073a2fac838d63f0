"""The composite strategy (GPs on PC scores of the spectra, exact loss on samples): the loss it
computes equals the protocol's, its batches are feasible and reproducible, and it beats a Latin
hypercube on a toy chemistry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.optimize.base import History, Observation, Space, Variable
from orchestrator.optimize.composite import ScoreLoss, SpectrumPCA
from orchestrator.optimize.lhs import latin_hypercube
from orchestrator.optimize.registry import make_optimizer
from orchestrator.spectra import SpectrumLoss

WL = np.linspace(380.0, 800.0, 211)
WIDENING = {"enabled": True, "edge_fraction": 0.05, "trigger_fraction": 0.3, "step_fraction": 0.25}
FAST = {"n_global": 384, "n_local": 192, "rerank": 64, "refine": 16, "mc_samples": 32}


def toy_space(sum_max: float = 90.0) -> Space:
    return Space(
        variables=(
            Variable("a", 2.0, 30.0, 0.5, 80.0),
            Variable("b", 2.0, 30.0, 0.5, 80.0),
            Variable("q", 100.0, 1000.0, 50.0, 2000.0, kind="total", log=True),
        ),
        percent_sum_max=sum_max,
    )


def toy_spectra(x: np.ndarray) -> np.ndarray:
    """A band whose position follows a/b, width follows q, height follows a."""
    x = np.atleast_2d(x)
    a, b, q = x[:, :1], x[:, 1:2], x[:, 2:3]
    centre = 420.0 + 260.0 * (1 - np.exp(-a / (b + 1.0)))
    width = 30.0 + 25.0 * np.abs(np.log(q / 400.0))
    height = 1.6 * (1 - np.exp(-a / 15.0))
    return height * np.exp(-0.5 * ((WL - centre) / width) ** 2) + 0.05


TARGET = toy_spectra(np.array([[14.0, 9.0, 400.0]]))[0]
LOSS = SpectrumLoss(TARGET)


def measure(batch: list[dict[str, float]], r: int, rng: np.random.Generator) -> list[Observation]:
    out = []
    for row in batch:
        clean = toy_spectra(np.array([[row["a"], row["b"], row["q"]]]))[0]
        reps = clean * np.exp(0.02 * rng.standard_normal((5, 1))) + 0.004 * rng.standard_normal((5, len(WL)))
        out.append(Observation(r, row, float(np.median(LOSS(reps))), spectra=reps))
    return out


def best_true_loss(hist: History, space: Space) -> float:
    best = min(hist.measured(), key=lambda o: o.median_loss)
    return float(LOSS(toy_spectra(space.to_array([best.inputs]))[0]))


def test_score_loss_is_the_protocol_loss() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(1, 40, 60), rng.uniform(1, 40, 60), rng.uniform(60, 1800, 60)])
    spectra = toy_spectra(x) * rng.uniform(0.3, 1.5, (60, 1))  # both sides of the absorbance window
    pca = SpectrumPCA.fit(spectra)
    scores = pca.scores(spectra)
    rebuilt = pca.mean + scores @ pca.basis
    mine = ScoreLoss(LOSS, pca)(torch.as_tensor(scores)).numpy()
    np.testing.assert_allclose(mine, LOSS(rebuilt), atol=2e-6)
    # samples come as (candidates, draws, k): the same losses, in the same shape
    stacked = ScoreLoss(LOSS, pca)(torch.as_tensor(np.stack([scores, scores[::-1]]))).numpy()
    np.testing.assert_array_equal(stacked, np.stack([mine, mine[::-1]]))
    assert 5 <= pca.basis.shape[0] <= 8


def campaign(strategy: str, seed: int, rounds: int, space: Space | None = None) -> tuple[History, Space, list]:
    rng = np.random.default_rng(seed)
    space = space or toy_space()
    hist = History([], WL, LOSS, round_index=1)
    hist.observations += measure(space.to_dicts(latin_hypercube(space, 15, rng)), 1, rng)
    opt = make_optimizer(strategy, FAST if strategy.startswith("composite") else {}, WIDENING, seed)
    suggestions = []
    for r in range(2, rounds + 1):
        hist.round_index = r
        sug = opt.suggest(hist, space, 15)
        suggestions.append(sug)
        space = sug.space
        hist.observations += measure(sug.batch, r, rng)
    return hist, space, suggestions


def test_composite_beats_a_latin_hypercube_on_a_toy_chemistry() -> None:
    wins = 0
    for seed in (0, 1):
        hist, space, sugs = campaign("composite", seed, 3)
        lhs, lspace, _ = campaign("lhs", seed, 3)
        wins += best_true_loss(hist, space) < best_true_loss(lhs, lspace)
        assert sugs[-1].sources == ["composite"] * 15
        assert len(sugs[-1].predictions) == 15 and sugs[-1].predictions[0].shape == WL.shape
    assert wins == 2


@pytest.mark.parametrize("sum_max", [90.0, 25.0])
def test_composite_batches_are_feasible_and_reproducible(sum_max: float) -> None:
    space = toy_space(sum_max)
    hist, _, _ = campaign("lhs", 3, 2, space)
    hist.observations[0].failed, hist.observations[0].median_loss = True, None
    hist.round_index = 3
    a = make_optimizer("composite", FAST, WIDENING, 11).suggest(hist, space, 15)
    b = make_optimizer("composite", FAST, WIDENING, 11).suggest(hist, space, 15)
    assert a.batch == b.batch
    x = a.space.to_array(a.batch)
    assert a.space.feasible(x).all() and space.feasible(x, hard=True).all()
    hist.round_index = 4
    c = make_optimizer("composite", FAST, WIDENING, 11).suggest(hist, space, 15)
    assert c.batch != a.batch


def test_without_spectra_the_composite_falls_back_to_the_scalar_gp() -> None:
    hist, space, _ = campaign("lhs", 0, 2)
    for o in hist.observations:
        o.spectra = None
    sug = make_optimizer("composite", FAST, WIDENING, 0).suggest(hist, space, 15)
    assert "spectra" in sug.notes["fallback"]
    assert space.feasible(space.to_array(sug.batch)).all()


def test_mixed_composite_takes_a_third_of_the_batch_from_the_scalar_gp() -> None:
    space = toy_space()
    hist, _, _ = campaign("lhs", 5, 2, space)
    hist.round_index = 3
    a = make_optimizer("composite_mix", FAST, WIDENING, 2).suggest(hist, space, 15)
    b = make_optimizer("composite_mix", FAST, WIDENING, 2).suggest(hist, space, 15)
    pure = make_optimizer("composite", FAST, WIDENING, 2).suggest(hist, space, 15)
    assert a.batch == b.batch and a.sources == ["composite_mix"] * 15
    assert a.batch != pure.batch
    assert len(a.predictions) == 15 and a.predictions[0].shape == WL.shape
    assert a.space.feasible(a.space.to_array(a.batch)).all()
    with pytest.raises(ValueError, match="scalar_fraction"):
        make_optimizer("composite", {"scalar_fraction": 1.5}, WIDENING, 0)


def test_the_scalar_fit_beside_the_composite_fit_gives_the_batch_of_fitting_it_first(monkeypatch) -> None:
    """composite_mix fits its scalar GP on a second thread; the batch must not depend on when that
    thread runs, so running the fit at once (before the composite's) gives the same batch."""
    from concurrent.futures import Future

    from orchestrator.optimize import composite

    class AtOnce:
        def __init__(self, workers: int) -> None:
            self.calls = 0

        def __enter__(self) -> AtOnce:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def submit(self, fn, *args):
            AtOnce.calls += 1
            done: Future = Future()
            done.set_result(fn(*args))
            return done

    AtOnce.calls = 0
    space = toy_space()
    hist, _, _ = campaign("lhs", 5, 2, space)
    hist.round_index = 3
    beside = make_optimizer("composite_mix", FAST, WIDENING, 2).suggest(hist, space, 15)
    monkeypatch.setattr(composite, "ThreadPoolExecutor", AtOnce)
    first = make_optimizer("composite_mix", FAST, WIDENING, 2).suggest(hist, space, 15)
    assert AtOnce.calls == 1
    assert first.batch == beside.batch


def test_edge_mix_asks_the_scalar_gp_only_while_the_best_presses_an_edge() -> None:
    inside = toy_space()  # the toy optimum (14, 9, 400) lies well inside
    hist, _, _ = campaign("lhs", 5, 2, inside)
    hist.round_index = 3
    a = make_optimizer("composite_edge", FAST, WIDENING, 2).suggest(hist, inside, 15)
    b = make_optimizer("composite_edge", FAST, WIDENING, 2).suggest(hist, inside, 15)
    assert a.batch == b.batch and a.sources == ["composite_edge"] * 15
    assert a.notes["scalar_gp_conditions"] == 0
    # the same chemistry with a's upper bound at 6: the best conditions sit on that edge
    short = inside.with_bounds({**inside.bounds, "a": (2.0, 6.0)})
    hist, _, _ = campaign("lhs", 5, 2, short)
    hist.round_index = 3
    c = make_optimizer("composite_edge", FAST, WIDENING, 2).suggest(hist, short, 15)
    assert c.notes["scalar_gp_conditions"] == 5
    assert c.space.feasible(c.space.to_array(c.batch)).all()
    mix = make_optimizer("composite_mix", FAST, WIDENING, 2).suggest(hist, inside, 15)
    assert mix.notes["scalar_gp_conditions"] == 5
    with pytest.raises(ValueError, match="scalar_when"):
        make_optimizer("composite", {"scalar_when": "sometimes"}, WIDENING, 0)


def test_exploit_puts_the_predicted_best_condition_first() -> None:
    space = toy_space()
    hist, _, _ = campaign("lhs", 4, 2, space)
    hist.round_index = 3
    sug = make_optimizer("composite", {**FAST, "exploit": 1}, WIDENING, 1).suggest(hist, space, 15)
    first = sug.notes["predicted_loss"][0]
    assert first <= min(sug.notes["predicted_loss"]) + 1e-3
    assert sug.batch == make_optimizer("composite", {**FAST, "exploit": 1}, WIDENING, 1).suggest(hist, space, 15).batch


def test_the_batch_posterior_grows_by_one_row_and_equals_the_full_factor() -> None:
    """GreedyNoisyEI appends each pending/chosen point's row to the Cholesky factor of the joint
    posterior instead of refactoring: the factor must equal the full one, and the samples with it."""
    from orchestrator.optimize.composite import BatchedGP, GreedyNoisyEI

    rng = np.random.default_rng(3)
    u = rng.random((30, 3))
    y = np.column_stack([np.sin(3 * u[:, 0]) + u[:, 1], np.cos(2 * u[:, 2]) * u[:, 0]])
    gp = BatchedGP(max_iter=20).fit(u, y, np.arange(30)).condition(u, y)
    seen: list[torch.Tensor] = []

    def loss(scores: torch.Tensor) -> torch.Tensor:  # any function of the sampled scores
        seen.append(scores)
        return scores.sum(-1)

    points = rng.random((6, 3))
    state = GreedyNoisyEI(gp, loss, points[:4], np.random.default_rng(0), n_samples=16, failed_u=np.empty((0, 3)))
    state.add(points[4], state.draw())
    state.add(points[5], state.draw())
    p = torch.as_tensor(points, dtype=torch.float64)
    mean, v = gp.parts(p)
    cov = gp.prior_cov(p, p) - v.transpose(-1, -2) @ v + 1e-8 * torch.eye(6, dtype=torch.float64)
    full = torch.linalg.cholesky(cov)
    assert torch.allclose(state.p_chol, full, atol=1e-10)
    assert torch.allclose(state.p_v, v, atol=1e-12)
    # the last point's samples: the full factor's last row times every base sample so far
    f = mean[:, -1:, None] + full[:, -1:, :] @ state.p_eps
    assert torch.allclose(seen[-1], state._to_scores(f), atol=1e-10)


def test_a_state_cut_back_and_continued_equals_one_built_afresh() -> None:
    """The widening's new-ground picks continue the main batch's posterior state: cut back to the
    conditions they keep and grown by the new ones, it must equal a state built on those conditions
    from scratch, and with fresh samples its losses must be those of the new samples."""
    from orchestrator.optimize.composite import BatchedGP, GreedyNoisyEI

    rng = np.random.default_rng(5)
    u = rng.random((30, 3))
    y = np.column_stack([np.sin(3 * u[:, 0]) + u[:, 1], np.cos(2 * u[:, 2]) * u[:, 0]])
    gp = BatchedGP(max_iter=20).fit(u, y, np.arange(30)).condition(u, y)
    base, batch, new = rng.random((3, 3)), rng.random((4, 3)), rng.random((1, 3))

    def build() -> GreedyNoisyEI:
        return GreedyNoisyEI(gp, lambda z: z.sum(-1), base, np.random.default_rng(0), n_samples=16,
                             failed_u=np.empty((0, 3)))

    cont = build()
    cont.continue_with(batch, fresh_samples=False)
    eps_batch = cont.p_eps[:, 3:].clone()
    cont.continue_with(np.vstack([batch[:2], new]), fresh_samples=False)  # keeps two of the batch, adds one
    assert len(cont.p_u) == 3 + 3
    assert torch.equal(cont.p_eps[:, 3:5], eps_batch[:, :2])  # the kept conditions keep their samples

    fresh = build()
    for j, x in enumerate([batch[0], batch[1], new[0]]):
        fresh.add(x, cont.p_eps[:, 3 + j])
    assert torch.allclose(cont.p_chol, fresh.p_chol, atol=1e-12)
    assert torch.allclose(cont.p_mean, fresh.p_mean, atol=1e-12)
    assert torch.allclose(cont.best, fresh.best, atol=1e-12)

    # fresh samples: every point's losses follow from the factor and the new base samples
    cont.continue_with(np.vstack([batch[:2], new]), fresh_samples=True)
    assert len(cont.p_u) == 6 and torch.allclose(cont.p_chol, fresh.p_chol, atol=1e-12)
    assert not torch.equal(cont.p_eps[:, 3:5], eps_batch[:, :2])
    f = cont.p_mean.unsqueeze(-1) + cont.p_chol @ cont.p_eps
    assert torch.allclose(cont.p_loss, cont._to_scores(f).sum(-1), atol=1e-12)
    assert torch.allclose(cont.best, cont.p_loss.amin(0))
    # cutting back forgets the dropped conditions' samples in the running best
    cont.truncate(3)
    assert torch.allclose(cont.best, cont.p_loss.amin(0)) and len(cont.p_loss) == 3


def test_the_map_gradient_written_out_matches_finite_differences() -> None:
    from scipy.optimize import approx_fprime

    from orchestrator.optimize.composite import BatchedGP

    rng = np.random.default_rng(2)
    u = rng.random((25, 3))
    y = np.column_stack([np.sin(4 * u[:, 0]) + u[:, 1], u[:, 2] ** 2]) + 0.05 * rng.standard_normal((25, 2))
    f = BatchedGP.map_objective(u, (y - y.mean(0)) / y.std(0))
    for _ in range(3):
        theta = np.concatenate([rng.normal(-1.0, 0.7, 6), rng.normal(-3.0, 1.0, 2), rng.normal(0.0, 0.3, 2)])
        value, grad = f(theta)
        numeric = approx_fprime(theta, lambda t: f(t)[0], 1e-6)
        assert np.isfinite(value)
        assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-5)


def with_nan_band(hist: History, lo: float = 595.0, hi: float = 605.0, extra: bool = True) -> History:
    """Every replicate NaN in a pixel band (a masked detector region, as screening keeps it), and some
    replicates NaN at a few more points of their own."""
    rng = np.random.default_rng(0)
    band = (WL >= lo) & (WL <= hi)
    for o in hist.observations:
        if o.spectra is None:
            continue
        o.spectra = np.array(o.spectra, dtype=float)
        o.spectra[:, band] = np.nan
        if extra:
            o.spectra[0, rng.choice(len(WL), 3, replace=False)] = np.nan
    return hist


@pytest.mark.parametrize("strategy", ["composite", "composite_mix", "composite_edge"])
def test_replicate_spectra_with_nan_bands_give_a_finite_batch(strategy: str) -> None:
    space = toy_space()
    hist, _, _ = campaign("lhs", 5, 2, space)
    hist.round_index = 3
    with_nan_band(hist)
    a = make_optimizer(strategy, FAST, WIDENING, 2).suggest(hist, space, 15)
    x = a.space.to_array(a.batch)
    assert x.shape == (15, 3) and np.isfinite(x).all() and a.space.feasible(x).all()
    assert len(a.predictions) == 15 and np.isfinite(np.array(a.predictions)).all()
    assert np.isfinite(a.notes["predicted_loss"]).all() and np.isfinite(LOSS(np.array(a.predictions))).all()
    assert a.batch == make_optimizer(strategy, FAST, WIDENING, 2).suggest(hist, space, 15).batch


def test_without_nan_the_batch_is_the_one_plain_medians_give(monkeypatch) -> None:
    """The NaN handling changes nothing for spectra without NaN: the batch of the old ``np.median``
    path, exactly."""
    from orchestrator.optimize import composite

    def plain_medians(observations, wavelengths=None):
        rows = [o for o in observations if o.spectra is not None and len(o.spectra) and o.median_loss is not None]
        return rows, np.array([np.median(np.atleast_2d(o.spectra), axis=0) for o in rows])

    space = toy_space()
    hist, _, _ = campaign("lhs", 5, 2, space)
    hist.observations[0].failed, hist.observations[0].median_loss = True, None
    hist.round_index = 3
    new = {s: make_optimizer(s, FAST, WIDENING, 2).suggest(hist, space, 15) for s in ("composite", "composite_mix")}
    monkeypatch.setattr(composite, "median_spectra", plain_medians)
    for strategy, sug in new.items():
        old = make_optimizer(strategy, FAST, WIDENING, 2).suggest(hist, space, 15)
        assert sug.batch == old.batch
        np.testing.assert_array_equal(np.array(sug.predictions), np.array(old.predictions))


def test_the_composite_does_not_go_back_where_a_whole_region_failed() -> None:
    """Conditions with b < 5 % give no measurement (a precipitate), and the target lies past them, so
    the spectrum model's trend points into the failed region: the batch must not."""
    space = toy_space()
    rng = np.random.default_rng(4)
    target = toy_spectra(np.array([[40.0, 9.0, 400.0]]))[0]
    hist = History([], WL, SpectrumLoss(target), round_index=1)

    def measure_or_fail(batch: list[dict[str, float]], r: int) -> list[Observation]:
        out = []
        for row, obs in zip(batch, measure(batch, r, rng), strict=True):
            obs.median_loss = float(np.median(hist.loss(obs.spectra)))
            if row["b"] < 5.0:
                obs.failed, obs.median_loss, obs.spectra = True, None, None
            out.append(obs)
        return out

    hist.observations += measure_or_fail(space.to_dicts(latin_hypercube(space, 15, rng)), 1)
    hist.round_index = 2
    hist.observations += measure_or_fail([{"a": 14.0, "b": b, "q": 400.0} for b in np.linspace(2.2, 4.8, 8)], 2)
    hist.round_index = 3
    sug = make_optimizer("composite", FAST, WIDENING, 3).suggest(hist, space, 15)
    b = space.to_array(sug.batch)[:, 1]
    assert (b < 5.0).sum() <= 3, np.round(b, 1)
