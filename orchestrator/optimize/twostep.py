"""The two-step policy ("two_step"): Bayesian optimisation first, the spectrum network once it earns trust.

Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021) ran batch BO until the network trained on the
accumulated droplet spectra predicted new batches accurately and stopped changing much from one
batch to the next; then the network chose the conditions. Here that hand-over is a rule applied every
round, with every number it used journaled in ``Suggestion.notes``:

* Every round with enough spectra, an ensemble (:mod:`orchestrator.optimize.dnn`) is trained on all of
  them and predicts the spectrum of every condition in the batch, BO's and its own; the engine
  stores those predictions, so the next round can score them against what was measured (accuracy).
* The model trained without the latest batch and the model trained with it predict the same fixed
  probe conditions (stability, :mod:`orchestrator.optimize.model_checks`).
  Where the predictions were not stored, the model trained without the latest round (the one that
  made them) is retrained and gives the same numbers.
* Once both pass their gates the network gets ``k`` of the ``n`` conditions, from ``min_share`` of
  the batch at the accuracy gate up to ``max_share`` at ``full_accuracy_cosine``; BO (any registered
  strategy, with its bound widening) proposes the rest. In a round the network has to itself, its
  picks and predicted losses drive the same gated widening (:mod:`orchestrator.optimize.widening`).
* Stop rule: an accurate, stable model whose predicted best loss no longer improves between
  successive models, and that predicts no worthwhile gain over the best measured condition, sets
  ``notes["stop"]`` to the reason.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.optimize import dnn as net
from orchestrator.optimize.base import History, Optimizer, Space, Suggestion
from orchestrator.optimize.model_checks import (
    Agreement,
    accuracy_from_history,
    accuracy_of,
    probe_points,
    stability,
)
from orchestrator.optimize.registry import OptimizerSettingsError, make_optimizer, resolve
from orchestrator.optimize.widening import WideningPolicy, edges_pressed, select_with_widening

log = structlog.get_logger(__name__)
NETWORK_STRATEGIES = frozenset({"two_step", "dnn"})  # strategies that are this module: not a BO step


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySettings(_Strict):
    """When the network takes conditions from BO, and how many (``optimizer.settings.policy``)."""

    bo_only_rounds: int = Field(
        2, ge=0, description="rounds (counting the initial design) in which BO proposes everything"
    )
    accuracy_cosine: float = Field(
        0.99, ge=0, le=1, description="gate: mean cosine of last batch's predicted vs measured spectra"
    )
    stability_cosine: float = Field(
        0.995, ge=0, le=1, description="gate: mean cosine of successive models' predictions at the probes"
    )
    max_loss_error: float | None = Field(
        None, gt=0, description="optional gate: mean |predicted - measured loss| of the last batch"
    )
    full_accuracy_cosine: float = Field(
        0.999, ge=0, le=1, description="accuracy at which the network gets max_share of the batch"
    )
    min_share: float = Field(0.2, ge=0, le=1, description="network's share of the batch once the gates open")
    max_share: float = Field(1.0, ge=0, le=1)
    probation_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share the network gets while its gates are still closed (after bo_only_rounds), "
        "so that it is judged on its own picks too",
    )
    fixed_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="skip the gates: this share whenever a model exists (after bo_only_rounds)",
    )
    probes: int = Field(
        512, ge=16, le=100_000, description="probe conditions for stability and the predicted best"
    )
    keep_trust_margin: float = Field(
        0.003,
        ge=0,
        le=1,
        description="once the network had conditions in the latest round, its cosine gates are this much "
        "lower (hysteresis: one noisy stability reading does not hand a converging search back to BO)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PolicySettings:
        if self.min_share > self.max_share:
            raise ValueError(f"min_share ({self.min_share}) must not exceed max_share ({self.max_share})")
        if self.full_accuracy_cosine < self.accuracy_cosine:
            raise ValueError("full_accuracy_cosine must be at least accuracy_cosine")
        return self


class StopSettings(_Strict):
    """The network's stop rule (``optimizer.settings.stop``); the protocol's own stop rules apply too."""

    enabled: bool = True
    accuracy_cosine: float = Field(0.995, ge=0, le=1)
    stability_cosine: float = Field(0.998, ge=0, le=1)
    max_loss_error: float = Field(0.03, gt=0, description="the last batch's predicted losses were this close")
    min_improvement: float = Field(
        0.005, ge=0, description="the predicted best loss improved less than this between successive models"
    )
    min_predicted_gain: float = Field(
        0.01, ge=0, description="the model predicts less than this gain over the best measured median loss"
    )
    min_rounds: int = Field(4, ge=1, description="never before this many measured rounds")
    edge_fraction: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="an optimum this close to a bound that may still widen is 'on the edge'",
    )


class TwoStepSettings(_Strict):
    bo: str = Field(
        "composite_mix",
        description="registered strategy proposing the BO part of each batch (composite_mix, composite, gp_ei_lp ...)",
    )
    bo_settings: dict[str, Any] = Field(default_factory=dict)
    dnn: net.DnnSettings = Field(default_factory=net.DnnSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    stop: StopSettings = Field(default_factory=StopSettings)


def parse_settings(settings: Mapping[str, Any] | None, *, strategy: str = "two_step") -> TwoStepSettings:
    try:
        return TwoStepSettings.model_validate(dict(settings or {}))
    except ValidationError as exc:
        lines = [
            f"optimizer.settings.{'.'.join(str(p) for p in e['loc']) or '(settings)'}: "
            + (_unknown_key(e["loc"]) if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        ]
        raise OptimizerSettingsError(
            f"strategy {strategy!r}: " + "; ".join(lines) + " (fix the protocol's optimizer settings)"
        ) from exc


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """An unknown settings key in words: what that level allows, and where the key belongs if it is
    another level's (``bo_only_rounds`` at the top belongs under ``policy``)."""
    model: Any = TwoStepSettings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        model = getattr(field, "annotation", None) if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return "not a setting"
    key = str(loc[-1])
    homes = [name for name, f in TwoStepSettings.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) and key in f.annotation.model_fields]
    said = f"not a setting here; allowed: {', '.join(model.model_fields)}"
    return said + (f" ({key} belongs under {' or '.join(homes)})" if homes and len(loc) == 1 else "")


# ---------------------------------------------------------------------------------------------
# the rules, as pure functions of the metrics


@dataclass(frozen=True)
class PolicyDecision:
    dnn_count: int
    reason: str


def decide_share(
    settings: PolicySettings,
    *,
    round_index: int,
    n: int,
    model_ready: bool,
    accuracy: Agreement | None,
    stability: Agreement | None,
    trusted_before: bool = False,
) -> PolicyDecision:
    """How many of the ``n`` conditions the network proposes this round, and why. ``trusted_before``:
    the network proposed conditions of the latest measured round (its gates are lowered by
    ``keep_trust_margin``)."""
    if not model_ready:
        return PolicyDecision(0, "BO only: too few measured spectra to train the network")
    if round_index < settings.bo_only_rounds:
        return PolicyDecision(0, f"BO only in the first {settings.bo_only_rounds} rounds")
    if settings.fixed_share is not None:
        k = int(round(settings.fixed_share * n))
        return PolicyDecision(k, f"fixed network share {settings.fixed_share:g}")
    margin = settings.keep_trust_margin if trusted_before else 0.0
    closed = _closed_gate(settings, accuracy, stability, margin)
    if closed is not None:
        k = int(round(settings.probation_share * n))
        return PolicyDecision(k, f"{'BO only' if k == 0 else f'network on probation, {k} of {n}'}: {closed}")
    span = settings.full_accuracy_cosine - settings.accuracy_cosine
    progress = (
        1.0 if span <= 0 else float(np.clip((accuracy.cosine_mean - settings.accuracy_cosine) / span, 0, 1))
    )
    share = settings.min_share + (settings.max_share - settings.min_share) * progress
    k = int(np.clip(round(share * n), 1 if settings.max_share > 0 else 0, n))
    return PolicyDecision(
        k,
        f"network trusted (accuracy {accuracy.cosine_mean:.4f}, stability {stability.cosine_mean:.4f}): "
        f"{k} of {n}",
    )


def trusted_in(history: History, round_index: int | None, settings: PolicySettings) -> bool:
    """Whether the network was trusted in that round, not only on probation: it proposed more of the
    round than probation gives (a probation share must not lower the gates by keep_trust_margin)."""
    if round_index is None:
        return False
    latest = [o for o in history.observations if o.round_index == round_index]
    on_probation = int(round(settings.probation_share * len(latest)))
    return sum(o.source == net.SOURCE for o in latest) > on_probation


def _closed_gate(
    settings: PolicySettings, accuracy: Agreement | None, stability: Agreement | None, margin: float = 0.0
) -> str | None:
    """Why the network is not trusted yet, or None when every gate (cosines lowered by ``margin``) is open."""
    if accuracy is None:
        return "no measured batch the network predicted yet"
    if stability is None:
        return "no earlier model to judge stability against"
    if accuracy.cosine_mean < settings.accuracy_cosine - margin:
        return f"accuracy cosine {accuracy.cosine_mean:.4f} < {settings.accuracy_cosine - margin:g}"
    if stability.cosine_mean < settings.stability_cosine - margin:
        return f"stability cosine {stability.cosine_mean:.4f} < {settings.stability_cosine - margin:g}"
    if (
        settings.max_loss_error is not None
        and accuracy.loss_mae is not None
        and accuracy.loss_mae > settings.max_loss_error
    ):
        return f"predicted loss off by {accuracy.loss_mae:.4f} > {settings.max_loss_error:g}"
    return None


def stop_reason(settings: StopSettings, **metrics: Any) -> str | None:
    """The model-based stop criterion: a reason to stop, or None to go on (:func:`stop_check`'s first half)."""
    return stop_check(settings, **metrics)[0]


def stop_check(
    settings: StopSettings,
    *,
    measured_rounds: int,
    accuracy: Agreement | None,
    stability: Agreement | None,
    predicted_best: float | None,
    previous_predicted_best: float | None,
    best_measured: float | None,
    open_edges: list[str] | None = None,
) -> tuple[str | None, str | None]:
    """The model-based stop criterion: (a reason to stop, None) or (None, the first of its conditions not
    met: journaled, so a chemist reading "not met" beside an accurate, stable network learns what held
    it). ``open_edges``: edges of the current bounds that the predicted optimum sits on and that may still
    widen (then go on: the model has not seen what lies beyond)."""
    if not settings.enabled:
        return None, "switched off"
    if measured_rounds < settings.min_rounds:
        return None, f"{measured_rounds} measured round(s) < min_rounds {settings.min_rounds}"
    if open_edges:
        return None, f"the predicted optimum sits on an edge that may still widen ({', '.join(open_edges)})"
    if accuracy is None or stability is None or predicted_best is None or previous_predicted_best is None:
        return None, "no accuracy, stability or earlier prediction to judge by yet"
    if best_measured is None:
        return None, "nothing measured yet"
    if accuracy.cosine_mean < settings.accuracy_cosine:
        return None, f"accuracy cosine {accuracy.cosine_mean:.4f} < {settings.accuracy_cosine:g}"
    if accuracy.loss_mae is not None and accuracy.loss_mae > settings.max_loss_error:
        return None, f"predicted loss off by {accuracy.loss_mae:.4f} > {settings.max_loss_error:g}"
    if stability.cosine_mean < settings.stability_cosine:
        return None, f"stability cosine {stability.cosine_mean:.4f} < {settings.stability_cosine:g}"
    improvement = previous_predicted_best - predicted_best
    gain = best_measured - predicted_best
    if improvement >= settings.min_improvement:
        return None, f"the predicted best still improves ({improvement:.4f} >= {settings.min_improvement:g})"
    if gain >= settings.min_predicted_gain:
        return None, (f"the network predicts {gain:.4f} below the best measured "
                      f"(>= {settings.min_predicted_gain:g})")
    return (
        f"model converged: accuracy cosine {accuracy.cosine_mean:.4f}, stability cosine "
        f"{stability.cosine_mean:.4f}; predicted best loss {predicted_best:.4f} improved by "
        f"{improvement:.4f} (< {settings.min_improvement:g}) and is {gain:.4f} below the best measured "
        f"{best_measured:.4f} (< {settings.min_predicted_gain:g})"
    ), None


# ---------------------------------------------------------------------------------------------
# the optimiser


def open_edges(space: Space, x: np.ndarray, fraction: float) -> list[str]:
    """Edges of the current bounds within ``fraction`` of the range of ``x`` that have not reached
    their hard limit, as 'name low' / 'name high'. Measured as the widening measures them, in the
    bounds' unit scaling: a log-scaled input's range in log units (a linear measure made a log input's
    low edge three times as wide, and held a converged campaign back from its stop rule)."""
    return [f"{space.variables[i].name} {side}" for i, side in edges_pressed(space, [np.asarray(x, float)], fraction)]


def _seed(seed: int, *parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(int(p) for p in parts)])


_FIT_TAG = 0xD11  # separates the network's random streams from the BO strategy's

# Trained models by (data, round, seed, settings, hard limits), shared by every optimiser in the
# process: the campaign runner builds a new optimiser each round, and this round's model is next
# round's "previous model", so each round trains once. The same key always trains the same weights,
# so a resumed process (empty cache) suggests exactly what an uninterrupted one would.
_MODEL_CACHE: OrderedDict[Hashable, net.SpectrumEnsemble] = OrderedDict()
_MODEL_CACHE_SIZE = 6
_MODEL_CACHE_LOCK = threading.Lock()


def _cached_model(key: Hashable, fit: Callable[[], net.SpectrumEnsemble]) -> net.SpectrumEnsemble:
    with _MODEL_CACHE_LOCK:
        if key in _MODEL_CACHE:
            _MODEL_CACHE.move_to_end(key)
            return _MODEL_CACHE[key]
    model = fit()  # outside the lock: campaigns in other threads need not wait for this one
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    return model


def clear_model_cache() -> None:
    """Forget every trained model (tests; a fresh process starts this way)."""
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


class TwoStepOptimizer:
    """BO (a registered strategy) plus the spectrum-network ensemble, mixed by :func:`decide_share`."""

    name = "two_step"

    def __init__(
        self,
        settings: TwoStepSettings,
        widening: Mapping[str, Any] | None,
        seed: int,
        *,
        bo: Optimizer | None = None,
    ) -> None:
        self.settings = settings
        self.seed = int(seed)
        if bo is None:
            if resolve(settings.bo) in NETWORK_STRATEGIES:
                raise OptimizerSettingsError(
                    f"optimizer.settings.bo: {settings.bo!r} is not a BO strategy (two_step already adds the "
                    "network): use composite_mix, composite, gp_ei_lp ..."
                )
            try:
                bo = make_optimizer(settings.bo, settings.bo_settings, widening, seed)
            except OptimizerSettingsError as exc:  # say where in the protocol the setting is
                raise OptimizerSettingsError(f"optimizer.settings.bo_settings (for bo: {settings.bo}): {exc}") from exc
        self.bo = bo
        self.widening = WideningPolicy.from_protocol(widening, rule="gated")

    # -- models -------------------------------------------------------------------------------

    def _model(self, history: History, space: Space, upto_round: int) -> net.SpectrumEnsemble | None:
        """The ensemble trained on every spectrum of rounds <= ``upto_round`` (None: too few)."""
        sub = History(
            [o for o in history.observations if o.round_index <= upto_round],
            history.wavelengths,
            history.loss,
            upto_round + 1,
        )
        data = net.SpectrumData.from_history(sub, space.names)
        if len(data) < self.settings.dnn.model.min_conditions:
            return None
        key = (
            data.fingerprint(),
            upto_round,
            self.seed,
            self.settings.dnn.model.model_dump_json(),
            tuple((v.name, v.hard_low, v.hard_high, v.log) for v in space.variables),
        )
        return _cached_model(
            key,
            lambda: net.SpectrumEnsemble.fit(
                data, net.model_scaler(space), self.settings.dnn.model, _seed(self.seed, _FIT_TAG, upto_round)
            ),
        )

    # -- the round ----------------------------------------------------------------------------

    def suggest(self, history: History, space: Space, n: int) -> Suggestion:
        policy, rnd = self.settings.policy, history.round_index
        measured_rounds = sorted({o.round_index for o in history.observations})
        last = measured_rounds[-1] if measured_rounds else None
        model = self._model(history, space, last) if last is not None else None
        previous = self._model(history, space, measured_rounds[-2]) if len(measured_rounds) > 1 else None

        accuracy = accuracy_from_history(history, last) if last is not None else None
        accuracy_from = "recorded"
        if accuracy is None and previous is not None and last is not None:
            # predictions not recorded (an engine or benchmark that drops them): the model trained
            # without the latest round is the one that would have predicted it
            latest = [o for o in history.observations if o.round_index == last]
            accuracy = accuracy_of(lambda x: previous.predict(x)[0], latest, space, history.loss)
            accuracy_from = "recomputed"
        probes = probe_points(space, policy.probes, self.seed) if model is not None else None
        stab = None
        if model is not None and previous is not None and probes is not None:
            stab = stability(previous.predict(probes)[0], model.predict(probes)[0], loss=history.loss)

        trusted_before = trusted_in(history, last, policy)
        decision = decide_share(
            policy,
            # the rounds measured so far, not history.round_index: the engine counts rounds from 0 and
            # the benchmark from 1, and the network must come in after the same number of rounds in both
            round_index=len(measured_rounds),
            n=n,
            model_ready=model is not None,
            accuracy=accuracy,
            stability=stab,
            trusted_before=trusted_before,
        )
        k = min(max(decision.dnn_count, 0), n)

        batch_x = np.empty((0, len(space.variables)))
        sources: list[str] = []
        notes: dict[str, Any] = {}
        next_space = space
        if k < n:
            bo_sugg = self.bo.suggest(history, space, n - k)
            next_space = bo_sugg.space
            batch_x = next_space.to_array(bo_sugg.batch)
            sources = list(bo_sugg.sources)
            notes.update(bo_sugg.notes)  # BO's widening notes stay where the engine reads them
        surrogate = None
        if k > 0 and model is not None:
            measured = [o for o in history.observations if not o.failed]
            failed = [o for o in history.observations if o.failed]
            surrogate = net.NetworkSurrogate(
                model,
                history.loss,
                self.settings.dnn.search,
                np.random.default_rng(_seed(self.seed, rnd, _FIT_TAG)),
                measured=space.to_array([o.inputs for o in measured]) if measured else None,
                failed=space.to_array([o.inputs for o in failed]) if failed else None,
            )
            if k == n and self.widening.enabled:
                # no BO this round: the network's own picks and predictions drive the (gated) widening
                dnn_x, next_space, widening_notes = select_with_widening(
                    surrogate, history, space, n, self.widening
                )
                notes.update(widening_notes)
            else:
                # inside the bounds BO was given: ground BO's gate newly opened gets its few conditions
                # (max_new) and no more; the network put 6 of 15 on a new edge, far from any data
                dnn_x = surrogate.select(space, k, batch_x)
            batch_x = np.concatenate([batch_x, dnn_x])
            sources += [net.SOURCE] * len(dnn_x)
        dnn_count = sources.count(net.SOURCE)

        predictions: list[np.ndarray | None]
        if model is not None and len(batch_x):
            predicted = model.predict(batch_x)[0]
            predictions = [row for row in predicted]
            predicted_loss = np.atleast_1d(history.loss(predicted))
        else:
            predictions = [None] * len(batch_x)
            predicted_loss = None

        measured_losses = [o.median_loss for o in history.measured()]
        best_measured = float(min(measured_losses)) if measured_losses else None
        best_now = best_prev = None
        best_x: np.ndarray | None = None
        if model is not None and probes is not None:
            # both models scored on the same points: the probes, everything measured, this batch
            where = np.concatenate(
                [probes, space.to_array([o.inputs for o in history.observations]), batch_x]
            )
            now_loss = np.atleast_1d(history.loss(model.predict(where)[0]))
            best_now, best_x = float(now_loss.min()), where[int(now_loss.argmin())]
            if surrogate is not None and surrogate.best_x is not None and surrogate.best < best_now:
                best_now, best_x = surrogate.best, surrogate.best_x
            if previous is not None:
                best_prev = float(np.min(history.loss(previous.predict(where)[0])))
        reason, held = stop_check(
            self.settings.stop,
            measured_rounds=len(measured_rounds),
            accuracy=accuracy,
            stability=stab,
            predicted_best=best_now,
            previous_predicted_best=best_prev,
            best_measured=best_measured,
            open_edges=open_edges(next_space, best_x, self.settings.stop.edge_fraction)
            if best_x is not None
            else None,
        )
        notes["policy"] = {
            "dnn_count": dnn_count,
            "bo_count": len(batch_x) - dnn_count,
            "reason": decision.reason,
            "trusted_before": trusted_before,
            "accuracy": accuracy.to_dict() if accuracy is not None else None,
            "accuracy_from": accuracy_from if accuracy is not None else None,
            "stability": stab.to_dict() if stab is not None else None,
            "predicted_best": best_now,
            "previous_predicted_best": best_prev,
            "best_measured": best_measured,
            "model": _model_notes(model),
            "stop_held": held,  # why the model stop rule did not end the campaign (None: it did)
            "predicted_loss": [float(v) for v in predicted_loss] if predicted_loss is not None else None,
        }
        if best_x is not None:
            notes["policy"]["predicted_best_inputs"] = next_space.to_dicts(best_x)[0]
        if reason is not None:
            notes["stop"] = reason
        log.info(
            "two_step.suggest",
            round=rnd,
            dnn=notes["policy"]["dnn_count"],
            bo=notes["policy"]["bo_count"],
            reason=decision.reason,
            stop=reason,
        )
        return Suggestion(
            batch=next_space.to_dicts(batch_x),
            space=next_space,
            sources=sources,
            predictions=predictions,
            notes=notes,
        )


def _model_notes(model: net.SpectrumEnsemble | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {
        "members": model.members,
        "valid_mse": [None if not np.isfinite(v) else float(v) for v in model.valid_mse],
        "epochs": [int(e) for e in model.epochs],
    }


def make_two_step(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    """Registry factory for ``two_step``."""
    parsed = parse_settings(settings)
    resolve(parsed.bo)  # an unknown BO strategy is refused here, before the campaign starts
    return TwoStepOptimizer(parsed, widening, seed)


def make_dnn(settings: dict[str, Any], widening: dict[str, Any] | None, seed: int) -> Optimizer:
    """Registry factory for ``dnn``: the network alone, after a Latin-hypercube first round (a baseline)."""
    merged = {"bo": "lhs", **settings}
    policy = {"bo_only_rounds": 1, "fixed_share": 1.0, **dict(merged.get("policy") or {})}
    parsed = parse_settings({**merged, "policy": policy}, strategy="dnn")
    opt = TwoStepOptimizer(parsed, widening, seed)
    opt.name = "dnn"
    return opt
