"""Optimiser quality on simulated chemistry: how fast each strategy finds a condition whose true
(noise-free) loss is low.

The target is the paper's measured spectrum (or a chemistry's own, or ``--target``). Each seed draws
the chemistry's constants (stock concentrations, band shifts ...), so the best condition x* moves,
and the initial bounds: ``inside`` a box around x*, or ``outside``, the paper's bounds where the best
condition inside them is at least 0.05 worse than x* within the hard limits, so the strategy must
widen to win. Losses are true (noise-free) losses minus the best reachable one, so 0.05 / 0.02 / 0.01
mean the same thing for every seed. The chemistries are ``simulators.chemistry:AgNanoprism`` (the
rig's simulator), ``AuNanorod``, ``TwoBand``, ``bands`` (a small generic model defined here, so that
tuning on one model shows up as a loss on another), or any ``module:Class``.

A round is 15 conditions x 10 droplet replicates: replicates screened like the engine does (non-finite
or empty spectra, losses beyond 5 MADs), the condition's median loss is what the optimiser sees, and
the score is the true loss of the condition with the best median loss so far. Seeds are paired: every
strategy gets the same x*, the same round-1 Latin hypercube and the same noise stream per
(round, condition, replicate). Rounds are counted from 1 here (``History.round_index``; the engine
counts from 0), which seeds each round's random numbers; what depends on how many rounds have been
measured (two_step's ``bo_only_rounds``) counts them, so it means the same in both.

    python -m benchmarks.optimizer --seeds 20 --rounds 8 --scenario both --write   # the full table
    python -m benchmarks.optimizer --seeds 3 --rounds 4 --strategies lhs,composite  # a quick look

Data: Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021), whose first round was a 15-point Latin
hypercube over the bounds used here (shared/data/agbonn/README.md; Liang et al. 2021 published the data).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from orchestrator.optimize.base import History, Observation, Space
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.optimize.lhs import LatinHypercubeOptimizer
from orchestrator.optimize.registry import make_optimizer
from orchestrator.spectra import SpectrumLoss, wavelength_grid

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "optimizer_benchmark.md"
THRESHOLDS = (0.05, 0.02, 0.01)
BATCH = 15
REPLICATES = 10
# strategies and how long each runs; the paper baseline runs longer so its counts are not cut off
DEFAULT_STRATEGIES = ("lhs", "gp_ei_lp_paper", "gp_ei_lp", "qnei_botorch", "composite")
BASELINE = "gp_ei_lp_paper"


PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"


@lru_cache(maxsize=1)
def _protocol():
    from orchestrator.protocol import load_protocol

    return load_protocol(PROTOCOL)


def paper_space() -> Space:
    """The reference protocol's variables as ``sdl run`` sees them: the paper's first-round bounds, the
    protocol's hard limits, sum limit and log scaling (``log: auto``)."""
    return _protocol().space()


def protocol_widening() -> dict[str, object]:
    """The reference protocol's ``optimizer.widening``, as a campaign passes it to the optimiser."""
    return _protocol().optimizer.widening.model_dump()


# ---- a second, generic chemistry ----------------------------------------------------------------
class Bands:
    """A generic colloid: a main band whose position follows the precursor/seed ratio (shifted by the
    capping agent), width by the stabiliser and the residence time, height by the converted precursor;
    a seed band near 400 nm. Not silver prisms, on purpose: a check against tuning to AgNanoprism."""

    def __init__(self, ratio_scale: float = 2.5, shift_nm: float = 300.0, conversion_flow: float = 600.0) -> None:
        self.ratio_scale, self.shift_nm, self.conversion_flow = ratio_scale, shift_nm, conversion_flow

    def spectra(self, x: np.ndarray, wl: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        ag, cap, stab, seed, qt = (x[:, i : i + 1] for i in range(5))
        ratio = ag / (seed + 0.5)
        centre = 410.0 + self.shift_nm * (1 - np.exp(-ratio / self.ratio_scale)) * ag / (ag + 15.0) / (1 + cap / 50.0)
        width = 15.0 + 500.0 / (stab + 5.0) + 12.0 * np.log(qt / 500.0) ** 2
        converted = 1 - np.exp(-self.conversion_flow / qt)
        height = 1.8 * (1 - np.exp(-ag / 12.0)) * converted * stab / (stab + 3.0)
        main = height * np.exp(-0.5 * ((wl[None, :] - centre) / width) ** 2)
        seed_band = 0.02 * seed * np.exp(-0.5 * ((wl[None, :] - 400.0) / 30.0) ** 2)
        return main + seed_band + 0.002 * (ag + seed) * (400.0 / wl[None, :]) ** 4

    def spectrum(self, inputs: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray:
        return self.spectra(_row(inputs), wavelengths)[0]

    def droplet(self, inputs: Mapping[str, float], wavelengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u, jitter, vol, base, pix = rng.random(), rng.standard_normal(4), rng.standard_normal(), rng.standard_normal(), rng.standard_normal(len(wavelengths))
        if u < 0.02:
            return 0.003 * base + 0.002 * pix
        x = _row(inputs)
        x[0, :4] *= 1 + 0.03 * jitter
        return np.exp(0.02 * vol) * self.spectra(x, wavelengths)[0] + 0.003 * base + 0.003 * pix


INPUTS = ("Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total")


def _row(inputs: Mapping[str, float]) -> np.ndarray:
    return np.array([[float(inputs[n]) for n in INPUTS]])


BUILT_IN = ("agnanoprism", "bands", "aunanorod", "twoband")


def make_chemistry(name: str, rng: np.random.Generator):
    """The chemistry of one seed, its constants drawn so that no single optimum is learned by heart.
    ``module:Class`` (a model of one's own, as ``sdl run --chemistry`` takes it) is built without
    params and keeps its constants: its seeds differ in initial design, noise and ``inside`` box."""
    if ":" in name:
        from orchestrator.rig import make_chemistry as build

        model = build(name)
        probe = {v.name: (v.low + v.high) / 2 for v in paper_space().variables}
        try:
            model.droplet(probe, wavelength_grid(), np.random.default_rng(0))
        except KeyError as exc:  # a model written for a protocol of its own: say so, not a traceback
            raise SystemExit(
                f"{name}: the model asks for the input {exc.args[0]!r}, but the benchmark runs the reference "
                f"protocol ({PROTOCOL.relative_to(REPO)}), whose inputs are {', '.join(INPUTS)}. Compare "
                f"strategies on your own protocol with `sdl run YOUR_PROTOCOL --rig deploy/rigs/simulated.yaml "
                f"--chemistry {name} --seed N` over a few seeds (optimizer.strategy in a copy of the protocol), "
                "or give the model those input names") from None
        if not (callable(getattr(model, "spectra", None)) or callable(getattr(model, "spectrum", None))):
            raise SystemExit(f"{name}: the benchmark scores true (noise-free) losses, so the model needs "
                             "spectrum(inputs, wavelengths) or spectra(x, wavelengths) beside droplet()")
        return model
    if name == "bands":
        return Bands(ratio_scale=rng.uniform(1.5, 4.0), shift_nm=rng.uniform(200, 350),
                     conversion_flow=rng.uniform(300, 900))
    if name == "twoband":  # its optimum moves per seed, often beyond the initial bounds
        from simulators.chemistry import TwoBand

        d = TwoBand().params
        return TwoBand(optimum_agno3=d.optimum_agno3 * rng.uniform(0.7, 1.4),
                       optimum_pva=d.optimum_pva * rng.uniform(0.7, 1.2),
                       optimum_tsc=d.optimum_tsc * rng.uniform(0.7, 2.0),
                       optimum_seed=d.optimum_seed * rng.uniform(0.6, 1.4),
                       optimum_total=d.optimum_total * rng.uniform(0.6, 1.3))
    if name == "aunanorod":
        from simulators.chemistry import AuNanorod

        d = AuNanorod().params
        return AuNanorod(k_ag=d.k_ag * rng.uniform(0.8, 1.25), growth_half=d.growth_half * rng.uniform(0.8, 1.25),
                         surfactant_half=d.surfactant_half * rng.uniform(0.8, 1.25),
                         k_red=d.k_red * rng.uniform(0.8, 1.25))
    from simulators.chemistry import AgNanoprism

    d = AgNanoprism().params
    return AgNanoprism(agno3_stock=rng.uniform(0.7, 2.5), seed_stock=rng.uniform(0.7, 1.4),
                       shift_nm=d.shift_nm * rng.uniform(0.9, 1.1), width_ev=d.width_ev * rng.uniform(0.85, 1.15),
                       pva_cap=d.pva_cap * rng.uniform(0.7, 1.4))


def model_spectra(model, x: np.ndarray, wl: np.ndarray) -> np.ndarray:
    """Noise-free spectra of many conditions (vectorised when the model offers ``spectra``)."""
    if hasattr(model, "spectra"):
        return model.spectra(np.atleast_2d(x), wl)
    return np.array([model.spectrum(dict(zip(INPUTS, row, strict=True)), wl) for row in np.atleast_2d(x)])


# ---- problems -----------------------------------------------------------------------------------
@dataclass
class Problem:
    model: object
    seed: int
    scenario: str
    loss: SpectrumLoss
    wavelengths: np.ndarray
    space: Space  # the initial bounds
    x_best: np.ndarray  # the best condition within the hard limits (found by search)
    f_best: float  # its true loss: scores are regrets above it
    f_best_inside: float  # the best true loss inside the initial bounds

    def regret(self, x: np.ndarray) -> np.ndarray:
        return np.atleast_1d(self.loss(model_spectra(self.model, x, self.wavelengths))) - self.f_best


def best_condition(model, space: Space, loss: SpectrumLoss, wl: np.ndarray, rng: np.random.Generator,
                   n_random: int = 20000) -> tuple[np.ndarray, float]:
    """The lowest true loss inside ``space``: random search, shrinking clouds, then Nelder-Mead polish."""
    from scipy.optimize import minimize

    from orchestrator.optimize.constraints import make_feasible, perturb_feasible
    from orchestrator.optimize.transforms import UnitScaler

    scaler = UnitScaler.for_space(space)
    x = sample_feasible(space, n_random, rng)
    f = loss(model_spectra(model, x, wl))
    for scale in (0.1, 0.03, 0.01, 0.003):
        top = x[np.argsort(f)[:10]]
        x = np.vstack([top, perturb_feasible(space, top, scaler, rng, scale, 200)])
        f = loss(model_spectra(model, x, wl))
    best_x, best_f = x[np.argmin(f)], float(f.min())
    for start in x[np.argsort(f)[:3]]:
        def objective(u: np.ndarray) -> float:
            return float(loss(model_spectra(model, make_feasible(space, scaler.from_unit(u[None, :])), wl))[0])

        res = minimize(objective, scaler.to_unit(start[None, :])[0], method="Nelder-Mead",
                       options={"xatol": 1e-5, "fatol": 1e-7, "maxfev": 1500})
        if res.fun < best_f:
            best_f, best_x = float(res.fun), make_feasible(space, scaler.from_unit(res.x[None, :]))[0]
    return best_x, best_f


TARGETS = {"aunanorod": "au_nanorod.csv", "twoband": "two_band.csv"}  # the others: the paper's target


def paper_target(wl: np.ndarray, chemistry: str = "agnanoprism", target_csv: str | None = None) -> SpectrumLoss:
    """The loss against the chemistry's target (``protocols/targets/``, or ``target_csv``) with the
    protocol's absorbance window."""
    from orchestrator.spectra import interpolate_target, read_target_csv

    target = _protocol().target
    path = Path(target_csv) if target_csv else REPO / "protocols" / "targets" / TARGETS.get(chemistry, "ag_nanoprism.csv")
    spectrum = interpolate_target(*read_target_csv(path), wl)
    return SpectrumLoss(spectrum, a_low=target.a_low, a_high=target.a_high)


def hard_space(space: Space) -> Space:
    return space.with_bounds({v.name: (v.hard_low, v.hard_high) for v in space.variables})


def box_around(x: np.ndarray, like: Space, rng: np.random.Generator) -> Space:
    """Bounds as wide as ``like``'s, placed at random so that ``x`` lies in their inner 60 %."""
    bounds = {}
    for v, xi in zip(like.variables, x, strict=True):
        warp, unwarp = (np.log, np.exp) if v.log else ((lambda t: t), (lambda t: t))
        width = warp(v.high) - warp(v.low)
        lo = warp(xi) - rng.uniform(0.2, 0.8) * width
        lo = float(np.clip(lo, warp(v.hard_low), warp(v.hard_high) - width))
        bounds[v.name] = (float(unwarp(lo)), float(unwarp(lo + width)))
    return like.with_bounds(bounds)


@lru_cache(maxsize=64)
def draw_problem(seed: int, scenario: str, chemistry: str, target_csv: str | None = None) -> Problem:
    """The paper's target spectrum, chemistry constants drawn for this seed, and initial bounds that
    hold the best condition (``inside``) or the paper's bounds where the best inside them is at least
    0.05 worse than the best within the hard limits (``outside``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 104729, 0 if scenario == "inside" else 1]))
    wl = wavelength_grid()
    loss = paper_target(wl, chemistry, target_csv)
    for _ in range(100):
        model = make_chemistry(chemistry, rng)
        x_best, f_best = best_condition(model, hard_space(paper_space()), loss, wl, rng)
        if scenario == "outside":
            space = paper_space()
            _, f_in = best_condition(model, space, loss, wl, rng, n_random=6000)
            if f_in - f_best < 0.05:
                if chemistry not in BUILT_IN:  # its constants are fixed: another draw cannot help
                    raise SystemExit(
                        f"{chemistry}: the best condition inside the protocol's initial bounds ({f_in:.3f}) is "
                        f"within 0.05 of the best within the hard limits ({f_best:.3f}), so there is no "
                        "'outside' problem; run --scenario inside")
                continue
        else:
            space = box_around(x_best, paper_space(), rng)
            f_in = f_best
        return Problem(model, seed, scenario, loss, wl, space, x_best, f_best, f_in)
    raise RuntimeError(f"no {scenario} problem found for seed {seed}")


# ---- measuring a batch --------------------------------------------------------------------------
def measure(problem: Problem, batch: Sequence[Mapping[str, float]], round_index: int,
            source: str) -> list[Observation]:
    """Replicate droplets of each condition, screened like the engine: drop non-finite and empty spectra
    (peak < 0.02), then losses further than 5 MADs from the median; the median needs 5 accepted."""
    out = []
    for c, inputs in enumerate(batch):
        spectra = []
        for r in range(REPLICATES):
            rng = np.random.default_rng(np.random.SeedSequence([problem.seed, round_index, c, r, 7919]))
            a = np.asarray(problem.model.droplet(inputs, problem.wavelengths, rng), dtype=float)
            if np.all(np.isfinite(a)) and a.max() >= 0.02:
                spectra.append(a)
        losses = np.atleast_1d(problem.loss(np.array(spectra))) if spectra else np.empty(0)
        if len(losses):
            med = np.median(losses)
            mad = np.median(np.abs(losses - med)) * 1.4826
            keep = np.abs(losses - med) <= 5 * mad + 1e-12
            spectra = [s for s, k in zip(spectra, keep, strict=True) if k]
            losses = losses[keep]
        failed = len(losses) < REPLICATES // 2
        out.append(Observation(
            round_index=round_index, inputs=dict(inputs),
            median_loss=None if failed else float(np.median(losses)),
            mad=None if failed else float(np.median(np.abs(losses - np.median(losses)))),
            failed=failed, spectra=np.array(spectra) if not failed else None, source=source,
        ))
    return out


@dataclass
class Run:
    strategy: str
    seed: int
    scenario: str
    best_true: list[float] = field(default_factory=list)  # per round, of the best-median condition
    suggest_s: list[float] = field(default_factory=list)
    bounds: list[dict[str, list[float]]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # per round, conditions that gave no measurement


def run_campaign(strategy: str, problem: Problem, rounds: int) -> Run:
    run = Run(strategy, problem.seed, problem.scenario)
    space = problem.space
    history = History([], problem.wavelengths, problem.loss, round_index=1)
    optimizer = None if strategy == "lhs" else make_optimizer(strategy, {}, protocol_widening(), seed=problem.seed)
    design = LatinHypercubeOptimizer(seed=problem.seed)  # round 1 of every strategy, and all of "lhs"
    best_median, best_regret = np.inf, np.nan
    for r in range(1, rounds + 1):
        history.round_index = r
        t0 = time.perf_counter()
        if r == 1 or optimizer is None:
            suggestion = design.suggest(history, space, BATCH)
        else:
            suggestion = optimizer.suggest(history, space, BATCH)
        run.suggest_s.append(time.perf_counter() - t0)
        space = suggestion.space
        run.bounds.append({v.name: [v.low, v.high] for v in space.variables})
        history.bounds.append(space.bounds)
        obs = measure(problem, suggestion.batch, r, strategy)
        history.observations.extend(obs)
        run.failed.append(sum(o.failed for o in obs))
        for o in obs:
            if o.median_loss is not None and o.median_loss < best_median:
                best_median = o.median_loss
                best_regret = float(problem.regret(space.to_array([o.inputs]))[0])
        run.best_true.append(best_regret)
    return run


# ---- statistics and tables ----------------------------------------------------------------------
def rounds_to(values: Sequence[float], threshold: float) -> float:
    """First round (1-based) whose best true loss is at or below ``threshold``; inf if never."""
    for i, v in enumerate(values):
        if v <= threshold:
            return float(i + 1)
    return float("inf")


def _fmt_rounds(values: np.ndarray, rounds: int) -> str:
    med = float(np.median(values))
    return f">{rounds}" if not np.isfinite(med) else f"{med:g}"


def summarise(runs: list[Run], strategies: Sequence[str], scenario: str, rounds_of: Mapping[str, int]) -> str:
    from scipy.stats import wilcoxon

    by = {s: sorted((r for r in runs if r.strategy == s and r.scenario == scenario), key=lambda r: r.seed)
          for s in strategies}
    by = {s: v for s, v in by.items() if v}
    if not by:
        return ""
    n_seeds = min(len(v) for v in by.values())
    max_r = max(rounds_of[s] for s in by)
    lines = [f"### Scenario `{scenario}` ({n_seeds} seeds)", "",
             "Median over seeds of the true loss of the best-median condition, per round:", ""]
    lines.append("| strategy | " + " | ".join(str(i) for i in range(1, max_r + 1)) + " |")
    lines.append("|---|" + "---|" * max_r)
    for s, rs in by.items():
        arr = np.array([r.best_true for r in rs])
        cells = [f"{np.median(arr[:, i]):.4f}" if i < arr.shape[1] else "" for i in range(max_r)]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Rounds to reach a true loss (median over seeds; censored at the run length) and hit rates:", ""]
    # "by round 6" (the yardstick), or the last round every strategy ran if that is earlier
    by_round = min(6, *(rounds_of[s] for s in by))
    head = " | ".join(f"rounds to {t} | hit by {by_round} | hit by end" for t in THRESHOLDS)
    lines.append(f"| strategy | {head} | median s/suggestion |")
    lines.append("|---|" + "---|" * (3 * len(THRESHOLDS) + 1))
    reach = {}
    for s, rs in by.items():
        cells = []
        for t in THRESHOLDS:
            k = np.array([rounds_to(r.best_true, t) for r in rs])
            reach[(s, t)] = k
            cells += [_fmt_rounds(k, rounds_of[s]), f"{np.mean(k <= by_round):.0%}", f"{np.mean(np.isfinite(k)):.0%}"]
        times = [t for r in rs for t in r.suggest_s[1:]]
        cells.append(f"{np.median(times):.2f}" if times else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if BASELINE in by:
        lines += ["", f"Paired Wilcoxon signed-rank tests against `{BASELINE}` (two-sided; a threshold not reached is "
                  "counted as one round past the shorter of the two runs, so both sides are censored alike; "
                  f"loss at round {by_round}):", "",
                  "| strategy | quantity | median difference | p |", "|---|---|---|---|"]
        base = by[BASELINE]
        for s, rs in by.items():
            if s == BASELINE:
                continue
            cap = min(rounds_of[s], rounds_of[BASELINE]) + 1
            pairs = {
                **{f"rounds to {t}": (np.minimum(reach[(s, t)], cap), np.minimum(reach[(BASELINE, t)], cap))
                   for t in THRESHOLDS},
                f"true loss at round {by_round}": (np.array([r.best_true[by_round - 1] for r in rs]),
                                                   np.array([r.best_true[by_round - 1] for r in base])),
            }
            for q, (a, b) in pairs.items():
                diff = a[:n_seeds] - b[:n_seeds]
                p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
                lines.append(f"| {s} | {q} | {np.median(diff):+.4g} | {p:.3g} |")
    failed = {s: [sum(r.failed) for r in rs] for s, rs in by.items()}
    if any(any(f) for f in failed.values()):
        lines += ["", "Conditions that gave no measurement (failed), per campaign: "
                  + ", ".join(f"{s} median {np.median(f):g}, total {sum(f)}" for s, f in failed.items())]
    if scenario == "outside":
        widened = {s: np.mean([any(b != rs[0].bounds[0] for b in r.bounds) for r in rs]) for s, rs in by.items()}
        lines += ["", "Share of seeds whose bounds widened at least once: "
                  + ", ".join(f"{s} {w:.0%}" for s, w in widened.items())]
    return "\n".join(lines) + "\n"


# ---- running --------------------------------------------------------------------------------------
def _job(args: tuple[Sequence[str], int, str, str, Mapping[str, int], str | None]) -> list[Run]:
    """Every strategy on one problem (one seed, one scenario): the problem is drawn once per process."""
    strategies, seed, scenario, chemistry, rounds_of, target_csv = args
    problem = draw_problem(seed, scenario, chemistry, target_csv)
    return [run_campaign(s, problem, rounds_of[s]) for s in strategies]


def run_all(strategies: Sequence[str], seeds: Sequence[int], scenarios: Sequence[str], chemistry: str,
            rounds_of: Mapping[str, int], jobs: int, progress: Callable[[list[Run]], None],
            target_csv: str | None = None) -> list[Run]:
    """Seeds outermost, so an interrupted run still holds complete, paired seeds."""
    work = [(tuple(strategies), seed, sc, chemistry, dict(rounds_of), target_csv) for seed in seeds for sc in scenarios]
    out: list[Run] = []
    if jobs <= 1:
        for w in work:
            out += _job(w)
            progress(out)
        return out
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, initializer=limit_threads) as pool:
        for future in as_completed([pool.submit(_job, w) for w in work]):
            out += future.result()
            progress(out)
    return out


def limit_threads(n: int = 1) -> None:
    """Oversubscribed cores make torch and BLAS spin: pin both to ``n`` threads in this process."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--baseline-rounds", type=int, default=12,
                        help=f"rounds for the baseline {BASELINE} (longer, so its rounds-to-reach counts are not cut off)")
    parser.add_argument("--scenario", choices=("inside", "outside", "both"), default="both")
    parser.add_argument("--chemistry", default="agnanoprism", type=chemistry_arg,
                        help=f"{', '.join(BUILT_IN)} (constants drawn per seed) or module:Class, a model of "
                             "your own as `sdl run --chemistry` takes it (constants as built)")
    parser.add_argument("--target", type=Path, help="target spectrum CSV (default: the chemistry's, in protocols/targets/)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/BLAS threads per process (1: fair and steady on shared cores)")
    parser.add_argument("--save", type=Path, help="write the raw per-round results (JSON)")
    parser.add_argument("--load", type=Path, nargs="*", help="tabulate saved results instead of running")
    parser.add_argument("--write", action="store_true", help=f"write the tables into {DOC.relative_to(REPO)}")
    parser.add_argument("--section", help="name of the block --write replaces (default: optimizer-CHEMISTRY)")
    args = parser.parse_args(argv)
    limit_threads(args.threads)

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    scenarios = ["inside", "outside"] if args.scenario == "both" else [args.scenario]
    rounds_of = {s: (args.baseline_rounds if s == BASELINE else args.rounds) for s in strategies}
    if args.load:
        runs = [Run(**r) for path in args.load for r in json.loads(path.read_text())["runs"]]
        strategies = [s for s in strategies if any(r.strategy == s for r in runs)]
        runs = paired(runs, strategies)
        for r in runs:
            rounds_of[r.strategy] = max(rounds_of.get(r.strategy, 0), len(r.best_true))
    else:
        t0 = time.time()

        shown = 0

        def progress(done: list[Run]) -> None:
            nonlocal shown
            for run in done[shown:]:
                print(f"[{time.time() - t0:7.0f} s] {run.scenario:8s} seed {run.seed:3d} {run.strategy:16s} "
                      f"best true loss by round: {' '.join(f'{v:.3f}' for v in run.best_true)}", file=sys.stderr)
            shown = len(done)
            if args.save:  # after every problem, so an interrupted benchmark keeps what it measured
                args.save.parent.mkdir(parents=True, exist_ok=True)
                args.save.write_text(json.dumps({"chemistry": args.chemistry, "runs": [r.__dict__ for r in done]}))

        seeds = range(args.first_seed, args.first_seed + args.seeds)
        target_csv = str(args.target.resolve()) if args.target else None
        runs = run_all(strategies, seeds, scenarios, args.chemistry, rounds_of, args.jobs, progress, target_csv)
    text = "\n".join(summarise(runs, strategies, sc, rounds_of) for sc in scenarios)
    print(text)
    if args.write:
        write_section(DOC, args.section or f"optimizer-{args.chemistry}", text, " ".join(["python -m benchmarks.optimizer", *(argv or sys.argv[1:])]))
    return 0


def chemistry_arg(value: str) -> str:
    if value in BUILT_IN or ":" in value:
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: one of {', '.join(BUILT_IN)}, or module:Class")


def paired(runs: list[Run], strategies: Sequence[str]) -> list[Run]:
    """Only the seeds every strategy ran, per scenario (saved results may come from several runs)."""
    keep = []
    for scenario in sorted({r.scenario for r in runs}):
        seeds = set.intersection(*({r.seed for r in runs if r.scenario == scenario and r.strategy == s}
                                   for s in strategies))
        seen = set()
        for r in runs:
            key = (r.strategy, r.seed)
            if r.scenario == scenario and r.strategy in strategies and r.seed in seeds and key not in seen:
                seen.add(key)
                keep.append(r)
    return keep


def write_section(path: Path, key: str, body: str, command: str) -> None:
    """Replace (or append) the block between markers ``<!-- key -->`` ... ``<!-- /key -->``."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\nCommand: `{command}`\n\n{body}{end}"
    text = path.read_text() if path.exists() else "# Optimiser benchmark\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
