"""The two-step policy: its rules on synthetic metric sequences, and the optimiser on the toy problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_spectra import WAVELENGTHS, measure, random_history, toy_loss, toy_space

from orchestrator.optimize import dnn as net
from orchestrator.optimize.base import History, Space, Suggestion
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.optimize.model_checks import Agreement
from orchestrator.optimize.registry import OptimizerSettingsError, UnknownStrategyError, make_optimizer
from orchestrator.optimize.twostep import (
    PolicySettings,
    StopSettings,
    TwoStepOptimizer,
    clear_model_cache,
    decide_share,
    open_edges,
    parse_settings,
    stop_check,
    stop_reason,
)


def metric(cos: float, loss_mae: float | None = 0.01) -> Agreement:
    return Agreement(n=15, cosine_mean=cos, cosine_min=cos - 0.01, mse=1e-4, loss_mae=loss_mae)


# -- the share rule ---------------------------------------------------------------------------


def test_share_follows_a_sequence_of_rounds() -> None:
    """BO alone while the model is missing, young, inaccurate or unstable; then a growing share."""
    policy = PolicySettings(
        bo_only_rounds=2,
        accuracy_cosine=0.99,
        stability_cosine=0.995,
        full_accuracy_cosine=0.999,
        min_share=0.2,
        max_share=1.0,
    )
    rounds = [
        # (round, model, accuracy, stability) -> expected network count of 15
        (0, False, None, None, 0),
        (1, True, None, None, 0),  # BO-only rounds
        (2, True, None, metric(0.999), 0),  # no measured predictions yet
        (3, True, metric(0.95), metric(0.999), 0),  # inaccurate
        (4, True, metric(0.995), metric(0.98), 0),  # unstable
        (5, True, metric(0.99), metric(0.999), 3),  # at the gate: min_share
        (6, True, metric(0.995), metric(0.999), 10),  # 0.2 + 0.8 * 5/9 of 15
        (7, True, metric(0.9995), metric(0.999), 15),  # all of it
        (8, True, metric(0.97), metric(0.999), 0),  # accuracy fell: back to BO
    ]
    got = [
        decide_share(policy, round_index=r, n=15, model_ready=m, accuracy=a, stability=s).dnn_count
        for r, m, a, s, _ in rounds
    ]
    assert got == [want for *_, want in rounds]


def test_share_reasons_say_why() -> None:
    policy = PolicySettings()
    d = decide_share(
        policy, round_index=5, n=15, model_ready=True, accuracy=metric(0.9), stability=metric(1.0)
    )
    assert d.dnn_count == 0 and "accuracy cosine 0.9000 < 0.99" in d.reason
    d = decide_share(
        policy, round_index=5, n=15, model_ready=True, accuracy=metric(1.0), stability=metric(0.9)
    )
    assert "stability cosine" in d.reason


def test_optional_loss_error_gate_and_fixed_share() -> None:
    gated = PolicySettings(max_loss_error=0.02)
    d = decide_share(
        gated, round_index=5, n=15, model_ready=True, accuracy=metric(0.9999, 0.05), stability=metric(1.0)
    )
    assert d.dnn_count == 0 and "predicted loss off" in d.reason
    fixed = PolicySettings(fixed_share=1 / 3)
    d = decide_share(fixed, round_index=5, n=15, model_ready=True, accuracy=None, stability=None)
    assert d.dnn_count == 5


def test_a_round_on_probation_does_not_lower_the_gates() -> None:
    """With probation_share 0.2 the network's 3 probation picks counted as trust, and the next round's
    gates were lowered by keep_trust_margin: "trusted" at stability 0.993 under a 0.995 gate."""
    from orchestrator.optimize.base import History, Observation
    from orchestrator.optimize.twostep import trusted_in

    def round_with(dnn: int) -> History:
        obs = [Observation(2, {"a": 1.0}, 0.1, source="dnn" if i < dnn else "composite") for i in range(15)]
        return History(obs, np.linspace(380, 800, 421), loss=None)  # type: ignore[arg-type]

    probation = PolicySettings(probation_share=0.2)
    assert not trusted_in(round_with(3), 2, probation) and trusted_in(round_with(8), 2, probation)
    assert trusted_in(round_with(3), 2, PolicySettings()) and not trusted_in(round_with(0), 2, PolicySettings())
    assert not trusted_in(round_with(8), None, probation)


def test_probation_share_while_the_gates_are_closed() -> None:
    policy = PolicySettings(probation_share=0.2, bo_only_rounds=1)
    closed = decide_share(policy, round_index=2, n=15, model_ready=True, accuracy=metric(0.9), stability=None)
    assert closed.dnn_count == 3 and "probation" in closed.reason
    young = decide_share(policy, round_index=0, n=15, model_ready=True, accuracy=None, stability=None)
    assert young.dnn_count == 0  # still in the BO-only rounds
    opened = decide_share(
        policy, round_index=2, n=15, model_ready=True, accuracy=metric(1.0), stability=metric(1.0)
    )
    assert opened.dnn_count == 15


def test_trust_once_given_survives_a_small_dip() -> None:
    policy = PolicySettings(stability_cosine=0.995, keep_trust_margin=0.003)
    kw = {
        "round_index": 4,
        "n": 15,
        "model_ready": True,
        "accuracy": metric(0.999),
        "stability": metric(0.9943),
    }
    assert decide_share(policy, **kw).dnn_count == 0  # a newcomer must pass the full gate
    kept = decide_share(policy, **kw, trusted_before=True)
    assert kept.dnn_count > 0 and "trusted" in kept.reason
    # a real drop still hands the round back to BO
    dropped = decide_share(policy, **{**kw, "stability": metric(0.990)}, trusted_before=True)
    assert dropped.dnn_count == 0 and "0.992" in dropped.reason


def test_share_grows_with_accuracy() -> None:
    policy = PolicySettings()
    counts = [
        decide_share(
            policy, round_index=9, n=15, model_ready=True, accuracy=metric(c), stability=metric(1.0)
        ).dnn_count
        for c in np.linspace(0.99, 1.0, 11)
    ]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == 15


def test_policy_settings_checked() -> None:
    with pytest.raises(OptimizerSettingsError, match="min_share"):
        parse_settings({"policy": {"min_share": 0.9, "max_share": 0.5}})
    with pytest.raises(OptimizerSettingsError, match=r"policy\.acuracy_cosine: not a setting here; allowed: "
                       r"bo_only_rounds, accuracy_cosine"):
        parse_settings({"policy": {"acuracy_cosine": 0.9}})
    # a key of another level says where it belongs (pydantic said "Extra inputs are not permitted")
    with pytest.raises(OptimizerSettingsError, match=r"settings\.bo_only_rounds: .*bo_only_rounds belongs under policy"):
        parse_settings({"bo_only_rounds": 3})
    with pytest.raises(UnknownStrategyError):
        make_optimizer("two_step", {"bo": "no_such_strategy"}, None, 0)


# -- the stop rule ----------------------------------------------------------------------------

CONVERGED = dict(
    measured_rounds=6,
    accuracy=metric(0.999),
    stability=metric(0.9995),
    predicted_best=0.100,
    previous_predicted_best=0.101,
    best_measured=0.105,
)


def test_stop_when_accurate_stable_and_no_longer_improving() -> None:
    reason = stop_reason(StopSettings(), **CONVERGED)
    assert reason is not None and "model converged" in reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"measured_rounds": 3}, "3 measured round(s) < min_rounds"),
        ({"accuracy": metric(0.98)}, "accuracy cosine 0.9800 <"),
        ({"accuracy": metric(0.999, loss_mae=0.1)}, "predicted loss off by 0.1000"),
        ({"stability": metric(0.99)}, "stability cosine 0.9900 <"),
        ({"previous_predicted_best": 0.2}, "the predicted best still improves"),
        ({"best_measured": 0.2}, "the network predicts 0.1000 below the best measured"),
        ({"open_edges": ["Q_a high"]}, "the predicted optimum sits on an edge that may still widen (Q_a high)"),
        ({"stability": None}, "no accuracy, stability or earlier prediction"),
    ],
)
def test_no_stop_while(change: dict, why: str) -> None:
    """Each condition holds the stop, and says so (the report read "not met" and nothing more)."""
    assert stop_reason(StopSettings(), **{**CONVERGED, **change}) is None, why
    reason, held = stop_check(StopSettings(), **{**CONVERGED, **change})
    assert reason is None and held is not None and held.startswith(why), held
    assert stop_check(StopSettings(), **CONVERGED)[1] is None


def test_stop_rule_can_be_switched_off() -> None:
    assert stop_reason(StopSettings(enabled=False), **CONVERGED) is None


def test_open_edges() -> None:
    space = toy_space()  # Q_a in [5, 40] of hard [1, 60]
    assert open_edges(space, np.array([40.0, 10.0, 300.0]), 0.05) == ["Q_a high"]
    assert open_edges(space, np.array([5.5, 10.0, 100.0]), 0.05) == ["Q_a low", "Q_total low"]
    at_hard = space.with_bounds({**space.bounds, "Q_a": (1.0, 60.0)})
    assert open_edges(at_hard, np.array([60.0, 20.0, 300.0]), 0.05) == []


def test_open_edges_of_a_log_input_are_measured_in_log_units() -> None:
    """Q_TSC = 4.67 in [4, 29.91] (log: auto) is 7.7 % of the log range from its low edge: not on it. The
    linear measure (within 5 % of the linear range: 4 to 5.3) called it an open edge and held a converged two_step
    campaign back from its model stop rule for three rounds."""
    from orchestrator.optimize.base import Space, Variable

    space = Space(variables=(Variable("Q_TSC", 4.0, 29.91, 0.5, 80.0, log=True),), percent_sum_max=90.0)
    assert open_edges(space, np.array([4.67]), 0.05) == []
    assert open_edges(space, np.array([4.2]), 0.05) == ["Q_TSC low"]


# -- the optimiser ----------------------------------------------------------------------------


class RecordingBO:
    """A stand-in BO strategy: random feasible points, every call recorded."""

    name = "fake_bo"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        self.calls.append(n)
        x = sample_feasible(space, n, np.random.default_rng([3, history.round_index]))
        return Suggestion(space.to_dicts(x), space, ["fake_bo"] * n, notes={"fake": True})


FAST = {
    "dnn": {"model": {"members": 3, "max_epochs": 400}, "search": {"candidates": 800, "refine_starts": 8}},
    "policy": {"probes": 64},
}


def make(policy: dict | None = None, seed: int = 0) -> tuple[TwoStepOptimizer, RecordingBO]:
    bo = RecordingBO()
    settings = parse_settings({**FAST, "policy": {**FAST["policy"], **(policy or {})}})
    return TwoStepOptimizer(settings, None, seed, bo=bo), bo


class WideningBO(RecordingBO):
    """A BO strategy that opened Q_a's upper edge this round (by half its range)."""

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        s = super().suggest(history, space, n)
        lo, hi = space.bounds["Q_a"]
        wide = space.with_bounds({**space.bounds, "Q_a": (lo, hi + 0.5 * (hi - lo))})
        return Suggestion(s.batch, wide, s.sources, notes={"widening": [{"variable": "Q_a", "edge": "high"}]})


def test_the_network_stays_out_of_ground_bo_just_opened() -> None:
    """BO's gate opens an edge and spends its few conditions (max_new) beyond it; the network put 6 of 15
    on the new edge, far from any data, which then measured 0.5-0.6 against a predicted 0.22."""
    bo = WideningBO()
    settings = parse_settings({**FAST, "policy": {**FAST["policy"], "fixed_share": 0.4, "bo_only_rounds": 1}})
    opt = TwoStepOptimizer(settings, None, 0, bo=bo)
    # the target's band (a / (a + b) = 0.63) lies beyond a = 8 at any b: the network would go past 8
    s = opt.suggest(random_history(2, seed=4), toy_space(a_high=8.0), 15)
    assert s.space.bounds["Q_a"] == (5.0, 9.5)  # BO's widening stands
    network = [b["Q_a"] for b, src in zip(s.batch, s.sources, strict=True) if src == "dnn"]
    assert len(network) == 6 and max(network) <= 8.0 + 1e-9, network


def test_first_round_is_bo_alone_without_predictions() -> None:
    opt, bo = make()
    s = opt.suggest(History([], WAVELENGTHS, toy_loss(), 0), toy_space(), 15)
    assert bo.calls == [15] and s.sources == ["fake_bo"] * 15
    assert s.predictions == [None] * 15
    assert s.notes["policy"]["dnn_count"] == 0 and "stop" not in s.notes


def test_network_share_predictions_and_notes() -> None:
    opt, bo = make({"fixed_share": 1 / 3, "bo_only_rounds": 1})
    history = random_history(2, seed=4)
    s = opt.suggest(history, toy_space(), 15)
    assert bo.calls == [10]
    assert s.sources == ["fake_bo"] * 10 + ["dnn"] * 5
    assert toy_space().feasible(toy_space().to_array(s.batch)).all()
    # every condition of the batch carries the network's prediction, recorded before measurement
    assert len(s.predictions) == 15
    assert all(p is not None and p.shape == WAVELENGTHS.shape for p in s.predictions)
    policy = s.notes["policy"]
    assert policy["dnn_count"] == 5 and policy["bo_count"] == 10
    assert policy["stability"] is not None
    # nothing recorded in this history: the model trained without round 1 judged round 1
    assert policy["accuracy_from"] == "recomputed" and policy["accuracy"]["n"] == 15
    assert set(policy["predicted_best_inputs"]) == set(toy_space().names)
    json.dumps(s.notes)  # the engine journals the notes as JSON


def test_accuracy_measured_from_recorded_predictions_and_gates() -> None:
    opt, _ = make({"bo_only_rounds": 0})
    history = random_history(2, seed=5)
    first = opt.suggest(history, toy_space(), 15)
    rng = np.random.default_rng(9)
    measured = measure(toy_space(), toy_space().to_array(first.batch), 2, rng)
    for obs, pred in zip(measured, first.predictions, strict=True):
        obs.prediction = pred
    later = History(history.observations + measured, WAVELENGTHS, toy_loss(), 3)
    second = opt.suggest(later, toy_space(), 15)
    acc = second.notes["policy"]["accuracy"]
    assert second.notes["policy"]["accuracy_from"] == "recorded"
    assert acc is not None and acc["n"] == 15 and acc["cosine_mean"] > 0.9
    # the same numbers when the predictions were not stored: the previous model is recomputed
    for obs in measured:
        obs.prediction = None
    fresh, _ = make({"bo_only_rounds": 0})
    again = fresh.suggest(later, toy_space(), 15).notes["policy"]
    assert again["accuracy_from"] == "recomputed"
    assert again["accuracy"] == pytest.approx(acc, rel=1e-5)
    dnn_count = second.notes["policy"]["dnn_count"]
    expected = decide_share(
        opt.settings.policy,
        round_index=3,
        n=15,
        model_ready=True,
        accuracy=Agreement(**acc),
        stability=Agreement(**second.notes["policy"]["stability"]),
    ).dnn_count
    assert dnn_count == expected


def test_network_picks_in_the_latest_round_lower_its_gates() -> None:
    history = random_history(2, seed=7)
    opt, _ = make({"bo_only_rounds": 0})
    assert opt.suggest(history, toy_space(), 6).notes["policy"]["trusted_before"] is False
    for obs in history.observations:
        obs.source = "dnn" if obs.round_index == 1 else obs.source
    assert opt.suggest(history, toy_space(), 6).notes["policy"]["trusted_before"] is True


def test_same_seed_same_batch_and_models_trained_once(monkeypatch: pytest.MonkeyPatch) -> None:
    history = random_history(3, seed=6)
    fits: list[int] = []
    real_fit = net.SpectrumEnsemble.fit.__func__

    def counting_fit(cls, *args, **kwargs):
        fits.append(1)
        return real_fit(cls, *args, **kwargs)

    monkeypatch.setattr(net.SpectrumEnsemble, "fit", classmethod(counting_fit))
    clear_model_cache()
    a, _ = make({"fixed_share": 0.4, "bo_only_rounds": 0}, seed=3)
    sa = a.suggest(history, toy_space(), 10)
    assert len(fits) == 2  # the current and the previous model
    # a new optimiser for the same campaign (the runner builds one per round) trains nothing again
    b, _ = make({"fixed_share": 0.4, "bo_only_rounds": 0}, seed=3)
    sb = b.suggest(history, toy_space(), 10)
    assert len(fits) == 2
    # a fresh process (empty cache) retrains the same weights and suggests the same batch
    clear_model_cache()
    c, _ = make({"fixed_share": 0.4, "bo_only_rounds": 0}, seed=3)
    sc = c.suggest(history, toy_space(), 10)
    assert len(fits) == 4
    for other in (sb, sc):
        assert sa.batch == other.batch
        np.testing.assert_array_equal(np.array(sa.predictions), np.array(other.predictions))
    # another seed is another model
    make({"fixed_share": 0.4, "bo_only_rounds": 0}, seed=4)[0].suggest(history, toy_space(), 10)
    assert len(fits) == 6


def test_registered_strategies() -> None:
    opt = make_optimizer("two_step", {"bo": "lhs", **FAST}, None, 0)
    assert opt.name == "two_step"
    dnn_only = make_optimizer("dnn", FAST, None, 0)
    assert dnn_only.name == "dnn"
    s = dnn_only.suggest(random_history(2, seed=2), toy_space(), 6)
    assert s.sources == ["dnn"] * 6


def test_nan_bands_in_the_replicates_reach_neither_bo_nor_the_network() -> None:
    """Screening keeps droplets with a few NaN points (a masked pixel band): two_step over its default BO
    (composite_mix) gives a full, finite batch, with finite predictions and accuracy."""
    history = random_history(3, seed=6)
    band = np.abs(WAVELENGTHS - 600.0) < 5.0
    for i, obs in enumerate(history.observations):
        obs.spectra = np.array(obs.spectra, dtype=float)
        obs.spectra[:, band] = np.nan
        obs.spectra[i % len(obs.spectra), 3 * i % len(WAVELENGTHS)] = np.nan
    clear_model_cache()
    fast_bo = {"n_global": 384, "n_local": 192, "rerank": 64, "refine": 16, "mc_samples": 32}
    opt = make_optimizer(
        "two_step", {**FAST, "bo_settings": fast_bo, "policy": {**FAST["policy"], "bo_only_rounds": 0,
                                                               "fixed_share": 0.4}}, None, 0)
    s = opt.suggest(history, toy_space(), 10)
    x = toy_space().to_array(s.batch)
    assert x.shape == (10, 3) and toy_space().feasible(x).all()
    assert s.sources.count("dnn") == 4 and s.sources.count("composite_mix") == 6
    assert np.isfinite(np.array(s.predictions)).all()
    policy = s.notes["policy"]
    assert np.isfinite(policy["predicted_loss"]).all() and np.isfinite(policy["predicted_best"])
    assert np.isfinite(policy["accuracy"]["cosine_mean"]) and np.isfinite(policy["stability"]["cosine_mean"])


def test_docs_list_every_two_step_setting_with_its_default() -> None:
    """docs/two_step.md is where a chemist finds these settings: it must not drift from the code."""
    import re
    from pathlib import Path

    from pydantic import BaseModel

    from orchestrator.optimize.twostep import TwoStepSettings

    def fields(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for name, f in model.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                out |= fields(f.annotation, f"{prefix}{name}.")
            else:
                out[prefix + name] = {} if name == "bo_settings" else f.default
        return out

    page = (Path(__file__).resolve().parents[3] / "docs" / "two_step.md").read_text()
    documented = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", page, flags=re.M))
    expected = fields(TwoStepSettings)
    assert set(documented) == set(expected)
    assert all(documented[k] == repr(v) for k, v in expected.items() if k != "bo_settings")
