"""Knowledge extraction from a campaign: figures and one HTML page (``sdl report CAMPAIGN``).

What Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021) drew from their trained models, for any
campaign: which inputs move the loss (SHAP values of the predicted loss), predicted-loss maps over
two inputs with the others at the best condition (their Q_seed x Q_AgNO3 map), and predicted against
measured spectra for the best conditions; plus the campaign's course (loss per round with the best so
far, the search bounds per round, the network's accuracy and stability).

The models are refitted here on everything measured: the spectrum-network ensemble
(:mod:`orchestrator.optimize.dnn`) when there are enough spectra, and a Gaussian process on the
median losses (:mod:`orchestrator.optimize.gp`). Figures are PNG files (matplotlib, Agg); the HTML page
embeds them, so it can be mailed on its own, and links each to its file.

Rounds and conditions are shown as people count them, from 1 (as the console and the paper do); the
data (``report.json``, the summary, the CSV export, the store) keep their 0-based indices.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written by services and tests: never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import structlog  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter  # noqa: E402

from orchestrator.optimize import dnn as net  # noqa: E402
from orchestrator.optimize.base import History, Observation, Space  # noqa: E402
from orchestrator.optimize.constraints import sample_feasible  # noqa: E402
from orchestrator.optimize.gp import unit_scaler  # noqa: E402
from orchestrator.optimize.model_checks import accuracy_by_round, measured_spectrum  # noqa: E402
from orchestrator.optimize.success import UNLIKELY, SuccessModel  # noqa: E402
from orchestrator.spectra import minmax  # noqa: E402
from orchestrator.state import OPTIMISER_STOP  # noqa: E402
from orchestrator.summary import droplet_counts, failure_reasons, reagent_rows, reagent_use  # noqa: E402

log = structlog.get_logger(__name__)

DPI = 110
SOURCE_STYLE = {  # marker and colour per suggestion source, so every figure reads the same way
    "dnn": ("^", "tab:orange"),
    "lhs": ("s", "tab:green"),
    "random": ("s", "tab:olive"),
}
DEFAULT_STYLE = ("o", "tab:blue")  # BO and anything else


class ReportError(ValueError):
    """A report that cannot be made (nothing measured, an unknown input named for a map)."""


class NothingToReport(ReportError):
    """The campaign has no measured condition yet."""


@dataclass(frozen=True)
class RoundInfo:
    index: int
    strategy: str
    bounds: dict[str, tuple[float, float]]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportData:
    """Everything a report reads, whatever store it came from."""

    campaign_id: str
    name: str
    status: str
    history: History  # observations with spectra (and recorded predictions, where there were any)
    space: Space  # hard limits and the latest bounds
    rounds: list[RoundInfo]
    status_reason: str = ""
    strategy: str = ""
    loss_threshold: float | None = None
    optimizer_settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    rig: str = ""
    # (stream, used uL, syringe uL, full syringes it takes) and the time the pumps ran conditions
    # (:func:`orchestrator.summary.reagent_use`)
    reagents: list[tuple[str, float, float | None, int | None]] = field(default_factory=list)
    pumping_s: float | None = None
    # why each failed condition failed, by (round, condition) (:func:`orchestrator.summary.failure_reasons`)
    failures: dict[tuple[int, int], str] = field(default_factory=dict)
    # each condition's pump rates (uL/min per stream), by (round, condition): what to set to repeat it
    rates: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    # what was run, for the state table: target and window, seed, a dry run's chemistry, droplet counts
    facts: list[tuple[str, Any]] = field(default_factory=list)

    def measured(self) -> list[Observation]:
        return self.history.measured()

    def best(self, k: int) -> list[Observation]:
        return sorted(self.measured(), key=lambda o: float(o.median_loss or 0.0))[:k]


# ---------------------------------------------------------------------------------------------
# from the campaign store


def load_report_data(store: Any, campaign_id: str) -> ReportData:
    """A campaign as the store holds it (:mod:`orchestrator.store`): its protocol and target as it ran
    (:func:`orchestrator.campaign.load_spec`), rounds, measured and failed conditions, and their
    accepted replicate spectra (set-aside attempts left out)."""
    import tempfile

    from orchestrator.campaign import CampaignError, load_spec
    from orchestrator.config_errors import ConfigError
    from orchestrator.spectra import TargetFileError

    row = store.campaign(campaign_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            spec = load_spec(row, Path(tmp))
            loss = spec.protocol.loss()  # reads the stored target text while it is on disk
        except (CampaignError, ConfigError) as exc:
            raise ReportError(
                f"campaign {campaign_id}: its stored protocol no longer validates: {exc}"
            ) from exc
        except (OSError, TargetFileError) as exc:
            raise ReportError(
                f"campaign {campaign_id}: its stored target spectrum is unreadable: {exc}"
            ) from exc
    protocol = spec.protocol
    use = reagent_use(store, campaign_id, row=row)

    rounds = [
        RoundInfo(
            int(r.index),
            str(r.strategy or ""),
            {k: (float(v[0]), float(v[1])) for k, v in dict(r.bounds or {}).items()},
            dict(r.notes or {}),
        )
        for r in sorted(store.rounds(campaign_id), key=lambda r: r.index)
    ]
    spectra: dict[tuple[int, int], list[np.ndarray]] = {}
    for rep in store.replicates(campaign_id):
        if rep.accepted and rep.absorbance is not None:
            spectra.setdefault((int(rep.round), int(rep.condition)), []).append(
                np.asarray(rep.absorbance, float)
            )
    observations = []
    conditions = sorted(store.conditions(campaign_id), key=lambda c: (c.round, c.index))
    for c in conditions:
        failed = c.status == "failed"
        if c.status != "done" and not failed:
            continue  # planned or being measured: nothing to learn from yet
        reps = spectra.get((int(c.round), int(c.index)))
        observations.append(
            Observation(
                round_index=int(c.round),
                inputs={k: float(v) for k, v in dict(c.inputs).items()},
                median_loss=None if failed or c.median_loss is None else float(c.median_loss),
                mad=None if c.mad is None else float(c.mad),
                failed=failed or c.median_loss is None,
                spectra=np.array(reps) if reps else None,
                source=str(c.source or ""),
                prediction=None if c.prediction is None else np.asarray(c.prediction, float),
                condition=int(c.index),
            )
        )
    space = protocol.space()
    if rounds:
        latest = rounds[-1].bounds
        space = space.with_bounds({n: latest.get(n, b) for n, b in space.bounds.items()})
    return ReportData(
        campaign_id=campaign_id,
        name=str(getattr(row, "name", "") or protocol.name),
        status=str(row.status),
        status_reason=str(getattr(row, "reason", "") or ""),
        history=History(observations, protocol.wavelengths(), loss, len(rounds)),
        space=space,
        rounds=rounds,
        strategy=protocol.optimizer.strategy,
        loss_threshold=protocol.stop.loss_threshold,
        optimizer_settings=dict(protocol.optimizer.settings),
        seed=spec.seed,
        rig=str(getattr(row, "rig_name", "") or ""),
        reagents=reagent_rows(use),
        pumping_s=use["pumping_s"],
        failures=failure_reasons(store, campaign_id),
        rates={(int(c.round), int(c.index)): dict(c.rates) for c in conditions if c.rates},
        facts=_run_facts(store, campaign_id, row, spec),
    )


def _run_facts(store: Any, campaign_id: str, row: Any, spec: Any) -> list[tuple[str, Any]]:
    """What was run, as the morning reader needs it beside the results: the target scored against (a
    ``--target`` file in place of the protocol's), the grid and absorbance window, the seed, whether it
    was a dry run and with which chemistry, and the droplets measured."""
    options = dict(getattr(row, "options", None) or {})
    target, grid = spec.protocol.target, spec.protocol.grid
    # the stored spec's target is a temporary copy of the text: name the file as the protocol gave it
    written = str(((yaml.safe_load(row.protocol_yaml) or {}).get("target") or {}).get("file", ""))
    own = str((Path(row.protocol_path).parent / written).resolve())
    scored = options.get("target_file") or own
    facts: list[tuple[str, Any]] = [
        ("target", scored + (f" (--target, in place of the protocol's {written})" if scored != own else "")),
        ("scored on", f"{grid.start_nm:g}-{grid.stop_nm:g} nm in {grid.step_nm:g} nm steps; absorbance window "
                      f"{target.a_low:g}-{target.a_high:g} (a peak outside it scores a loss of 1, whatever its shape)"),
        ("seed", spec.seed),
    ]
    if spec.rig.is_simulated:  # as rig.new_world picks it (a dry-run twin names the reference model)
        named = spec.rig.simulation.chemistry
        model = options.get("chemistry") or (named.model if named else "none (carrier only: every droplet is blank)")
        facts.append(("dry run", f"simulated rig, chemistry {model}"))
    # a dark taken as zeros (no lamp control): every absorbance may carry the detector's baseline
    facts += [("calibration", e.reason) for e in store.recent_events(campaign_id, limit=1, kind="calibration_warning")]
    n = droplet_counts(store.replicate_losses(campaign_id))
    facts.append(("droplets", f"{n['replicates']} measured: {n['replicates_accepted']} accepted, "
                              f"{n['replicates_rejected']} rejected, {n['replicates_set_aside']} set aside"))
    return facts


# ---------------------------------------------------------------------------------------------
# models refitted for the report


@dataclass
class LossModel:
    """A predicted loss over physical inputs, with the name to print on figures."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    ensemble: net.SpectrumEnsemble | None = None


def _chunked(fn: Callable[[np.ndarray], np.ndarray], rows: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
    def call(x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return np.concatenate([np.atleast_1d(fn(x[i : i + rows])) for i in range(0, len(x), rows)])

    return call


def network_model(data: ReportData) -> LossModel | None:
    """The spectrum ensemble on every spectrum (None when too few), with the campaign's settings."""
    dnn_settings = (data.optimizer_settings or {}).get("dnn")
    try:
        settings = net.parse_settings(dnn_settings if isinstance(dnn_settings, dict) else {})
        ensemble = net.fit_on_history(data.history, data.space, settings.model, data.seed)
    except (net.NotEnoughSpectra, net.DnnSettingsError) as exc:
        log.info("report.no_network", reason=str(exc))
        return None
    loss = data.history.loss

    def predict(x: np.ndarray) -> np.ndarray:
        return ensemble.predict_loss(x, loss).mean(axis=0)

    return LossModel("spectrum network", _chunked(predict), ensemble)


def gp_model(data: ReportData) -> LossModel | None:
    """A Gaussian process on the median losses over the latest bounds (None with fewer than 5)."""
    from orchestrator.optimize.gp import LossGP, loss_training_data, unit_scaler

    x, y, _ = loss_training_data(data.history, data.space)
    if len(y) < 5:
        return None
    scaler = unit_scaler(data.space, use_log=True)
    gp = LossGP(ard=True).fit(scaler.to_unit(x), y, np.random.default_rng(data.seed))

    def predict(xq: np.ndarray) -> np.ndarray:
        return gp.mean(scaler.to_unit(xq))

    return LossModel("Gaussian process", _chunked(predict))


def predicted_optimum(
    model: LossModel,
    space: Space,
    seed: int,
    *,
    measured: np.ndarray | None = None,
    n: int = 3000,
    likely: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """The lowest predicted loss in the latest bounds: random feasible conditions and the measured
    ones inside the bounds, the best of them refined locally. With ``likely`` (a mask: where a
    condition is likely to give a measurement at all), only there, unless that is nowhere."""
    rng = np.random.default_rng([seed, 0x0B7])
    x = sample_feasible(space, n, rng)
    if measured is not None and len(measured):
        x = np.concatenate([x, measured[space.feasible(measured)]])

    pred = model.predict(x)
    if likely is not None and likely(x).any():  # else failures everywhere it looked: say where it would be
        mask = likely

        def predict(xq: np.ndarray) -> np.ndarray:
            return np.where(mask(xq), model.predict(xq), np.inf)

        pred = np.where(mask(x), pred, np.inf)
    else:
        predict = model.predict
    starts = x[np.argsort(pred)[:8]]
    tried = net.refine_minimum(predict, space, starts, rng)
    x, pred = np.concatenate([x, tried]), np.concatenate([pred, predict(tried)])
    i = int(np.argmin(pred))
    return x[i], float(pred[i])


def _stop_held(data: ReportData) -> str:
    """"not met", and what held the model stop rule when the last round was planned (the network accurate
    and stable, but its predicted optimum on an edge that may widen, say)."""
    for r in reversed(data.rounds):
        held = ((r.notes or {}).get("policy") or {}).get("stop_held")
        if held:
            return f"not met when round {r.index + 1} was planned: {held}"
    return "not met"


def on_open_edges(space: Space, inputs: dict[str, float], within: float = 0.01) -> list[str]:
    """Where a condition sits on an edge of the latest bounds that may still widen (short of its hard
    limit): the optimum may lie beyond it, which a chemist reading the report should be told."""
    from orchestrator.optimize.widening import edges_pressed

    said = []
    x = np.array([float(inputs[v.name]) for v in space.variables])
    for i, side in edges_pressed(space, [x], within):  # in the bounds' unit scaling, log inputs in log units
        v = space.variables[i]
        edge, hard = (v.low, v.hard_low) if side == "low" else (v.high, v.hard_high)
        said.append(f"on the {'lower' if side == 'low' else 'upper'} bound of {v.name} ({edge:.4g}; hard limit "
                    f"{hard:.4g}): the optimum may lie beyond it")
    return said


def likely_to_measure(data: ReportData) -> Callable[[np.ndarray], np.ndarray] | None:
    """Where a condition is likely to give a measurement at all, by the optimisers' own success model
    (:class:`~orchestrator.optimize.success.SuccessModel`) on the measured and failed conditions; None
    when none failed. The predicted optimum is sought there: a spectrum model trained on the conditions
    that measured knows nothing of the ground where they fail."""
    failed = [o for o in data.history.observations if o.failed]
    measured = data.measured()
    if not failed or not measured:
        return None
    scaler = unit_scaler(data.space, use_log=True)
    model = SuccessModel(
        torch.as_tensor(scaler.to_unit(data.space.to_array([o.inputs for o in measured])), dtype=torch.float64),
        torch.as_tensor(scaler.to_unit(data.space.to_array([o.inputs for o in failed])), dtype=torch.float64),
    )

    def likely(x: np.ndarray) -> np.ndarray:
        u = torch.as_tensor(scaler.to_unit(np.atleast_2d(x)), dtype=torch.float64)
        with torch.no_grad():
            return model.log_p(u).numpy() >= UNLIKELY

    return likely


# ---------------------------------------------------------------------------------------------
# figures



def _plain_log_axis(ax: plt.Axes, which: str) -> None:
    """Axis ``which`` ("x" or "y") in log scale labelled 2, 5, 10, 20 ... (flows and shares read as
    numbers, not as 2x10^0), without the minor labels that overlap when it spans less than a decade."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _style(source: str) -> tuple[str, str]:
    return SOURCE_STYLE.get(source, DEFAULT_STYLE)


def _unit(v: Any) -> str:
    """An input's unit: a percent of the total flow, or the total flow in uL/min."""
    return "%" if v.kind == "percent" else "uL/min"


def _loss_text(v: float, places: int = 3) -> str:
    """A loss with ``places`` decimals, or two significant figures below what they show (4.9e-05, not
    0.000: a near-perfect match must not read as exactly zero)."""
    return f"{v:.{places}f}" if v == 0 or abs(v) >= 10 ** -(places - 1) else f"{v:.2g}"


def _condition_name(o: Observation) -> str:
    """As `sdl status` and the console name a condition (r4 c12), counted from 1."""
    return f"r{o.round_index + 1}" + ("" if o.condition is None else f" c{o.condition + 1}")


def _source_name(source: str) -> str:
    """What proposed a condition, as the page names it: the spectrum network is "network" ("dnn" in the data)."""
    return "network" if source == "dnn" else (source or "unknown")


def _source_legend(sources: Sequence[str], **scatter_kw: Any) -> list[Line2D]:
    handles = []
    for s in sorted(set(sources)):
        marker, colour = _style(s)
        label = _source_name(s)
        handles.append(
            Line2D(
                [],
                [],
                marker=marker,
                linestyle="",
                color=scatter_kw.get("color", colour),
                label=label,
                markersize=7,
            )
        )
    return handles


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_loss_by_round(data: ReportData, path: Path) -> Path:
    """Every condition's median loss per round (failed ones marked), the best so far, the threshold."""
    obs = data.history.observations
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    rng = np.random.default_rng(0)
    ok = [o for o in obs if not o.failed and o.median_loss is not None]
    jitter = rng.uniform(-0.18, 0.18, len(ok))
    for src in sorted({o.source for o in ok}):
        sel = [i for i, o in enumerate(ok) if o.source == src]
        marker, colour = _style(src)
        ax.scatter(
            [ok[i].round_index + 1 + jitter[i] for i in sel],
            [ok[i].median_loss for i in sel],
            marker=marker,
            color=colour,
            s=28,
            alpha=0.75,
            edgecolor="none",
        )
    failed_rounds = [o.round_index + 1 for o in obs if o.failed or o.median_loss is None]
    rounds = sorted({o.round_index + 1 for o in obs})  # as people count them, from 1
    best, running = [], np.inf
    for r in rounds:
        vals = [
            o.median_loss for o in obs if o.round_index + 1 == r and not o.failed and o.median_loss is not None
        ]
        running = min([running, *vals])
        best.append(running)
    ax.step(rounds, best, where="post", color="black", lw=2, label="best so far")
    for r, b in zip(rounds, best, strict=True):
        ax.annotate(_loss_text(b), (r, b), textcoords="offset points", xytext=(4, -12), fontsize=8)
    if data.loss_threshold is not None:
        ax.axhline(
            data.loss_threshold,
            color="tab:red",
            ls="--",
            lw=1,
            label=f"stop threshold {data.loss_threshold:g}",
        )
    if failed_rounds:  # no loss to plot: a row of crosses above the losses, one per condition
        top = ax.get_ylim()[1]
        ax.scatter(
            np.asarray(failed_rounds, dtype=float) + rng.uniform(-0.25, 0.25, len(failed_rounds)),
            [top] * len(failed_rounds),
            marker="x",
            color="tab:red",
            clip_on=False,
            label=f"failed condition ({len(failed_rounds)}, no loss: drawn at the top)",
        )
    handles = _source_legend([o.source for o in obs if not o.failed]) + ax.get_legend_handles_labels()[0]
    # beside the axes, where it hides no point
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel("round")
    ax.set_ylabel("median loss of a condition (0 = target)")
    ax.set_xticks(rounds)
    ax.set_title(f"{data.name}: loss per round")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_bounds_by_round(data: ReportData, path: Path) -> Path:
    """The search bounds of every input per round (shaded), the hard limits, and the conditions run."""
    names = data.space.names
    d = len(names)
    cols = min(3, d)
    rows = int(np.ceil(d / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    rounds = [r.index + 1 for r in data.rounds]  # as people count them, from 1
    for k, v in enumerate(data.space.variables):
        ax = axes[k // cols][k % cols]
        lo = [r.bounds.get(v.name, (np.nan, np.nan))[0] for r in data.rounds]
        hi = [r.bounds.get(v.name, (np.nan, np.nan))[1] for r in data.rounds]
        ax.fill_between(rounds, lo, hi, step="mid", color="tab:blue", alpha=0.15, label="search bounds")
        ax.step(rounds, lo, where="mid", color="tab:blue", lw=1.2)
        ax.step(rounds, hi, where="mid", color="tab:blue", lw=1.2)
        for src in sorted({o.source for o in data.history.observations}):
            pts = [(o.round_index + 1, o.inputs[v.name]) for o in data.history.observations if o.source == src]
            marker, colour = _style(src)
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=colour, s=10, alpha=0.6)
        ax.axhline(v.hard_low, color="grey", ls=":", lw=1)
        ax.axhline(v.hard_high, color="grey", ls=":", lw=1, label="hard limits")
        if v.log:
            _plain_log_axis(ax, "y")
        unit = _unit(v)
        ax.set_title(f"{v.name} ({unit})", fontsize=10)
        ax.set_xticks(rounds)
        ax.tick_params(labelsize=8)
        # the hard limits can dwarf the bounds: zoom on what was used, keeping the limits in view if near
        used = [*lo, *hi, *(o.inputs[v.name] for o in data.history.observations)]
        span = max(used) - min(used)
        ax.set_ylim(
            max(v.hard_low, min(used) - 0.15 * span) if not v.log else None,
            min(v.hard_high, max(used) + 0.15 * span) if not v.log else None,
        )
    for k in range(d, rows * cols):
        axes[k // cols][k % cols].axis("off")
    # which strategy proposed the dots (the loss plot's key, here too)
    handles = axes[0][0].get_legend_handles_labels()[0] + _source_legend([o.source for o in data.history.observations])
    axes[0][0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{data.name}: search bounds per round (dots: conditions run)", fontsize=11)
    fig.supxlabel("round", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def model_check_rows(data: ReportData) -> list[dict[str, Any]]:
    """Per round: the network's share of the batch, accuracy and stability (journaled or recomputed)."""
    recomputed = accuracy_by_round(data.history)
    rows = []
    for r in data.rounds:
        policy = (r.notes or {}).get("policy") or {}
        # the accuracy journaled in round r judges the predictions of round r-1; recomputed from the
        # stored predictions it is filed under the round that made them
        acc = recomputed.get(r.index)
        rows.append(
            {
                "round": r.index,
                # a round the strategy could not model (too few measured conditions) fell back to a
                # Latin hypercube or a plainer model: said, or the table credits the strategy with it
                "strategy": r.strategy + (f" (fell back: {fallback})" if (fallback := (r.notes or {}).get("fallback")) else ""),
                "dnn_count": policy.get("dnn_count"),
                "accuracy_cosine": acc.cosine_mean if acc else None,
                "accuracy_loss_mae": acc.loss_mae if acc else None,
                "stability_cosine": (policy.get("stability") or {}).get("cosine_mean"),
                "reason": policy.get("reason", ""),
                "stop": (r.notes or {}).get("stop"),
            }
        )
    return rows


def plot_model_checks(data: ReportData, path: Path) -> Path | None:
    """Accuracy (predicted before vs measured) and stability (successive models) per round."""
    rows = model_check_rows(data)
    acc = [
        (r["round"] + 1, r["accuracy_cosine"], r["accuracy_loss_mae"])
        for r in rows
        if r["accuracy_cosine"] is not None
    ]
    stab = [(r["round"] + 1, r["stability_cosine"]) for r in rows if r["stability_cosine"] is not None]
    if not acc and not stab:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if acc:
        ax1.plot(
            [a[0] for a in acc],
            [1 - a[1] for a in acc],
            "o-",
            label="accuracy: 1 - cosine(predicted, measured)",
        )
    if stab:
        ax1.plot(
            [s[0] for s in stab],
            [1 - s[1] for s in stab],
            "s--",
            label="stability: 1 - cosine(model k-1, model k)",
        )
    ax1.set_yscale("log")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("round")
    ax1.set_ylabel("1 - mean cosine similarity")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    ax1.set_title("spectrum network: accuracy and stability", fontsize=10)
    maes = [(a[0], a[2]) for a in acc if a[2] is not None]
    if maes:
        ax2.plot([m[0] for m in maes], [m[1] for m in maes], "o-", color="tab:purple")
    ax2.set_xlabel("round")
    ax2.set_ylabel("mean |predicted - measured loss|")
    ax2.set_title("loss predicted before measurement, error", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _default_map_pairs(space: Space, importance: Importance | None = None) -> list[tuple[str, str]]:
    """The maps worth drawing: the paper's (Q_seed x Q_AgNO3) where those are inputs, and the one over
    the two inputs of largest mean |SHAP| when that is another (a chemistry where the paper's inputs
    matter least); the first two inputs before importance is known, with no paper's map."""
    names = space.names
    pairs: list[tuple[str, str]] = []
    if "Q_seed" in names and "Q_AgNO3" in names:
        pairs.append(("Q_seed", "Q_AgNO3"))  # the paper's map
    if importance is not None:
        first, second = (importance.names[i] for i in np.argsort(-importance.mean_abs, kind="stable")[:2])
        if not pairs or {first, second} != set(pairs[0]):
            pairs.append((first, second))
    return pairs or [(names[0], names[1])]


def plot_loss_map(
    data: ReportData,
    model: LossModel,
    x_name: str,
    y_name: str,
    path: Path,
    *,
    resolution: int = 70,
    optimum: tuple[np.ndarray, float] | None = None,
) -> Path:
    """Predicted loss over two inputs, the others at the best measured condition; the measured points
    and the predicted optimum marked; ground the sum constraint forbids is hatched."""
    space = data.space
    names = space.names
    for n in (x_name, y_name):
        if n not in names:
            raise ReportError(f"no input named {n!r} for a loss map; the inputs are {', '.join(names)}")
    if x_name == y_name:
        raise ReportError("a loss map needs two different inputs")
    ix, iy = names.index(x_name), names.index(y_name)
    best = data.best(1)[0]
    base = space.to_array([best.inputs])[0]
    vx, vy = space.variables[ix], space.variables[iy]
    measured_x = space.to_array([o.inputs for o in data.measured()])

    def axis(v: Any, col: np.ndarray) -> np.ndarray:
        """The latest bounds and every measured point, and a margin beyond (inside the hard limits)
        to show which way the loss goes past an edge."""
        lo, hi = min(v.low, col.min()), max(v.high, col.max())
        if v.log:
            lo, hi = np.log(lo), np.log(hi)
        margin = 0.12 * (hi - lo)
        lo, hi = lo - margin, hi + margin
        if v.log:
            lo, hi = np.exp(lo), np.exp(hi)
        lo, hi = max(lo, v.hard_low), min(hi, v.hard_high)
        return np.geomspace(lo, hi, resolution) if v.log else np.linspace(lo, hi, resolution)

    gx, gy = axis(vx, measured_x[:, ix]), axis(vy, measured_x[:, iy])
    xx, yy = np.meshgrid(gx, gy)
    grid = np.repeat(base[None, :], xx.size, axis=0)
    grid[:, ix], grid[:, iy] = xx.ravel(), yy.ravel()
    pred = model.predict(grid).reshape(xx.shape)
    hard = space.with_bounds({v.name: (v.hard_low, v.hard_high) for v in space.variables})
    allowed = hard.feasible(grid).reshape(xx.shape)
    shown = np.where(allowed, pred, np.nan)

    fig, ax = plt.subplots(figsize=(7.6, 6.0))
    finite = shown[np.isfinite(shown)]
    lo_level, hi_level = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    levels = MaxNLocator(nbins=20).tick_values(lo_level, max(hi_level, lo_level + 1e-6))
    cs = ax.contourf(xx, yy, shown, levels=levels, cmap="viridis_r", extend="both")
    ax.contour(xx, yy, shown, levels=levels[::4], colors="white", linewidths=0.5, alpha=0.6)
    if (~allowed).any():
        ax.contourf(xx, yy, (~allowed).astype(float), levels=[0.5, 1.5], colors="none", hatches=["///"])
    cbar = fig.colorbar(cs, ax=ax)
    cbar.set_label(f"predicted loss ({model.name})")
    losses = np.array([o.median_loss for o in data.measured()], dtype=float)
    norm = cs.norm
    for src in sorted({o.source for o in data.measured()}):
        sel = np.array([o.source == src for o in data.measured()])
        marker, _ = _style(src)
        ax.scatter(
            measured_x[sel, ix],
            measured_x[sel, iy],
            c=losses[sel],
            cmap="viridis_r",
            norm=norm,
            marker=marker,
            s=36,
            edgecolor="black",
            linewidths=0.6,
        )
    failed = [o for o in data.history.observations if o.failed]
    if failed:
        failed_x = space.to_array([o.inputs for o in failed])
        ax.scatter(failed_x[:, ix], failed_x[:, iy], marker="x", s=40, color="tab:red", linewidths=1.4,
                   label=f"failed condition ({len(failed)})")
    ax.scatter(
        base[ix],
        base[iy],
        marker="D",
        s=110,
        facecolor="none",
        edgecolor="red",
        linewidths=2,
        label=f"best measured ({_loss_text(best.median_loss)})",
    )
    opt_x, opt_loss = optimum or predicted_optimum(model, space, data.seed, measured=measured_x)
    ax.scatter(
        opt_x[ix],
        opt_x[iy],
        marker="*",
        s=260,
        color="gold",
        edgecolor="black",
        label=f"predicted optimum ({_loss_text(opt_loss)})",
    )
    rect = plt.Rectangle(
        (vx.low, vy.low),
        vx.high - vx.low,
        vy.high - vy.low,
        fill=False,
        ls="--",
        color="black",
        lw=1.2,
        label="latest search bounds",
    )
    ax.add_patch(rect)
    if vx.log:
        _plain_log_axis(ax, "x")
    if vy.log:
        _plain_log_axis(ax, "y")
    ax.set_xlabel(f"{x_name} ({_unit(vx)})")
    ax.set_ylabel(f"{y_name} ({_unit(vy)})")
    fixed = ", ".join(f"{n}={base[i]:.3g}" for i, n in enumerate(names) if i not in (ix, iy))
    ax.set_title(
        f"predicted loss over {x_name} x {y_name}" + (f"\nothers at the best condition: {fixed}" if fixed else "")
        + "\npoints: every measured condition, whatever its other inputs, coloured by its measured loss",
        fontsize=10,
    )
    handles = ax.get_legend_handles_labels()[0] + _source_legend(
        [o.source for o in data.measured()], color="grey"
    )
    ax.legend(
        handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=4, frameon=False
    )
    return _save(fig, path)


def plot_best_spectra(data: ReportData, model: LossModel | None, path: Path, k: int = 4) -> Path:
    """Measured (replicates and median), predicted before measurement, predicted now, and the target
    shape for the ``k`` best conditions."""
    best = data.best(k)
    cols = min(2, len(best))
    rows = int(np.ceil(len(best) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.8 * rows), squeeze=False)
    wl = data.history.wavelengths
    target = data.history.loss.target
    now = (
        model.ensemble.predict(data.space.to_array([o.inputs for o in best]))[0]
        if model and model.ensemble
        else None
    )
    for j, o in enumerate(best):
        ax = axes[j // cols][j % cols]
        spectra = None if o.spectra is None else np.atleast_2d(o.spectra)
        median = measured_spectrum(o, wl)
        if spectra is not None:
            for s in spectra[:30]:
                ax.plot(wl, s, color="0.75", lw=0.6)
        if median is not None:
            ax.plot(wl, median, color="black", lw=1.8, label="measured (median of replicates)")
        if o.prediction is not None:
            ax.plot(wl, o.prediction, color="tab:orange", lw=1.6, ls="--", label="predicted before measuring")
        if now is not None:
            ax.plot(wl, now[j], color="tab:blue", lw=1.4, ls=":", label="network now")
        scale = float(np.nanmax(median)) if median is not None else 1.0
        ax.plot(wl, minmax(target) * scale, color="tab:green", lw=1.2, alpha=0.8, label="target (shape)")
        ax.set_title(
            f"#{j + 1}: round {o.round_index + 1}, loss {_loss_text(o.median_loss)} ({_source_name(o.source)})",
            fontsize=10,
        )
        text = "\n".join(f"{n} = {v:.3g}" for n, v in o.inputs.items())
        ax.text(
            0.99,
            0.97,
            text,
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7.5,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
        )
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("absorbance")
        ax.grid(alpha=0.3)
    for j in range(len(best), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{data.name}: best conditions, predicted and measured spectra", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """shap's KernelExplainer samples with numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass(frozen=True)
class Importance:
    model: str
    names: list[str]
    mean_abs: np.ndarray  # (d,)
    values: np.ndarray  # (n, d) SHAP values of the explained conditions
    x: np.ndarray  # (n, d) the explained conditions


def shap_importance(
    data: ReportData, model: LossModel, *, explain: int = 40, background: int = 10
) -> Importance:
    """SHAP values of the predicted loss at measured conditions (the best half and a spread of the
    rest), against a k-means summary of everything measured (keeps KernelExplainer to seconds)."""
    import shap

    space = data.space
    measured = data.measured()
    x_all = space.to_array([o.inputs for o in measured])
    order = np.argsort([o.median_loss for o in measured])
    rng = np.random.default_rng([data.seed, 0x5A])
    take = list(order[: explain // 2])
    rest = order[explain // 2 :]
    if len(rest):
        take += list(rng.choice(rest, size=min(len(rest), explain - len(take)), replace=False))
    x = x_all[np.array(take)]
    with _numpy_global_seed(data.seed):
        bg = shap.kmeans(x_all, min(background, len(x_all))) if len(x_all) > background else x_all
        explainer = shap.KernelExplainer(model.predict, bg, feature_names=space.names)
        # 2^d coalitions enumerate the whole space for the usual 5 inputs: exact, and fast
        values = np.asarray(
            explainer.shap_values(x, nsamples=min(2 ** len(space.names) + 2, 600), silent=True)
        )
    return Importance(model.name, space.names, np.abs(values).mean(axis=0), values, x)


def plot_importance(importances: Sequence[Importance], path: Path) -> Path:
    """Mean |SHAP| per input (bars), and each explained condition's SHAP value coloured by the input's
    value (right), per model."""
    m = len(importances)
    fig, axes = plt.subplots(m, 2, figsize=(11, 3.4 * m), squeeze=False)
    for row, imp in enumerate(importances):
        order = np.argsort(imp.mean_abs)
        ax = axes[row][0]
        ax.barh([imp.names[i] for i in order], imp.mean_abs[order], color="tab:blue")
        ax.set_xlabel("mean |SHAP value| (loss units)")
        ax.set_title(f"{imp.model}: which inputs move the predicted loss", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        ax = axes[row][1]
        for pos, i in enumerate(order):
            col = imp.x[:, i]
            span = np.ptp(col) or 1.0
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(col))
            sc = ax.scatter(
                imp.values[:, i],
                pos + jitter,
                c=(col - col.min()) / span,
                cmap="coolwarm",
                s=14,
                vmin=0,
                vmax=1,
            )
        ax.set_yticks(range(len(order)), [imp.names[i] for i in order])
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel("SHAP value (+ raises the predicted loss)")
        ax.set_title("per condition (colour: input low -> high)", fontsize=10)
        cbar = fig.colorbar(sc, ax=ax, ticks=[0, 1])
        cbar.ax.set_yticklabels(["low", "high"])
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# the page


@dataclass
class ReportResult:
    html: Path
    images: dict[str, Path]
    notes: list[str]


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><a href="{html.escape(path.name)}"><img alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{data}"></a><figcaption>{html.escape(alt)} '
        f'(<a href="{html.escape(path.name)}">{html.escape(path.name)}</a>)</figcaption></figure>'
    )


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.state td{text-align:left} .note{color:#555;font-size:.9em}
"""


def render_html(
    data: ReportData, images: dict[str, Path], notes: list[str], optimum: dict[str, Any] | None
) -> str:
    measured = data.measured()
    best = data.best(10)
    names = data.space.names
    last_stop = next(
        (r.notes.get("stop") for r in reversed(data.rounds) if (r.notes or {}).get("stop")), None
    )
    if last_stop is None and (data.status_reason or "").startswith(OPTIMISER_STOP):
        # the optimiser stopped before planning a round: no round carries the note, the reason does
        last_stop = data.status_reason.removeprefix(OPTIMISER_STOP).strip()
    inputs_head = [f"{v.name} ({_unit(v)})" for v in data.space.variables]
    strategy = data.strategy or "–"
    if strategy == "default":
        from orchestrator.optimize.registry import DEFAULT_STRATEGY

        strategy = f"default ({DEFAULT_STRATEGY})"
    state_rows = [
        ("campaign", data.campaign_id),
        ("protocol", data.name),
        ("status", data.status + (f" ({data.status_reason})" if data.status_reason else "")),
        ("strategy", strategy),
        ("rounds", len(data.rounds)),
        # as the summary counts them: measured = done or failed (a failed one gave no median)
        # a refused one (no pump ran: no rates) failed without being measured
        ("conditions measured", len(measured) + sum(1 for o in data.history.failed()
                                                    if (o.round_index, o.condition) in data.rates)),
        ("conditions failed", len(data.history.failed())),
        ("best median loss", _loss_text(best[0].median_loss, 4) if best else "–"),
        ("stop threshold", data.loss_threshold),
        # only strategies with a spectrum network have a model stop rule (two_step, dnn)
        *([("model stop rule", last_stop or _stop_held(data))]
          if last_stop or (data.strategy or "") in ("two_step", "dnn") else []),
        *data.facts,
        ("rig", data.rig or "–"),
        ("pumps ran", "–" if data.pumping_s is None else f"{data.pumping_s / 3600:.2f} h (conditions only: no holds, no idle time)"),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(data.name)} – campaign {html.escape(data.campaign_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Campaign {html.escape(data.campaign_id)}: {html.escape(data.name)}</h1>",
        "<h2>State</h2>",
        "<table class='state'>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in state_rows)
        + "</table>",
        *(["<h2>Reagents</h2>", _table(
            ["stream", "used (mL)", "syringe (mL)", "syringes it takes"],
            [[stream, f"{used / 1000:.2f}", "–" if syringe is None else f"{syringe / 1000:g}",
              "–" if fills is None else f"{fills}" + (f" (refill {fills - 1}x)" if fills > 1 else "")]
             for stream, used, syringe, fills in data.reagents],
        )] if data.reagents else []),
        "<h2>Best conditions</h2>",
        _table(
            ["#", "condition", "source", *inputs_head,
             "median loss", "MAD", "accepted droplets", *(["pump rates (uL/min)"] if data.rates else [])],
            [
                [
                    i + 1,
                    _condition_name(o),
                    _source_name(o.source) if o.source else "–",
                    *(o.inputs[n] for n in names),
                    o.median_loss,
                    o.mad,
                    0 if o.spectra is None else len(np.atleast_2d(o.spectra)),
                    # what to set to repeat it by hand
                    *([", ".join(f"{k} {r:.4g}" for k, r in data.rates.get((o.round_index, o.condition), {}).items())
                       or "–"] if data.rates else []),
                ]
                for i, o in enumerate(best)
            ],
        ),
    ]
    if optimum:
        parts.append(
            "<p class='note'>Predicted optimum ("
            + html.escape(optimum["model"])
            + "): "
            + ", ".join(f"{n} = {optimum['inputs'][n]:.4g}" for n in names)
            + f", predicted loss {_loss_text(optimum['loss'], 4)}"
            + (f"; sought where conditions are likely to give a measurement ({optimum['failed_conditions']} "
               "failed)" if optimum.get("failed_conditions") else "")
            + "".join(f"; {html.escape(w)}" for w in on_open_edges(data.space, optimum["inputs"]))
            + ".</p>"
        )
    failed = data.history.failed()
    if failed:
        parts += ["<h2>Failed conditions</h2>", _table(
            ["condition", "source", *inputs_head, "why"],
            [[_condition_name(o), _source_name(o.source) if o.source else "–", *(o.inputs[n] for n in names),
              data.failures.get((o.round_index, o.condition), "–")]
             for o in failed],
        )]
    captions = {
        "loss_by_round": "Median loss of every condition per round, and the best so far",
        "bounds_by_round": "Search bounds per round, with the hard limits and the conditions run",
        "model_checks": "Spectrum network: accuracy of its predictions before measurement, and stability between successive models",
        "importance": "Feature importance: SHAP values of the predicted loss",
        "best_spectra": "Best conditions: measured, predicted and target spectra",
    }
    parts.append("<h2>Course of the campaign</h2>")
    for key in ("loss_by_round", "bounds_by_round", "model_checks"):
        if key in images:
            parts.append(_img_tag(images[key], captions[key]))
    parts.append("<h2>What the models learned</h2>")
    for key, path in images.items():
        if key.startswith("loss_map"):
            parts.append(
                _img_tag(path, f"Predicted-loss map {key.removeprefix('loss_map_').replace('__', ' x ')}")
            )
    for key in ("importance", "best_spectra"):
        if key in images:
            parts.append(_img_tag(images[key], captions[key]))
    rows = model_check_rows(data)
    parts.append("<h2>Rounds</h2>")
    parts.append(
        "<p class='note'>Two points in time per row: accuracy and loss error say how well this round's "
        "batch was predicted, known once it was measured; stability and the policy are the decision made "
        "when the round was planned, from the rounds before it (so a policy can cite an accuracy below "
        "its gate beside a higher one in this row).</p>"
    )
    parts.append(
        _table(
            [
                "round",
                "strategy",
                "network conditions",
                "accuracy cosine",
                "loss error",
                "stability cosine",
                "policy",
                *(f"{n} bounds" for n in names),
            ],
            [
                [
                    r["round"] + 1,
                    r["strategy"],
                    r["dnn_count"],
                    r["accuracy_cosine"],
                    r["accuracy_loss_mae"],
                    r["stability_cosine"],
                    r["reason"],
                    *(
                        f"{ri.bounds[n][0]:.4g}–{ri.bounds[n][1]:.4g}" if n in ri.bounds else "–"
                        for n in names
                    ),
                ]
                for r, ri in zip(rows, data.rounds, strict=True)
            ],
        )
    )
    widenings = [(ri.index + 1, w) for ri in data.rounds for w in (ri.notes or {}).get("widening") or []]
    refusals = [(ri.index + 1, w) for ri in data.rounds for w in (ri.notes or {}).get("widening_refused") or []]
    if widenings or refusals:
        # the edges the batch crowded and the gate kept shut say as much as the ones it opened
        parts.append("<h2>Bounds widened, and edges kept</h2>")
        parts.append(_table(
            ["round", "input", "edge", "from", "to", "why"],
            sorted([[r, w.get("variable", "?"), w.get("edge", "?"), w.get("old"), w.get("new"), w.get("reason", "")]
                    for r, w in widenings]
                   + [[r, w.get("variable", "?"), w.get("edge", "?"), "kept", "–", w.get("reason", "")]
                      for r, w in refusals], key=lambda row: row[0]),
        ))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(
        "<p class='note'>Loss = 1 - delta x cos(minmax(A), minmax(target)) (Mekki-Berrada et al., npj Comput. "
        "Mater. 7, 55 (2021)). Models are refitted on every measured condition for this report.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def report_steps(maps: Sequence[tuple[str, str]] | None = None) -> int:
    """How many times :func:`write_report` calls ``on_step`` (a progress bar's total)."""
    return 7 + max(1, len(maps or ()))


def write_report(
    data: ReportData,
    out_dir: str | Path,
    *,
    maps: Sequence[tuple[str, str]] | None = None,
    shap_explain: int = 40,
    on_step: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write every figure and ``index.html`` into ``out_dir``. ``on_step(label)`` is called as each
    of the :func:`report_steps` steps starts (fitting the models and SHAP take the time)."""
    step = on_step or (lambda label: None)
    out = Path(out_dir)
    if not data.measured():
        raise NothingToReport(f"campaign {data.campaign_id} has no measured condition yet: nothing to report")
    pairs = list(maps) if maps else _default_map_pairs(data.space)
    for pair in pairs:
        unknown = [n for n in pair if n not in data.space.names]
        if unknown or len(set(pair)) != 2:
            raise ReportError(
                (f"no input named {unknown[0]!r} for the loss map {' x '.join(pair)}" if unknown
                 else f"a loss map needs two different inputs, got {' x '.join(pair)}")
                + f" (the inputs are {', '.join(data.space.names)})"
            )
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    images: dict[str, Path] = {}
    step("loss per round")
    images["loss_by_round"] = plot_loss_by_round(data, out / "loss_by_round.png")
    step("bounds per round")
    images["bounds_by_round"] = plot_bounds_by_round(data, out / "bounds_by_round.png")
    checks = plot_model_checks(data, out / "model_checks.png")
    if checks is not None:
        images["model_checks"] = checks

    step("training the models")
    network = network_model(data)
    gp = gp_model(data)
    if network is None:
        notes.append("too few measured spectra to train the spectrum network: maps and importance use the GP")
    if gp is None:
        notes.append("fewer than 5 measured conditions: no Gaussian process")
    main = network or gp
    optimum = None
    step("predicted optimum")
    if main is not None:
        measured_x = data.space.to_array([o.inputs for o in data.measured()])
        likely = likely_to_measure(data)
        opt_x, opt_loss = predicted_optimum(main, data.space, data.seed, measured=measured_x, likely=likely)
        optimum = {"model": main.name, "inputs": data.space.to_dicts(opt_x)[0], "loss": opt_loss,
                   "failed_conditions": sum(o.failed for o in data.history.observations)}
    step("feature importance (SHAP)")
    if main is not None:
        importances = [shap_importance(data, m, explain=shap_explain) for m in (network, gp) if m is not None]
        images["importance"] = plot_importance(importances, out / "importance.png")
        if not maps:  # the map worth drawing: over the two inputs that matter most (the paper's, for its inputs)
            pairs = _default_map_pairs(data.space, importances[0])
    for x_name, y_name in pairs:
        step(f"loss map {x_name} x {y_name}")
        if main is not None:
            key = f"loss_map_{x_name}__{y_name}"
            images[key] = plot_loss_map(
                data, main, x_name, y_name, out / f"{key}.png", optimum=(opt_x, opt_loss)
            )
    step("best spectra")
    images["best_spectra"] = plot_best_spectra(data, network, out / "best_spectra.png")

    step("page")
    page = out / "index.html"
    page.write_text(render_html(data, images, notes, optimum), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(
            {
                "campaign_id": data.campaign_id,
                "images": {k: p.name for k, p in images.items()},
                "predicted_optimum": optimum,
                "rounds": model_check_rows(data),
                "notes": notes,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    log.info("report.written", campaign=data.campaign_id, html=str(page), images=len(images))
    return ReportResult(page, images, notes)
